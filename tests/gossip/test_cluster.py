"""Whole groups in the deterministic simulator: joins, crash detection, rumors and state under loss."""

from __future__ import annotations

import pytest

from moeswarm import wire
from moeswarm.clocks import VectorClock
from moeswarm.gossip import (
    Alive,
    Dead,
    Delivered,
    GossipConfig,
    Joined,
    Priority,
    StateChanged,
    Status,
    Suspect,
)
from moeswarm.gossip.messages import (
    UPDATES_PER_MESSAGE_MAX,
    Ack,
    Entry,
    MemberUpdate,
    Ping,
    Push,
    Rumor,
    StateDeltas,
    StateDigest,
)
from tests.gossip.sim import Cluster, Network, node_ids


def test_nodes_join_through_one_seed() -> None:
    cluster = Cluster(10, seed=2, joined=False)
    cluster.run_until(30.0)
    for node in cluster.nodes.values():
        assert node.alive() == sorted(cluster.ids)
    assert len(cluster.events(Joined)) == 10 * 9


def test_a_crash_is_detected_by_everyone_and_nobody_else_is_accused() -> None:
    cluster = Cluster(8, seed=4)
    cluster.run_until(10.0)
    victim = cluster.ids[5]
    cluster.crash(victim)
    cluster.run_until(60.0)
    live = set(cluster.ids) - {victim}
    assert {o.node for o in cluster.events(Dead, victim)} == live
    assert all(o.time - 10.0 < 30.0 for o in cluster.events(Dead, victim))
    assert not [o for o in cluster.events(Dead) if getattr(o.effect, "node", None) != victim]
    assert not [o for o in cluster.events(Suspect) if getattr(o.effect, "node", None) != victim]
    for node_id in live:
        assert cluster.nodes[node_id].members()[victim].status is Status.DEAD


def test_a_node_declared_dead_refutes_when_it_comes_back() -> None:
    cluster = Cluster(8, seed=11)
    cluster.run_until(5.0)
    paused = cluster.ids[4]
    cluster.crash(paused)
    cluster.run_until(40.0)
    assert {o.node for o in cluster.events(Dead, paused)} == set(cluster.ids) - {paused}
    cluster.restore(paused)
    cluster.run_until(80.0)
    for node_id, node in cluster.nodes.items():
        assert node.members()[paused].status is Status.ALIVE, node_id
    assert cluster.nodes[paused].membership.incarnation >= 1
    assert {o.node for o in cluster.events(Alive, paused)} == set(cluster.ids) - {paused}


@pytest.mark.parametrize("priority", [Priority.TELEMETRY, Priority.CRITICAL])
def test_rumors_reach_everyone_once_under_loss(priority: Priority) -> None:
    cluster = Cluster(20, seed=5, network=Network(loss=0.05))
    cluster.run_until(5.0)
    origin = cluster.nodes[cluster.ids[0]]
    rumor = origin.broadcast(b"round 12 delta from node 0", priority, cluster.now)
    cluster.run_until(15.0)
    delivered = [o.node for o in cluster.events(Delivered) if getattr(o.effect, "rumor", None) == rumor]
    assert sorted(delivered) == sorted(cluster.ids[1:])


def test_state_reaches_every_node_through_anti_entropy() -> None:
    cluster = Cluster(12, seed=6, network=Network(loss=0.05))
    cluster.run_until(2.0)
    owner = cluster.ids[3]
    cluster.nodes[owner].set_local("committed_round", b"41", cluster.now)
    cluster.nodes[owner].set_local("committed_round", b"42", cluster.now)
    cluster.run_until(20.0)
    for node_id, node in cluster.nodes.items():
        assert node.get(owner, "committed_round") == b"42", node_id
    changed = [o for o in cluster.events(StateChanged) if getattr(o.effect, "origin", None) == owner]
    assert {o.node for o in changed} == set(cluster.ids) - {owner}


def test_a_run_replays_exactly_from_its_seed() -> None:
    def trace(seed: int) -> list[tuple[float, str, object]]:
        cluster = Cluster(6, seed=seed, network=Network(loss=0.1))
        cluster.run_until(5.0)
        cluster.crash(cluster.ids[2])
        cluster.run_until(30.0)
        return [(o.time, o.node, o.effect) for o in cluster.log]

    assert trace(9) == trace(9)
    assert trace(9) != trace(10)


def test_adaptive_fanout_reaches_more_peers_for_critical_rumors() -> None:
    cluster = Cluster(12, seed=7)
    cluster.run_until(5.0)
    node = cluster.nodes[cluster.ids[0]]
    node.membership.updates.select(10_000)
    while len(node.membership.updates):
        node.membership.updates.select(10_000)
    node.broadcast(b"t", Priority.TELEMETRY, cluster.now)
    pushes = [
        e for e in node.on_tick(node.next_deadline() + 0.3) if isinstance(getattr(e, "msg", None), Push)
    ]
    telemetry_fanout = node.config.fanout(Priority.TELEMETRY, node.loss_estimate())
    node.broadcast(b"c", Priority.CRITICAL, cluster.now)
    critical = [
        e for e in node.on_tick(node.next_deadline() + 0.3) if isinstance(getattr(e, "msg", None), Push)
    ]
    critical_fanout = node.config.fanout(Priority.CRITICAL, node.loss_estimate())
    assert len(pushes) == telemetry_fanout
    assert len(critical) == critical_fanout > len(pushes)


def test_messages_round_trip_through_the_wire_and_bounds_hold() -> None:
    a, b = node_ids(2, seed=1)
    update = MemberUpdate(node=a, incarnation=3, status=Status.SUSPECT, origin=b)
    samples = [
        Ping(seq=1, target=a, updates=(update,)),
        Ack(seq=1),
        Push(
            updates=(update,), rumors=(Rumor(origin=a, number=1, priority=Priority.CRITICAL, payload=b"x"),)
        ),
        StateDigest(versions=VectorClock.of({a: 4})),
        StateDeltas(
            entries=(Entry(origin=a, key="load", version=4, value=b"0.5"),), versions=VectorClock.of({})
        ),
    ]
    for msg in samples:
        assert wire.decode(wire.encode(msg)) == msg
    with pytest.raises(wire.WireError):
        wire.encode(Ack(seq=1, updates=(update,) * (UPDATES_PER_MESSAGE_MAX + 1)))
    with pytest.raises(wire.WireError):
        wire.encode(Ping(seq=1, target="not-a-node-id"))


def test_plain_swim_config_runs_the_same_protocol() -> None:
    cluster = Cluster(8, seed=8, config=GossipConfig(lifeguard=False))
    cluster.run_until(5.0)
    cluster.crash(cluster.ids[1])
    cluster.run_until(40.0)
    assert {o.node for o in cluster.events(Dead, cluster.ids[1])} == set(cluster.ids) - {cluster.ids[1]}
