from __future__ import annotations

from moeswarm.consensus import Broadcast, Config, Kind, Persist, Replica, Validation, ViewChanged
from moeswarm.consensus.messages import UNSIGNED, Prepare, PrePrepare, Proposal, sign
from moeswarm.identity import Identity
from moeswarm.simulator.app import make_invalid_value, make_value
from tests.consensus.cluster import Cluster


def test_values_are_decided_in_order_and_agree() -> None:
    cluster = Cluster(4)
    cluster.commit_values(6)
    cluster.run_until(lambda: all(r.last_delivered == 6 for r in cluster.replicas.values()))
    cluster.assert_agreement()
    delivered = cluster.delivered[cluster.initial[1]]
    assert [p.value[16:-8] for p in delivered.values()] == [b"v%d" % i for i in range(6)]
    states = {app.state for app in cluster.apps.values()}
    assert len(states) == 1


def test_every_message_codec_roundtrips_in_a_running_cluster() -> None:
    cluster = Cluster(4, roundtrip_codec=True)
    cluster.commit_values(3)
    cluster.assert_agreement()


def test_votes_are_persisted_before_they_are_sent() -> None:
    cluster = Cluster(4)
    node = cluster.initial[2]
    effects = cluster.replicas[node].propose(make_value(b"x"), 0.0)
    assert effects == [] or not any(isinstance(e, Broadcast) for e in effects)
    primary = cluster.replicas[cluster.initial[0]]
    effects = primary.propose(make_value(b"x"), 0.0)
    kinds = [type(e) for e in effects]
    assert kinds[:2] == [Persist, Broadcast]
    assert effects[0].record == effects[1].msg  # type: ignore[union-attr]


def _replicas(n: int = 4, **kwargs: object) -> tuple[list[Identity], list[str]]:
    ids = sorted((Identity.generate(bytes([i + 1]) * 32) for i in range(n)), key=lambda x: x.node_id)
    return ids, [i.node_id for i in ids]


def _pre_prepare(primary: Identity, seq: int, value: bytes, view: int = 0) -> PrePrepare:
    proposal = Proposal(kind=Kind.VALUE, value=value)
    return sign(
        primary,
        PrePrepare(
            epoch=0,
            view=view,
            seq=seq,
            digest=proposal.digest(),
            proposal=proposal,
            replica=primary.node_id,
            sig=UNSIGNED,
        ),
    )


def test_equivocating_primary_gets_one_prepare_per_sequence_number() -> None:
    ids, members = _replicas()
    backup = Replica(ids[1], members, Config(), lambda seq, value: Validation.VALID)
    backup.start(0.0)
    first = backup.on_message(_pre_prepare(ids[0], 1, make_value(b"a")), members[0], 0.0)
    second = backup.on_message(_pre_prepare(ids[0], 1, make_value(b"b")), members[0], 0.0)
    prepares = [e.msg for e in first if isinstance(e, Broadcast) and isinstance(e.msg, Prepare)]
    assert len(prepares) == 1
    assert not [e for e in second if isinstance(e, Broadcast)]


def test_pre_prepare_from_a_backup_or_with_a_forged_signature_is_ignored() -> None:
    ids, members = _replicas()
    backup = Replica(ids[1], members, Config(), lambda seq, value: Validation.VALID)
    backup.start(0.0)
    assert backup.on_message(_pre_prepare(ids[2], 1, make_value(b"a")), members[2], 0.0) == []
    forged = _pre_prepare(ids[0], 1, make_value(b"a"))
    forged = PrePrepare(
        epoch=0,
        view=0,
        seq=1,
        digest=forged.digest,
        proposal=forged.proposal,
        replica=members[0],
        sig=bytes(64),
    )
    assert backup.on_message(forged, members[0], 0.0) == []


def test_pending_validation_waits_for_recheck() -> None:
    ids, members = _replicas()
    verdict = {"now": Validation.PENDING}
    backup = Replica(ids[1], members, Config(), lambda seq, value: verdict["now"])
    backup.start(0.0)
    assert not [
        e
        for e in backup.on_message(_pre_prepare(ids[0], 1, make_value(b"a")), members[0], 0.0)
        if isinstance(e, Broadcast)
    ]
    assert backup.next_deadline() is not None  # a primary whose proposal stays pending is suspected
    verdict["now"] = Validation.VALID
    sent = [e.msg for e in backup.recheck(0.5) if isinstance(e, Broadcast)]
    assert len(sent) == 1
    assert isinstance(sent[0], Prepare)


def test_pending_past_the_view_timeout_replaces_the_primary() -> None:
    ids, members = _replicas()
    backup = Replica(ids[1], members, Config(view_timeout=1.0), lambda seq, value: Validation.PENDING)
    backup.start(0.0)
    backup.on_message(_pre_prepare(ids[0], 1, make_value(b"a")), members[0], 0.0)
    changed_at = None
    for _ in range(10):
        now = backup.next_deadline()
        assert now is not None
        if any(isinstance(e, ViewChanged) and e.view == 1 for e in backup.on_tick(now)):
            changed_at = now
            break
    assert changed_at == 1.0


def test_invalid_proposal_starts_a_view_change_at_once() -> None:
    ids, members = _replicas()
    app_validate = lambda seq, value: Validation.INVALID  # noqa: E731
    backup = Replica(ids[1], members, Config(), app_validate)
    backup.start(0.0)
    effects = backup.on_message(_pre_prepare(ids[0], 1, make_invalid_value(b"bad")), members[0], 0.0)
    assert any(isinstance(e, ViewChanged) and e.view == 1 and not e.active for e in effects)
    assert not backup.active


def test_invalid_primary_is_replaced_and_a_valid_value_decided() -> None:
    cluster = Cluster(4)
    primary = cluster.initial[0]
    bad = make_invalid_value(b"bad")
    cluster.handle(primary, cluster.replicas[primary].propose(bad, 0.0))
    cluster.propose_everywhere(b"good")
    cluster.run_until(lambda: cluster.last_delivered_by_quorum() >= 1)
    cluster.assert_agreement()
    values = [p.value for p in cluster.delivered[cluster.initial[1]].values() if p.kind is Kind.VALUE]
    assert bad not in values
    assert any(v[16:-8] == b"good" for v in values)
