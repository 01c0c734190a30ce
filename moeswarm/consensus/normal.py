"""The normal case: pre-prepare, prepare, commit; in-order delivery; epoch switches; timers.

A backup prepares a proposal only once the application's validation says VALID (or the new-view
proves it may already have committed); PENDING keeps the pre-prepare until ``recheck``; INVALID
starts a view change at once. A quorum of commits in one view decides the sequence number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moeswarm.consensus import catchup, viewchange
from moeswarm.consensus.certs import check_pre_prepare
from moeswarm.consensus.config import Membership, Validation
from moeswarm.consensus.effects import Broadcast, Deliver, Persist, ViewChanged
from moeswarm.consensus.log import Slot
from moeswarm.consensus.messages import (
    UNSIGNED,
    Commit,
    CommittedEntry,
    Kind,
    Prepare,
    PrePrepare,
    Proposal,
)
from moeswarm.identity import is_node_id

if TYPE_CHECKING:
    from moeswarm.consensus.replica import Replica

EPOCH_CHAIN_KEPT = 16
RESEND_SLOTS_MAX = 8


def propose(r: Replica, proposal: Proposal, now: float) -> None:
    if proposal.kind is Kind.RECONFIGURE:
        r.wanted_reconfig = proposal
    else:
        r.wanted = proposal
    try_propose(r, now)


def _barrier(r: Replica) -> bool:
    """A primary proposes nothing beyond an undecided reconfiguration: later seqs belong to the
    next epoch."""
    for seq in range(r.last_delivered + 1, r.next_seq):
        slot = r.slots.get(seq)
        if slot and slot.pre_prepare and slot.pre_prepare.proposal.kind is Kind.RECONFIGURE:
            return True
    return False


def try_propose(r: Replica, now: float) -> None:
    """The primary of an active view pre-prepares what is wanted, while the window allows."""
    if r.wanted_reconfig is not None and r.wanted_reconfig.epoch != r.ms.epoch + 1:
        r.wanted_reconfig = None  # asked for in an epoch that has passed
    while r.is_primary and r.active and not r.removed and r.transfer is None:
        proposal = r.wanted_reconfig or r.wanted
        r.next_seq = max(r.next_seq, r.last_delivered + 1)  # never re-number a decided seq
        if proposal is None or not r.in_window(r.next_seq) or _barrier(r):
            return
        if proposal.kind is Kind.RECONFIGURE:
            r.wanted_reconfig = None
        else:
            r.wanted = None
        seq = r.next_seq
        r.next_seq += 1
        pp = r.sign_and_broadcast(unsigned_pre_prepare(r, seq, proposal))
        slot = r.slot(seq)
        slot.pre_prepare = pp
        slot.validation = Validation.VALID
        slot.locked[r.view] = pp.digest
        advance(r, slot, now)


def unsigned_pre_prepare(r: Replica, seq: int, proposal: Proposal) -> PrePrepare:
    """This replica's pre-prepare of `proposal` at `seq` in its current view, ready to be signed."""
    return PrePrepare(
        epoch=r.ms.epoch,
        view=r.view,
        seq=seq,
        digest=proposal.digest(),
        proposal=proposal,
        replica=r.me,
        sig=UNSIGNED,
    )


def _same_epoch_and_view(r: Replica, msg: PrePrepare, sender: str) -> bool:
    if msg.epoch != r.ms.epoch:
        if msg.epoch > r.ms.epoch:
            r.defer(msg, sender)
            catchup.note_claim(r, sender, msg.epoch, 0, 0)
        return False
    if msg.view > r.view or (msg.view == r.view and not r.active):
        r.defer(msg, sender)
        if msg.view > r.view:
            catchup.note_claim(r, sender, msg.epoch, msg.view, 0)
        return False
    return msg.view == r.view


def on_pre_prepare(r: Replica, pp: PrePrepare, sender: str, now: float) -> None:
    if not _same_epoch_and_view(r, pp, sender) or not r.in_window(pp.seq) or pp.seq <= r.last_delivered:
        return
    slot = r.slot(pp.seq)
    if slot.pre_prepare is not None or not slot.accepts(pp.view, pp.digest):
        return  # a duplicate, or the primary equivocates: keep the first
    if not check_pre_prepare(pp, r.ms, r.verify) or not _well_formed(r, pp.proposal):
        return
    slot.pre_prepare = pp
    slot.certified = False
    evaluate(r, slot, now)


def _well_formed(r: Replica, proposal: Proposal) -> bool:
    if proposal.kind is not Kind.RECONFIGURE:
        return True
    return proposal.epoch == r.ms.epoch + 1 and all(is_node_id(m) for m in proposal.members)


def _verdict(r: Replica, slot: Slot) -> Validation:
    pp = slot.pre_prepare
    assert pp is not None
    proposal = pp.proposal
    if slot.certified or proposal.kind is Kind.NULL or pp.replica == r.me:
        return Validation.VALID
    if proposal.kind is Kind.RECONFIGURE:
        if r.validate_members is None:
            return Validation.VALID
        return r.validate_members(pp.seq, proposal.members)
    return r.validate(pp.seq, proposal.value)


