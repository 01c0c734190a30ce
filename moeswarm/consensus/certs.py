"""Checking certificates any third party can verify, and planning a new view from view-changes.

Every function here is a pure predicate over signed votes: the member set of the epoch says who may
vote, the quorum size says how many must agree, and ``verify(node_id, data, sig)`` checks one
signature (a shared verified-signature cache makes repeats cheap).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from moeswarm.consensus.config import Membership
from moeswarm.consensus.messages import (
    NULL,
    Checkpoint,
    CheckpointCertificate,
    Commit,
    CommittedEntry,
    NewView,
    PreparedProof,
    PrePrepare,
    Proposal,
    ViewChange,
)

Verifier = Callable[[str, bytes, bytes], bool]


def signed_by_member(
    msg: PrePrepare | Commit | Checkpoint | ViewChange | NewView, ms: Membership, verify: Verifier
) -> bool:
    return msg.epoch == ms.epoch and msg.replica in ms and verify(msg.replica, msg.signing_bytes(), msg.sig)


def _distinct_signers(votes: Iterable[object]) -> int:
    return len({v.replica for v in votes})  # type: ignore[attr-defined]


def check_pre_prepare(pp: PrePrepare, ms: Membership, verify: Verifier) -> bool:
    """Signed by the primary of its view, and the digest is the proposal's."""
    return (
        pp.replica == ms.primary(pp.view)
        and pp.digest == pp.proposal.digest()
        and signed_by_member(pp, ms, verify)
    )


def check_prepared(proof: PreparedProof, ms: Membership, quorum: int, verify: Verifier) -> bool:
    """A pre-prepare plus ``quorum - 1`` matching prepares from distinct backups."""
    pp = proof.pre_prepare
    if not check_pre_prepare(pp, ms, verify):
        return False
    primary = pp.replica
    for p in proof.prepares:
        if (p.epoch, p.view, p.seq, p.digest) != (
            pp.epoch,
            pp.view,
            pp.seq,
            pp.digest,
        ) or p.replica == primary:
            return False
    if _distinct_signers(proof.prepares) < quorum - 1:
        return False
    return all(signed_by_member(p, ms, verify) for p in proof.prepares)  # type: ignore[arg-type]


def check_commit_certificate(entry: CommittedEntry, ms: Membership, quorum: int, verify: Verifier) -> bool:
    """A quorum of commits, in one view, for the digest of the entry's proposal."""
    if entry.epoch != ms.epoch or entry.seq <= ms.start_seq:
        return False
    digest = entry.proposal.digest()
    for c in entry.commits:
        if (c.epoch, c.view, c.seq, c.digest) != (entry.epoch, entry.view, entry.seq, digest):
            return False
    if _distinct_signers(entry.commits) < quorum:
        return False
    return all(signed_by_member(c, ms, verify) for c in entry.commits)


def check_checkpoint_certificate(
    cert: CheckpointCertificate, ms: Membership, quorum: int, verify: Verifier
) -> bool:
    if cert.epoch != ms.epoch or cert.seq < ms.start_seq:
        return False
    return _check_checkpoints(cert.checkpoints, cert.seq, cert.state_digest, ms, quorum, verify)


def _check_checkpoints(
    checkpoints: Sequence[Checkpoint], seq: int, digest: bytes, ms: Membership, quorum: int, verify: Verifier
) -> bool:
    for c in checkpoints:
        if (c.epoch, c.seq, c.state_digest) != (ms.epoch, seq, digest):
            return False
    if _distinct_signers(checkpoints) < quorum:
        return False
    return all(signed_by_member(c, ms, verify) for c in checkpoints)


def check_view_change(vc: ViewChange, ms: Membership, quorum: int, window: int, verify: Verifier) -> bool:
    """Signed, with a proven stable checkpoint and valid prepared proofs above it.

    The epoch's start counts as stable without a proof: every member of the epoch knows it.
    """
    if not signed_by_member(vc, ms, verify) or vc.stable_seq < ms.start_seq:
        return False
    if vc.checkpoint_proof:
        if not _check_checkpoints(vc.checkpoint_proof, vc.stable_seq, vc.stable_digest, ms, quorum, verify):
            return False
    elif vc.stable_seq != ms.start_seq:
        return False
    seqs = set()
    for proof in vc.prepared:
        pp = proof.pre_prepare
        if not vc.stable_seq < pp.seq <= vc.stable_seq + window or pp.view >= vc.new_view or pp.seq in seqs:
            return False
        seqs.add(pp.seq)
        if not check_prepared(proof, ms, quorum, verify):
            return False
    return True


@dataclass(frozen=True, slots=True)
class NewViewPlan:
    """What a new view starts from: the stable checkpoint and a proposal for every seq above it."""

    stable: ViewChange  # the view-change whose checkpoint is the highest
    proposals: tuple[tuple[int, Proposal, bool], ...]  # (seq, proposal, carried by a prepared proof)

    @property
    def min_seq(self) -> int:
        return self.stable.stable_seq

    @property
    def max_seq(self) -> int:
        return self.proposals[-1][0] if self.proposals else self.min_seq


def plan_new_view(view_changes: Sequence[ViewChange]) -> NewViewPlan:
    """PBFT's choice: above the highest stable checkpoint, re-propose for each seq the value prepared
    in the highest view, and fill the gaps with nulls. Deterministic in the set of view-changes."""
    stable = max(view_changes, key=lambda vc: (vc.stable_seq, vc.replica))
    best: dict[int, PrePrepare] = {}
    for vc in view_changes:
        for proof in vc.prepared:
            pp = proof.pre_prepare
            if pp.seq > stable.stable_seq and (pp.seq not in best or pp.view > best[pp.seq].view):
                best[pp.seq] = pp
    top = max(best, default=stable.stable_seq)
    proposals = []
    for seq in range(stable.stable_seq + 1, top + 1):
        pp_or_none = best.get(seq)
        proposals.append((seq, pp_or_none.proposal, True) if pp_or_none else (seq, NULL, False))
    return NewViewPlan(stable, tuple(proposals))


def check_new_view(
    nv: NewView, ms: Membership, quorum: int, window: int, verify: Verifier
) -> NewViewPlan | None:
    """The plan a valid new-view message starts from, or None if the message is not valid."""
    if nv.replica != ms.primary(nv.view) or not signed_by_member(nv, ms, verify):
        return None
    vcs = nv.view_changes
    if any(vc.new_view != nv.view for vc in vcs) or _distinct_signers(vcs) != len(vcs) or len(vcs) < quorum:
        return None
    if not all(check_view_change(vc, ms, quorum, window, verify) for vc in vcs):
        return None
    plan = plan_new_view(vcs)
    if len(plan.proposals) != len(nv.pre_prepares):
        return None
    for (seq, proposal, _), pp in zip(plan.proposals, nv.pre_prepares, strict=True):
        if (pp.seq, pp.view, pp.proposal) != (seq, nv.view, proposal) or not check_pre_prepare(
            pp, ms, verify
        ):
            return None
    return plan
