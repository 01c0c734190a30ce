"""Checkpoints, catching up on missed decisions, and state transfer.

Every K sequence numbers (and at the first seq of an epoch) a replica signs the application's state
digest; a quorum of matching checkpoints is a stable checkpoint: the log below it is dropped.

A replica notices it is behind when f+1 peers (so at least one honest) show it a later epoch, view
or sequence number, and it stays behind for ``fetch_delay``. It then asks one of them (in turn) for
a catch-up: the chain of reconfigurations since its epoch, the peer's stable checkpoint, the decided
entries after its own last delivery, and the new-view of the peer's view. Each part is a certificate
it checks itself -- commit certificates and checkpoints against the member set of their epoch, which
the verified reconfiguration chain tells it. If the stable checkpoint is beyond its last delivery,
the entries before it are gone: it emits ``FetchState`` and waits for ``install_state``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moeswarm.consensus import normal, viewchange
from moeswarm.consensus.certs import check_checkpoint_certificate, check_commit_certificate
from moeswarm.consensus.config import Membership
from moeswarm.consensus.effects import Broadcast, FetchState, Persist, Send
from moeswarm.consensus.messages import (
    UNSIGNED,
    CatchUp,
    Checkpoint,
    CheckpointCertificate,
    CommittedEntry,
    Fetch,
    Kind,
    StateInstalled,
    sign,
)

if TYPE_CHECKING:
    from moeswarm.consensus.replica import Replica

CHECKPOINTS_PER_REPLICA_MAX = 8
SERVED_PEERS_MAX = 512
CLAIMS_MAX = 512
FUTURE_EPOCHS_MAX = 16


def is_checkpoint_seq(r: Replica, seq: int) -> bool:
    return seq % r.config.checkpoint_interval == 0 or seq == r.ms.start_seq


def executed(r: Replica, seq: int, state_digest: bytes, now: float) -> None:
    if seq > r.last_delivered or r.removed:
        return
    r.last_executed = max(r.last_executed, seq)
    if not is_checkpoint_seq(r, seq) or seq < r.low or (seq == r.low and r.stable_at_low()):
        return
    c = sign(
        r.identity,
        Checkpoint(epoch=r.ms.epoch, seq=seq, state_digest=state_digest, replica=r.me, sig=UNSIGNED),
    )
    r.own_checkpoint = c
    r.emit(Broadcast(c))
    _add_checkpoint(r, c, now)


def on_checkpoint(r: Replica, c: Checkpoint, sender: str, now: float) -> None:
    if c.epoch != r.ms.epoch:
        if c.epoch > r.ms.epoch:
            note_claim(r, sender, c.epoch, 0, c.seq)
            ms = r.future.get(c.epoch)
            if ms is not None and c.replica in ms and c.seq > r.last_delivered:
                if r.verify(c.replica, c.signing_bytes(), c.sig):
                    r.future_ckpts[c.replica] = c  # bounded: one per member of a known epoch
                    weak_transfer(r, now)
            else:
                r.defer(c, sender)
        return
    if c.replica not in r.ms or c.replica == r.me or c.seq < r.low or (c.seq == r.low and r.stable_at_low()):
        return
    if c.seq in r.ckpt_votes.get(c.replica, {}) or not r.verify(c.replica, c.signing_bytes(), c.sig):
        return
    note_claim(r, c.replica, c.epoch, 0, c.seq)
    _add_checkpoint(r, c, now)


def _add_checkpoint(r: Replica, c: Checkpoint, now: float) -> None:
    votes = r.ckpt_votes.setdefault(c.replica, {})
    votes[c.seq] = c
    if len(votes) > CHECKPOINTS_PER_REPLICA_MAX:
        del votes[min(votes)]
    matching = [
        v[c.seq] for v in r.ckpt_votes.values() if c.seq in v and v[c.seq].state_digest == c.state_digest
    ]
    if len(matching) >= r.q:
        chosen = tuple(sorted(matching, key=lambda x: x.replica)[: r.q])
        cert = CheckpointCertificate(
            epoch=r.ms.epoch, seq=c.seq, state_digest=c.state_digest, checkpoints=chosen
        )
        adopt_stable(r, cert, now)
    else:
        weak_transfer(r, now)


def weak_transfer(r: Replica, now: float) -> None:
    """Fetch a state vouched for by f+1 checkpoints (so by one honest replica at least) when the
    decisions before it cannot be had: this replica has no state at all yet (it joined, or its log
    starts at an epoch it has not executed into), or it has been behind for a while. A stable
    checkpoint needs a quorum, which may include this very replica -- so without this, f faulty
    replicas plus one replica without state could stop checkpoints for good."""
    stuck = r.behind_since is not None and now - r.behind_since >= 4 * r.config.fetch_delay
    if r.transfer is not None or r.removed or not (r.last_delivered < r.low or stuck):
        return
    tally: dict[tuple[int, int, bytes], list[Checkpoint]] = {}
    known = [c for votes in r.ckpt_votes.values() for c in votes.values()]
    for c in [*known, *r.future_ckpts.values()]:
        if c.seq > r.last_delivered and c.seq >= r.low:
            tally.setdefault((c.epoch, c.seq, c.state_digest), []).append(c)
    best = None
    for (epoch, seq, digest), cs in tally.items():
        ms = _membership_for(r, epoch)
        if ms is not None and len(cs) >= ms.f + 1 and (best is None or seq > best[0].seq):
            cert = CheckpointCertificate(
                epoch=epoch,
                seq=seq,
                state_digest=digest,
                checkpoints=tuple(sorted(cs, key=lambda x: x.replica)),
            )
            best = (cert, ms)
    if best is not None:
        begin_transfer(r, *best)


def adopt_stable(r: Replica, cert: CheckpointCertificate, now: float) -> None:
    """Make ``cert`` the stable checkpoint: truncate the log below it, or transfer state if behind."""
    if cert.seq < r.low or (cert.seq == r.low and r.stable_at_low()):
        return
    normal.deliver_ready(r, now)  # deliver what the log holds before it is truncated
    r.stable = cert
    r.low = cert.seq
    r.emit(Persist(cert))
    r.slots = {s: slot for s, slot in r.slots.items() if s > cert.seq}
    for votes in r.ckpt_votes.values():
        for s in [s for s in votes if s <= cert.seq]:
            del votes[s]
    r.fetched = {s: e for s, e in r.fetched.items() if s > cert.seq}
    r.next_seq = max(r.next_seq, cert.seq + 1)
    if r.last_delivered < cert.seq:
        begin_transfer(r, cert, r.ms)
    normal.try_propose(r, now)


def begin_transfer(r: Replica, cert: CheckpointCertificate, ms: Membership) -> None:
    r.transfer = FetchState(
        seq=cert.seq,
        epoch=cert.epoch,
        state_digest=cert.state_digest,
        peers=tuple(c.replica for c in cert.checkpoints),
    )
    r.transfers.append((r.transfer, ms, cert))
    r.emit(r.transfer)


def install_state(r: Replica, seq: int, state_digest: bytes, now: float) -> None:
    found = [t for t in r.transfers if (t[0].seq, t[0].state_digest) == (seq, state_digest)]
    if r.transfer is None or not found or seq <= r.last_delivered:
        return
    target, ms, cert = found[-1]
    if ms.epoch < r.ms.epoch:
        return
    r.emit(Persist(StateInstalled(epoch=target.epoch, seq=seq, state_digest=state_digest)))
    r.transfer = None
    r.transfers.clear()
    r.last_delivered = seq
    r.last_executed = max(r.last_executed, seq)
    if ms.epoch != r.ms.epoch:
        normal.enter_epoch(r, ms, now)
        if len(cert.checkpoints) >= r.q:  # a vouched-for (f+1) state moves no watermark
            r.stable, r.low = cert, seq
            r.emit(Persist(cert))
        r.next_seq = seq + 1
    r.fetched = {s: e for s, e in r.fetched.items() if s > seq}
    executed(r, seq, state_digest, now)  # vouch for the installed state: it may complete a quorum
    if r.stable is not None and r.stable.epoch == r.ms.epoch and r.last_delivered < r.stable.seq:
        begin_transfer(r, r.stable, r.ms)  # an older target was installed: the rest is gone too
    normal.deliver_ready(r, now)


# ---------------------------------------------------------------------- noticing that we are behind


def note_claim(r: Replica, peer: str, epoch: int, view: int, seq: int) -> None:
    """Remember how far ``peer`` (authenticated by the transport) has shown it got."""
    if peer == r.me or (epoch == r.ms.epoch and peer not in r.ms) or epoch < r.ms.epoch:
        return
    old = r.claims.get(peer)
    if old is None:
        if len(r.claims) >= CLAIMS_MAX:
            return
        r.claims[peer] = (epoch, view, seq)
    elif epoch > old[0]:
        r.claims[peer] = (epoch, view, seq)
    elif epoch == old[0]:
        r.claims[peer] = (epoch, max(view, old[1]), max(seq, old[2]))


def _ahead(r: Replica, claim: tuple[int, int, int]) -> bool:
    epoch, view, seq = claim
    return epoch > r.ms.epoch or (epoch == r.ms.epoch and (seq > r.last_delivered or view > r.view))


def refresh_behind(r: Replica, now: float) -> None:
    """Behind: a quorum of commits shows a later seq decided, or f+1 peers (one of them honest) show a
    later epoch, a later view, or a checkpoint beyond this replica's last delivery."""
    epoch, view, delivered = r.ms.epoch, r.view, r.last_delivered
    behind = r.known_decided > delivered or any(s > delivered for s in r.fetched)
    if not behind:  # this runs after every input: keep it a plain loop
        ahead = 0
        for e, v, s in r.claims.values():
            if e > epoch or (e == epoch and (s > delivered or v > view)):
                ahead += 1
        behind = ahead > r.ms.f
    if behind and not r.removed:
        if r.behind_since is None:
            r.behind_since = now
    else:
        r.behind_since = None
        r.fetch_at = None


