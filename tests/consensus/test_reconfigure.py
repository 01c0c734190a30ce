from __future__ import annotations

from moeswarm.consensus import Kind
from tests.consensus.cluster import Cluster


def _reconfigure(cluster: Cluster, members: tuple[str, ...], epoch: int) -> int:
    for node, replica in cluster.replicas.items():
        if cluster.up(node) and not replica.removed:
            cluster.handle(node, replica.propose_reconfigure(members, cluster.now))
    cluster.run_until(lambda: sum(r.epoch == epoch for r in cluster.replicas.values()) >= 3)
    return next(r.ms.start_seq for r in cluster.replicas.values() if r.epoch == epoch)


def _add_the_spare(cluster: Cluster) -> tuple[str, tuple[str, ...], int]:
    """Reconfigure the initial four to five with the spare identity and boot it;
    (joiner, members, the new epoch's start seq)."""
    joiner = next(i.node_id for i in cluster.identities if i.node_id not in cluster.initial)
    five = tuple(sorted((*cluster.initial, joiner)))
    start = _reconfigure(cluster, five, 1)
    cluster.boot(joiner, five, epoch=1, start_seq=start)
    return joiner, five, start


def test_reconfiguration_from_four_to_five_and_back() -> None:
    cluster = Cluster(4, spare=1)
    cluster.commit_values(3)
    joiner, five, _start = _add_the_spare(cluster)
    cluster.commit_values(6, prefix=b"five")
    top = max(r.last_delivered for r in cluster.replicas.values())
    cluster.run_until(lambda: all(r.last_delivered == top for r in cluster.replicas.values()))
    for replica in cluster.replicas.values():
        assert (replica.epoch, replica.ms.n, replica.ms.f, replica.q) == (1, 5, 1, 4)
    # The joiner took the state at the reconfiguration, then decided the rest itself.
    assert cluster.apps[joiner].state == cluster.apps[cluster.initial[0]].state

    leaving = cluster.initial[0]
    four = tuple(m for m in five if m != leaving)
    _reconfigure(cluster, four, 2)
    cluster.commit_values(6, prefix=b"four")
    cluster.assert_agreement()
    assert cluster.replicas[leaving].removed
    for node in four:
        replica = cluster.replicas[node]
        assert (replica.epoch, replica.ms.n, replica.q) == (2, 4, 3)
    kinds = [p.kind for p in cluster.delivered[cluster.initial[1]].values()]
    assert kinds.count(Kind.RECONFIGURE) == 2
    # The removed replica delivered up to its removal and then stopped.
    removal = max(s for s, p in cluster.delivered[leaving].items() if p.kind is Kind.RECONFIGURE)
    assert max(cluster.delivered[leaving]) == removal


def test_replica_behind_a_reconfiguration_catches_up_across_epochs() -> None:
    cluster = Cluster(4, spare=1)
    cluster.commit_values(2)
    lagging = cluster.initial[3]
    cluster.isolate(lagging)
    _add_the_spare(cluster)
    cluster.heal()
    cluster.commit_values(30, prefix=b"later")
    top = max(r.last_delivered for r in cluster.replicas.values())
    cluster.run_until(lambda: all(r.last_delivered == top for r in cluster.replicas.values()))
    cluster.assert_agreement()
    assert cluster.replicas[lagging].epoch == 1


def test_joiner_catches_up_while_a_member_is_down() -> None:
    """n = 5 needs 4 checkpoint signatures: with one member down the joiner's own signature is
    needed, so it must first take a state that f + 1 replicas vouch for."""
    cluster = Cluster(4, spare=1)
    cluster.commit_values(2)
    down = cluster.initial[3]
    cluster.crash(down)
    joiner, _five, start = _add_the_spare(cluster)
    cluster.commit_values(12, prefix=b"five")
    top = max(r.last_delivered for r in cluster.replicas.values())
    cluster.run_until(lambda: cluster.replicas[joiner].last_delivered == top)
    cluster.assert_agreement()
    assert cluster.replicas[joiner].stable is not None
    assert cluster.replicas[joiner].stable.seq > start
