from __future__ import annotations

from moeswarm.consensus import Config, FetchState
from moeswarm.consensus.messages import CheckpointCertificate, StateInstalled
from tests.consensus.cluster import Cluster


def test_stable_checkpoints_truncate_the_log() -> None:
    cluster = Cluster(4, config=Config(checkpoint_interval=4, window=8, view_timeout=1.0))
    cluster.commit_values(21)
    cluster.run_until(lambda: all(r.last_delivered == 21 for r in cluster.replicas.values()))
    for replica in cluster.replicas.values():
        assert replica.low == 20
        assert replica.stable is not None
        assert replica.stable.seq == 20
        assert len(replica.stable.checkpoints) == replica.q
        assert all(seq > 20 for seq in replica.slots)
        assert replica.stable.state_digest == cluster.apps[replica.me].state_at(20)


def test_replica_partitioned_for_100_checkpoints_catches_up_by_state_transfer() -> None:
    cluster = Cluster(4, config=Config(checkpoint_interval=2, window=8, view_timeout=1.0))
    cluster.commit_values(3)
    lagging = cluster.initial[3]
    cluster.isolate(lagging)
    cluster.commit_values(200)  # 100 checkpoints while it is cut off
    assert cluster.replicas[lagging].last_delivered <= 3
    transfers: list[FetchState] = []
    original = cluster._fetch_state

    def watch(node: str, fs: FetchState) -> None:
        if node == lagging:
            transfers.append(fs)
        original(node, fs)

    cluster._fetch_state = watch  # type: ignore[method-assign]
    cluster.heal()
    cluster.commit_values(3, prefix=b"after")
    top = max(r.last_delivered for r in cluster.replicas.values())
    cluster.run_until(lambda: cluster.replicas[lagging].last_delivered == top)
    cluster.assert_agreement()
    assert transfers, "the lagging replica should have fetched a state"
    assert transfers[0].seq >= 200
    lag_app = cluster.apps[lagging]
    assert lag_app.state == cluster.apps[cluster.initial[0]].state_at(lag_app.seq)
    # It fetched the state, not 200 decisions, and persisted where its log restarts.
    assert len(cluster.delivered[lagging]) < 20
    assert any(isinstance(r, StateInstalled) for r in cluster.records[lagging])
    assert any(isinstance(r, CheckpointCertificate) and r.seq >= 200 for r in cluster.records[lagging])


def test_lagging_replica_within_the_window_fetches_decisions_not_state() -> None:
    cluster = Cluster(4, config=Config(checkpoint_interval=8, window=32, view_timeout=1.0))
    cluster.commit_values(2)
    lagging = cluster.initial[2]
    cluster.isolate(lagging)
    cluster.commit_values(3)
    cluster.heal()
    cluster.commit_values(1, prefix=b"after")
    cluster.run_until(lambda: cluster.replicas[lagging].last_delivered == 6)
    cluster.assert_agreement()
    assert sorted(cluster.delivered[lagging]) == [1, 2, 3, 4, 5, 6]


def test_restart_from_durable_records_after_truncation() -> None:
    cluster = Cluster(4, config=Config(checkpoint_interval=4, window=8, view_timeout=1.0))
    cluster.commit_values(10)
    node = cluster.initial[1]
    cluster.records[node] = cluster.replicas[node].durable_records()
    assert len(cluster.records[node]) < 12
    cluster.crash(node)
    cluster.restart(node)
    restarted = cluster.replicas[node]
    assert restarted.low == 8
    cluster.commit_values(5)
    cluster.run_until(lambda: all(r.last_delivered == 15 for r in cluster.replicas.values()))
    cluster.assert_agreement()
