"""Untrusted bytes: decode_delta either returns bounded, finite float32 tensors or raises CodecError."""

from __future__ import annotations

import struct

import msgpack
import pytest
import torch
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor

from moeswarm.codec import CodecError, decode_delta, encode_delta
from moeswarm.codec.frame import MAGIC, PREFIX

ELEMENTS_MAX = 4096
SEED_CODECS = ["fp32", "fp16+zstd", "int8:16", "topk:0.2+int8+zstd", "topk:0.3", "lowrank:2+bf16"]


def sample_frames() -> list[bytes]:
    gen = torch.Generator().manual_seed(7)
    delta = {"a.w": torch.randn(12, 10, generator=gen), "b": torch.randn(5, generator=gen)}
    return [encode_delta(delta, codec)[0] for codec in SEED_CODECS]


FRAMES = sample_frames()


def frame(header: object, payload: bytes = b"", compression: int = 0, body_len: int | None = None) -> bytes:
    """A hand-built frame, to reach validation paths a mutation rarely hits."""
    packed: bytes = msgpack.packb(header)
    head = struct.pack("<I", len(packed)) + packed
    head += bytes(-len(head) % 8)
    body = head + payload
    size = len(body) if body_len is None else body_len
    if compression == 1:
        body = zstandard.ZstdCompressor().compress(body)
    return PREFIX.pack(MAGIC, 1, compression, size) + body


def check_outcome(data: bytes, elements_max: int = ELEMENTS_MAX) -> None:
    try:
        out = decode_delta(data, elements_max=elements_max)
    except CodecError:
        return
    assert sum(t.numel() for t in out.values()) <= elements_max
    for tensor in out.values():
        assert tensor.dtype == torch.float32
        assert bool(torch.isfinite(tensor).all())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    check_outcome(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([0, 1, 2]), st.integers(0, 2**64 - 1))
def test_random_bytes_behind_a_valid_prefix(data: bytes, compression: int, body_len: int) -> None:
    check_outcome(PREFIX.pack(MAGIC, 1, compression, body_len) + data)
    check_outcome(PREFIX.pack(MAGIC, 1, compression, len(data)) + data)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(FRAMES),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_mutated_frames(seed: bytes, edits: list[tuple[int, int]]) -> None:
    data = bytearray(seed)
    for position, value in edits:
        data[position % len(data)] = value
    check_outcome(bytes(data))


@settings(max_examples=200, deadline=None)
@given(seed=st.sampled_from(FRAMES), cut=st.integers(0, 10**6), extra=st.binary(max_size=16))
def test_truncated_or_extended_frames(seed: bytes, cut: int, extra: bytes) -> None:
    check_outcome(seed[: cut % len(seed)])
    check_outcome(seed + extra)


@pytest.mark.parametrize("blob", FRAMES)
def test_a_delta_bigger_than_elements_max_is_refused(blob: bytes) -> None:
    assert decode_delta(blob, elements_max=125)
    with pytest.raises(CodecError, match="elements_max"):
        decode_delta(blob, elements_max=124)


