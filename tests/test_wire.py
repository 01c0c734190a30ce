from __future__ import annotations

import contextlib
import enum
import math
from dataclasses import dataclass, field
from typing import Annotated

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import moeswarm.clocks
import moeswarm.consensus.messages  # registers its types
import moeswarm.identity
from moeswarm import wire
from moeswarm.wire import Limit, WireError, message
from tests.wire_strategies import encodable, messages_of


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


@message("test.inner", max_bytes=256)
@dataclass(frozen=True, slots=True, kw_only=True)
class Inner:
    name: Annotated[str, Limit(max_len=8)]
    weight: float = 1.0


@message("test.everything", max_bytes=4096)
@dataclass(frozen=True, slots=True, kw_only=True)
class Everything:
    count: int
    ratio: float
    flag: bool
    label: str = field(metadata={"max_len": 16})
    blob: bytes
    maybe: int | None
    items: Annotated[tuple[Annotated[bytes, Limit(max_len=4)], ...], Limit(max_len=5)]
    pair: tuple[str, int]
    table: Annotated[dict[str, int], Limit(max_len=4)]
    colour: Colour
    inner: Inner
    inners: tuple[Inner, ...] = ()
    small: Annotated[int, Limit(min=0, max=10)] = 0


@message("test.checked", max_bytes=128)
@dataclass(frozen=True, slots=True, kw_only=True)
class Checked:
    low: int
    high: int

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError("low must not exceed high")


def _everything(**changes: object) -> Everything:
    base: dict[str, object] = {
        "count": 3,
        "ratio": 0.5,
        "flag": True,
        "label": "hi",
        "blob": b"\x00\x01",
        "maybe": None,
        "items": (b"ab", b"c"),
        "pair": ("x", 2),
        "table": {"b": 2, "a": 1},
        "colour": Colour.BLUE,
        "inner": Inner(name="in"),
        "inners": (Inner(name="a", weight=2.0),),
    }
    base.update(changes)
    return Everything(**base)  # type: ignore[arg-type]


def _raw(type_name: str, body: dict[str, object]) -> bytes:
    return msgpack.packb([type_name, body], use_bin_type=True)


def _body(msg: object) -> dict[str, object]:
    return msgpack.unpackb(wire.encode(msg), raw=False)[1]  # type: ignore[no-any-return]


def test_roundtrip_every_field_kind() -> None:
    msg = _everything(maybe=7)
    assert wire.decode(wire.encode(msg)) == msg
    assert wire.decode_as(wire.encode(msg), Everything) == msg
    assert wire.decode_body("test.everything", wire.encode_body(msg)) == msg


def test_equal_messages_encode_to_equal_bytes() -> None:
    # Signatures are computed over encodings: dict insertion order must not matter.
    a = _everything(table={"a": 1, "b": 2})
    b = _everything(table={"b": 2, "a": 1})
    assert wire.encode(a) == wire.encode(b)


def test_integral_float_written_as_int_is_accepted() -> None:
    body = _body(_everything())
    body["ratio"] = 2
    decoded = wire.decode(_raw("test.everything", body))
    assert isinstance(decoded, Everything)
    assert decoded.ratio == 2.0
    assert type(decoded.ratio) is float


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("count", True, "expected int"),
        ("count", "3", "expected int"),
        ("ratio", math.nan, "not finite"),
        ("flag", 1, "expected bool"),
        ("label", "x" * 17, "length 17"),
        ("blob", "text", "expected bytes"),
        ("items", [b"a"] * 6, "length 6"),
        ("items", [b"abcde"], "length 5"),
        ("pair", ["x"], "array of 2"),
        ("table", {"a": "1"}, "expected int"),
        ("colour", "green", "not a Colour"),
        ("inner", {"name": "x", "extra": 1}, "unknown field"),
        ("inner", {"weight": 1.0}, "missing field"),
        ("small", 11, "outside"),
        ("nope", 1, "unknown field"),
    ],
)
def test_wrongly_typed_field_is_rejected_with_reason(key: str, value: object, reason: str) -> None:
    body = _body(_everything())
    body[key] = value
    with pytest.raises(WireError) as info:
        wire.decode(_raw("test.everything", body))
    assert reason in info.value.reason


def test_missing_required_field_is_rejected() -> None:
    body = _body(_everything())
    del body["count"]
    with pytest.raises(WireError, match="missing"):
        wire.decode(_raw("test.everything", body))


def test_class_checks_run_on_decode() -> None:
    with pytest.raises(WireError, match="low must not exceed high"):
        wire.decode(_raw("test.checked", {"low": 5, "high": 1}))


