"""Replica configuration, the validation verdict, and the member set of one epoch."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from moeswarm.consensus.messages import MEMBERS_MAX, WINDOW_MAX
from moeswarm.identity import is_node_id


class Validation(enum.Enum):
    """The application's verdict on a proposed value."""

    VALID = "valid"
    INVALID = "invalid"  # the primary proposed something wrong: replace it
    PENDING = "pending"  # cannot tell yet (e.g. a listed delta is still downloading): ask again later


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """Timing and size knobs. Times are in the unit of ``now`` (the node passes seconds)."""

    checkpoint_interval: int = 8  # K: a checkpoint every K sequence numbers
    window: int = 32  # L: sequence numbers accepted above the stable checkpoint (a multiple of K)
    view_timeout: float = 2.0  # base time a replica waits for progress before it suspects the primary
    view_timeout_max: float = 60.0  # cap of the exponential back-off
    fetch_delay: float = 0.5  # how long a replica tolerates being behind before it asks a peer
    catchup_entries_max: int = 64  # committed entries in one catch-up answer
    # TEST ONLY: replaces the quorum size, to prove the simulator catches an unsafe protocol.
    unsafe_quorum: int | None = None

    def __post_init__(self) -> None:
        if self.checkpoint_interval < 1:
            raise ValueError("checkpoint_interval must be >= 1")
        if self.window % self.checkpoint_interval or self.window < 2 * self.checkpoint_interval:
            raise ValueError("window must be a multiple of checkpoint_interval, at least twice it")
        if self.window > WINDOW_MAX:
            raise ValueError(f"window must be <= {WINDOW_MAX}")
        if not 0 < self.view_timeout <= self.view_timeout_max:
            raise ValueError("need 0 < view_timeout <= view_timeout_max")
        if self.fetch_delay <= 0 or self.catchup_entries_max < 1:
            raise ValueError("fetch_delay and catchup_entries_max must be positive")

    def timeout(self, attempts: int) -> float:
        """The view timeout after ``attempts`` consecutive view changes without progress."""
        backoff = float(2 ** min(attempts, 32))
        return min(self.view_timeout * backoff, self.view_timeout_max)


@dataclass(frozen=True, slots=True)
class Membership:
    """The replica set of one epoch, which starts after sequence number ``start_seq``.

    ``f`` faults are tolerated among ``n`` members; a quorum is the smallest size any two of which
    share ``f + 1`` members (``2f + 1`` when ``n = 3f + 1``, more when n is between those sizes).
    """

    epoch: int
    members: tuple[str, ...]
    start_seq: int = 0
    member_set: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "member_set", frozenset(self.members))
        if not self.members or len(self.members) > MEMBERS_MAX:
            raise ValueError(f"a member set has 1..{MEMBERS_MAX} members")
        if list(self.members) != sorted(set(self.members)):
            raise ValueError("members must be sorted and unique")
        if not all(is_node_id(m) for m in self.members):
            raise ValueError("members must be node ids (hex public keys)")

    @property
    def n(self) -> int:
        return len(self.members)

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    @property
    def quorum(self) -> int:
        return (self.n + self.f + 2) // 2  # ceil((n + f + 1) / 2)

    def primary(self, view: int) -> str:
        return self.members[view % self.n]

    def __contains__(self, node: object) -> bool:
        return node in self.member_set
