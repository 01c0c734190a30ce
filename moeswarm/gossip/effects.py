"""What the gossip core asks its driver to do (Send) and tells the node about (the rest)."""

from __future__ import annotations

from dataclasses import dataclass

from moeswarm.gossip.messages import GossipMessage, Rumor


@dataclass(frozen=True, slots=True)
class Send:
    to: str
    msg: GossipMessage


@dataclass(frozen=True, slots=True)
class Joined:
    """A node we had never heard of is alive."""

    node: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class Alive:
    """A suspected or dead node is alive again (it refuted, or rejoined with a higher incarnation)."""

    node: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class Suspect:
    """``accuser`` is the member whose failed probe started the suspicion (ourselves, if it was ours)."""

    node: str
    incarnation: int
    accuser: str


@dataclass(frozen=True, slots=True)
class Dead:
    """The suspicion timed out unrefuted; the node should be reconfigured out of the replica set."""

    node: str
    incarnation: int


@dataclass(frozen=True, slots=True)
class Delivered:
    """A rumor reached this node for the first time."""

    rumor: Rumor


@dataclass(frozen=True, slots=True)
class StateChanged:
    """A newer value of ``origin``'s ``key`` arrived through anti-entropy."""

    origin: str
    key: str
    value: bytes
    version: int


Effect = Send | Joined | Alive | Suspect | Dead | Delivered | StateChanged
MemberEvent = Joined | Alive | Suspect | Dead
