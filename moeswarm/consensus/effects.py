"""What a replica asks its driver to do. Effects are performed in list order (see the package docs)."""

from __future__ import annotations

from dataclasses import dataclass

from moeswarm.consensus.messages import Proposal


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``msg`` to the member ``to``."""

    to: str
    msg: object


@dataclass(frozen=True, slots=True)
class Broadcast:
    """Send ``msg`` to every other member of the current epoch."""

    msg: object


@dataclass(frozen=True, slots=True)
class Persist:
    """Make ``record`` (a wire message) durable before performing any later effect of the same list."""

    record: object


@dataclass(frozen=True, slots=True)
class Deliver:
    """``seq`` is decided: apply ``proposal`` (a value, a null, or a new member set), in seq order.

    The application reports back with ``Replica.executed(seq, state_digest, now)``.
    """

    seq: int
    epoch: int
    view: int
    proposal: Proposal


@dataclass(frozen=True, slots=True)
class FetchState:
    """The replica is behind a stable checkpoint: fetch the application state whose digest is
    ``state_digest`` at ``seq`` (any of ``peers`` vouched for it), then call ``install_state``."""

    seq: int
    epoch: int
    state_digest: bytes
    peers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ViewChanged:
    """Informational: the replica entered ``view`` (``active`` once its new-view is accepted)."""

    epoch: int
    view: int
    primary: str
    active: bool


Effect = Send | Broadcast | Persist | Deliver | FetchState | ViewChanged
