"""Scuttlebutt: digests, bounded deltas, and convergence under any order of partial exchanges."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moeswarm.clocks import VectorClock
from moeswarm.gossip.config import GossipConfig
from moeswarm.gossip.effects import StateChanged
from moeswarm.gossip.scuttlebutt import Scuttlebutt
from tests.gossip.sim import node_ids

IDS = node_ids(4, seed=3)


def store(node: str, **overrides: int) -> Scuttlebutt:
    return Scuttlebutt(node, GossipConfig(**overrides))  # type: ignore[arg-type]


def exchange(a: Scuttlebutt, b: Scuttlebutt) -> None:
    """digest a->b, deltas+digest b->a, deltas a->b: the paper's three messages."""
    b_to_a = b.deltas_for(a.digest())
    a.apply(b_to_a)
    b.apply(a.deltas_for(b.digest()))


def test_local_updates_are_versioned_and_reach_a_peer() -> None:
    a, b = store(IDS[0]), store(IDS[1])
    a.set_local("region", b"eu")
    a.set_local("load", b"0.3")
    a.set_local("region", b"us")
    assert a.digest() == VectorClock.of({IDS[0]: 3})
    changes = b.apply(a.deltas_for(b.digest()))
    assert {(c.key, c.value, c.version) for c in changes} == {("load", b"0.3", 2), ("region", b"us", 3)}
    assert b.get(IDS[0], "region") == b"us"
    assert b.deltas_for(a.digest()) == ()
    assert a.deltas_for(b.digest()) == ()


def test_old_and_repeated_entries_change_nothing() -> None:
    a, b = store(IDS[0]), store(IDS[1])
    a.set_local("k", b"1")
    first = a.deltas_for(b.digest())
    a.set_local("k", b"2")
    b.apply(a.deltas_for(b.digest()))
    assert b.apply(first) == []
    assert b.get(IDS[0], "k") == b"2"


def test_a_bounded_reply_is_a_version_prefix_and_the_rest_follows() -> None:
    a, b = store(IDS[0], deltas_bytes_max=400), store(IDS[1], deltas_bytes_max=400)
    for i in range(20):
        a.set_local(f"key{i}", bytes(50))
    first = a.deltas_for(b.digest())
    assert 0 < len(first) < 20
    assert [e.version for e in first] == list(range(1, len(first) + 1))
    rounds = 0
    while a.deltas_for(b.digest()):
        b.apply(a.deltas_for(b.digest()))
        rounds += 1
    assert rounds > 1
    assert all(b.get(IDS[0], f"key{i}") == bytes(50) for i in range(20))


def test_keys_and_values_are_bounded() -> None:
    a = store(IDS[0], keys_per_node_max=2)
    a.set_local("a", b"")
    a.set_local("b", b"")
    with pytest.raises(ValueError, match="at most 2"):
        a.set_local("c", b"")
    with pytest.raises(ValueError, match="keys"):
        a.set_local("", b"")
    with pytest.raises(ValueError, match="values"):
        a.set_local("a", bytes(5000))
    b = store(IDS[1], keys_per_node_max=2)
    c = store(IDS[2])
    for key in "xyz":
        c.set_local(key, b"v")
    assert len(b.apply(c.deltas_for(b.digest()))) == 2  # the third key of one origin is refused


def test_our_own_keys_never_come_back_from_a_peer() -> None:
    a, b = store(IDS[0]), store(IDS[1])
    a.set_local("k", b"mine")
    b.apply(a.deltas_for(b.digest()))
    assert a.apply(b.deltas_for(VectorClock.of({}))) == []
    assert a.get(IDS[0], "k") == b"mine"


operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("set"), st.integers(0, 3), st.sampled_from(["a", "b", "c"]), st.binary(max_size=40)
        ),
        st.tuples(st.just("sync"), st.integers(0, 3), st.integers(0, 3), st.integers(150, 2000)),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(ops=operations)
def test_any_interleaving_converges_after_enough_exchanges(ops: list[tuple[object, ...]]) -> None:
    nodes = [store(node, deltas_bytes_max=1000) for node in IDS]
    latest: dict[tuple[str, str], bytes] = {}
    for op in ops:
        if op[0] == "set":
            _, who, key, value = op
            assert isinstance(who, int)
            assert isinstance(key, str)
            assert isinstance(value, bytes)
            nodes[who].set_local(key, value)
            latest[(IDS[who], key)] = value
        else:
            _, x, y, budget = op
            assert isinstance(x, int)
            assert isinstance(y, int)
            assert isinstance(budget, int)
            if x != y:
                nodes[y].config = GossipConfig(deltas_bytes_max=budget)
                exchange(nodes[x], nodes[y])
    for _ in range(40):
        for x in range(4):
            exchange(nodes[x], nodes[(x + 1) % 4])
    for node in nodes:
        assert node.digest() == nodes[0].digest()
        for (origin, key), value in latest.items():
            assert node.get(origin, key) == value


def test_changes_are_reported_as_events() -> None:
    a, b = store(IDS[0]), store(IDS[1])
    a.set_local("round", b"7")
    assert b.apply(a.deltas_for(b.digest())) == [StateChanged(IDS[0], "round", b"7", 1)]