def test_unknown_type_and_framing_errors() -> None:
    with pytest.raises(WireError, match="unknown message type"):
        wire.decode(_raw("test.nothing", {}))
    with pytest.raises(WireError, match="trailing"):
        wire.decode(wire.encode(Checked(low=1, high=2)) + b"\x00")
    with pytest.raises(WireError):
        wire.decode(b"")
    with pytest.raises(WireError, match="expected bytes"):
        wire.decode("text")  # type: ignore[arg-type]
    with pytest.raises(WireError, match=r"expected test\.checked"):
        wire.decode_as(wire.encode(Inner(name="x")), Checked)


def test_oversized_input_is_refused_before_unpacking() -> None:
    body = _body(Checked(low=1, high=2))
    body["padding"] = b"x" * 200  # would be an unknown field, but size is checked first
    with pytest.raises(WireError, match="exceeds the limit"):
        wire.decode(_raw("test.checked", body))
    with pytest.raises(WireError, match="exceeds"):
        wire.decode(b"\x00" * (wire.global_max_bytes() + 1))


def test_encoding_refuses_values_a_peer_would_reject() -> None:
    with pytest.raises(WireError):
        wire.encode(_everything(label="x" * 40))
    with pytest.raises(WireError):
        wire.encode(_everything(count=2**70))
    with pytest.raises(WireError, match="not a registered"):
        wire.encode(object())


def test_registering_a_non_frozen_class_fails() -> None:
    @dataclass
    class Loose:
        x: int

    with pytest.raises(TypeError, match="frozen"):
        message("test.loose", max_bytes=10)(Loose)


def _all_types() -> list[type]:
    return sorted(wire.registered_types().values(), key=lambda c: wire.type_name_of(c))


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300))
def test_random_bytes_raise_only_wire_error(data: bytes) -> None:
    try:
        msg = wire.decode(data)
    except WireError:
        return
    assert wire.decode(wire.encode(msg)) == msg


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=200), index=st.integers(0, 1000))
def test_random_bodies_raise_only_wire_error(data: bytes, index: int) -> None:
    types = _all_types()
    cls = types[index % len(types)]
    with contextlib.suppress(WireError):
        wire.decode_body(wire.type_name_of(cls), data)


def _mutate(data: bytes, draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice"]))
    pos = draw(st.integers(0, max(len(data) - 1, 0)))
    if kind == "flip" and data:
        return data[:pos] + bytes([data[pos] ^ draw(st.integers(1, 255))]) + data[pos + 1 :]
    if kind == "truncate":
        return data[:pos]
    if kind == "insert":
        return data[:pos] + draw(st.binary(min_size=1, max_size=8)) + data[pos:]
    if kind == "delete":
        return data[:pos] + data[pos + draw(st.integers(1, 8)) :]
    return data[:pos] + draw(st.binary(max_size=16))


@st.composite
def mutated_encodings(draw: st.DrawFn) -> bytes:
    cls = draw(st.sampled_from(_all_types()))
    msg = draw(messages_of(cls).filter(encodable))
    data = wire.encode(msg)
    for _ in range(draw(st.integers(1, 3))):
        data = _mutate(data, draw)
    return data


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=mutated_encodings())
def test_mutated_encodings_raise_only_wire_error(data: bytes) -> None:
    try:
        msg = wire.decode(data)
    except WireError:
        return
    assert wire.decode(wire.encode(msg)) == msg


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(data=st.data())
def test_every_registered_type_roundtrips(data: st.DataObject) -> None:
    cls = data.draw(st.sampled_from(_all_types()))
    msg = data.draw(messages_of(cls).filter(encodable))
    assert wire.decode(wire.encode(msg)) == msg
    assert wire.decode_body(wire.type_name_of(cls), wire.encode_body(msg)) == msg


def test_clock_types_are_registered() -> None:
    names = wire.registered_types()
    assert names["clock.hlc"] is moeswarm.clocks.HLCTimestamp
    assert names["clock.vector"] is moeswarm.clocks.VectorClock


@message("t.sized", max_bytes=64)
@dataclass(frozen=True, slots=True, kw_only=True)
class Sized:
    payload: bytes


def test_the_size_limit_is_on_the_body_in_both_framings() -> None:
    """A message is sendable tagged (`encode`) and untagged (`encode_body`) alike, or in neither:
    hypothesis once found a gossip update that fit beside its short type tag but not alone."""
    overhead = len(wire.encode_body(Sized(payload=b"")))
    fits, too_big = Sized(payload=b"x" * (64 - overhead)), Sized(payload=b"x" * (65 - overhead))
    assert len(wire.encode_body(fits)) == 64
    assert wire.decode(wire.encode(fits)) == fits
    assert wire.decode_body("t.sized", wire.encode_body(fits)) == fits
    for encoder in (wire.encode, wire.encode_body):
        with pytest.raises(WireError, match="exceeds the limit"):
            encoder(too_big)
    crafted = b"\x92" + wire.pack_plain("t.sized") + wire.pack_plain({"payload": too_big.payload})
    with pytest.raises(WireError, match="exceeds the limit"):
        wire.decode(crafted)
