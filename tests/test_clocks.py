from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moeswarm.clocks import ClockOffsetError, HLCTimestamp, HybridLogicalClock, Order, VectorClock

physical = st.integers(0, 10**12)
stamps = st.builds(HLCTimestamp, physical_ms=physical, logical=st.integers(0, 1000))


def test_send_follows_physical_time() -> None:
    clock = HybridLogicalClock()
    assert clock.send(1000) == HLCTimestamp(physical_ms=1000, logical=0)
    assert clock.send(1000) == HLCTimestamp(physical_ms=1000, logical=1)
    assert clock.send(1005) == HLCTimestamp(physical_ms=1005, logical=0)


def test_clock_jumping_back_keeps_timestamps_increasing() -> None:
    clock = HybridLogicalClock()
    first = clock.send(5000)
    second = clock.send(1000)  # NTP stepped the clock back by 4 s
    assert second > first
    assert second.physical_ms == 5000


def test_receive_adopts_a_remote_clock_slightly_ahead() -> None:
    clock = HybridLogicalClock(max_offset_ms=500)
    clock.send(1000)
    merged = clock.receive(HLCTimestamp(physical_ms=1400, logical=7), 1000)
    assert merged == HLCTimestamp(physical_ms=1400, logical=8)
    assert clock.send(1001) == HLCTimestamp(physical_ms=1400, logical=9)


def test_receive_rejects_a_remote_clock_too_far_ahead() -> None:
    clock = HybridLogicalClock(max_offset_ms=500)
    before = clock.send(1000)
    with pytest.raises(ClockOffsetError) as info:
        clock.receive(HLCTimestamp(physical_ms=1501, logical=0), 1000)
    assert info.value.ahead_ms == 501
    assert clock.last == before  # nothing adopted


def test_logical_overflow_borrows_a_millisecond() -> None:
    clock = HybridLogicalClock(last=HLCTimestamp(physical_ms=10, logical=2**32 - 1))
    assert clock.send(5) == HLCTimestamp(physical_ms=11, logical=0)


events = st.lists(
    st.tuples(st.booleans(), physical, stamps),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200)
@given(events=events)
def test_hlc_is_strictly_monotonic_and_bounded(events: list[tuple[bool, int, HLCTimestamp]]) -> None:
    clock = HybridLogicalClock(max_offset_ms=500)
    previous = clock.last
    seen_physical = 0
    for is_receive, now, remote in events:
        if is_receive:
            try:
                stamp = clock.receive(remote, now)
            except ClockOffsetError:
                assert remote.physical_ms > now + 500
                assert clock.last == previous
                continue
            assert stamp > remote
            seen_physical = max(seen_physical, remote.physical_ms)
        else:
            stamp = clock.send(now)
        seen_physical = max(seen_physical, now)
        assert stamp > previous
        # The HLC never runs ahead of the largest physical time it has seen (+1 ms on overflow).
        assert stamp.physical_ms <= seen_physical + 1
        previous = stamp


@given(a=stamps, b=stamps)
def test_hlc_compare_matches_order(a: HLCTimestamp, b: HLCTimestamp) -> None:
    assert a.compare(b) == -b.compare(a)
    assert (a.compare(b) < 0) == (a < b)
    assert (a.compare(b) == 0) == (a == b)


nodes = st.sampled_from(["a", "b", "c", "d"])
vclocks = st.dictionaries(nodes, st.integers(0, 5)).map(VectorClock.of)


@given(a=vclocks, b=vclocks)
def test_merge_is_commutative(a: VectorClock, b: VectorClock) -> None:
    assert a.merge(b) == b.merge(a)


@given(a=vclocks, b=vclocks, c=vclocks)
def test_merge_is_associative(a: VectorClock, b: VectorClock, c: VectorClock) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@given(a=vclocks)
def test_merge_is_idempotent(a: VectorClock) -> None:
    assert a.merge(a) == a


@given(a=vclocks, b=vclocks)
def test_merge_dominates_both_and_compare_is_antisymmetric(a: VectorClock, b: VectorClock) -> None:
    merged = a.merge(b)
    assert merged.dominates(a)
    assert merged.dominates(b)
    flipped = {Order.BEFORE: Order.AFTER, Order.AFTER: Order.BEFORE}
    order = a.compare(b)
    assert b.compare(a) == flipped.get(order, order)
    assert (order == Order.EQUAL) == (a == b)


@given(a=vclocks, node=nodes)
def test_increment_moves_strictly_after(a: VectorClock, node: str) -> None:
    later = a.increment(node)
    assert later.compare(a) == Order.AFTER
    assert later.counter(node) == a.counter(node) + 1


def test_concurrent_updates_are_detected() -> None:
    base = VectorClock.of({"a": 1})
    left = base.increment("a")
    right = base.increment("b")
    assert left.compare(right) == Order.CONCURRENT
    assert dict(left.merge(right)) == {"a": 2, "b": 1}


def test_vector_clock_rejects_unsorted_or_zero_entries() -> None:
    with pytest.raises(ValueError, match="sorted"):
        VectorClock(entries=(("b", 1), ("a", 1)))
    with pytest.raises(ValueError, match=">= 1"):
        VectorClock(entries=(("a", 0),))
    assert VectorClock.of({"a": 0}) == VectorClock()
