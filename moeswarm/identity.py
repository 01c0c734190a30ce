"""Ed25519 node identities, signed envelopes and the per-sender replay window.

A node is its public key: ``node_id`` is the key's hex, so a peer's messages can be checked without
any directory. Every peer message travels in a signed envelope
``{v, type, sender, epoch, seq, hlc, body, sig}``. The signature covers every field but ``sig``; it is
checked before the body is decoded, so an unauthenticated peer can make us parse nothing beyond a
small, bounded header. ``(sender, seq)`` and the HLC bound reject replays and messages from a clock
too far in the future.

Wire layout: ``[header, sig]`` where ``header`` is the msgpack bytes of
``[v, type, sender, epoch, seq, [hlc_physical_ms, hlc_logical], body]`` -- the exact bytes signed.
"""

from __future__ import annotations

import os
import re
import stat
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import nacl.exceptions
import nacl.signing
import nacl.utils

from moeswarm import wire
from moeswarm.clocks import MAX_OFFSET_MS_DEFAULT, HLCTimestamp
from moeswarm.wire import Limit, WireError

__all__ = [
    "ENVELOPE_VERSION",
    "BadSignature",
    "ClockAhead",
    "Envelope",
    "EnvelopeError",
    "Identity",
    "IdentityError",
    "NodeId",
    "ReplayWindow",
    "Replayed",
    "Signature",
    "Stale",
    "VerifiedSignatureCache",
    "is_node_id",
    "open_envelope",
    "seal",
    "verify",
]

ENVELOPE_VERSION = 1
SEED_BYTES = 32
SIGNATURE_BYTES = 64
NODE_ID_CHARS = 64
ENVELOPE_OVERHEAD_BYTES = 256  # header fields, framing and the signature around the body
_NODE_ID_RE = re.compile(r"[0-9a-f]{64}")

# Annotated types for message fields that hold ids and signatures.
NodeId = Annotated[str, Limit(min_len=NODE_ID_CHARS, max_len=NODE_ID_CHARS)]
Signature = Annotated[bytes, Limit(min_len=SIGNATURE_BYTES, max_len=SIGNATURE_BYTES)]


class IdentityError(Exception):
    """A key file that cannot be used (unreadable, malformed or readable by others)."""


class EnvelopeError(WireError):
    """An envelope that must be dropped; the subclass says why."""


class BadSignature(EnvelopeError):
    pass


class Replayed(EnvelopeError):
    pass


class ClockAhead(EnvelopeError):
    pass


class Stale(EnvelopeError):
    pass


def is_node_id(value: object) -> bool:
    return type(value) is str and _NODE_ID_RE.fullmatch(value) is not None


class Identity:
    """A node's Ed25519 signing key. Signing is pure CPU work, so protocol cores may hold one."""

    __slots__ = ("_signing_key", "node_id", "public_key")

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        self._signing_key = signing_key
        self.public_key: bytes = bytes(signing_key.verify_key)
        self.node_id: str = self.public_key.hex()

    @classmethod
    def generate(cls, seed: bytes | None = None) -> Identity:
        """A fresh identity, or the one determined by a 32-byte ``seed`` (tests, simulator)."""
        if seed is None:
            seed = nacl.utils.random(SEED_BYTES)
        if type(seed) is not bytes or len(seed) != SEED_BYTES:
            raise ValueError(f"seed must be {SEED_BYTES} bytes")
        return cls(nacl.signing.SigningKey(seed))

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> Identity:
        """Load the key file at ``path`` (hex seed), creating it with mode 0600 if it is absent."""
        path = Path(path)
        try:
            return cls._load(path)
        except FileNotFoundError:
            pass
        identity = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)  # a leftover could carry a looser mode
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, identity.seed().hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return identity

    @classmethod
    def _load(cls, path: Path) -> Identity:
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise  # the caller creates the key
        except OSError as exc:
            raise IdentityError(f"cannot read key file {path}: {exc.strerror}") from exc
        if not stat.S_ISREG(mode):
            raise IdentityError(f"key file {path} is not a regular file")
        if mode & 0o077:
            raise IdentityError(
                f"key file {path} is readable by others (mode {mode & 0o777:o}); run chmod 600"
            )
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise IdentityError(f"cannot read key file {path}: {exc.strerror}") from exc
        text = raw.strip()
        if not re.fullmatch(rb"[0-9a-fA-F]{64}", text):
            raise IdentityError(f"key file {path} is not a 32-byte Ed25519 seed (64 hex characters)")
        return cls.generate(bytes.fromhex(text.decode()))

    def seed(self) -> bytes:
        return bytes(self._signing_key)

    @property
    def short_id(self) -> str:
        """A display fingerprint (not unique enough to identify a node by)."""
        return self.node_id[:8]

    def sign(self, data: bytes) -> bytes:
        return self._signing_key.sign(data).signature

    def __repr__(self) -> str:
        return f"Identity({self.short_id})"


