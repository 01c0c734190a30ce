"""PBFT messages: wire-registered, frozen dataclasses; the votes carry their own Ed25519 signatures.

A vote (pre-prepare, prepare, commit, checkpoint, view-change, new-view) is signed over a short
canonical payload that names its kind, signer, epoch and the fields it vouches for -- independently
of the transport envelope -- so certificates built from votes (prepared proofs, commit certificates,
stable checkpoints, view-change sets) can be forwarded and checked by any third party. A proposal is
bound to its votes by its digest; a view-change or new-view binds the votes it carries by their
signatures, which in turn cover their contents.

Records persisted by the driver (see the package docstring) are messages too, so the durable log
uses the same codec and the same validation as the network.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass, replace
from typing import Annotated, Protocol, TypeVar

from moeswarm import wire
from moeswarm.identity import Identity, NodeId, Signature
from moeswarm.wire import Limit, message

MEMBERS_MAX = 256
VALUE_BYTES_MAX = 256 * 1024
DIGEST_BYTES = 32
WINDOW_MAX = 1024
SEQ_MAX = 2**62
VIEW_MAX = 2**62
CATCHUP_ENTRIES_MAX = 256
EPOCH_CHAIN_MAX = 64

Digest = Annotated[bytes, Limit(min_len=DIGEST_BYTES, max_len=DIGEST_BYTES)]
StateDigest = Annotated[bytes, Limit(max_len=64)]
Seq = Annotated[int, Limit(min=0, max=SEQ_MAX)]
View = Annotated[int, Limit(min=0, max=VIEW_MAX)]
Epoch = Annotated[int, Limit(min=0, max=SEQ_MAX)]
Members = Annotated[tuple[NodeId, ...], Limit(max_len=MEMBERS_MAX)]


def digest_of(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()


class Kind(enum.Enum):
    VALUE = "value"
    NULL = "null"  # fills a gap left by a view change; decides nothing for the application
    RECONFIGURE = "reconfigure"


@message("pbft.proposal", max_bytes=VALUE_BYTES_MAX + MEMBERS_MAX * 70 + 128)
@dataclass(frozen=True, slots=True, kw_only=True)
class Proposal:
    """What one sequence number decides: an application value, a null, or a new member set."""

    kind: Kind
    value: Annotated[bytes, Limit(max_len=VALUE_BYTES_MAX)] = b""
    epoch: Epoch = 0  # RECONFIGURE: the epoch the new member set starts
    members: Members = ()

    def __post_init__(self) -> None:
        if self.kind is not Kind.VALUE and self.value:
            raise ValueError("only a value proposal carries a value")
        if self.kind is Kind.RECONFIGURE:
            if not self.members or list(self.members) != sorted(set(self.members)):
                raise ValueError("reconfiguration members must be non-empty, sorted and unique")
            if self.epoch < 1:
                raise ValueError("reconfiguration epoch must be >= 1")
        elif self.members or self.epoch:
            raise ValueError("only a reconfiguration carries members and an epoch")

    def digest(self) -> bytes:
        return digest_of(wire.encode_body(self))


NULL = Proposal(kind=Kind.NULL)


def _payload(*fields: object) -> bytes:
    return wire.pack_plain(list(fields))


@message("pbft.pre-prepare", max_bytes=VALUE_BYTES_MAX + MEMBERS_MAX * 70 + 512)
@dataclass(frozen=True, slots=True, kw_only=True)
class PrePrepare:
    """The primary's assignment of ``proposal`` (bound by ``digest``) to ``seq`` in ``view``."""

    epoch: Epoch
    view: View
    seq: Seq
    digest: Digest
    proposal: Proposal
    replica: NodeId
    sig: Signature

    def signing_bytes(self) -> bytes:
        return _payload("pbft.pre-prepare", self.replica, self.epoch, self.view, self.seq, self.digest)


@message("pbft.prepare", max_bytes=512)
@dataclass(frozen=True, slots=True, kw_only=True)
class Prepare:
    epoch: Epoch
    view: View
    seq: Seq
    digest: Digest
    replica: NodeId
    sig: Signature

    def signing_bytes(self) -> bytes:
        return _payload("pbft.prepare", self.replica, self.epoch, self.view, self.seq, self.digest)


@message("pbft.commit", max_bytes=512)
@dataclass(frozen=True, slots=True, kw_only=True)
class Commit:
    epoch: Epoch
    view: View
    seq: Seq
    digest: Digest
    replica: NodeId
    sig: Signature

    def signing_bytes(self) -> bytes:
        return _payload("pbft.commit", self.replica, self.epoch, self.view, self.seq, self.digest)


@message("pbft.checkpoint", max_bytes=512)
@dataclass(frozen=True, slots=True, kw_only=True)
class Checkpoint:
    """The application's state digest after executing ``seq``, as seen by ``replica``."""

    epoch: Epoch
    seq: Seq
    state_digest: StateDigest
    replica: NodeId
    sig: Signature

    def signing_bytes(self) -> bytes:
        return _payload("pbft.checkpoint", self.replica, self.epoch, self.seq, self.state_digest)


