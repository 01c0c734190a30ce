from __future__ import annotations

from dataclasses import replace

from moeswarm.consensus.certs import (
    check_checkpoint_certificate,
    check_commit_certificate,
    check_prepared,
    check_view_change,
    plan_new_view,
)
from moeswarm.consensus.config import Membership
from moeswarm.consensus.messages import (
    NULL,
    UNSIGNED,
    Checkpoint,
    CheckpointCertificate,
    Commit,
    CommittedEntry,
    Kind,
    Prepare,
    PreparedProof,
    PrePrepare,
    Proposal,
    ViewChange,
    sign,
)
from moeswarm.identity import Identity, verify

IDS = sorted((Identity.generate(bytes([i + 1]) * 32) for i in range(4)), key=lambda x: x.node_id)
MS = Membership(0, tuple(i.node_id for i in IDS))
Q = MS.quorum


def _proposal(text: bytes) -> Proposal:
    return Proposal(kind=Kind.VALUE, value=text)


def _pp(view: int, seq: int, proposal: Proposal) -> PrePrepare:
    primary = IDS[view % 4]
    msg = PrePrepare(
        epoch=0,
        view=view,
        seq=seq,
        digest=proposal.digest(),
        proposal=proposal,
        replica=primary.node_id,
        sig=UNSIGNED,
    )
    return sign(primary, msg)


def _prepared(view: int, seq: int, proposal: Proposal) -> PreparedProof:
    pp = _pp(view, seq, proposal)
    backups = [i for i in IDS if i.node_id != pp.replica][: Q - 1]
    prepares = tuple(
        sign(i, Prepare(epoch=0, view=view, seq=seq, digest=pp.digest, replica=i.node_id, sig=UNSIGNED))
        for i in backups
    )
    return PreparedProof(pre_prepare=pp, prepares=prepares)


def _commits(view: int, seq: int, digest: bytes, signers: list[Identity]) -> tuple[Commit, ...]:
    return tuple(
        sign(i, Commit(epoch=0, view=view, seq=seq, digest=digest, replica=i.node_id, sig=UNSIGNED))
        for i in signers
    )


def test_quorum_sizes_intersect_in_an_honest_replica() -> None:
    for n in range(1, 40):
        ms = Membership(0, tuple(sorted(Identity.generate(bytes([k + 1]) * 32).node_id for k in range(n))))
        assert 2 * ms.quorum - n >= ms.f + 1
        assert ms.quorum <= n - ms.f  # reachable with f replicas silent
        if n % 3 == 1:
            assert ms.quorum == 2 * ms.f + 1


def test_prepared_proof_checks() -> None:
    proof = _prepared(0, 1, _proposal(b"a"))
    assert check_prepared(proof, MS, Q, verify)
    short = replace(proof, prepares=proof.prepares[:-1])
    assert not check_prepared(short, MS, Q, verify)
    doubled = replace(proof, prepares=(proof.prepares[0],) * (Q - 1))
    assert not check_prepared(doubled, MS, Q, verify)
    forged = replace(proof, prepares=(replace(proof.prepares[0], sig=bytes(64)), *proof.prepares[1:]))
    assert not check_prepared(forged, MS, Q, verify)
    swapped = replace(proof, pre_prepare=replace(proof.pre_prepare, proposal=_proposal(b"b")))
    assert not check_prepared(swapped, MS, Q, verify)


def test_commit_certificate_checks() -> None:
    proposal = _proposal(b"a")
    entry = CommittedEntry(
        epoch=0, seq=1, view=0, proposal=proposal, commits=_commits(0, 1, proposal.digest(), IDS[:Q])
    )
    assert check_commit_certificate(entry, MS, Q, verify)
    assert not check_commit_certificate(replace(entry, proposal=_proposal(b"b")), MS, Q, verify)
    assert not check_commit_certificate(replace(entry, commits=entry.commits[: Q - 1]), MS, Q, verify)
    outsider = Identity.generate(b"z" * 32)
    with_outsider = (*entry.commits[: Q - 1], *_commits(0, 1, proposal.digest(), [outsider]))
    assert not check_commit_certificate(replace(entry, commits=with_outsider), MS, Q, verify)
    assert not check_commit_certificate(replace(entry, epoch=1), MS, Q, verify)


def test_checkpoint_certificate_checks() -> None:
    checkpoints = tuple(
        sign(i, Checkpoint(epoch=0, seq=8, state_digest=b"s" * 32, replica=i.node_id, sig=UNSIGNED))
        for i in IDS[:Q]
    )
    cert = CheckpointCertificate(epoch=0, seq=8, state_digest=b"s" * 32, checkpoints=checkpoints)
    assert check_checkpoint_certificate(cert, MS, Q, verify)
    assert not check_checkpoint_certificate(replace(cert, state_digest=b"t" * 32), MS, Q, verify)
    assert not check_checkpoint_certificate(replace(cert, checkpoints=checkpoints[:-1]), MS, Q, verify)


def _view_change(signer: Identity, new_view: int, prepared: tuple[PreparedProof, ...] = ()) -> ViewChange:
    msg = ViewChange(
        epoch=0,
        new_view=new_view,
        stable_seq=0,
        stable_digest=b"",
        checkpoint_proof=(),
        prepared=prepared,
        replica=signer.node_id,
        sig=UNSIGNED,
    )
    return sign(signer, msg)


def test_view_change_checks() -> None:
    good = _view_change(IDS[1], 2, (_prepared(0, 1, _proposal(b"a")),))
    assert check_view_change(good, MS, Q, 16, verify)
    # A prepared proof from a view not below the new one, or far beyond the window, is refused.
    assert not check_view_change(
        _view_change(IDS[1], 1, (_prepared(1, 1, _proposal(b"a")),)), MS, Q, 16, verify
    )
    assert not check_view_change(
        _view_change(IDS[1], 2, (_prepared(0, 20, _proposal(b"a")),)), MS, Q, 16, verify
    )
    # Claiming a stable checkpoint without its proof is refused.
    unproven = sign(IDS[1], replace(good, stable_seq=4, prepared=(), sig=UNSIGNED))
    assert not check_view_change(unproven, MS, Q, 16, verify)


def test_new_view_re_proposes_the_value_prepared_in_the_highest_view() -> None:
    old = _prepared(0, 2, _proposal(b"old"))
    newer = _prepared(1, 2, _proposal(b"newer"))
    only = _prepared(1, 4, _proposal(b"four"))
    vcs = [_view_change(IDS[1], 2, (old,)), _view_change(IDS[2], 2, (newer, only)), _view_change(IDS[3], 2)]
    plan = plan_new_view(vcs)
    assert [(seq, p, proved) for seq, p, proved in plan.proposals] == [
        (1, NULL, False),
        (2, _proposal(b"newer"), True),
        (3, NULL, False),
        (4, _proposal(b"four"), True),
    ]
