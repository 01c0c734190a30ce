"""Hybrid logical clocks and vector clocks (pure: physical time is always passed in).

The hybrid logical clock (Kulkarni, Demirbas et al., 2014) stamps every message with
``(physical_ms, logical)``: it stays close to the wall clock, never runs backwards even when the
machine's clock jumps back, and orders causally related events. A remote stamp more than
``max_offset_ms`` ahead of our own physical clock is refused rather than adopted, so one peer with a
wild clock cannot drag everybody's clock into the future (CockroachDB uses the same 500 ms default).

The vector clock (one counter per node) answers the question the HLC cannot: were two events
causally ordered or concurrent. Gossip uses it as a version vector.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated

from moeswarm.wire import Limit, message

__all__ = [
    "MAX_OFFSET_MS_DEFAULT",
    "ClockOffsetError",
    "HLCTimestamp",
    "HybridLogicalClock",
    "Order",
    "VectorClock",
]

MAX_OFFSET_MS_DEFAULT = 500
LOGICAL_MAX = 2**32 - 1
PHYSICAL_MS_MAX = 2**53
VECTOR_NODES_MAX = 4096
NODE_ID_LEN_MAX = 128


class ClockOffsetError(ValueError):
    """A remote timestamp is further ahead of our physical clock than the allowed offset."""

    def __init__(self, remote_ms: int, now_ms: int, max_offset_ms: int) -> None:
        super().__init__(f"remote clock is {remote_ms - now_ms} ms ahead of ours (limit {max_offset_ms} ms)")
        self.ahead_ms = remote_ms - now_ms
        self.max_offset_ms = max_offset_ms


@message("clock.hlc", max_bytes=64)
@dataclass(frozen=True, slots=True, kw_only=True, order=True)
class HLCTimestamp:
    """A hybrid logical timestamp; ordering is by ``(physical_ms, logical)``."""

    physical_ms: Annotated[int, Limit(min=0, max=PHYSICAL_MS_MAX)]
    logical: Annotated[int, Limit(min=0, max=LOGICAL_MAX)] = 0

    def __post_init__(self) -> None:
        if not 0 <= self.physical_ms <= PHYSICAL_MS_MAX:
            raise ValueError(f"physical_ms out of range: {self.physical_ms}")
        if not 0 <= self.logical <= LOGICAL_MAX:
            raise ValueError(f"logical out of range: {self.logical}")

    def compare(self, other: HLCTimestamp) -> int:
        """-1, 0 or 1 as self is before, equal to or after ``other``."""
        a = (self.physical_ms, self.logical)
        b = (other.physical_ms, other.logical)
        return (a > b) - (a < b)

    def as_tuple(self) -> tuple[int, int]:
        return (self.physical_ms, self.logical)


class HybridLogicalClock:
    """One node's HLC. ``send`` stamps a local or send event, ``receive`` merges a remote stamp."""

    def __init__(
        self, *, max_offset_ms: int = MAX_OFFSET_MS_DEFAULT, last: HLCTimestamp | None = None
    ) -> None:
        if max_offset_ms < 0:
            raise ValueError("max_offset_ms must be >= 0")
        self.max_offset_ms = max_offset_ms
        self._last = last if last is not None else HLCTimestamp(physical_ms=0, logical=0)

    @property
    def last(self) -> HLCTimestamp:
        """The latest timestamp issued or observed (persist it to stay monotonic across restarts)."""
        return self._last

    def send(self, now_ms: int) -> HLCTimestamp:
        """A timestamp for a local or send event: strictly greater than any issued before."""
        last = self._last
        physical = max(last.physical_ms, _clamp(now_ms))
        logical = last.logical + 1 if physical == last.physical_ms else 0
        self._last = _make(physical, logical)
        return self._last

    def check(self, remote: HLCTimestamp, now_ms: int) -> None:
        """Raise :class:`ClockOffsetError` if ``remote`` is too far ahead of ``now_ms``."""
        if remote.physical_ms - now_ms > self.max_offset_ms:
            raise ClockOffsetError(remote.physical_ms, now_ms, self.max_offset_ms)

    def receive(self, remote: HLCTimestamp, now_ms: int) -> HLCTimestamp:
        """Merge a remote timestamp; the result is greater than both it and our last one."""
        self.check(remote, now_ms)
        last = self._last
        physical = max(last.physical_ms, remote.physical_ms, _clamp(now_ms))
        if physical == last.physical_ms and physical == remote.physical_ms:
            logical = max(last.logical, remote.logical) + 1
        elif physical == last.physical_ms:
            logical = last.logical + 1
        elif physical == remote.physical_ms:
            logical = remote.logical + 1
        else:
            logical = 0
        self._last = _make(physical, logical)
        return self._last


