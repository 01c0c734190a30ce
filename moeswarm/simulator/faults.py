"""What can go wrong in one schedule, drawn from its seed.

A plan says where every replica runs, how lossy the links are, when partitions start and heal, which
honest replicas crash and restart, and how each Byzantine replica misbehaves. All faults happen in the
fault phase; then the network heals (partitions end; loss, duplication and reordering stop, jitter
stays) while the Byzantine replicas keep misbehaving.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from moeswarm.simulator.network import REGIONS, LinkFaults

NETWORK_FAULTS = ("loss", "duplicate", "reorder", "partition")
NODE_FAULTS = ("crash", "reconfigure")
BYZANTINE_FAULTS = ("equivocate", "forge", "replay", "stale", "silent", "invalid", "twins")
ALL_FAULTS = NETWORK_FAULTS + NODE_FAULTS + BYZANTINE_FAULTS
PARTITIONS_MAX = 2
CRASHES_MAX = 2


@dataclass(frozen=True, slots=True)
class Partition:
    start_s: float
    end_s: float
    groups: tuple[int, ...]  # node index -> group


@dataclass(frozen=True, slots=True)
class Crash:
    node: int
    at_s: float
    restart_s: float


@dataclass(frozen=True, slots=True)
class Plan:
    regions: tuple[str, ...]  # one per node index, spares included
    link: LinkFaults
    fault_end_s: float
    partitions: tuple[Partition, ...] = ()
    crashes: tuple[Crash, ...] = ()
    byzantine: dict[int, tuple[str, ...]] = field(default_factory=dict)  # node index -> behaviours
    pending_probability: float = 0.0  # share of values a replica cannot validate at once
    reconfigure_at_s: float | None = None  # add a spare replica, and later remove one

    def describe(self) -> str:
        parts = [f"fault phase {self.fault_end_s:.1f}s", f"regions {','.join(self.regions)}"]
        link = self.link
        parts.append(f"loss {link.loss:.3f} dup {link.duplicate:.3f} reorder {link.reorder:.3f}")
        parts.extend(f"partition {p.start_s:.1f}-{p.end_s:.1f}s {p.groups}" for p in self.partitions)
        parts.extend(f"crash n{c.node} {c.at_s:.1f}-{c.restart_s:.1f}s" for c in self.crashes)
        parts.extend(f"byzantine n{i}: {'+'.join(b)}" for i, b in sorted(self.byzantine.items()))
        if self.reconfigure_at_s is not None:
            parts.append(f"reconfigure at {self.reconfigure_at_s:.1f}s")
        return "; ".join(parts)


def draw_plan(
    rng: random.Random, nodes: int, byzantine: int, faults: frozenset[str], fault_phase_s: float
) -> Plan:
    """Draw one schedule's faults. Byzantine replicas are chosen among the initial members."""
    spares = 1 if "reconfigure" in faults else 0
    regions = tuple(rng.choice(REGIONS) for _ in range(nodes + spares))
    fault_end = fault_phase_s * (0.5 + rng.random())
    link = LinkFaults(
        loss=rng.uniform(0.0, 0.05) if "loss" in faults else 0.0,
        duplicate=rng.uniform(0.0, 0.05) if "duplicate" in faults else 0.0,
        reorder=rng.uniform(0.0, 0.2) if "reorder" in faults else 0.0,
    )
    bad = sorted(rng.sample(range(nodes), byzantine))
    honest = [i for i in range(nodes) if i not in bad]
    behaviours = [b for b in BYZANTINE_FAULTS if b in faults]
    byz: dict[int, tuple[str, ...]] = {}
    for index in bad:
        if behaviours:
            chosen = rng.sample(behaviours, rng.randint(1, min(3, len(behaviours))))
            if "twins" in chosen:  # a twin runs honest code twice: no other behaviour mixed in
                chosen = ["twins"]
            byz[index] = tuple(sorted(chosen))
        else:
            byz[index] = ("silent",)
    partitions = []
    if "partition" in faults:
        for _ in range(rng.randint(0, PARTITIONS_MAX)):
            start = rng.uniform(0.0, fault_end)
            groups = tuple(rng.randint(0, 1) for _ in range(nodes + spares))
            partitions.append(Partition(start, rng.uniform(start, fault_end), groups))
    crashes = []
    if "crash" in faults and honest:
        for _ in range(rng.randint(0, CRASHES_MAX)):
            at = rng.uniform(0.0, fault_end)
            crashes.append(Crash(rng.choice(honest), at, rng.uniform(at, fault_end)))
    return Plan(
        regions=regions,
        link=link,
        fault_end_s=fault_end,
        partitions=tuple(partitions),
        crashes=tuple(crashes),
        byzantine=byz,
        pending_probability=rng.uniform(0.0, 0.3),
        reconfigure_at_s=rng.uniform(0.0, fault_end) if spares else None,
    )
