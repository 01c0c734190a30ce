"""Which nodes own which experts: capacity-weighted rendezvous hashing with bounded loads.

Every node computes the placement from the member list alone, so all of them agree without talking.

Why rendezvous hashing with bounded loads, and not a plain ring: with only a few dozen experts, pure
hashing leaves per-node loads binomially spread (64 experts x 2 replicas over 8 nodes gives a max/mean
around 1.5), however many virtual nodes the ring has, because the noise comes from hashing the few
experts, not from the arc lengths. So every expert walks its own preference list of nodes and skips
nodes that already carry their bound of ``ceil``/``floor(load_factor x fair share)`` assignments
(Mirrokni, Thorup & Zadimoghaddam, "Consistent Hashing with Bounded Loads", 2018). The preference list
is the rendezvous (highest-random-weight) ranking, ``-capacity / ln(u)`` with ``u`` from blake3 of
(expert, node), which weights nodes by capacity exactly; ``method="ring"`` walks a blake3 ring with
``vnodes_per_unit x capacity`` virtual nodes instead. Measured over 300 random member sets (bench/
placement.py) rendezvous moves slightly fewer assignments on a join than the ring, so it is the default.

Replicas of one expert go to distinct nodes, and to distinct regions while regions not yet used by that
expert remain; only when the bounds or the regions make that impossible does an expert fall back to a
node in a used region, and then to the best-ranked node ignoring the load bound.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from blake3 import blake3

Method = Literal["rendezvous", "ring"]
_Ranker = Callable[[int], list[str]]

LOAD_FACTOR_DEFAULT = 1.25
VNODES_PER_UNIT_DEFAULT = 64
VNODES_PER_NODE_MAX = 4096
EXPERTS_MAX = 1 << 16


@dataclass(frozen=True, slots=True)
class Member:
    """One node as placement sees it; ``capacity`` is relative (a GPU twice as fast says 2.0)."""

    node_id: str
    region: str
    capacity: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not self.node_id:
            raise ValueError("member node_id must be a non-empty string")
        if not isinstance(self.region, str):
            raise ValueError(f"member {self.node_id!r}: region must be a string")
        if not math.isfinite(self.capacity) or self.capacity <= 0:
            raise ValueError(f"member {self.node_id!r}: capacity must be finite and > 0")


@dataclass(frozen=True, slots=True)
class LoadReport:
    """How evenly the assignments fell: per-node counts and the worst ratio to the fair share."""

    loads: Mapping[str, int]
    fair_shares: Mapping[str, float]
    max_over_mean: float
    min_over_mean: float


class Placement(Mapping[int, tuple[str, ...]]):
    """Expert id -> owner node ids (best-ranked first); read-only."""

    __slots__ = ("_by_node", "_capacity", "_owners", "replicas")

    def __init__(self, owners: Sequence[tuple[str, ...]], capacity: Mapping[str, float], replicas: int):
        self._owners = tuple(owners)
        self._capacity = dict(capacity)
        self.replicas = replicas
        by_node: dict[str, list[int]] = {node: [] for node in self._capacity}
        for expert, nodes in enumerate(self._owners):
            for node in nodes:
                by_node[node].append(expert)
        self._by_node = {node: tuple(experts) for node, experts in by_node.items()}

    def __getitem__(self, expert: int) -> tuple[str, ...]:
        if not isinstance(expert, int) or not 0 <= expert < len(self._owners):
            raise KeyError(expert)
        return self._owners[expert]

    def __iter__(self) -> Iterator[int]:
        return iter(range(len(self._owners)))

    def __len__(self) -> int:
        return len(self._owners)

    def __repr__(self) -> str:
        return (
            f"Placement(experts={len(self._owners)}, nodes={len(self._capacity)}, replicas={self.replicas})"
        )

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(sorted(self._capacity))

    def owners(self, expert: int) -> tuple[str, ...]:
        return self[expert]

    def experts_of(self, node_id: str) -> tuple[int, ...]:
        """The experts ``node_id`` trains, ascending; empty for a node that is not a member."""
        return self._by_node.get(node_id, ())

    def assignments(self) -> frozenset[tuple[int, str]]:
        return frozenset((expert, node) for expert, nodes in enumerate(self._owners) for node in nodes)

    def load_report(self) -> LoadReport:
        """Loads against capacity-weighted fair shares, so a 2x node at 2x the load counts as even."""
        total = sum(len(nodes) for nodes in self._owners)
        capacity_sum = sum(self._capacity.values())
        shares = {node: total * cap / capacity_sum for node, cap in self._capacity.items()}
        loads = {node: len(self._by_node[node]) for node in self._capacity}
        ratios = [loads[node] / shares[node] for node in shares] if total else [1.0]
        return LoadReport(
            loads=loads, fair_shares=shares, max_over_mean=max(ratios), min_over_mean=min(ratios)
        )


def moved_fraction(before: Placement, after: Placement) -> float:
    """Share of (expert, node) assignments that differ; what a membership change costs in transfers."""
    old, new = before.assignments(), after.assignments()
    size = max(len(old), len(new))
    return 0.0 if size == 0 else (size - len(old & new)) / size


def place(
    num_experts: int,
    members: Sequence[Member],
    replicas: int,
    vnodes_per_unit: int = VNODES_PER_UNIT_DEFAULT,
    *,
    load_factor: float = LOAD_FACTOR_DEFAULT,
    method: Method = "rendezvous",
) -> Placement:
    """Assign ``replicas`` owners to each of ``num_experts`` experts; ``replicas`` is capped at the node count.

    The result depends on the set of members only, not on their order.
    """
    if not 0 <= num_experts <= EXPERTS_MAX:
        raise ValueError(f"num_experts must be in [0, {EXPERTS_MAX}], got {num_experts}")
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    if not members:
        raise ValueError("placement needs at least one member")
    if not load_factor >= 1.0:
        raise ValueError(f"load_factor must be >= 1, got {load_factor}")
    ordered = sorted(members, key=lambda m: m.node_id)
    for left, right in itertools.pairwise(ordered):
        if left.node_id == right.node_id:
            raise ValueError(f"duplicate member {left.node_id!r}")
    replicas = min(replicas, len(ordered))
    bounds = _load_bounds(ordered, num_experts * replicas, load_factor)
    if method == "rendezvous":
        rank = _rendezvous_ranker(ordered)
    elif method == "ring":
        rank = _ring_ranker(ordered, vnodes_per_unit)
    else:
        raise ValueError(f"unknown placement method {method!r}")
    region_of = {m.node_id: m.region for m in ordered}
    regions_wanted = min(replicas, len(set(region_of.values())))
    rooms = dict(bounds)
    owners = []
    for expert in range(num_experts):
        chosen = _choose(rank(expert), replicas, regions_wanted, region_of, rooms, num_experts - expert)
        for node in chosen:
            rooms[node] -= 1
        owners.append(chosen)
    return Placement(owners, {m.node_id: m.capacity for m in ordered}, replicas)


def _load_bounds(members: Sequence[Member], total: int, load_factor: float) -> dict[str, int]:
    """At most ``load_factor`` x fair share, but never below the share rounded up, so bounds sum >= total."""
    capacity_sum = sum(m.capacity for m in members)
    bounds = {}
    for m in members:
        share = total * m.capacity / capacity_sum
        bounds[m.node_id] = max(1, math.ceil(share - 1e-9), math.floor(load_factor * share + 1e-9))
    return bounds


def _choose(
    ranking: Sequence[str],
    replicas: int,
    regions_wanted: int,
    region_of: Mapping[str, str],
    rooms: Mapping[str, int],
    experts_left: int,
) -> tuple[str, ...]:
    """First pass: room left, a new region, and the later experts still fit; then without the region;
    then anything distinct (only when capacity skew makes the bounds impossible to meet)."""
    chosen: list[str] = []
    used_regions: set[str] = set()
    for stage in range(3):
        for node in ranking:
            if len(chosen) == replicas:
                return tuple(chosen)
            if node in chosen:
                continue
            if stage < 2 and not _fits(rooms, [*chosen, node], replicas, experts_left):
                continue
            if stage == 0 and len(used_regions) < regions_wanted and region_of[node] in used_regions:
                continue
            chosen.append(node)
            used_regions.add(region_of[node])
    return tuple(chosen)


def _fits(rooms: Mapping[str, int], chosen: Sequence[str], replicas: int, experts_left: int) -> bool:
    """Whether the current expert can finish with ``chosen`` and every later expert still find room.

    ``m`` experts needing R distinct nodes each fit into rooms r_i iff sum(min(r_i, m)) >= m * R (a 0/1
    matrix with equal row sums, Gale-Ryser). Without this check the last experts of a tight placement can
    find only nodes they already use under the bound, and one node then has to go over it.
    """
    if rooms[chosen[-1]] <= 0:
        return False
    later = experts_left - 1
    taken = set(chosen)
    capacity_later = 0
    free_picks = 0
    costly_picks = 0
    for node, room in rooms.items():
        room_after = room - 1 if node in taken else room
        capacity_later += min(room_after, later)
        if node not in taken and room_after > 0:
            if room_after > later:
                free_picks += 1
            else:
                costly_picks += 1
    still_needed = replicas - len(chosen)
    if free_picks + costly_picks < still_needed:
        return False
    return capacity_later - max(0, still_needed - free_picks) >= later * replicas


def _hash64(*parts: bytes) -> int:
    """blake3 over length-prefixed parts, so ("ab","c") and ("a","bc") never collide."""
    hasher = blake3()
    for part in parts:
        hasher.update(len(part).to_bytes(4, "big"))
        hasher.update(part)
    return int.from_bytes(hasher.digest(length=8), "big")


def _rendezvous_ranker(members: Sequence[Member]) -> _Ranker:
    keys = [(m.node_id, m.node_id.encode(), m.capacity) for m in members]

    def rank(expert: int) -> list[str]:
        tag = expert.to_bytes(4, "big")
        scored = []
        for node_id, node_key, capacity in keys:
            unit = (_hash64(b"expert", tag, node_key) + 0.5) / 2.0**64
            scored.append((-capacity / math.log(unit), node_id))
        scored.sort(key=lambda item: (-item[0], item[1]))
        return [node_id for _, node_id in scored]

    return rank


def _ring_ranker(members: Sequence[Member], vnodes_per_unit: int) -> _Ranker:
    if vnodes_per_unit < 1:
        raise ValueError(f"vnodes_per_unit must be >= 1, got {vnodes_per_unit}")
    points = []
    for m in members:
        count = min(VNODES_PER_NODE_MAX, max(1, round(vnodes_per_unit * m.capacity)))
        for index in range(count):
            points.append((_hash64(b"vnode", m.node_id.encode(), index.to_bytes(4, "big")), m.node_id))
    points.sort()
    positions = [position for position, _ in points]
    distinct = len(members)

    def rank(expert: int) -> list[str]:
        start = bisect.bisect_right(positions, _hash64(b"expert", expert.to_bytes(4, "big")))
        order: list[str] = []
        seen: set[str] = set()
        for step in range(len(points)):
            node_id = points[(start + step) % len(points)][1]
            if node_id not in seen:
                seen.add(node_id)
                order.append(node_id)
                if len(order) == distinct:
                    break
        return order

    return rank
