"""Gossip tunables and the formulas that scale them with the group size."""

from __future__ import annotations

import math
from collections.abc import MutableSequence, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from moeswarm.gossip.messages import Priority

T = TypeVar("T")


class Rng(Protocol):
    """What the cores draw from: a ``random.Random(seed)`` injected by the driver, never imported here."""

    def shuffle(self, x: MutableSequence[Any]) -> None: ...

    def sample(self, population: Sequence[T], k: int) -> list[T]: ...

    def randint(self, a: int, b: int) -> int: ...

    def choice(self, seq: Sequence[T]) -> T: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class GossipConfig:
    """Defaults follow memberlist's LAN profile, scaled down for a swarm of tens of nodes.

    ``lifeguard`` switches on all three Lifeguard mechanisms (Dadgar et al. 2018): the local-health
    multiplier on probe timing, suspicion timeouts that shrink with independent confirmations, and
    nacks from indirect-probe helpers. Off, it is plain SWIM with a fixed suspicion timeout.
    """

    probe_interval_s: float = 1.0
    probe_timeout_s: float = 0.5
    indirect_probes: int = 3
    suspicion_mult: float = 4.0
    suspicion_max_mult: float = 6.0
    retransmit_mult: float = 4.0
    awareness_max: int = 8
    lifeguard: bool = True
    push_interval_s: float = 0.2
    fanout_min: int = 1
    fanout_max: int = 8
    fanout_base: tuple[int, int, int] = (2, 3, 5)  # by Priority: telemetry, normal, critical
    member_sync_interval_s: float = 10.0
    state_sync_interval_s: float = 1.0
    updates_per_message: int = 16
    rumors_per_message: int = 8
    queue_items_max: int = 1024
    deltas_bytes_max: int = 64 * 1024
    keys_per_node_max: int = 64
    seen_rumors_max: int = 4096
    loss_ewma_weight: float = 0.05
    loss_estimate_max: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.probe_timeout_s < self.probe_interval_s:
            raise ValueError("need 0 < probe_timeout_s < probe_interval_s")
        if self.indirect_probes < 0 or self.awareness_max < 1:
            raise ValueError("indirect_probes must be >= 0 and awareness_max >= 1")
        if not 1 <= self.fanout_min <= min(self.fanout_base) <= max(self.fanout_base) <= self.fanout_max:
            raise ValueError("need 1 <= fanout_min <= fanout_base <= fanout_max")
        if min(self.push_interval_s, self.member_sync_interval_s, self.state_sync_interval_s) <= 0:
            raise ValueError("intervals must be positive")
        if not 0 <= self.loss_estimate_max < 1:
            raise ValueError("loss_estimate_max must be in [0, 1)")

    def suspicion_timeouts(self, members: int) -> tuple[float, float]:
        """(min, max) seconds: ``suspicion_mult x log10(n) x probe interval``, as in memberlist, so the
        time to learn of a failure grows with log n like the dissemination time does."""
        low = self.suspicion_mult * max(1.0, math.log10(max(1, members))) * self.probe_interval_s
        return low, low * self.suspicion_max_mult if self.lifeguard else low

    def retransmit_limit(self, members: int, priority: Priority = Priority.CRITICAL) -> int:
        """How many times a piggy-backed update is sent: lambda x log n, more for higher priorities."""
        base = self.retransmit_mult * math.ceil(math.log10(members + 1))
        return max(1, math.ceil(base * (1 + int(priority)) / 2))

    def fanout(self, priority: Priority, loss: float) -> int:
        """Peers per push round: the priority's base, divided by the delivery rate so that the expected
        number of copies that arrive stays the same as loss grows; clamped to the configured bounds."""
        delivered = 1.0 - min(max(loss, 0.0), self.loss_estimate_max)
        wanted = math.ceil(self.fanout_base[int(priority)] / delivered - 1e-9)
        return min(self.fanout_max, max(self.fanout_min, wanted))
