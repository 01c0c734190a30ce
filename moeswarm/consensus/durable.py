"""Restarting from persisted records without contradicting anything said before the crash.

The records are the replica's own signed votes (pre-prepares, prepares, commits, view-changes), the
new-views it sent or accepted, its prepared proofs, decided entries, stable checkpoint certificates
and the reconfiguration chain. From them a restarted replica recovers: its epoch (the chain, up to
what the application has applied), its stable checkpoint, its view -- and whether it had left that
view -- and, per sequence number, the digest it voted for in each view (it will vote for no other),
its prepared proofs (its next view-change must report them) and the decisions it holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from moeswarm.consensus import catchup, normal
from moeswarm.consensus.config import Membership, Validation
from moeswarm.consensus.messages import (
    CheckpointCertificate,
    Commit,
    CommittedEntry,
    Kind,
    NewView,
    Prepare,
    PreparedProof,
    PrePrepare,
    ViewChange,
)

if TYPE_CHECKING:
    from moeswarm.consensus.replica import Replica


def restore(r: Replica, records: Sequence[object], applied_seq: int | None) -> None:
    applied = r.ms.start_seq if applied_seq is None else applied_seq
    _restore_epoch(r, records, applied)
    certs = [c for c in records if isinstance(c, CheckpointCertificate) and c.epoch <= r.ms.epoch]
    if certs:
        r.stable = max(certs, key=lambda c: c.seq)
        r.low = max(r.low, r.stable.seq)
    r.last_delivered = r.last_executed = applied
    _restore_view(r, records)
    for rec in records:
        _restore_record(r, rec)
    own = [s.pre_prepare.seq for s in r.slots.values() if s.pre_prepare and s.pre_prepare.replica == r.me]
    planned = r.new_view.pre_prepares[-1].seq if r.new_view and r.new_view.pre_prepares else 0
    r.next_seq = max([r.low, r.last_delivered, planned, *own]) + 1


def _restore_epoch(r: Replica, records: Sequence[object], applied: int) -> None:
    chain = {
        rec.seq: rec
        for rec in records
        if isinstance(rec, CommittedEntry) and rec.proposal.kind is Kind.RECONFIGURE
    }
    for seq in sorted(chain):
        e = chain[seq]
        if e.epoch == r.ms.epoch and r.ms.start_seq < e.seq <= applied:
            r.chain.append(e)
            r.ms = Membership(e.proposal.epoch, e.proposal.members, e.seq)
            r.low = max(r.low, e.seq)
    r.chain = r.chain[-normal.EPOCH_CHAIN_KEPT :]
    r.q = r.quorum_of(r.ms)
    r.removed = r.me not in r.ms


def _restore_view(r: Replica, records: Sequence[object]) -> None:
    epoch = r.ms.epoch
    voted = [m.view for m in records if isinstance(m, PrePrepare | Prepare | Commit) and m.epoch == epoch]
    vcs = [m for m in records if isinstance(m, ViewChange) and m.epoch == epoch and m.replica == r.me]
    nvs = [m for m in records if isinstance(m, NewView) and m.epoch == epoch]
    r.view = max([0, *voted, *(m.new_view for m in vcs), *(m.view for m in nvs)])
    latest_nv = max(nvs, key=lambda m: m.view, default=None)
    own_vc = next((m for m in vcs if m.new_view == r.view), None)
    if own_vc is not None and (latest_nv is None or latest_nv.view < r.view):
        r.active = False
        r.vcs = {r.view: {r.me: own_vc}}
    elif latest_nv is not None and latest_nv.view == r.view:
        r.new_view = latest_nv
        for pp in latest_nv.pre_prepares:
            if pp.seq > r.low:
                slot = r.slot(pp.seq)
                slot.pre_prepare = pp
                slot.certified = True
                slot.validation = Validation.VALID if pp.replica == r.me else None


def _restore_record(r: Replica, rec: object) -> None:
    if isinstance(rec, CommittedEntry):
        if rec.epoch == r.ms.epoch and rec.seq > max(r.low, r.ms.start_seq):
            r.slot(rec.seq).committed = rec
        elif (
            rec.epoch < r.ms.epoch
            and rec.seq <= r.ms.start_seq
            and (r.stable is None or rec.seq > r.stable.seq)
        ):
            r.slot(rec.seq).committed = rec  # the previous epoch's last decisions, kept for laggards
        return
    if isinstance(rec, PreparedProof):
        pp = rec.pre_prepare
        if pp.epoch == r.ms.epoch and pp.seq > r.low:
            slot = r.slot(pp.seq)
            if slot.prepared is None or slot.prepared.pre_prepare.view < pp.view:
                slot.prepared = rec
        return
    if not isinstance(rec, PrePrepare | Prepare | Commit) or rec.replica != r.me:
        return
    if rec.epoch != r.ms.epoch or rec.seq <= r.low or rec.view > r.view:
        return
    slot = r.slot(rec.seq)
    slot.locked[rec.view] = rec.digest
    if rec.view != r.view or not r.active:
        return
    if isinstance(rec, PrePrepare):
        slot.pre_prepare = rec
        slot.validation = Validation.VALID
    elif isinstance(rec, Prepare):
        slot.sent_prepare = rec.view
        slot.add_prepare(rec)
    else:
        slot.sent_commit = rec.view
        slot.add_commit(rec)


def resume(r: Replica, now: float) -> None:
    if r.stable is not None and r.last_delivered < r.stable.seq and r.transfer is None:
        catchup.begin_transfer(r, r.stable, r.ms)
    for seq in sorted(r.slots):
        slot = r.slots.get(seq)  # an earlier step may have truncated the log
        if slot is None:
            continue
        if slot.pre_prepare is not None and slot.validation is None and r.active:
            normal.evaluate(r, slot, now)
        elif slot.pre_prepare is not None and r.active:
            normal.advance(r, slot, now)
    normal.deliver_ready(r, now)
    if not r.active:
        r.resend_at = now
        r.stuck_at = now + r.timeout()


def records(r: Replica) -> list[object]:
    out: list[object] = list(r.chain)
    if r.stable is not None:
        out.append(r.stable)
    if not r.active and r.me in r.vcs.get(r.view, {}):
        out.append(r.vcs[r.view][r.me])
    if r.new_view is not None:
        out.append(r.new_view)
    for seq in sorted(r.slots):
        slot = r.slots[seq]
        if slot.committed is not None:  # the log holds only what a stable checkpoint did not cover
            out.append(slot.committed)
        if slot.prepared is not None and seq > r.low:
            out.append(slot.prepared)
        pp = slot.pre_prepare
        if pp is not None and pp.replica == r.me and pp.view == r.view:
            out.append(pp)
        for view, digest in sorted(slot.locked.items()):
            if view == r.view:
                out.extend(
                    votes[r.me]
                    for votes in (slot.prepares.get((view, digest), {}), slot.commits.get((view, digest), {}))
                    if r.me in votes
                )
    out.extend(r.fetched[s] for s in sorted(r.fetched))
    return out
