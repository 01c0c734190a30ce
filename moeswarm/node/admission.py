"""Admission: who may join the swarm. Pure functions, no I/O.

Every node of a swarm is given the same secret, the cluster key (the Fly secret `MOESWARM_CLUSTER_KEY`).
From it each node derives the same Ed25519 *cluster signing key*. A node proves two things to a peer:

- it holds the cluster key: a cluster-key signature over the transcript;
- it holds the node key it claims: a node-key signature over the same transcript.

The transcript binds a domain-separation context, the prover's node id, the verifier's node id and a fresh
32-byte challenge the *verifier* chose, so a proof cannot be replayed to another node, at another time, or
reflected back at the node that asked (prover and verifier ids swap places). Both sides prove themselves
to each other: a node that dials a seed must not hand its traffic to an impostor either.

The cluster key never leaves the node; peers only ever see signatures made with the derived key. Anyone
who learns the secret can join, so rotate it by redeploying every node with a new one.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Protocol

import blake3
import nacl.exceptions
import nacl.signing

from moeswarm.identity import NodeId, Signature, is_node_id
from moeswarm.identity import verify as verify_node_signature
from moeswarm.wire import Limit, message

CLUSTER_KEY_CONTEXT = "moe-swarm cluster key v1"
BLOB_TOKEN_CONTEXT = "moe-swarm blob access token v1"
TRANSCRIPT_CONTEXT = b"moe-swarm admission v1\x00"
CHALLENGE_BYTES = 32
SIGNATURE_BYTES = 64
INCARNATION_BYTES = 16
PROTOCOL_VERSION = 1


class AdmissionError(Exception):
    """A peer failed to prove it belongs to the swarm; `reason` is a short code for logs and metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class NodeSigner(Protocol):
    """What admission needs of a node identity (`moeswarm.identity.Identity` is one)."""

    @property
    def node_id(self) -> str: ...
    def sign(self, data: bytes) -> bytes: ...


class ClusterKey:
    """The Ed25519 key every member derives from the shared secret; `repr` never shows the secret."""

    __slots__ = ("_blob_token", "_signing", "_verify")

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("the cluster key must not be empty")
        material = secret.encode("utf-8")
        seed = blake3.blake3(material, derive_key_context=CLUSTER_KEY_CONTEXT).digest()
        self._signing = nacl.signing.SigningKey(seed)
        self._verify = self._signing.verify_key
        self._blob_token = blake3.blake3(material, derive_key_context=BLOB_TOKEN_CONTEXT).hexdigest()

    @property
    def public_key_hex(self) -> str:
        """Safe to log: identifies which cluster a node belongs to without revealing the secret."""
        return bytes(self._verify).hex()

    @property
    def blob_token(self) -> str:
        """Bearer token members present to fetch blobs; derived, so the secret itself is never sent."""
        return self._blob_token

    def check_blob_token(self, presented: str) -> bool:
        return hmac.compare_digest(presented.encode("utf-8", "replace"), self._blob_token.encode())

    def sign(self, data: bytes) -> bytes:
        return bytes(self._signing.sign(data).signature)

    def verify(self, data: bytes, signature: bytes) -> bool:
        try:
            self._verify.verify(data, signature)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            return False
        return True

    def __repr__(self) -> str:
        return f"ClusterKey(public={self.public_key_hex[:16]}…)"


def check_node_id(node_id: object) -> str:
    if not is_node_id(node_id):
        raise AdmissionError("malformed", "node id must be 64 lowercase hex characters")
    assert isinstance(node_id, str)
    return node_id


Challenge = Annotated[bytes, Limit(min_len=CHALLENGE_BYTES, max_len=CHALLENGE_BYTES)]
Incarnation = Annotated[bytes, Limit(min_len=INCARNATION_BYTES, max_len=INCARNATION_BYTES)]
Port = Annotated[int, Limit(min=0, max=65535)]


def _check_node_id_field(value: str) -> None:
    if not is_node_id(value):
        raise ValueError("node_id must be 64 lowercase hex characters")


@message("admission.proof", max_bytes=256)
@dataclass(frozen=True, slots=True, kw_only=True)
class AdmissionProof:
    """A prover's two signatures over one transcript (see `transcript`)."""

    node_id: NodeId
    cluster_sig: Signature
    node_sig: Signature

    def __post_init__(self) -> None:
        _check_node_id_field(self.node_id)
        if len(self.cluster_sig) != SIGNATURE_BYTES or len(self.node_sig) != SIGNATURE_BYTES:
            raise ValueError(f"signatures must be {SIGNATURE_BYTES} bytes")


@message("admission.hello", max_bytes=256)
@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """Dialer -> acceptor: who I claim to be and the challenge you must sign.

    `incarnation` is random per process start: it tells a restarted peer from a second connection of
    the same run. `listen_port` is where the dialer serves blobs (0: it serves none).
    """

    protocol: int
    node_id: NodeId
    challenge: Challenge
    incarnation: Incarnation
    listen_port: Port

    def __post_init__(self) -> None:
        _check_node_id_field(self.node_id)