@lru_cache(maxsize=4096)
def _verify_key(node_id: str) -> nacl.signing.VerifyKey | None:
    if not is_node_id(node_id):
        return None
    try:
        return nacl.signing.VerifyKey(bytes.fromhex(node_id))
    except (ValueError, TypeError, nacl.exceptions.CryptoError):
        return None


def verify(node_id: str, data: bytes, sig: bytes) -> bool:
    """True iff ``sig`` is ``node_id``'s Ed25519 signature of ``data``."""
    key = _verify_key(node_id) if type(node_id) is str else None
    if key is None or type(sig) is not bytes or len(sig) != SIGNATURE_BYTES or type(data) is not bytes:
        return False
    try:
        key.verify(data, sig)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


class VerifiedSignatureCache:
    """Remembers signatures already verified, keyed by the exact (key, bytes, signature).

    A broadcast PBFT vote is checked by every replica that receives it, and again inside every
    certificate that forwards it; replicas sharing a cache (the simulator, or one node's transport and
    core) verify it once. Only valid results are cached, so a hit can never admit a forgery, and the
    cache holds at most ``entries_max`` entries (oldest evicted first).
    """

    def __init__(self, entries_max: int = 65536) -> None:
        self.entries_max = entries_max
        self._valid: dict[tuple[str, bytes, bytes], None] = {}
        self.hits = 0
        self.misses = 0

    def verify(self, node_id: str, data: bytes, sig: bytes) -> bool:
        key = (node_id, data, sig)
        if key in self._valid:
            self.hits += 1
            return True
        self.misses += 1
        if not verify(node_id, data, sig):
            return False
        if len(self._valid) >= self.entries_max:
            del self._valid[next(iter(self._valid))]
        self._valid[key] = None
        return True


class ReplayWindow:
    """Accepts each ``(sender, seq)`` at most once, with bounded memory.

    Per sender it keeps the highest ``seq`` seen and a bitmap of the ``window`` seqs below it, so
    messages reordered by up to ``window`` positions are still accepted once (``window=0`` demands
    strictly increasing seqs). At most ``senders_max`` senders are tracked, least recently heard
    evicted first; an evicted sender's old messages are then kept out by the envelope's HLC age bound.
    A sender must keep ``seq`` increasing across its own restarts (e.g. start from its HLC).
    """

    def __init__(self, *, senders_max: int = 1024, window: int = 64) -> None:
        if senders_max < 1 or window < 0:
            raise ValueError("senders_max must be >= 1 and window >= 0")
        self.senders_max = senders_max
        self.window = window
        self._seen: OrderedDict[str, tuple[int, int]] = OrderedDict()

    def accept(self, sender: str, seq: int) -> bool:
        """Record ``seq`` from ``sender``; False if it was seen or is too old to tell."""
        state = self._seen.get(sender)
        if state is None:
            self._remember(sender, seq, 1)
            return True
        highest, bitmap = state  # bit i set: highest - i was seen
        if seq > highest:
            shift = seq - highest
            bitmap = ((bitmap << shift) | 1) & ((1 << (self.window + 1)) - 1) if shift <= self.window else 1
            self._remember(sender, seq, bitmap)
            return True
        offset = highest - seq
        if offset > self.window or bitmap >> offset & 1:
            return False
        self._remember(sender, highest, bitmap | (1 << offset))
        return True

    def _remember(self, sender: str, highest: int, bitmap: int) -> None:
        self._seen[sender] = (highest, bitmap)
        self._seen.move_to_end(sender)
        while len(self._seen) > self.senders_max:
            self._seen.popitem(last=False)

    def __len__(self) -> int:
        return len(self._seen)


@dataclass(frozen=True, slots=True, kw_only=True)
class Envelope:
    """An envelope whose signature has been verified; ``body`` is still undecoded bytes."""

    v: int
    type: str
    sender: str
    epoch: int
    seq: int
    hlc: HLCTimestamp
    body: bytes
    sig: bytes

    def message(self) -> object:
        """Decode the body as the message type named in the envelope (raises WireError)."""
        return wire.decode_body(self.type, self.body)


