from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moeswarm import wire
from moeswarm.clocks import HLCTimestamp
from moeswarm.identity import (
    BadSignature,
    ClockAhead,
    EnvelopeError,
    Identity,
    IdentityError,
    Replayed,
    ReplayWindow,
    Stale,
    VerifiedSignatureCache,
    open_envelope,
    seal,
    verify,
)
from moeswarm.wire import WireError, message


@message("test.note", max_bytes=128)
@dataclass(frozen=True, slots=True, kw_only=True)
class Note:
    text: str


ALICE = Identity.generate(b"a" * 32)
BOB = Identity.generate(b"b" * 32)
T0 = HLCTimestamp(physical_ms=10_000, logical=0)


def test_seeded_identity_is_deterministic() -> None:
    again = Identity.generate(b"a" * 32)
    assert again.node_id == ALICE.node_id
    assert len(ALICE.node_id) == 64
    assert ALICE.short_id == ALICE.node_id[:8]
    assert ALICE.node_id != BOB.node_id


def test_sign_and_verify() -> None:
    sig = ALICE.sign(b"hello")
    assert verify(ALICE.node_id, b"hello", sig)
    assert not verify(ALICE.node_id, b"hellO", sig)
    assert not verify(BOB.node_id, b"hello", sig)
    assert not verify("not-a-key", b"hello", sig)
    assert not verify(ALICE.node_id, b"hello", sig[:-1])


def test_cache_never_admits_a_forgery() -> None:
    cache = VerifiedSignatureCache(entries_max=2)
    sig = ALICE.sign(b"x")
    assert cache.verify(ALICE.node_id, b"x", sig)
    assert cache.verify(ALICE.node_id, b"x", sig)
    assert cache.hits == 1
    assert not cache.verify(BOB.node_id, b"x", sig)
    assert not cache.verify(ALICE.node_id, b"y", sig)
    for i in range(5):
        data = bytes([i])
        assert cache.verify(ALICE.node_id, data, ALICE.sign(data))
    assert len(cache._valid) == 2


def test_load_or_create_persists_with_private_mode(tmp_path: Path) -> None:
    path = tmp_path / "node" / "key"
    first = Identity.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    second = Identity.load_or_create(path)
    assert second.node_id == first.node_id


def test_bad_key_files_fail_clearly(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("not a key\n")
    os.chmod(path, 0o600)
    with pytest.raises(IdentityError, match="not a 32-byte Ed25519 seed"):
        Identity.load_or_create(path)
    path.write_text("ab" * 32)
    os.chmod(path, 0o644)
    with pytest.raises(IdentityError, match="chmod 600"):
        Identity.load_or_create(path)
    with pytest.raises(IdentityError, match="not a regular file"):
        Identity.load_or_create(tmp_path)


def test_envelope_roundtrip() -> None:
    data = seal(ALICE, Note(text="hi"), epoch=3, seq=7, hlc=T0)
    env = open_envelope(data, now_ms=10_000)
    assert env.sender == ALICE.node_id
    assert (env.type, env.epoch, env.seq, env.hlc) == ("test.note", 3, 7, T0)
    assert env.message() == Note(text="hi")


def test_tampered_envelope_is_rejected_before_the_body_is_decoded() -> None:
    data = seal(ALICE, Note(text="hi"), epoch=0, seq=1, hlc=T0)
    header, sig = wire.unpack_plain(data, max_bytes=1000)
    forged_header = header.replace(b"hi", b"ho")
    with pytest.raises(BadSignature):
        open_envelope(wire.pack_plain([forged_header, sig]))
    # A body that would not even decode still fails on the signature first.
    garbage = header.replace(b"\xa2hi", b"\xc1\xc1\xc1")
    with pytest.raises(BadSignature):
        open_envelope(wire.pack_plain([garbage, sig]))


def test_envelope_signed_by_someone_else_is_rejected() -> None:
    data = seal(ALICE, Note(text="hi"), epoch=0, seq=1, hlc=T0)
    header, _ = wire.unpack_plain(data, max_bytes=1000)
    with pytest.raises(BadSignature):
        open_envelope(wire.pack_plain([header, BOB.sign(header)]))


def test_clock_bounds() -> None:
    ahead = seal(ALICE, Note(text="x"), epoch=0, seq=1, hlc=HLCTimestamp(physical_ms=10_501))
    with pytest.raises(ClockAhead):
        open_envelope(ahead, now_ms=10_000)
    old = seal(ALICE, Note(text="x"), epoch=0, seq=2, hlc=HLCTimestamp(physical_ms=1_000))
    with pytest.raises(Stale):
        open_envelope(old, now_ms=10_000, max_age_ms=5_000)
    assert open_envelope(old, now_ms=10_000).seq == 2


def test_replay_is_rejected_but_forgery_does_not_burn_a_seq() -> None:
    window = ReplayWindow()
    data = seal(ALICE, Note(text="x"), epoch=0, seq=5, hlc=T0)
    header, _ = wire.unpack_plain(data, max_bytes=1000)
    with pytest.raises(BadSignature):
        open_envelope(wire.pack_plain([header, BOB.sign(header)]), replay=window)
    assert open_envelope(data, replay=window).seq == 5
    with pytest.raises(Replayed):
        open_envelope(data, replay=window)


def test_replay_window_accepts_reordering_once() -> None:
    window = ReplayWindow(window=4)
    assert window.accept("a", 10)
    assert window.accept("a", 8)
    assert not window.accept("a", 8)
    assert not window.accept("a", 10)
    assert window.accept("a", 9)
    assert not window.accept("a", 5)  # older than the window: cannot tell, refuse
    assert window.accept("a", 20)
    strict = ReplayWindow(window=0)
    assert strict.accept("a", 1)
    assert not strict.accept("a", 1)
    assert not strict.accept("a", 0)


def test_replay_window_memory_is_bounded() -> None:
    window = ReplayWindow(senders_max=3)
    for i in range(10):
        window.accept(f"s{i}", 1)
    assert len(window) == 3


@settings(max_examples=100)
@given(seqs=st.lists(st.integers(0, 200), max_size=60), size=st.integers(0, 16))
def test_replay_window_never_accepts_twice(seqs: list[int], size: int) -> None:
    window = ReplayWindow(window=size)
    accepted: set[int] = set()
    for seq in seqs:
        if window.accept("peer", seq):
            assert seq not in accepted
            accepted.add(seq)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400), pos=st.integers(0, 400), junk=st.binary(max_size=8))
def test_open_envelope_raises_only_wire_error(data: bytes, pos: int, junk: bytes) -> None:
    valid = seal(ALICE, Note(text="hello"), epoch=1, seq=2, hlc=T0)
    for candidate in (data, valid[:pos] + junk + valid[pos + len(junk) :]):
        try:
            env = open_envelope(candidate, now_ms=10_000)
        except WireError:
            continue
        with contextlib.suppress(WireError):
            env.message()


def test_envelope_errors_are_wire_errors() -> None:
    assert issubclass(EnvelopeError, WireError)
    with pytest.raises(EnvelopeError, match="7 fields"):
        open_envelope(wire.pack_plain([wire.pack_plain([1, 2]), b"s" * 64]))
