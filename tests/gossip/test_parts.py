"""The small pieces: suspicion timer, local health, the broadcast queue, fan-out and the log-n formulas."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from moeswarm.gossip.awareness import Awareness
from moeswarm.gossip.broadcast import BroadcastQueue
from moeswarm.gossip.config import GossipConfig
from moeswarm.gossip.messages import Priority
from moeswarm.gossip.suspicion import Suspicion


def test_suspicion_shrinks_from_max_to_min_with_independent_confirmations() -> None:
    s = Suspicion(started=10.0, low_s=4.0, high_s=24.0, expected=2, accuser="a")
    assert s.deadline() == 34.0
    assert not s.confirm("a")
    assert s.confirm("b")
    middle = s.timeout_s()
    assert 4.0 < middle < 24.0
    assert not s.confirm("b")
    assert s.confirm("c")
    assert s.timeout_s() == 4.0
    assert not s.confirm("d")  # beyond the expected count nothing changes
    assert s.deadline() == 14.0


def test_suspicion_without_expected_confirmations_uses_the_minimum() -> None:
    assert Suspicion(started=0.0, low_s=3.0, high_s=9.0, expected=0, accuser="a").deadline() == 3.0


def test_awareness_is_bounded_and_scales_timeouts() -> None:
    health = Awareness(score_max=4)
    for _ in range(10):
        health.apply(1)
    assert health.score == 3
    assert health.scale(0.5) == 2.0
    health.apply(-10)
    assert health.scale(0.5) == 0.5
    disabled = Awareness(score_max=4, enabled=False)
    disabled.apply(3)
    assert disabled.scale(1.0) == 1.0


def test_queue_sends_urgent_and_fresh_items_first_and_retires_them() -> None:
    queue: BroadcastQueue[str] = BroadcastQueue(items_max=10)
    queue.push("t", "telemetry", Priority.TELEMETRY, limit=5)
    queue.push("c", "critical", Priority.CRITICAL, limit=2)
    queue.push("n", "normal", Priority.NORMAL, limit=5)
    assert queue.select(2) == ["critical", "normal"]
    assert queue.select(2) == ["critical", "normal"]
    assert queue.select(3) == ["normal", "telemetry"]  # critical reached its limit of 2
    queue.push("n", "newer normal", Priority.NORMAL, limit=1)
    assert queue.select(5) == ["newer normal", "telemetry"]
    assert queue.select(5) == ["telemetry"]
    assert len(queue) == 1


def test_full_queue_drops_the_least_important_item() -> None:
    queue: BroadcastQueue[str] = BroadcastQueue(items_max=2)
    queue.push("a", "a", Priority.CRITICAL, limit=9)
    queue.push("b", "b", Priority.TELEMETRY, limit=9)
    queue.push("c", "c", Priority.NORMAL, limit=9)
    assert sorted(queue.select(5)) == ["a", "c"]


def test_eligibility_filter_limits_what_a_slot_carries() -> None:
    queue: BroadcastQueue[str] = BroadcastQueue(items_max=10)
    queue.push("t", "telemetry", Priority.TELEMETRY, limit=5)
    queue.push("c", "critical", Priority.CRITICAL, limit=5)
    assert queue.select(5, lambda item: item.priority >= Priority.CRITICAL) == ["critical"]


@given(loss=st.floats(0.0, 0.9), priority=st.sampled_from(list(Priority)))
def test_fanout_grows_with_priority_and_loss_within_bounds(loss: float, priority: Priority) -> None:
    config = GossipConfig()
    fanout = config.fanout(priority, loss)
    assert config.fanout_min <= fanout <= config.fanout_max
    assert fanout >= config.fanout(priority, max(0.0, loss - 0.2))
    if priority > Priority.TELEMETRY:
        assert fanout >= config.fanout(Priority(priority - 1), loss)


def test_fanout_keeps_expected_deliveries_under_loss() -> None:
    config = GossipConfig()
    assert config.fanout(Priority.NORMAL, 0.0) == 3
    assert config.fanout(Priority.NORMAL, 0.25) == 4
    assert config.fanout(Priority.CRITICAL, 0.05) == 6
    assert config.fanout(Priority.CRITICAL, 0.9) == config.fanout_max


def test_timeouts_and_retransmissions_grow_with_log_n() -> None:
    config = GossipConfig()
    lows = [config.suspicion_timeouts(n)[0] for n in (8, 32, 128, 1024)]
    assert lows == sorted(lows)
    assert lows[-1] < 4 * lows[0]
    low, high = config.suspicion_timeouts(32)
    assert high == pytest.approx(low * config.suspicion_max_mult)
    assert GossipConfig(lifeguard=False).suspicion_timeouts(32) == (low, low)
    limits = [config.retransmit_limit(n) for n in (8, 128, 1024)]
    assert limits == sorted(limits)
    assert limits[0] < limits[-1]
    assert config.retransmit_limit(64, Priority.TELEMETRY) < config.retransmit_limit(64, Priority.CRITICAL)


@pytest.mark.parametrize(
    "kwargs",
    [{"probe_timeout_s": 2.0}, {"fanout_min": 4}, {"push_interval_s": 0.0}, {"awareness_max": 0}],
)
def test_bad_config_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"need|must"):
        GossipConfig(**kwargs)  # type: ignore[arg-type]
