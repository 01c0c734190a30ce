"""The simulator's application: a hash chain over decided values, with well-formed values checkable.

It stands in for the swarm's model: its state digest changes with every decided value (so checkpoints
compare real application state), replicas that fall behind must fetch a state by digest, and values
carry a checksum so an invalid proposal is recognisable. A value may also name how long after its
creation a replica can validate it -- the stand-in for "I do not hold every listed delta yet" --
which exercises PENDING and ``recheck``.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict

from moeswarm.consensus import Kind, Proposal, Validation

GENESIS = hashlib.blake2b(b"moe-swarm simulator genesis", digest_size=32).digest()
STATES_KEPT = 64
_HEADER = struct.Struct(">dd")  # created_at, availability delay


def make_value(payload: bytes, *, created_at: float = 0.0, delay: float = 0.0) -> bytes:
    """A well-formed value: header, payload, and an 8-byte checksum over both."""
    body = _HEADER.pack(created_at, delay) + payload
    return body + hashlib.blake2b(body, digest_size=8).digest()


def make_invalid_value(payload: bytes) -> bytes:
    """A value whose checksum is wrong: every honest replica rejects it."""
    body = _HEADER.pack(0.0, 0.0) + payload
    return body + bytes(8)


def is_well_formed(value: bytes) -> bool:
    if len(value) < _HEADER.size + 8:
        return False
    body, check = value[:-8], value[-8:]
    return hashlib.blake2b(body, digest_size=8).digest() == check


def created_at(value: bytes) -> float:
    return float(_HEADER.unpack_from(value)[0])


def available_at(value: bytes, replica_index: int) -> float:
    """When ``replica_index`` holds everything ``value`` depends on (deterministic per replica)."""
    created_at, delay = (float(x) for x in _HEADER.unpack_from(value))
    if delay <= 0:
        return created_at
    spread = hashlib.blake2b(value + bytes([replica_index % 256]), digest_size=2).digest()
    return created_at + delay * (int.from_bytes(spread, "big") / 65535.0)


class ChainApp:
    """One replica's application: ``state = H(state || proposal)`` per decided sequence number."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.seq = 0
        self.state = GENESIS
        self.history: OrderedDict[int, bytes] = OrderedDict([(0, GENESIS)])

    def validate(self, value: bytes, now: float) -> Validation:
        if not is_well_formed(value):
            return Validation.INVALID
        return Validation.VALID if now >= available_at(value, self.index) else Validation.PENDING

    def apply(self, seq: int, proposal: Proposal) -> bytes:
        if seq != self.seq + 1:
            raise ValueError(f"application at {self.seq} was given seq {seq}")
        if proposal.kind is Kind.VALUE:
            self.state = hashlib.blake2b(self.state + proposal.value, digest_size=32).digest()
        elif proposal.kind is Kind.RECONFIGURE:
            text = ",".join(proposal.members).encode()
            self.state = hashlib.blake2b(self.state + b"reconfigure" + text, digest_size=32).digest()
        self.seq = seq
        self._remember()
        return self.state

    def state_at(self, seq: int) -> bytes | None:
        return self.history.get(seq)

    def install(self, seq: int, state: bytes) -> None:
        self.seq = seq
        self.state = state
        self._remember()

    def _remember(self) -> None:
        self.history[self.seq] = self.state
        while len(self.history) > STATES_KEPT:
            self.history.popitem(last=False)
