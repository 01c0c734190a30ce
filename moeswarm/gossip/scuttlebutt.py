"""Scuttlebutt anti-entropy (van Renesse, Dumitriu, Gough & Thomas 2008) for per-node key/value state.

Each node owns its keys and stamps every change with the next number of its own counter; a key keeps only
its latest (version, value). What a node holds of everyone is summed up by one version vector -- the
highest version seen per origin, a ``clocks.VectorClock`` -- so the digest is the vector and "what you
are missing" is every entry newer than your component for its origin. A peer answers a digest with those
entries in version order per origin, so a reply cut short by the size bound still leaves the receiver with
a prefix and its vector stays exact; origins it lags furthest on go first (the paper's scuttle-depth).
"""

from __future__ import annotations

from dataclasses import dataclass

from moeswarm.clocks import VectorClock
from moeswarm.gossip.config import GossipConfig
from moeswarm.gossip.effects import StateChanged
from moeswarm.gossip.messages import (
    ENTRIES_PER_MESSAGE_MAX,
    KEY_CHARS_MAX,
    MEMBERS_MAX,
    VALUE_BYTES_MAX,
    Entry,
)

ENTRY_OVERHEAD_BYTES = 96


@dataclass(frozen=True, slots=True)
class Versioned:
    version: int
    value: bytes


class Scuttlebutt:
    def __init__(self, node_id: str, config: GossipConfig) -> None:
        self.node_id = node_id
        self.config = config
        self.state: dict[str, dict[str, Versioned]] = {node_id: {}}
        self.versions: dict[str, int] = {}

    def set_local(self, key: str, value: bytes) -> Entry:
        """Raises ValueError for a key or value the wire could not carry, or one key too many."""
        if not isinstance(key, str) or not 1 <= len(key) <= KEY_CHARS_MAX:
            raise ValueError(f"state keys are strings of 1..{KEY_CHARS_MAX} characters, got {key!r}")
        if not isinstance(value, bytes) or len(value) > VALUE_BYTES_MAX:
            raise ValueError(f"state values are bytes of at most {VALUE_BYTES_MAX}")
        mine = self.state[self.node_id]
        if key not in mine and len(mine) >= self.config.keys_per_node_max:
            raise ValueError(f"at most {self.config.keys_per_node_max} state keys per node")
        version = self.versions.get(self.node_id, 0) + 1
        mine[key] = Versioned(version, value)
        self.versions[self.node_id] = version
        return Entry(origin=self.node_id, key=key, version=version, value=value)

    def get(self, origin: str, key: str) -> bytes | None:
        item = self.state.get(origin, {}).get(key)
        return None if item is None else item.value

    def digest(self) -> VectorClock:
        return VectorClock.of(self.versions)

    def deltas_for(self, theirs: VectorClock) -> tuple[Entry, ...]:
        """Entries newer than ``theirs``, at most ``deltas_bytes_max`` bytes, a version prefix per origin."""
        lagging = []
        for origin, keys in self.state.items():
            known = theirs.counter(origin)
            newer = sorted((v.version, key, v.value) for key, v in keys.items() if v.version > known)
            if newer:
                lagging.append((origin, newer))
        lagging.sort(key=lambda item: (-len(item[1]), item[0]))
        budget = self.config.deltas_bytes_max
        out: list[Entry] = []
        for origin, newer in lagging:
            for version, key, value in newer:
                size = ENTRY_OVERHEAD_BYTES + len(key) + len(value) + len(origin)
                # One entry always goes, however small the budget: otherwise a large value would
                # never be sent and every peer would stay behind on its origin forever.
                if (size > budget and out) or len(out) >= ENTRIES_PER_MESSAGE_MAX:
                    break
                budget -= size
                out.append(Entry(origin=origin, key=key, version=version, value=value))
        return tuple(out)

    def apply(self, entries: tuple[Entry, ...]) -> list[StateChanged]:
        changes = []
        for entry in entries:
            if entry.origin == self.node_id:
                continue
            keys = self.state.get(entry.origin)
            if keys is None:
                if len(self.state) >= MEMBERS_MAX:
                    continue
                keys = self.state[entry.origin] = {}
            current = keys.get(entry.key)
            if current is None and len(keys) >= self.config.keys_per_node_max:
                continue
            if current is None or entry.version > current.version:
                keys[entry.key] = Versioned(entry.version, entry.value)
                changes.append(StateChanged(entry.origin, entry.key, entry.value, entry.version))
            if entry.version > self.versions.get(entry.origin, 0):
                self.versions[entry.origin] = entry.version
        return changes