def _clamp(now_ms: int) -> int:
    return min(max(int(now_ms), 0), PHYSICAL_MS_MAX)


def _make(physical: int, logical: int) -> HLCTimestamp:
    # The logical counter only grows while the physical clock stands still; if it would overflow,
    # borrow one millisecond instead (still strictly increasing, off by at most 1 ms).
    if logical > LOGICAL_MAX:
        return HLCTimestamp(physical_ms=min(physical + 1, PHYSICAL_MS_MAX), logical=0)
    return HLCTimestamp(physical_ms=physical, logical=logical)


class Order(enum.Enum):
    BEFORE = "before"
    AFTER = "after"
    EQUAL = "equal"
    CONCURRENT = "concurrent"


@message("clock.vector", max_bytes=VECTOR_NODES_MAX * (NODE_ID_LEN_MAX + 16))
@dataclass(frozen=True, slots=True, kw_only=True)
class VectorClock(Mapping[str, int]):
    """Immutable node id -> counter map; absent nodes count 0 (and zero counters are not stored).

    Stored as pairs sorted by node id so that equal clocks are equal values with equal encodings.
    """

    entries: Annotated[
        tuple[
            tuple[Annotated[str, Limit(min_len=1, max_len=NODE_ID_LEN_MAX)], Annotated[int, Limit(min=1)]],
            ...,
        ],
        Limit(max_len=VECTOR_NODES_MAX),
    ] = ()

    def __post_init__(self) -> None:
        if len(self.entries) > VECTOR_NODES_MAX:
            raise ValueError(f"vector clock over {VECTOR_NODES_MAX} nodes")
        previous = None
        for node, counter in self.entries:
            if previous is not None and node <= previous:
                raise ValueError("vector clock entries must be sorted by node id, without duplicates")
            if counter < 1:
                raise ValueError("vector clock counters must be >= 1 (zeros are omitted)")
            previous = node

    @classmethod
    def of(cls, counters: Mapping[str, int] | None = None) -> VectorClock:
        items = sorted((k, v) for k, v in (counters or {}).items() if v != 0)
        return cls(entries=tuple(items))

    def __getitem__(self, node: str) -> int:
        for key, counter in self.entries:
            if key == node:
                return counter
        raise KeyError(node)

    def counter(self, node: str) -> int:
        """The node's counter, 0 for a node never seen."""
        for key, value in self.entries:
            if key == node:
                return value
        return 0

    def __iter__(self) -> Iterator[str]:
        return (key for key, _ in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def increment(self, node: str) -> VectorClock:
        counters = dict(self.entries)
        counters[node] = counters.get(node, 0) + 1
        return VectorClock.of(counters)

    def merge(self, other: VectorClock) -> VectorClock:
        """Pointwise maximum: the least clock that is after-or-equal both."""
        counters = dict(self.entries)
        for node, counter in other.entries:
            if counter > counters.get(node, 0):
                counters[node] = counter
        return VectorClock.of(counters)

    def compare(self, other: VectorClock) -> Order:
        mine = dict(self.entries)
        theirs = dict(other.entries)
        less = greater = False
        for node in mine.keys() | theirs.keys():
            a, b = mine.get(node, 0), theirs.get(node, 0)
            less = less or a < b
            greater = greater or a > b
        if less and greater:
            return Order.CONCURRENT
        if less:
            return Order.BEFORE
        if greater:
            return Order.AFTER
        return Order.EQUAL

    def dominates(self, other: VectorClock) -> bool:
        """True if every counter here is >= the other's (after or equal)."""
        return self.compare(other) in (Order.AFTER, Order.EQUAL)