DENSE = {"n": "w", "s": [2], "l": "dense"}
TOP = {"v": 1, "f": "fp32", "t": [DENSE]}
INT8 = {"v": 1, "f": "int8", "b": 2, "t": [DENSE]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than"),
        (b"XXXX" + bytes(10), "not a version-1"),
        (frame(TOP, bytes(8), compression=7), "compression"),
        (frame(TOP, bytes(8), body_len=10**12), "exceeds the bound"),
        (frame(TOP, bytes(8), body_len=5), "declares"),
        (frame({**TOP, "v": 2}, bytes(8)), "version-1 map"),
        (frame({**TOP, "f": "fp64"}, bytes(8)), "known value format"),
        (frame({**TOP, "x": 0}, bytes(8)), "unexpected keys"),
        (frame({**INT8, "b": 0}, bytes(16)), "block"),
        (frame({**TOP, "f": "int8"}, bytes(16)), "unexpected keys"),
        (frame({**TOP, "t": [DENSE, DENSE]}, bytes(16)), "repeats"),
        (frame({**TOP, "t": [{**DENSE, "s": [10**6, 10**6]}]}), "too large|elements_max"),
        (frame({**TOP, "t": [{**DENSE, "s": [-1]}]}), "shape"),
        (frame({**TOP, "t": [{**DENSE, "s": [True]}]}), "shape"),
        (frame({**TOP, "t": [{**DENSE, "s": [1] * 9}]}), "shape"),
        (frame({**TOP, "t": [{**DENSE, "x": 1}]}), "exactly the keys"),
        (frame({**TOP, "t": [{**DENSE, "l": "sparse"}]}), "layout"),
        (frame({**TOP, "t": [{**DENSE, "n": ""}]}), "name"),
        (frame({**TOP, "t": "w"}), "must be a list"),
        (frame(TOP, bytes(16)), "describes"),
        (frame({**TOP, "t": [{**DENSE, "l": "topk", "k": 3, "w": 1}]}), "top-k"),
        (frame({**TOP, "t": [{**DENSE, "l": "topk", "k": 1, "w": 3}]}), "top-k"),
        (frame({**TOP, "t": [{**DENSE, "l": "topk", "k": 2, "w": 1}]}, bytes([0, 5]) + bytes(14)), "outside"),
        (frame({**TOP, "t": [{**DENSE, "s": [2, 2], "l": "lowrank", "r": 1}]}), "low-rank"),
        (frame(TOP, struct.pack("<2f", 1.0, float("nan"))), "inf or nan"),
        (frame({**TOP, "f": "fp16"}, struct.pack("<2e", 1.0, float("inf")) + bytes(4)), "inf or nan"),
        (frame(INT8, struct.pack("<f", -1.0) + bytes(12)), "scales"),
        (frame(INT8, struct.pack("<f", 3e38) + bytes(4) + bytes([127, 127]) + bytes(6)), "inf or nan"),
        (
            frame(
                {**TOP, "t": [{**DENSE, "s": [3, 3], "l": "lowrank", "r": 1}]},
                struct.pack("<6f", *[1e30] * 6),
            ),
            "overflows",
        ),
        (PREFIX.pack(MAGIC, 1, 0, 4) + struct.pack("<I", 2**31), "header length"),
        (PREFIX.pack(MAGIC, 1, 1, 100) + b"not zstd at all", "zstd"),
        (PREFIX.pack(MAGIC, 1, 0, 12) + struct.pack("<I", 8) + b"\xc1" * 8, "msgpack"),
    ],
)
def test_each_malformed_field_is_named_in_the_error(data: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_delta(data, elements_max=ELEMENTS_MAX)


def test_a_zstd_bomb_is_stopped_at_the_declared_size() -> None:
    bomb = zstandard.ZstdCompressor().compress(bytes(64 << 20))
    with pytest.raises(CodecError, match="declares"):
        decode_delta(PREFIX.pack(MAGIC, 1, 1, 1000) + bomb, elements_max=ELEMENTS_MAX)
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(64 << 20))
    with pytest.raises(CodecError, match="does not inflate"):
        decode_delta(PREFIX.pack(MAGIC, 1, 1, 1000) + unsized, elements_max=ELEMENTS_MAX)


def test_decoding_is_repeatable_bit_for_bit() -> None:
    for blob in FRAMES:
        first: dict[str, Tensor] = decode_delta(blob, elements_max=ELEMENTS_MAX)
        second = decode_delta(blob, elements_max=ELEMENTS_MAX)
        assert all(torch.equal(first[k], second[k]) for k in first)


small_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True),
    st.sampled_from(["dense", "topk", "lowrank", "fp32", "fp16", "bf16", "int8", "w", ""]),
    st.lists(st.integers(-2, 70), max_size=4),
)
entries = st.dictionaries(st.sampled_from(["n", "s", "l", "k", "w", "r", "x"]), small_values, max_size=6)
headers = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2]), "f": small_values, "t": st.lists(entries, max_size=3)},
    optional={"b": small_values},
)


@settings(max_examples=400, deadline=None)
@given(header=headers, payload=st.binary(max_size=80), compression=st.sampled_from([0, 1]))
def test_structured_random_headers(header: dict[str, object], payload: bytes, compression: int) -> None:
    check_outcome(frame(header, payload, compression=compression))