def seal(identity: Identity, msg: object, *, epoch: int, seq: int, hlc: HLCTimestamp) -> bytes:
    """Encode and sign ``msg`` as an envelope from ``identity``."""
    type_name = wire.type_name_of(msg)
    body = wire.encode_body(msg)
    header = wire.pack_plain(
        [ENVELOPE_VERSION, type_name, identity.node_id, epoch, seq, [hlc.physical_ms, hlc.logical], body]
    )
    return wire.pack_plain([header, identity.sign(header)])


def _int(value: Any, what: str) -> int:
    if type(value) is not int or value < 0 or value >= 2**63:
        raise EnvelopeError(f"envelope {what} must be a non-negative int")
    return value


def _parse_header(header: bytes, max_bytes: int) -> tuple[int, str, str, int, int, HLCTimestamp, bytes]:
    fields = wire.unpack_plain(header, max_bytes=max_bytes)
    if type(fields) is not list or len(fields) != 7:
        raise EnvelopeError("envelope header must have 7 fields")
    v, type_name, sender, epoch, seq, hlc, body = fields
    if v != ENVELOPE_VERSION or type(v) is not int:
        raise EnvelopeError(f"unsupported envelope version {str(v)[:16]!r}")
    if type(type_name) is not str or not 0 < len(type_name) <= wire.TYPE_NAME_LEN_MAX:
        raise EnvelopeError("envelope type must be a short string")
    if not is_node_id(sender):
        raise EnvelopeError("envelope sender must be a 64-character hex public key")
    if type(hlc) is not list or len(hlc) != 2:
        raise EnvelopeError("envelope hlc must be [physical_ms, logical]")
    try:
        stamp = HLCTimestamp(physical_ms=_int(hlc[0], "hlc"), logical=_int(hlc[1], "hlc"))
    except ValueError as exc:
        raise EnvelopeError(f"envelope hlc out of range: {exc}") from exc
    if type(body) is not bytes:
        raise EnvelopeError("envelope body must be bytes")
    return v, type_name, sender, _int(epoch, "epoch"), _int(seq, "seq"), stamp, body


def open_envelope(
    data: bytes,
    *,
    now_ms: int | None = None,
    max_offset_ms: int = MAX_OFFSET_MS_DEFAULT,
    max_age_ms: int | None = None,
    replay: ReplayWindow | None = None,
    verifier: VerifiedSignatureCache | None = None,
    max_bytes: int | None = None,
) -> Envelope:
    """Check an envelope and return it with its body still encoded.

    Order matters: size, header shape, signature, the type's own size limit, clock bounds (if
    ``now_ms`` is given: at most ``max_offset_ms`` ahead, at most ``max_age_ms`` behind), and only
    then the replay window -- so a forged envelope can never consume a sender's sequence number.
    Raises an :class:`EnvelopeError` subclass (or WireError for malformed bytes).
    """
    if max_bytes is None:
        max_bytes = wire.global_max_bytes() + ENVELOPE_OVERHEAD_BYTES
    outer = wire.unpack_plain(data, max_bytes=max_bytes)
    if (
        type(outer) is not list
        or len(outer) != 2
        or type(outer[0]) is not bytes
        or type(outer[1]) is not bytes
    ):
        raise EnvelopeError("envelope must be [header, sig]")
    header, sig = outer
    v, type_name, sender, epoch, seq, hlc, body = _parse_header(header, max_bytes)
    ok = verifier.verify(sender, header, sig) if verifier is not None else verify(sender, header, sig)
    if not ok:
        raise BadSignature(f"bad signature from {sender[:8]}")
    if len(body) > wire.max_bytes_of(type_name):
        raise EnvelopeError(f"{type_name}: body of {len(body)} bytes exceeds its limit")
    if now_ms is not None:
        if hlc.physical_ms - now_ms > max_offset_ms:
            raise ClockAhead(
                f"{sender[:8]} is {hlc.physical_ms - now_ms} ms ahead (limit {max_offset_ms} ms)"
            )
        if max_age_ms is not None and now_ms - hlc.physical_ms > max_age_ms:
            raise Stale(f"message from {sender[:8]} is {now_ms - hlc.physical_ms} ms old")
    if replay is not None and not replay.accept(sender, seq):
        raise Replayed(f"seq {seq} from {sender[:8]} was already seen")
    return Envelope(v=v, type=type_name, sender=sender, epoch=epoch, seq=seq, hlc=hlc, body=body, sig=sig)