def evaluate(r: Replica, slot: Slot, now: float) -> None:
    verdict = _verdict(r, slot)
    slot.validation = verdict
    if verdict is Validation.INVALID:
        viewchange.start(r, r.view + 1, now)
    elif verdict is Validation.VALID:
        send_prepare(r, slot, now)


def recheck(r: Replica, now: float) -> None:
    view = r.view
    for seq in sorted(r.slots):
        slot = r.slots.get(seq)  # an earlier verdict may have truncated the log
        if (
            slot is not None
            and slot.validation is Validation.PENDING
            and slot.pre_prepare is not None
            and r.view == view
            and r.active
        ):
            evaluate(r, slot, now)


def send_prepare(r: Replica, slot: Slot, now: float) -> None:
    pp = slot.pre_prepare
    assert pp is not None
    if pp.replica != r.me and slot.sent_prepare != r.view and slot.accepts(r.view, pp.digest):
        msg = Prepare(
            epoch=r.ms.epoch, view=r.view, seq=slot.seq, digest=pp.digest, replica=r.me, sig=UNSIGNED
        )
        prepare = r.sign_and_broadcast(msg)
        slot.sent_prepare = r.view
        slot.locked[r.view] = pp.digest
        slot.add_prepare(prepare)
    advance(r, slot, now)


def _accept_vote(r: Replica, vote: Prepare | Commit, sender: str) -> Slot | None:
    """The slot a vote belongs to, if the vote is for this epoch, a current or next view, inside
    the window, and signed by a member."""
    if vote.epoch != r.ms.epoch:
        if vote.epoch > r.ms.epoch:
            r.defer(vote, sender)
            catchup.note_claim(r, sender, vote.epoch, 0, 0)
        return None
    if vote.view > r.view:
        catchup.note_claim(r, sender, vote.epoch, vote.view, 0)
    elif vote.view < r.view and isinstance(vote, Commit):
        # A replica that moved to a view change alone (say its timer fired while it was slow) drops
        # the old view's votes; the sequence numbers the others keep committing there still tell it
        # that it is behind, so it fetches those decisions with their certificates.
        catchup.note_claim(r, sender, vote.epoch, vote.view, vote.seq)
    if vote.replica not in r.ms or not r.view <= vote.view <= r.view + 1 or not r.in_window(vote.seq):
        return None
    if not r.verify(vote.replica, vote.signing_bytes(), vote.sig):
        return None
    return r.slot(vote.seq)


def on_prepare(r: Replica, p: Prepare, sender: str, now: float) -> None:
    if p.replica == r.ms.primary(p.view):
        return  # the primary's pre-prepare stands for its prepare
    slot = _accept_vote(r, p, sender)
    if slot is not None and slot.add_prepare(p):
        advance(r, slot, now)


def on_commit(r: Replica, c: Commit, sender: str, now: float) -> None:
    slot = _accept_vote(r, c, sender)
    if slot is not None and slot.add_commit(c):
        advance(r, slot, now)
        if len(slot.commits[(c.view, c.digest)]) >= r.q:
            # Decided; if it cannot be delivered here (a lost pre-prepare, a gap before it, still
            # validating), this replica is behind and fetches it.
            r.known_decided = max(r.known_decided, slot.seq)


def advance(r: Replica, slot: Slot, now: float) -> None:
    """Move a slot on: prepared -> send commit; a quorum of commits -> decided."""
    pp = slot.pre_prepare
    if pp is None or not r.active or pp.view != r.view or slot.validation is not Validation.VALID:
        return
    if slot.sent_commit != r.view:
        proof = slot.prepared_proof(r.q)
        if proof is None:
            return
        slot.prepared = proof
        r.emit(Persist(proof))
        msg = Commit(
            epoch=r.ms.epoch, view=r.view, seq=slot.seq, digest=pp.digest, replica=r.me, sig=UNSIGNED
        )
        commit = r.sign_and_broadcast(msg)
        slot.sent_commit = r.view
        slot.add_commit(commit)
    if slot.committed is None:
        entry = slot.commit_certificate(r.q)
        if entry is not None:
            slot.committed = entry
            r.emit(Persist(entry))
            deliver_ready(r, now)


def deliver_ready(r: Replica, now: float) -> None:
    """Deliver decided entries in sequence order, as far as there is no gap."""
    while r.transfer is None:
        seq = r.last_delivered + 1
        slot = r.slots.get(seq)
        entry = (
            slot.committed if slot is not None and slot.committed is not None else r.fetched.pop(seq, None)
        )
        if entry is None or entry.epoch != r.ms.epoch:
            break
        r.slot(seq).committed = entry
        r.last_delivered = seq
        r.emit(Deliver(seq=seq, epoch=entry.epoch, view=entry.view, proposal=entry.proposal))
        r.attempts = 0
        r.progress_at = None
        if entry.proposal.kind is Kind.VALUE:
            r.wanted = None
        elif entry.proposal.kind is Kind.RECONFIGURE:
            switch_epoch(r, entry, now)
    try_propose(r, now)