def maybe_fetch(r: Replica, now: float) -> None:
    refresh_behind(r, now)
    weak_transfer(r, now)
    if r.behind_since is None or now < r.behind_since + r.config.fetch_delay:
        return
    if r.fetch_at is not None and now < r.fetch_at:
        return
    peers = sorted(p for p, claim in r.claims.items() if _ahead(r, claim))
    peers = peers or [m for m in r.ms.members if m != r.me]
    if not peers:
        return
    peer = peers[r.fetch_round % len(peers)]
    r.fetch_round += 1
    r.emit(Send(peer, Fetch(epoch=r.ms.epoch, view=r.view, after_seq=r.last_delivered, replica=r.me)))
    r.fetch_at = now + 2 * r.config.fetch_delay


# ---------------------------------------------------------------------- serving and using catch-ups


def on_fetch(r: Replica, req: Fetch, sender: str, now: float) -> None:
    last = r.served.get(sender)
    if req.replica != sender or (last is not None and now - last < r.config.fetch_delay / 2):
        return
    r.served.pop(sender, None)
    r.served[sender] = now
    if len(r.served) > SERVED_PEERS_MAX:
        del r.served[next(iter(r.served))]
    reconfigs = tuple(e for e in r.chain if e.epoch >= req.epoch)
    cert = (
        r.stable
        if r.stable is not None and (r.stable.seq > req.after_seq or req.epoch < r.ms.epoch)
        else None
    )
    entries = []
    for seq in sorted(r.slots):
        committed = r.slots[seq].committed
        if seq > req.after_seq and committed is not None:
            entries.append(committed)
            if len(entries) >= r.config.catchup_entries_max:
                break
    nv = r.new_view
    if not (
        req.epoch == r.ms.epoch and req.view < r.view and r.active and nv is not None and nv.view == r.view
    ):
        nv = None
    if reconfigs or cert or entries or nv:
        answer = CatchUp(reconfigurations=reconfigs, checkpoint=cert, entries=tuple(entries), new_view=nv)
        r.emit(Send(sender, answer))


