"""Gossip wire messages: SWIM probes with piggy-backed member updates, rumors, and scuttlebutt state sync.

Every bound is in the type, so ``wire.decode`` rejects an oversized or malformed message before the state
machine sees it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Annotated

from moeswarm.clocks import VectorClock
from moeswarm.identity import NODE_ID_CHARS, NodeId
from moeswarm.wire import Limit, message

MEMBERS_MAX = 1024
UPDATES_PER_MESSAGE_MAX = 32
RUMORS_PER_MESSAGE_MAX = 16
RUMOR_PAYLOAD_BYTES_MAX = 4096
ENTRIES_PER_MESSAGE_MAX = 256
KEY_CHARS_MAX = 64
VALUE_BYTES_MAX = 4096
COUNTER_MAX = 2**62

Counter = Annotated[int, Limit(min=0, max=COUNTER_MAX)]
UPDATE_BYTES_MAX = 2 * NODE_ID_CHARS + 64
RUMOR_BYTES_MAX = NODE_ID_CHARS + RUMOR_PAYLOAD_BYTES_MAX + 64
ENTRY_BYTES_MAX = NODE_ID_CHARS + KEY_CHARS_MAX + VALUE_BYTES_MAX + 64
DIGEST_BYTES_MAX = MEMBERS_MAX * (NODE_ID_CHARS + 16) + 64
PIGGYBACK_BYTES_MAX = UPDATES_PER_MESSAGE_MAX * UPDATE_BYTES_MAX


class Status(enum.Enum):
    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


class Priority(enum.IntEnum):
    """How much a rumor matters: consensus-critical announcements get more fan-out than telemetry."""

    TELEMETRY = 0
    NORMAL = 1
    CRITICAL = 2


@message("gossip.member", max_bytes=UPDATE_BYTES_MAX)
@dataclass(frozen=True, slots=True, kw_only=True)
class MemberUpdate:
    """``origin`` says ``node`` is ``status`` at ``incarnation`` (only ``node`` itself raises it)."""

    node: NodeId
    incarnation: Counter
    status: Status
    origin: NodeId


Updates = Annotated[tuple[MemberUpdate, ...], Limit(max_len=UPDATES_PER_MESSAGE_MAX)]


@message("gossip.ping", max_bytes=NODE_ID_CHARS + PIGGYBACK_BYTES_MAX + 64)
@dataclass(frozen=True, slots=True, kw_only=True)
class Ping:
    """A probe; ``target`` lets a node that was sent someone else's ping ignore it."""

    seq: Counter
    target: NodeId
    updates: Updates = ()


@message("gossip.ack", max_bytes=PIGGYBACK_BYTES_MAX + 64)
@dataclass(frozen=True, slots=True, kw_only=True)
class Ack:
    seq: Counter
    updates: Updates = ()


@message("gossip.ping-req", max_bytes=NODE_ID_CHARS + PIGGYBACK_BYTES_MAX + 64)
@dataclass(frozen=True, slots=True, kw_only=True)
class PingReq:
    """Ask the receiver to probe ``target`` for us and forward its ack (SWIM's indirect probe)."""

    seq: Counter
    target: NodeId
    updates: Updates = ()


@message("gossip.nack", max_bytes=64)
@dataclass(frozen=True, slots=True, kw_only=True)
class Nack:
    """Lifeguard: the helper got no ack from the target in time; a missing nack means our own links fail."""

    seq: Counter


@message("gossip.rumor", max_bytes=RUMOR_BYTES_MAX)
@dataclass(frozen=True, slots=True, kw_only=True)
class Rumor:
    """An application broadcast, identified by (origin, number)."""

    origin: NodeId
    number: Counter
    priority: Priority
    payload: Annotated[bytes, Limit(max_len=RUMOR_PAYLOAD_BYTES_MAX)]


@message("gossip.push", max_bytes=PIGGYBACK_BYTES_MAX + RUMORS_PER_MESSAGE_MAX * RUMOR_BYTES_MAX + 64)
@dataclass(frozen=True, slots=True, kw_only=True)
class Push:
    """Periodic push gossip to a few random peers: member updates and rumors."""

    updates: Updates = ()
    rumors: Annotated[tuple[Rumor, ...], Limit(max_len=RUMORS_PER_MESSAGE_MAX)] = ()


@message("gossip.members", max_bytes=MEMBERS_MAX * UPDATE_BYTES_MAX + 64)
@dataclass(frozen=True, slots=True, kw_only=True)
class MemberSync:
    """Push-pull of the whole member table (joins, and repair of anything the rumors missed)."""

    members: Annotated[tuple[MemberUpdate, ...], Limit(max_len=MEMBERS_MAX)]
    reply: bool


@message("gossip.entry", max_bytes=ENTRY_BYTES_MAX)
@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One key of one node's state at a version of that node's own counter."""

    origin: NodeId
    key: Annotated[str, Limit(min_len=1, max_len=KEY_CHARS_MAX)]
    version: Annotated[int, Limit(min=1, max=COUNTER_MAX)]
    value: Annotated[bytes, Limit(max_len=VALUE_BYTES_MAX)]


@message("gossip.digest", max_bytes=DIGEST_BYTES_MAX)
@dataclass(frozen=True, slots=True, kw_only=True)
class StateDigest:
    """Scuttlebutt's first step: the highest version we hold of each origin's state."""

    versions: VectorClock


@message("gossip.deltas", max_bytes=DIGEST_BYTES_MAX + ENTRIES_PER_MESSAGE_MAX * ENTRY_BYTES_MAX)
@dataclass(frozen=True, slots=True, kw_only=True)
class StateDeltas:
    """Entries the receiver lacks; with ``versions`` set, the receiver answers with what *we* lack."""

    entries: Annotated[tuple[Entry, ...], Limit(max_len=ENTRIES_PER_MESSAGE_MAX)]
    versions: VectorClock | None = None


GossipMessage = Ping | Ack | PingReq | Nack | Push | MemberSync | StateDigest | StateDeltas
