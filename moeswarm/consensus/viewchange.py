"""View change: replacing a primary that stalls, equivocates or proposes invalid values.

A replica whose progress timer fires sends VIEW-CHANGE(v+1) with its stable checkpoint proof and
every prepared proof above it, and stops taking part in view v. The new primary gathers a quorum of
them and sends NEW-VIEW, which re-proposes what may have committed (PBFT's rule: per seq, the value
prepared in the highest view; nulls fill the gaps). Backups recompute that choice from the same
view-changes before they accept it. Timeouts double with every consecutive view change (capped)
until something is delivered. As in PBFT, a replica joins the smallest view that f+1 others have
moved beyond its own, and only arms the new-view timer once a quorum has moved with it -- so a lone
replica cannot race ahead through views.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from moeswarm.consensus import catchup, normal
from moeswarm.consensus.certs import NewViewPlan, check_new_view, check_view_change, plan_new_view
from moeswarm.consensus.config import Validation
from moeswarm.consensus.effects import Persist, Send, ViewChanged
from moeswarm.consensus.messages import (
    UNSIGNED,
    CheckpointCertificate,
    Kind,
    NewView,
    ViewChange,
    sign,
)

if TYPE_CHECKING:
    from moeswarm.consensus.replica import Replica

VIEWS_AHEAD_MAX = 64  # view-changes for views further ahead are ignored (bounds memory)


def start(r: Replica, new_view: int, now: float) -> None:
    """Leave the current view and ask for ``new_view``."""
    if new_view <= r.view or r.removed:
        return
    r.view = new_view
    r.active = False
    r.attempts += 1
    r.progress_at = None
    r.newview_at = None
    r.stuck_at = now + r.timeout()
    r.resend_at = now + r.config.view_timeout / 2
    for slot in r.slots.values():
        slot.forget_views_below(new_view)
    r.vcs = {v: vcs for v, vcs in r.vcs.items() if v >= new_view}
    vc = r.sign_and_broadcast(_own_view_change(r, new_view))
    r.vcs.setdefault(new_view, {})[r.me] = vc
    r.emit(ViewChanged(epoch=r.ms.epoch, view=new_view, primary=r.ms.primary(new_view), active=False))
    _check_quorum(r, now)
    r.replay_early = True


def _own_view_change(r: Replica, new_view: int) -> ViewChange:
    stable = r.stable
    if stable is not None and stable.epoch == r.ms.epoch and stable.seq >= r.ms.start_seq:
        stable_seq, digest, proof = stable.seq, stable.state_digest, stable.checkpoints
    else:
        stable_seq, digest, proof = r.ms.start_seq, b"", ()
    prepared = tuple(
        slot.prepared
        for seq, slot in sorted(r.slots.items())
        # All of them, even beyond the window: a view-change that omitted one could lose a decision.
        if slot.prepared is not None and stable_seq < seq and slot.prepared.pre_prepare.epoch == r.ms.epoch
    )
    return ViewChange(
        epoch=r.ms.epoch,
        new_view=new_view,
        stable_seq=stable_seq,
        stable_digest=digest,
        checkpoint_proof=proof,
        prepared=prepared,
        replica=r.me,
        sig=UNSIGNED,
    )


def on_view_change(r: Replica, vc: ViewChange, sender: str, now: float) -> None:
    if vc.epoch != r.ms.epoch:
        if vc.epoch > r.ms.epoch:
            catchup.note_claim(r, sender, vc.epoch, 0, 0)
        return
    if vc.replica not in r.ms or vc.replica == r.me:
        return
    if vc.new_view < r.view or (vc.new_view == r.view and r.active):
        _help(r, vc.replica)
        return
    if vc.new_view > r.view + VIEWS_AHEAD_MAX or vc.replica in r.vcs.get(vc.new_view, {}):
        return
    if not check_view_change(vc, r.ms, r.q, r.config.window, r.verify):
        return
    r.vcs.setdefault(vc.new_view, {})[vc.replica] = vc
    _join_if_f_plus_one_moved(r, now)
    _check_quorum(r, now)


def unstick(r: Replica, now: float) -> None:
    """A view change that gathered no quorum for a whole timeout: if some member has asked for a
    later view, join the latest one. Without this, replicas that crashed or were cut off during a
    view change can sit in different views for good (fewer than f+1 ahead, fewer than a quorum
    behind); with it, every stuck replica converges on the highest view asked for. Nobody moves
    while nobody is ahead, so a lone replica does not race through views."""
    r.stuck_at = now + r.timeout()
    if r.newview_at is not None:
        return  # a quorum is here: PBFT's new-view timer decides
    later = [view for view, vcs in r.vcs.items() if view > r.view and vcs]
    if later:
        start(r, max(later), now)


def _help(r: Replica, peer: str) -> None:
    """A peer asks for a view we have already entered: send it the new-view that started it."""
    nv = r.new_view
    if nv is not None and nv.view == r.view and r.active and r.helped.get(peer, -1) < nv.view:
        r.helped[peer] = nv.view
        r.emit(Send(peer, nv))


def _join_if_f_plus_one_moved(r: Replica, now: float) -> None:
    highest: dict[str, int] = {}
    for view, vcs in r.vcs.items():
        if view > r.view:
            for replica in vcs:
                highest[replica] = max(highest.get(replica, 0), view)
    if len(highest) >= r.ms.f + 1:
        # the largest view that f+1 replicas have all reached or passed
        target = sorted(highest.values(), reverse=True)[r.ms.f]
        start(r, target, now)


def _check_quorum(r: Replica, now: float) -> None:
    if r.active:
        return
    vcs = r.vcs.get(r.view, {})
    if len(vcs) < r.q:
        return
    if r.newview_at is None:
        r.newview_at = now + r.timeout()
    if r.ms.primary(r.view) == r.me and r.me in vcs:
        _send_new_view(r, vcs, now)


def _send_new_view(r: Replica, vcs: dict[str, ViewChange], now: float) -> None:
    others = [vcs[k] for k in sorted(vcs) if k != r.me]
    chosen = [vcs[r.me], *others[: r.q - 1]]
    plan = plan_new_view(chosen)
    pre_prepares = []
    for seq, proposal, _ in plan.proposals:
        pre_prepares.append(sign(r.identity, normal.unsigned_pre_prepare(r, seq, proposal)))
    nv = r.sign_and_broadcast(
        NewView(
            epoch=r.ms.epoch,
            view=r.view,
            view_changes=tuple(chosen),
            pre_prepares=tuple(pre_prepares),
            replica=r.me,
            sig=UNSIGNED,
        )
    )
    enter(r, nv, plan, now)


def on_new_view(r: Replica, nv: NewView, sender: str, now: float) -> None:
    if nv.epoch != r.ms.epoch:
        if nv.epoch > r.ms.epoch:
            r.defer(nv, sender)
        return
    if nv.view < r.view or (nv.view == r.view and r.active) or nv.view > r.view + VIEWS_AHEAD_MAX:
        return
    plan = check_new_view(nv, r.ms, r.q, r.config.window, r.verify)
    if plan is None:
        return
    r.emit(Persist(nv))
    enter(r, nv, plan, now)


def enter(r: Replica, nv: NewView, plan: NewViewPlan, now: float) -> None:
    """Start view ``nv.view``: adopt its checkpoint, install its pre-prepares, prepare them."""
    r.view = nv.view
    r.active = False  # until the checkpoint and the numbering of the new view are in place
    r.new_view = nv
    r.newview_at = r.stuck_at = None
    r.progress_at = None
    r.vcs = {v: vcs for v, vcs in r.vcs.items() if v > nv.view}
    for slot in r.slots.values():
        slot.forget_views_below(nv.view)
    r.emit(ViewChanged(epoch=r.ms.epoch, view=nv.view, primary=nv.replica, active=True))
    stable = plan.stable
    if stable.checkpoint_proof and stable.stable_seq > r.low:
        cert = CheckpointCertificate(
            epoch=r.ms.epoch,
            seq=stable.stable_seq,
            state_digest=stable.stable_digest,
            checkpoints=stable.checkpoint_proof,
        )
        catchup.adopt_stable(r, cert, now)
    r.next_seq = max(plan.max_seq, r.low) + 1
    r.active = True
    for (seq, proposal, certified), pp in zip(plan.proposals, nv.pre_prepares, strict=True):
        if seq <= r.low or r.view != nv.view or not r.active:
            continue
        slot = r.slot(seq)
        if not slot.accepts(nv.view, pp.digest):
            continue
        slot.pre_prepare = pp
        slot.certified = certified or proposal.kind is Kind.NULL
        if pp.replica == r.me:
            slot.validation = Validation.VALID
            slot.locked[nv.view] = pp.digest
            normal.advance(r, slot, now)
        else:
            normal.evaluate(r, slot, now)
    r.replay_early = True
    normal.deliver_ready(r, now)
