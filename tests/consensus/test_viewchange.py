from __future__ import annotations

from moeswarm.consensus import Config, Kind, ViewChanged
from moeswarm.consensus.messages import Commit, Prepare, PrePrepare, ViewChange
from tests.consensus.cluster import Cluster


def test_crashed_primary_is_replaced_and_commits_resume() -> None:
    cluster = Cluster(4)
    cluster.commit_values(3)
    old_primary = cluster.replicas[cluster.initial[1]].primary
    cluster.crash(old_primary)
    cluster.commit_values(3, prefix=b"after")
    cluster.assert_agreement()
    survivors = [cluster.replicas[n] for n in cluster.live()]
    assert all(r.view >= 1 and r.active for r in survivors)
    assert all(r.primary != old_primary for r in survivors)
    decided = [p.value[16:-8] for p in cluster.delivered[survivors[0].me].values() if p.kind is Kind.VALUE]
    assert decided[-3:] == [b"after0", b"after1", b"after2"]


def test_restarted_primary_catches_up_on_what_it_missed() -> None:
    cluster = Cluster(4)
    cluster.commit_values(2)
    old_primary = cluster.replicas[cluster.initial[1]].primary
    cluster.crash(old_primary)
    cluster.commit_values(3)
    cluster.restart(old_primary)
    cluster.commit_values(2)
    cluster.run_until(lambda: all(r.last_delivered == 7 for r in cluster.replicas.values()))
    cluster.assert_agreement()
    assert cluster.replicas[old_primary].view == cluster.replicas[cluster.live()[0]].view


def test_view_timeouts_back_off_exponentially() -> None:
    config = Config(checkpoint_interval=4, window=16, view_timeout=1.0, view_timeout_max=60.0)
    cluster = Cluster(10, config=config)  # f = 3: the primaries of views 0, 1 and 2 may all be down
    cluster.commit_values(1)
    for node in cluster.initial[:3]:
        cluster.crash(node)
    watched = cluster.replicas[cluster.initial[5]]
    starts: list[tuple[float, int]] = []
    original = cluster.handle

    def record(node: str, effects: list) -> None:
        if node == watched.me:
            starts.extend(
                (cluster.now, e.view) for e in effects if isinstance(e, ViewChanged) and not e.active
            )
        original(node, effects)

    cluster.handle = record  # type: ignore[method-assign]
    t0 = cluster.now
    cluster.propose_everywhere(b"x")
    cluster.run_until(lambda: cluster.last_delivered_by_quorum() >= 2, time_max=100)
    cluster.assert_agreement()
    assert [view for _, view in starts] == [1, 2, 3]
    gaps = [round(b - a, 6) for (a, _), (b, _) in zip([(t0, 0), *starts], starts, strict=False)]
    assert gaps == [1.0, 2.0, 4.0]
    assert watched.view == 3
    assert watched.attempts == 0  # reset by the delivery


def test_restarted_replica_never_contradicts_its_votes() -> None:
    cluster = Cluster(4)
    cluster.commit_values(2)
    node = cluster.initial[2]
    before = {
        (type(m).__name__, m.view, m.seq): m.digest
        for m in cluster.records[node]
        if isinstance(m, PrePrepare | Prepare | Commit)
    }
    cluster.crash(node)
    cluster.restart(node)
    cluster.commit_values(4)
    cluster.assert_agreement()
    after = [m for m in cluster.records[node] if isinstance(m, PrePrepare | Prepare | Commit)]
    for m in after:
        key = (type(m).__name__, m.view, m.seq)
        assert before.get(key, m.digest) == m.digest


def test_restart_during_a_view_change_keeps_the_new_view() -> None:
    cluster = Cluster(4)
    cluster.commit_values(1)
    cluster.crash(cluster.initial[0])
    node = cluster.initial[2]
    cluster.propose_everywhere(b"x")
    cluster.run_until(lambda: not cluster.replicas[node].active)
    cluster.restart(node)
    restarted = cluster.replicas[node]
    assert not restarted.active
    assert restarted.view == 1
    assert any(isinstance(m, ViewChange) for m in cluster.records[node])
    cluster.run_until(lambda: cluster.last_delivered_by_quorum() >= 2)
    cluster.assert_agreement()