Checkpoints = Annotated[tuple[Checkpoint, ...], Limit(max_len=MEMBERS_MAX)]


@message("pbft.prepared-proof", max_bytes=VALUE_BYTES_MAX + MEMBERS_MAX * 400 + 1024)
@dataclass(frozen=True, slots=True, kw_only=True)
class PreparedProof:
    """A pre-prepare and a quorum of matching prepares: the value may have committed at ``seq``."""

    pre_prepare: PrePrepare
    prepares: Annotated[tuple[Prepare, ...], Limit(max_len=MEMBERS_MAX)]


VIEW_CHANGE_BYTES_MAX = 8 * 1024 * 1024


@message("pbft.view-change", max_bytes=VIEW_CHANGE_BYTES_MAX)
@dataclass(frozen=True, slots=True, kw_only=True)
class ViewChange:
    """``replica`` moves to ``new_view`` and reports its stable checkpoint and prepared values."""

    epoch: Epoch
    new_view: View
    stable_seq: Seq
    stable_digest: StateDigest
    checkpoint_proof: Checkpoints
    prepared: Annotated[tuple[PreparedProof, ...], Limit(max_len=WINDOW_MAX)]
    replica: NodeId
    sig: Signature

    def signing_bytes(self) -> bytes:
        proofs = [[p.pre_prepare.sig, [q.sig for q in p.prepares]] for p in self.prepared]
        return _payload(
            "pbft.view-change",
            self.replica,
            self.epoch,
            self.new_view,
            self.stable_seq,
            self.stable_digest,
            [c.sig for c in self.checkpoint_proof],
            proofs,
        )


@message("pbft.new-view", max_bytes=64 * 1024 * 1024)
@dataclass(frozen=True, slots=True, kw_only=True)
class NewView:
    """The new primary's proof that ``view`` started: a quorum of view-changes and the re-proposals."""

    epoch: Epoch
    view: View
    view_changes: Annotated[tuple[ViewChange, ...], Limit(max_len=MEMBERS_MAX)]
    pre_prepares: Annotated[tuple[PrePrepare, ...], Limit(max_len=WINDOW_MAX)]
    replica: NodeId
    sig: Signature

    def signing_bytes(self) -> bytes:
        return _payload(
            "pbft.new-view",
            self.replica,
            self.epoch,
            self.view,
            [v.sig for v in self.view_changes],
            [p.sig for p in self.pre_prepares],
        )


@message("pbft.committed-entry", max_bytes=VALUE_BYTES_MAX + MEMBERS_MAX * 400 + 1024)
@dataclass(frozen=True, slots=True, kw_only=True)
class CommittedEntry:
    """A decision with its commit certificate: a quorum of commits for the proposal's digest."""

    epoch: Epoch
    seq: Seq
    view: View
    proposal: Proposal
    commits: Annotated[tuple[Commit, ...], Limit(max_len=MEMBERS_MAX)]


@message("pbft.checkpoint-certificate", max_bytes=MEMBERS_MAX * 400 + 512)
@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointCertificate:
    """A quorum of matching checkpoints: the state digest at ``seq`` is stable."""

    epoch: Epoch
    seq: Seq
    state_digest: StateDigest
    checkpoints: Checkpoints


@message("pbft.fetch", max_bytes=256)
@dataclass(frozen=True, slots=True, kw_only=True)
class Fetch:
    """A lagging replica asks a peer for what it missed after ``after_seq``."""

    epoch: Epoch
    view: View
    after_seq: Seq
    replica: NodeId


@message("pbft.catch-up", max_bytes=64 * 1024 * 1024)
@dataclass(frozen=True, slots=True, kw_only=True)
class CatchUp:
    """The answer to a fetch: every part is a certificate the receiver verifies for itself."""

    reconfigurations: Annotated[tuple[CommittedEntry, ...], Limit(max_len=EPOCH_CHAIN_MAX)] = ()
    checkpoint: CheckpointCertificate | None = None
    entries: Annotated[tuple[CommittedEntry, ...], Limit(max_len=CATCHUP_ENTRIES_MAX)] = ()
    new_view: NewView | None = None


@message("pbft.state-installed", max_bytes=256)
@dataclass(frozen=True, slots=True, kw_only=True)
class StateInstalled:
    """Persisted when the application installed a transferred state: the log restarts at ``seq``."""

    epoch: Epoch
    seq: Seq
    state_digest: StateDigest


class Signed(Protocol):
    """A vote: it names its signer and carries a signature over ``signing_bytes()``."""

    @property
    def replica(self) -> str: ...

    @property
    def sig(self) -> bytes: ...

    def signing_bytes(self) -> bytes: ...


SignedT = TypeVar("SignedT", bound=Signed)


UNSIGNED = b"\x00" * 64  # the sig field while a message is built; `sign` fills it in


def sign(identity: Identity, msg: SignedT) -> SignedT:
    """Return ``msg`` (built with ``replica=identity.node_id, sig=UNSIGNED``) with its signature."""
    assert msg.replica == identity.node_id, "a replica signs only its own messages"
    return replace(msg, sig=identity.sign(msg.signing_bytes()))  # type: ignore[type-var]
