"""Admission: only holders of the cluster key get in, and a proof is good for one verifier and challenge."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moeswarm.identity import Identity
from moeswarm.node import admission
from moeswarm.node.admission import (
    AdmissionError,
    AdmissionProof,
    ClusterKey,
    make_proof,
    new_challenge,
    verify_proof,
)
from moeswarm.wire import WireError, decode, decode_as, encode, pack_plain

SECRET = "correct horse battery staple 42"


def ident(n: int) -> Identity:
    return Identity.generate(bytes([n]) * 32)


def challenge(seed: int = 0) -> bytes:
    return new_challenge(random.Random(seed).randbytes)


@pytest.fixture
def cluster() -> ClusterKey:
    return ClusterKey(SECRET)


def test_every_holder_of_the_secret_derives_the_same_key() -> None:
    assert ClusterKey(SECRET).public_key_hex == ClusterKey(SECRET).public_key_hex
    assert ClusterKey(SECRET).public_key_hex != ClusterKey(SECRET + "x").public_key_hex
    assert SECRET not in repr(ClusterKey(SECRET))
    assert ClusterKey(SECRET).blob_token != ClusterKey(SECRET + "x").blob_token
    assert SECRET not in ClusterKey(SECRET).blob_token


def test_a_valid_proof_names_the_prover(cluster: ClusterKey) -> None:
    joiner, acceptor, chal = ident(1), ident(2), challenge()
    proof = make_proof(cluster, joiner, acceptor.node_id, chal)
    assert verify_proof(proof, cluster, acceptor.node_id, chal) == joiner.node_id


def test_wrong_cluster_key_is_refused(cluster: ClusterKey) -> None:
    joiner, acceptor, chal = ident(1), ident(2), challenge()
    proof = make_proof(ClusterKey("some other secret value"), joiner, acceptor.node_id, chal)
    with pytest.raises(AdmissionError) as info:
        verify_proof(proof, cluster, acceptor.node_id, chal)
    assert info.value.reason == "bad_cluster_signature"


def test_a_member_cannot_claim_another_nodes_id(cluster: ClusterKey) -> None:
    """Holding the cluster key is not enough: the node-key signature binds the claimed id."""
    liar, victim, acceptor, chal = ident(1), ident(3), ident(2), challenge()
    honest = make_proof(cluster, liar, acceptor.node_id, chal)
    data = admission.transcript(victim.node_id, acceptor.node_id, chal)
    forged = AdmissionProof(node_id=victim.node_id, cluster_sig=cluster.sign(data), node_sig=honest.node_sig)
    with pytest.raises(AdmissionError) as info:
        verify_proof(forged, cluster, acceptor.node_id, chal)
    assert info.value.reason == "bad_node_signature"


def test_a_proof_is_bound_to_its_challenge_and_verifier(cluster: ClusterKey) -> None:
    joiner, acceptor, other = ident(1), ident(2), ident(3)
    proof = make_proof(cluster, joiner, acceptor.node_id, challenge(0))
    with pytest.raises(AdmissionError):
        verify_proof(proof, cluster, acceptor.node_id, challenge(1))  # replayed to a new challenge
    with pytest.raises(AdmissionError):
        verify_proof(proof, cluster, other.node_id, challenge(0))  # relayed to another node


def test_self_admission_is_refused(cluster: ClusterKey) -> None:
    me = ident(1)
    with pytest.raises(AdmissionError, match="self"):
        make_proof(cluster, me, me.node_id, challenge())


def test_challenge_source_must_give_32_bytes() -> None:
    assert len(new_challenge()) == 32
    assert new_challenge() != new_challenge()
    with pytest.raises(ValueError, match="32"):
        new_challenge(lambda n: b"short")


def run_handshake(dialer_key: ClusterKey, acceptor_key: ClusterKey) -> tuple[str, str]:
    """The four messages through the real codec, as the transport sends them."""
    dialer, acceptor = ident(1), ident(2)
    d_chal, a_chal = challenge(1), challenge(2)
    hello = decode_as(encode(admission.hello(dialer, d_chal, b"d" * 16, 7002)), admission.Hello)
    reply = admission.reply(acceptor_key, acceptor, hello, a_chal, b"a" * 16, 7000)
    reply = decode_as(encode(reply), admission.Reply)
    acceptor_seen_by_dialer, finish = admission.finish(dialer_key, dialer, reply, d_chal)
    finish = decode_as(encode(finish), admission.Finish)
    dialer_seen_by_acceptor = admission.admit(acceptor_key, acceptor, hello, finish, a_chal)
    return acceptor_seen_by_dialer, dialer_seen_by_acceptor


def test_mutual_handshake_admits_both_sides(cluster: ClusterKey) -> None:
    assert run_handshake(cluster, cluster) == (ident(2).node_id, ident(1).node_id)


def test_dialer_refuses_an_acceptor_without_the_key(cluster: ClusterKey) -> None:
    with pytest.raises(AdmissionError, match="bad_cluster_signature"):
        run_handshake(cluster, ClusterKey("impostor secret value!!"))


def test_acceptor_refuses_a_dialer_that_switches_identity(cluster: ClusterKey) -> None:
    dialer, acceptor, switched = ident(1), ident(2), ident(3)
    a_chal = challenge(2)
    hello = admission.hello(dialer, challenge(1), b"d" * 16, 0)
    admission.reply(cluster, acceptor, hello, a_chal, b"a" * 16, 7000)
    finish = admission.Finish(proof=make_proof(cluster, switched, acceptor.node_id, a_chal))
    with pytest.raises(AdmissionError, match="identity_changed"):
        admission.admit(cluster, acceptor, hello, finish, a_chal)


def test_acceptor_refuses_its_own_hello_and_other_protocols(cluster: ClusterKey) -> None:
    me = ident(1)
    with pytest.raises(AdmissionError, match="self"):
        admission.reply(cluster, me, admission.hello(me, challenge(), b"x" * 16, 0), challenge(1), b"y" * 16, 1)
    future = admission.Hello(protocol=99, node_id=ident(3).node_id, challenge=challenge(), incarnation=b"z" * 16,
                             listen_port=1)
    with pytest.raises(AdmissionError, match="protocol"):
        admission.reply(cluster, me, future, challenge(1), b"y" * 16, 1)


def test_malformed_handshake_messages_are_wire_errors() -> None:
    bad_id = {"protocol": 1, "node_id": "zz" * 32, "challenge": b"c" * 32, "incarnation": b"i" * 16,
              "listen_port": 1}
    with pytest.raises(WireError):
        decode(pack_plain(["admission.hello", bad_id]))
    with pytest.raises(WireError):
        decode(pack_plain(["admission.hello", {**bad_id, "node_id": "ab" * 32, "challenge": b"short"}]))


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_decode_to_a_handshake_message_or_a_wire_error(data: bytes) -> None:
    for cls in (admission.Hello, admission.Reply, admission.Finish):
        with contextlib.suppress(WireError):
            decode_as(data, cls)
