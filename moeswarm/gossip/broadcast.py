"""A bounded queue of things to piggy-back, each sent a limited number of times (memberlist's
TransmitLimitedQueue, with priorities).

Items go out highest priority first, then least-transmitted first, so a fresh update overtakes one that
has already been sent many times. A newer item with the same key replaces the older one (a later status
of the same member makes the earlier one moot). When full, the least important item is dropped: lowest
priority, then most transmitted.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from moeswarm.gossip.messages import Priority

T = TypeVar("T")


@dataclass(slots=True)
class QueuedItem(Generic[T]):
    key: Hashable
    value: T
    priority: Priority
    limit: int
    order: int
    transmits: int = field(default=0)

    def rank(self) -> tuple[int, int, int]:
        return (-int(self.priority), self.transmits, self.order)


class BroadcastQueue(Generic[T]):
    def __init__(self, items_max: int) -> None:
        if items_max < 1:
            raise ValueError("items_max must be >= 1")
        self.items_max = items_max
        self._items: dict[Hashable, QueuedItem[T]] = {}
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._items)

    def push(self, key: Hashable, value: T, priority: Priority, limit: int) -> None:
        self._items.pop(key, None)
        if len(self._items) >= self.items_max:
            victim = max(
                self._items.values(), key=lambda item: (-int(item.priority), item.transmits, -item.order)
            )
            del self._items[victim.key]
        self._items[key] = QueuedItem(key, value, priority, max(1, limit), next(self._order))

    def priorities(self) -> set[Priority]:
        return {item.priority for item in self._items.values()}

    def select(self, count_max: int, eligible: Callable[[QueuedItem[T]], bool] | None = None) -> list[T]:
        """Take up to ``count_max`` items for one message, counting one transmission for each."""
        if count_max <= 0 or not self._items:
            return []
        candidates = [it for it in self._items.values() if eligible is None or eligible(it)]
        candidates.sort(key=QueuedItem.rank)
        chosen = candidates[:count_max]
        for item in chosen:
            item.transmits += 1
            if item.transmits >= item.limit:
                del self._items[item.key]
        return [item.value for item in chosen]
