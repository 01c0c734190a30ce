"""The simulated network: per-link latency from a region matrix, jitter, loss, duplication,
reordering and partitions. Every draw comes from the simulation's one seeded RNG.

Round-trip times between regions are typical public-cloud figures (milliseconds); one-way delay is
half the RTT plus jitter. Reordering is an occasional extra delay, so later messages overtake.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

REGIONS = ("iad", "ord", "sjc", "ams", "syd")
# Round-trip times in ms, symmetric; the diagonal is a same-region hop.
RTT_MS: dict[tuple[str, str], float] = {}
_RTT_TABLE = {
    ("iad", "iad"): 1.0,
    ("iad", "ord"): 20.0,
    ("iad", "sjc"): 62.0,
    ("iad", "ams"): 81.0,
    ("iad", "syd"): 198.0,
    ("ord", "ord"): 1.0,
    ("ord", "sjc"): 46.0,
    ("ord", "ams"): 97.0,
    ("ord", "syd"): 186.0,
    ("sjc", "sjc"): 1.0,
    ("sjc", "ams"): 141.0,
    ("sjc", "syd"): 152.0,
    ("ams", "ams"): 1.0,
    ("ams", "syd"): 276.0,
    ("syd", "syd"): 1.0,
}
for (_a, _b), _rtt in _RTT_TABLE.items():
    RTT_MS[(_a, _b)] = RTT_MS[(_b, _a)] = _rtt


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """Probabilities per message, and the size of jitter and reordering delays."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    jitter_fraction: float = 0.1  # up to this fraction of the one-way delay, uniformly
    reorder_delay_s_max: float = 0.3


class Network:
    """Decides, for each message sent, when (if ever) each copy arrives."""

    def __init__(self, rng: random.Random, regions: list[str], faults: LinkFaults) -> None:
        self.rng = rng
        self.regions = regions  # node index -> region
        self.faults = faults
        self.groups: list[int] = [0] * len(regions)  # partition group per node index

    def partition(self, groups: list[int]) -> None:
        self.groups = list(groups)

    def heal(self) -> None:
        self.groups = [0] * len(self.regions)

    def calm(self) -> None:
        """After the fault phase: no more loss, duplication or reordering (latency and jitter stay)."""
        self.faults = LinkFaults(jitter_fraction=self.faults.jitter_fraction)

    def connected(self, a: int, b: int) -> bool:
        return self.groups[a] == self.groups[b]

    def one_way_s(self, a: int, b: int) -> float:
        base = RTT_MS[(self.regions[a], self.regions[b])] / 2000.0
        return base * (1.0 + self.rng.random() * self.faults.jitter_fraction)

    def delays(self, a: int, b: int) -> list[float]:
        """Delays of the copies of one message from node a to node b (empty: lost or cut off)."""
        if not self.connected(a, b):
            return []
        f = self.faults
        rng = self.rng
        if f.loss and rng.random() < f.loss:
            return []
        copies = 2 if f.duplicate and rng.random() < f.duplicate else 1
        out = []
        for _ in range(copies):
            delay = self.one_way_s(a, b)
            if f.reorder and rng.random() < f.reorder:
                delay += rng.random() * f.reorder_delay_s_max
            out.append(delay)
        return out