@message("admission.reply", max_bytes=512)
@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    """Acceptor -> dialer: its proof over the dialer's challenge, and a challenge of its own."""

    protocol: int
    challenge: Challenge
    incarnation: Incarnation
    listen_port: Port
    proof: AdmissionProof


@message("admission.finish", max_bytes=256)
@dataclass(frozen=True, slots=True, kw_only=True)
class Finish:
    """Dialer -> acceptor: the dialer's proof over the acceptor's challenge."""

    proof: AdmissionProof


@message("admission.welcome", max_bytes=64)
@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    """Acceptor -> dialer: admitted; signed envelopes may flow from now on."""

    protocol: int


def new_challenge(rng_bytes: Callable[[int], bytes] = os.urandom) -> bytes:
    """A fresh challenge; `rng_bytes` is injectable so tests are reproducible (use a CSPRNG in a node)."""
    challenge = rng_bytes(CHALLENGE_BYTES)
    if len(challenge) != CHALLENGE_BYTES:
        raise ValueError(f"challenge source returned {len(challenge)} bytes, expected {CHALLENGE_BYTES}")
    return challenge


def transcript(prover_id: str, verifier_id: str, challenge: bytes) -> bytes:
    """The exact bytes both signatures cover; fixed-width fields, so no two transcripts collide."""
    check_node_id(prover_id)
    check_node_id(verifier_id)
    if not isinstance(challenge, bytes) or len(challenge) != CHALLENGE_BYTES:
        raise AdmissionError("malformed", f"challenge must be {CHALLENGE_BYTES} bytes")
    return TRANSCRIPT_CONTEXT + bytes.fromhex(prover_id) + bytes.fromhex(verifier_id) + challenge


def make_proof(cluster: ClusterKey, node: NodeSigner, verifier_id: str, challenge: bytes) -> AdmissionProof:
    """Prove to `verifier_id`, which chose `challenge`, that `node` is a member of the cluster."""
    if node.node_id == verifier_id:
        raise AdmissionError("self", "a node does not admit itself")
    data = transcript(node.node_id, verifier_id, challenge)
    return AdmissionProof(node_id=node.node_id, cluster_sig=cluster.sign(data), node_sig=node.sign(data))


def verify_proof(proof: AdmissionProof, cluster: ClusterKey, verifier_id: str, challenge: bytes) -> str:
    """Check a peer's proof against the challenge we sent it; return its node id or raise AdmissionError."""
    if proof.node_id == verifier_id:
        raise AdmissionError("self", "the peer claims our own node id")
    data = transcript(proof.node_id, verifier_id, challenge)
    if not cluster.verify(data, proof.cluster_sig):
        raise AdmissionError("bad_cluster_signature", "the peer does not hold our cluster key")
    if not verify_node_signature(proof.node_id, data, proof.node_sig):
        raise AdmissionError("bad_node_signature", "the peer does not hold the key of the node id it claims")
    return proof.node_id


# --- the mutual handshake, one pure step per message --------------------------------------------------
# dialer: hello() ->  acceptor: reply()  ->  dialer: finish()  ->  acceptor: admit() + Welcome


def hello(node: NodeSigner, challenge: bytes, incarnation: bytes, listen_port: int) -> Hello:
    return Hello(protocol=PROTOCOL_VERSION, node_id=node.node_id, challenge=challenge,
                 incarnation=incarnation, listen_port=listen_port)


def reply(cluster: ClusterKey, node: NodeSigner, received: Hello, challenge: bytes, incarnation: bytes,
          listen_port: int) -> Reply:
    """The acceptor's answer to a Hello; raises AdmissionError for a wrong protocol or ourselves."""
    if received.protocol != PROTOCOL_VERSION:
        raise AdmissionError("protocol", f"peer speaks admission v{received.protocol}, we speak v{PROTOCOL_VERSION}")
    if received.node_id == node.node_id or received.incarnation == incarnation:
        raise AdmissionError("self", "the dialer is this node")
    proof = make_proof(cluster, node, received.node_id, received.challenge)
    return Reply(protocol=PROTOCOL_VERSION, challenge=challenge, incarnation=incarnation,
                 listen_port=listen_port, proof=proof)


def finish(cluster: ClusterKey, node: NodeSigner, received: Reply, challenge: bytes) -> tuple[str, Finish]:
    """The dialer checks the acceptor's proof over its `challenge`, then proves itself in turn."""
    if received.protocol != PROTOCOL_VERSION:
        raise AdmissionError("protocol", f"peer speaks admission v{received.protocol}, we speak v{PROTOCOL_VERSION}")
    peer_id = verify_proof(received.proof, cluster, node.node_id, challenge)
    return peer_id, Finish(proof=make_proof(cluster, node, peer_id, received.challenge))


def admit(cluster: ClusterKey, node: NodeSigner, received_hello: Hello, received: Finish, challenge: bytes) -> str:
    """The acceptor's verdict: the node id the dialer announced in its Hello, proven."""
    if received.proof.node_id != received_hello.node_id:
        raise AdmissionError("identity_changed", "the proof is for another node id than the hello")
    return verify_proof(received.proof, cluster, node.node_id, challenge)