def switch_epoch(r: Replica, entry: CommittedEntry, now: float) -> None:
    """A decided reconfiguration: the next seq belongs to the new member set, starting at view 0."""
    p = entry.proposal
    r.chain = [*r.chain, entry][-EPOCH_CHAIN_KEPT:]
    known = r.future.pop(p.epoch, None)
    enter_epoch(r, known or Membership(p.epoch, p.members, entry.seq), now)
    r.wanted_reconfig = None


def enter_epoch(r: Replica, ms: Membership, now: float) -> None:
    # Keep the chain of reconfigurations that led here (also when a state transfer skipped their
    # delivery): durable records and catch-up answers are built from it.
    chained = {e.seq for e in r.chain}
    for epoch in sorted(e for e in r.future_entries if e <= ms.epoch):
        entry = r.future_entries.pop(epoch)
        if entry.seq not in chained:
            r.chain.append(entry)
    r.chain = r.chain[-EPOCH_CHAIN_KEPT:]
    r.ms = ms
    r.q = r.quorum_of(ms)
    # Decided slots of the old epoch stay until the new epoch's first stable checkpoint, to serve
    # replicas that are still catching up to the reconfiguration.
    r.slots = {s: slot for s, slot in r.slots.items() if s <= ms.start_seq and slot.committed is not None}
    r.low = max(r.low, ms.start_seq)
    r.view, r.active, r.vcs, r.new_view, r.attempts = 0, True, {}, None, 0
    r.next_seq = max(r.low, r.last_delivered) + 1
    r.ckpt_votes, r.own_checkpoint, r.claims, r.behind_since = {}, None, {}, None
    r.known_decided = 0
    r.wanted_reconfig = None
    r.future_ckpts = {k: c for k, c in r.future_ckpts.items() if c.epoch > ms.epoch}
    r.fetched = {s: e for s, e in r.fetched.items() if e.epoch >= ms.epoch}
    r.future = {e: m for e, m in r.future.items() if e > ms.epoch}
    r.removed = r.me not in ms
    r.newview_at = r.progress_at = r.stuck_at = None
    r.emit(ViewChanged(epoch=ms.epoch, view=0, primary=ms.primary(0), active=True))
    r.replay_early = True


def has_work(r: Replica) -> bool:
    """Something this replica expects to be decided: the primary is suspected if it stalls.

    Being behind does not pause the suspicion: fetching usually repairs a gap well within the view
    timeout, and when no honest replica holds the missing decision only a view change can."""
    if not r.active or r.removed or r.transfer is not None:
        return False
    if r.wanted is not None or r.wanted_reconfig is not None:
        return True
    for seq in range(r.last_delivered + 1, r.last_delivered + 1 + r.config.window):
        slot = r.slots.get(seq)
        if slot is not None and slot.pre_prepare is not None and slot.pre_prepare.view == r.view:
            return True
    return False


def update_timers(r: Replica, now: float) -> None:
    catchup.refresh_behind(r, now)
    work = has_work(r)
    if not work:
        r.progress_at = None
    elif r.progress_at is None:
        r.progress_at = now + r.timeout()
    if work or not r.active or r.behind_since is not None or _checkpoint_pending(r):
        if r.resend_at is None:
            r.resend_at = now + r.config.view_timeout / 2
    else:
        r.resend_at = None


def _checkpoint_pending(r: Replica) -> bool:
    own = r.own_checkpoint
    return own is not None and (own.seq > r.low or (own.seq == r.low and not r.stable_at_low()))


def resend(r: Replica, now: float) -> None:
    """Re-send this replica's own latest votes: the network may have lost them."""
    r.resend_at = None
    if not r.active:
        own = r.vcs.get(r.view, {}).get(r.me)
        if own is not None:
            r.emit(Broadcast(own))
    else:
        sent = 0
        for seq in range(r.last_delivered + 1, r.last_delivered + 1 + r.config.window):
            slot = r.slots.get(seq)
            if slot is None or slot.pre_prepare is None or sent >= RESEND_SLOTS_MAX:
                continue
            sent += 1
            _resend_slot(r, slot)
    if _checkpoint_pending(r):
        r.emit(Broadcast(r.own_checkpoint))


def _resend_slot(r: Replica, slot: Slot) -> None:
    pp = slot.pre_prepare
    assert pp is not None
    if pp.replica == r.me:
        r.emit(Broadcast(pp))
    for votes in (slot.prepares.get((r.view, pp.digest), {}), slot.commits.get((r.view, pp.digest), {})):
        mine = votes.get(r.me)
        if mine is not None:
            r.emit(Broadcast(mine))
