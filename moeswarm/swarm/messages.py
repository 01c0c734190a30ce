"""The round protocol's messages: delta blobs, their announcements, and the value PBFT commits.

A delta blob is self-contained and signed by its author, so it can be relayed by anyone and checked
by everyone; its id is blake3 of its encoded bytes. A `RoundCommit` is the opaque value the PBFT
replicas agree on: the next round number, the base state hash it applies to, and the ordered list of
(node, blob) whose deltas it aggregates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from moeswarm.wire import Limit, message

NODE_ID_CHARS = 64
HASH_BYTES = 32
BLOB_BYTES_MAX = 64 * 1024 * 1024
TENSORS_PER_BLOB_MAX = 4096
COMMIT_ENTRIES_MAX = 1024

NodeId = Annotated[str, Limit(min_len=NODE_ID_CHARS, max_len=NODE_ID_CHARS)]
Hash = Annotated[bytes, Limit(min_len=HASH_BYTES, max_len=HASH_BYTES)]
Round = Annotated[int, Limit(min=0, max=2**40)]


@message("swarm.delta", max_bytes=BLOB_BYTES_MAX)
@dataclass(frozen=True, slots=True, kw_only=True)
class DeltaBlob:
    """One node's compressed update for one round, signed over every other field."""

    node: NodeId
    round: Round  # the committed round whose weights this delta was trained from
    base_hash: Hash  # H_round
    epoch: Annotated[int, Limit(min=0, max=2**40)]
    hlc_ms: Annotated[int, Limit(min=0, max=2**53)]
    hlc_logical: Annotated[int, Limit(min=0, max=2**32)]
    version: dict[str, Annotated[int, Limit(min=0, max=2**53)]]  # the author's version vector
    names: Annotated[tuple[Annotated[str, Limit(max_len=128)], ...], Limit(max_len=TENSORS_PER_BLOB_MAX)]
    payload: Annotated[bytes, Limit(max_len=BLOB_BYTES_MAX)]  # codec frame holding exactly `names`
    sig: Annotated[bytes, Limit(max_len=64)] = b""


@message("swarm.announce", max_bytes=1024)
@dataclass(frozen=True, slots=True, kw_only=True)
class DeltaAnnounce:
    """'I hold blob `blob_id` for round `round`': peers pull it by id from any holder."""

    author: NodeId
    round: Round
    base_hash: Hash
    blob_id: Hash
    size_bytes: Annotated[int, Limit(min=1, max=BLOB_BYTES_MAX)]


@message("swarm.commit_entry", max_bytes=256)
@dataclass(frozen=True, slots=True, kw_only=True)
class CommitEntry:
    node: NodeId
    blob_id: Hash
    round: Round  # the round the delta was trained from; older than the commit's base means late


@message("swarm.commit", max_bytes=COMMIT_ENTRIES_MAX * 200 + 1024)
@dataclass(frozen=True, slots=True, kw_only=True)
class RoundCommit:
    """The value agreed through PBFT: apply `entries` to the state `base_hash` to get round `round`."""

    round: Round
    base_hash: Hash
    epoch: Annotated[int, Limit(min=0, max=2**40)]
    entries: Annotated[tuple[CommitEntry, ...], Limit(max_len=COMMIT_ENTRIES_MAX)]

    def __post_init__(self) -> None:
        if self.round < 1:
            raise ValueError("a commit creates round 1 or later")
        nodes = [e.node for e in self.entries]
        if len(set(nodes)) != len(nodes):
            raise ValueError("a commit lists each node at most once")
        if nodes != sorted(nodes):
            raise ValueError("commit entries must be sorted by node id")


@message("swarm.state_request", max_bytes=256)
@dataclass(frozen=True, slots=True, kw_only=True)
class StateRequest:
    """Ask a peer for its newest checkpoint manifest (a node catching up or joining)."""

    round_min: Round


@message("swarm.state_offer", max_bytes=4 * 1024 * 1024)
@dataclass(frozen=True, slots=True, kw_only=True)
class StateOffer:
    """The checkpoint manifest of `round`: chunk ids to fetch by blob HTTP, checked against `state_hash`."""

    round: Round
    epoch: Annotated[int, Limit(min=0, max=2**40)]
    state_hash: Hash
    manifest: Annotated[bytes, Limit(max_len=4 * 1024 * 1024 - 1024)]


MEMBERS_MAX = 1024
Seq = Annotated[int, Limit(min=0, max=2**53)]
Epoch = Annotated[int, Limit(min=0, max=2**40)]


ADDRESS_CHARS_MAX = 64  # "ip:port" or "[v6]:port"
PEX_ADDRESSES_MAX = 32
Address = Annotated[str, Limit(max_len=ADDRESS_CHARS_MAX)]


@message("swarm.hello", max_bytes=MEMBERS_MAX * 80 + PEX_ADDRESSES_MAX * (ADDRESS_CHARS_MAX + 3) + 1024)
@dataclass(frozen=True, slots=True, kw_only=True)
class SwarmHello:
    """What a node knows of the swarm, sent to each newly connected peer and again now and then.

    A node started into an existing swarm learns from these that it must join instead of forming a
    genesis of its own. `members` is empty while the sender is not a member of a running swarm.
    """

    epoch: Epoch
    epoch_start_seq: Seq  # the PBFT sequence number after which `members` are the replicas
    members: Annotated[tuple[NodeId, ...], Limit(max_len=MEMBERS_MAX)]
    round: Round  # the sender's latest committed round
    state_hash: Hash  # H_round
    executed_seq: Seq
    checkpoint_round: Round  # the round of the sender's newest stored checkpoint (0: none)
    # Peer exchange: where the peers the sender is connected to can be dialled (as the sender sees
    # them), so a node given one seed reaches everyone — PBFT needs a full mesh.
    peers: Annotated[tuple[Address, ...], Limit(max_len=PEX_ADDRESSES_MAX)] = ()

    def __post_init__(self) -> None:
        if list(self.members) != sorted(set(self.members)):
            raise ValueError("members must be sorted and distinct")


@message("swarm.join_request", max_bytes=256)
@dataclass(frozen=True, slots=True, kw_only=True)
class JoinRequest:
    """'Add me to the replica set': a member that admitted the sender proposes the reconfiguration."""

    node: NodeId  # must be the envelope's sender


@message("swarm.leave_request", max_bytes=256)
@dataclass(frozen=True, slots=True, kw_only=True)
class LeaveRequest:
    """'Remove me from the replica set' (a draining member), so that whichever member is primary
    proposes the reconfiguration, not only the leaver itself."""

    node: NodeId  # must be the envelope's sender