def help_old_epoch(r: Replica, peer: str, epoch: int, now: float) -> None:
    """A peer still speaks in an epoch this replica has left: send it the reconfigurations since, so
    it can verify and deliver them (the old epoch may be unable to finish a view change without us)."""
    last = r.served.get(peer)
    chain = tuple(e for e in r.chain if e.epoch >= epoch)
    if not chain or (last is not None and now - last < r.config.fetch_delay):
        return
    r.served.pop(peer, None)
    r.served[peer] = now
    if len(r.served) > SERVED_PEERS_MAX:
        del r.served[next(iter(r.served))]
    r.emit(Send(peer, CatchUp(reconfigurations=chain)))


def _membership_for(r: Replica, epoch: int) -> Membership | None:
    return r.ms if epoch == r.ms.epoch else r.future.get(epoch)


def on_catch_up(r: Replica, cu: CatchUp, sender: str, now: float) -> None:
    _learn_chain(r, cu.reconfigurations, now)
    if cu.checkpoint is not None:
        _learn_checkpoint(r, cu.checkpoint, now)
    _learn_entries(r, cu.entries, now)
    if cu.new_view is not None:
        viewchange.on_new_view(r, cu.new_view, sender, now)


def _learn_chain(r: Replica, entries: tuple[CommittedEntry, ...], now: float) -> None:
    for e in sorted(entries, key=lambda x: x.seq):
        ms = _membership_for(r, e.epoch)
        p = e.proposal
        if ms is None or p.kind is not Kind.RECONFIGURE or p.epoch != e.epoch + 1 or p.epoch in r.future:
            continue
        if len(r.future) >= FUTURE_EPOCHS_MAX or not check_commit_certificate(
            e, ms, r.quorum_of(ms), r.verify
        ):
            continue
        r.future[p.epoch] = Membership(p.epoch, p.members, e.seq)
        r.future_entries[p.epoch] = e
        r.emit(Persist(e))
        if e.epoch == r.ms.epoch and e.seq > r.last_delivered:
            r.fetched[e.seq] = e
        elif e.epoch == r.ms.epoch and r.transfer is None:
            # The application's state already includes this reconfiguration (it was installed by
            # a state transfer): only the replica has to follow it.
            normal.switch_epoch(r, e, now)


def _learn_checkpoint(r: Replica, cert: CheckpointCertificate, now: float) -> None:
    ms = _membership_for(r, cert.epoch)
    if ms is None or not check_checkpoint_certificate(cert, ms, r.quorum_of(ms), r.verify):
        return
    if cert.epoch == r.ms.epoch:
        adopt_stable(r, cert, now)
    elif cert.seq > r.last_delivered and (r.transfer is None or r.transfer.seq < cert.seq):
        begin_transfer(r, cert, ms)


def _learn_entries(r: Replica, entries: tuple[CommittedEntry, ...], now: float) -> None:
    for e in sorted(entries, key=lambda x: x.seq):
        if e.seq <= r.last_delivered or e.seq in r.fetched or e.seq > r.last_delivered + 2 * r.config.window:
            continue
        ms = _membership_for(r, e.epoch)
        following = r.future.get(e.epoch + 1)
        if ms is None or (following is not None and e.seq > following.start_seq):
            continue
        if check_commit_certificate(e, ms, r.quorum_of(ms), r.verify):
            r.emit(Persist(e))
            r.fetched[e.seq] = e
    normal.deliver_ready(r, now)
