"""Typed messages <-> msgpack: the only decoder of bytes that came from the network.

Every message type is a frozen, slotted, keyword-only dataclass registered under a type name and a
size limit, in the module that owns the concept::

    @message("gossip.ping", max_bytes=256)
    @dataclass(frozen=True, slots=True, kw_only=True)
    class Ping:
        seq: int
        note: Annotated[str, Limit(max_len=64)] = ""

Field types are checked against the annotations when a message is decoded (and when it is encoded,
so we never emit bytes a peer would reject): ``int``, ``float`` (finite), ``bool``, ``str``,
``bytes``, ``T | None``, ``tuple[T, ...]``, fixed ``tuple[A, B]``, ``dict[str, T]``, ``dict[bytes, T]``,
``enum.Enum`` subclasses (by value), and other registered message types (nested
without their tag). Per-field bounds come from ``Annotated[T, Limit(...)]`` at any depth, or from
``field(metadata={"max_len": n, "min": a, "max": b})`` on the outer type.

Why one strict codec: a node must survive any bytes a peer sends. Anything malformed, oversized,
wrongly typed or unknown raises :class:`WireError` -- never another exception and never a partially
built object -- and the type's ``max_bytes`` is enforced before its body is unpacked. A class's own
``__post_init__`` checks run on decode too; the ``ValueError``/``TypeError`` they raise becomes a
``WireError``.

Format: ``encode`` writes the msgpack array ``[type_name, body]`` where ``body`` is a map of field name
to value in declaration order (map keys of ``dict`` fields sorted), so equal messages encode to equal
bytes, which is what signatures are computed over.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
from collections.abc import Callable, Sized
from typing import Annotated, Any, TypeVar, Union, cast, get_args, get_origin, get_type_hints

import msgpack

__all__ = [
    "Limit",
    "WireError",
    "decode",
    "decode_as",
    "decode_body",
    "encode",
    "encode_body",
    "global_max_bytes",
    "max_bytes_of",
    "message",
    "pack_plain",
    "registered_types",
    "type_name_of",
    "unpack_plain",
]

T = TypeVar("T")
Converter = Callable[[Any, str], Any]  # (value, path) -> converted value, raises WireError

INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
TYPE_NAME_LEN_MAX = 64
# Unpacking the tag costs at most this many bytes beyond the body's own limit.
TAG_OVERHEAD_BYTES = TYPE_NAME_LEN_MAX + 8
_PAIR_HEADER = b"\x92"  # msgpack fixarray of two: [type_name, body]


class WireError(ValueError):
    """Bytes (or a value) that do not form a valid message; ``reason`` says why, for logs and metrics."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class Limit:
    """Bounds on a field: lengths of str/bytes/tuple/dict, and the range of an int or float."""

    min_len: int = 0
    max_len: int | None = None
    min: int | float | None = None
    max: int | float | None = None


@dataclasses.dataclass(slots=True)
class _Spec:
    type_name: str
    cls: type
    max_bytes: int
    decode_fields: Callable[[Any, str], Any] | None = None
    encode_fields: Callable[[Any, str], Any] | None = None


_BY_NAME: dict[str, _Spec] = {}
_BY_CLASS: dict[type, _Spec] = {}
_DECODE_ERRORS = (
    ValueError,
    TypeError,
    OverflowError,
    KeyError,
    IndexError,
    RecursionError,
    msgpack.UnpackException,
)


def message(type_name: str, *, max_bytes: int) -> Callable[[type[T]], type[T]]:
    """Register a frozen dataclass as a wire message type named ``type_name``."""
    if not type_name or len(type_name) > TYPE_NAME_LEN_MAX:
        raise ValueError(f"type name must be 1..{TYPE_NAME_LEN_MAX} characters: {type_name!r}")
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")

    def register(cls: type[T]) -> type[T]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass")
        params = getattr(cls, "__dataclass_params__", None)
        if params is None or not params.frozen:
            raise TypeError(f"{cls.__name__} must be a frozen dataclass")
        if type_name in _BY_NAME and _BY_NAME[type_name].cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"wire type {type_name!r} is already registered by {_BY_NAME[type_name].cls}")
        spec = _Spec(type_name, cls, max_bytes)
        _BY_NAME[type_name] = spec
        _BY_CLASS[cls] = spec
        setattr(cls, "__wire_type__", type_name)  # noqa: B010 - a class attribute on a slotted class
        return cls

    return register


def registered_types() -> dict[str, type]:
    """Type name -> class for every registered message (for tests and diagnostics)."""
    return {name: spec.cls for name, spec in _BY_NAME.items()}


def type_name_of(cls_or_msg: object) -> str:
    cls = cls_or_msg if isinstance(cls_or_msg, type) else type(cls_or_msg)
    spec = _BY_CLASS.get(cls)
    if spec is None:
        raise WireError(f"not a registered message type: {cls.__name__}")
    return spec.type_name


def max_bytes_of(type_name: str) -> int:
    return _spec_by_name(type_name).max_bytes


def _spec_by_name(type_name: str) -> _Spec:
    spec = _BY_NAME.get(type_name)
    if spec is None:
        raise WireError(f"unknown message type {type_name[:TYPE_NAME_LEN_MAX]!r}")
    return spec


# ---------------------------------------------------------------------------------------------------
# Compiling annotations into converters. Done lazily on first use so that a message may refer to a
# class defined later in its module.


def _compiled(spec: _Spec) -> _Spec:
    if spec.decode_fields is None:
        spec.decode_fields, spec.encode_fields = _compile_message(spec.cls)
    return spec


def _compile_message(cls: type) -> tuple[Converter, Converter]:
    hints = get_type_hints(cls, include_extras=True)
    fields = [f for f in dataclasses.fields(cls) if f.init]
    decoders: dict[str, Converter] = {}
    encoders: list[tuple[str, Converter]] = []
    required = set()
    for f in fields:
        limit = _limit_from_metadata(f.metadata)
        dec, enc = _compile(hints[f.name], limit)
        decoders[f.name] = dec
        encoders.append((f.name, enc))
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.add(f.name)
    name = cls.__name__

    def decode_fields(raw: Any, path: str) -> Any:
        if type(raw) is not dict:
            raise WireError(f"{path}: expected a map of {name} fields")
        missing = required.difference(raw)
        if missing:
            raise WireError(f"{path}: missing field(s) {sorted(missing)} of {name}")
        kwargs = {}
        for key, value in raw.items():
            dec = decoders.get(key)
            if dec is None:
                raise WireError(f"{path}: unknown field {str(key)[:40]!r} for {name}")
            kwargs[key] = dec(value, f"{path}.{key}")
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as exc:
            raise WireError(f"{path}: invalid {name}: {exc}") from exc

    def encode_fields(msg: Any, path: str) -> Any:
        if type(msg) is not cls:
            raise WireError(f"{path}: expected {name}, got {type(msg).__name__}")
        return {key: enc(getattr(msg, key), f"{path}.{key}") for key, enc in encoders}

    return decode_fields, encode_fields


def _limit_from_metadata(metadata: Any) -> Limit | None:
    keys = ("min_len", "max_len", "min", "max")
    if not any(k in metadata for k in keys):
        return None
    return Limit(**{k: metadata[k] for k in keys if k in metadata})


def _compile(tp: Any, limit: Limit | None) -> tuple[Converter, Converter]:
    origin = get_origin(tp)
    if origin is Annotated:
        base, *extras = get_args(tp)
        limits = [e for e in extras if isinstance(e, Limit)]
        return _compile(base, limits[-1] if limits else limit)
    if origin in (Union, types.UnionType):
        return _compile_optional(tp, limit)
    if tp is type(None) or tp is None:
        return _check_none, _check_none
    if tp in _SCALARS:
        return _compile_scalar(tp, limit)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _compile_enum(tp)
    if origin is tuple:
        return _compile_tuple(get_args(tp), limit)
    if origin is dict:
        return _compile_dict(get_args(tp), limit)
    if isinstance(tp, type) and tp in _BY_CLASS:
        return _compile_nested(_BY_CLASS[tp])
    raise TypeError(f"wire cannot carry fields of type {tp!r}")


def _check_none(value: Any, path: str) -> Any:
    if value is not None:
        raise WireError(f"{path}: expected nil")
    return None


def _compile_optional(tp: Any, limit: Limit | None) -> tuple[Converter, Converter]:
    args = get_args(tp)
    inner = [a for a in args if a is not type(None)]
    if len(inner) != 1 or len(args) != 2:
        raise TypeError(f"only `T | None` unions are supported, not {tp!r}")
    dec, enc = _compile(inner[0], limit)

    def decode_opt(value: Any, path: str) -> Any:
        return None if value is None else dec(value, path)

    def encode_opt(value: Any, path: str) -> Any:
        return None if value is None else enc(value, path)

    return decode_opt, encode_opt


def _check_len(n: int, limit: Limit | None, path: str) -> None:
    if limit is not None and (n < limit.min_len or (limit.max_len is not None and n > limit.max_len)):
        raise WireError(f"{path}: length {n} outside [{limit.min_len}, {limit.max_len}]")


def _check_range(value: float, limit: Limit | None, path: str) -> None:
    if limit is None:
        return
    if (limit.min is not None and value < limit.min) or (limit.max is not None and value > limit.max):
        raise WireError(f"{path}: {value} outside [{limit.min}, {limit.max}]")


def _compile_scalar(tp: type, limit: Limit | None) -> tuple[Converter, Converter]:
    if tp is int:

        def conv_int(value: Any, path: str) -> Any:
            if type(value) is not int:
                raise WireError(f"{path}: expected int, got {type(value).__name__}")
            if not INT_MIN <= value <= INT_MAX:
                raise WireError(f"{path}: int out of range")
            _check_range(value, limit, path)
            return value

        return conv_int, conv_int
    if tp is float:

        def conv_float(value: Any, path: str) -> Any:
            if type(value) is int and -(2**53) <= value <= 2**53:
                value = float(value)  # msgpack peers may write integral floats as ints
            if type(value) is not float:
                raise WireError(f"{path}: expected float, got {type(value).__name__}")
            if not math.isfinite(value):
                raise WireError(f"{path}: float is not finite")
            _check_range(value, limit, path)
            return value

        return conv_float, conv_float

    def conv_simple(value: Any, path: str) -> Any:
        if type(value) is not tp:
            raise WireError(f"{path}: expected {tp.__name__}, got {type(value).__name__}")
        if tp is not bool:
            _check_len(len(cast(Sized, value)), limit, path)
        return value

    return conv_simple, conv_simple


_SCALARS = (int, float, bool, str, bytes)


def _compile_enum(tp: type[enum.Enum]) -> tuple[Converter, Converter]:
    def dec(value: Any, path: str) -> Any:
        if type(value) not in (int, str):
            raise WireError(f"{path}: expected {tp.__name__} value")
        try:
            return tp(value)
        except ValueError as exc:
            raise WireError(f"{path}: not a {tp.__name__}: {str(value)[:40]!r}") from exc

    def enc(value: Any, path: str) -> Any:
        if not isinstance(value, tp):
            raise WireError(f"{path}: expected {tp.__name__}")
        return value.value

    return dec, enc


def _compile_tuple(args: tuple[Any, ...], limit: Limit | None) -> tuple[Converter, Converter]:
    if len(args) == 2 and args[1] is Ellipsis:
        item_dec, item_enc = _compile(args[0], None)

        def dec_var(value: Any, path: str) -> Any:
            if type(value) is not list:
                raise WireError(f"{path}: expected an array")
            _check_len(len(value), limit, path)
            return tuple([item_dec(v, f"{path}[{i}]") for i, v in enumerate(value)])

        def enc_var(value: Any, path: str) -> Any:
            if type(value) is not tuple:
                raise WireError(f"{path}: expected a tuple")
            _check_len(len(value), limit, path)
            return [item_enc(v, f"{path}[{i}]") for i, v in enumerate(value)]

        return dec_var, enc_var
    parts = [_compile(a, None) for a in args]

    def dec_fixed(value: Any, path: str) -> Any:
        if type(value) is not list or len(value) != len(parts):
            raise WireError(f"{path}: expected an array of {len(parts)}")
        return tuple([p[0](v, f"{path}[{i}]") for i, (p, v) in enumerate(zip(parts, value, strict=True))])

    def enc_fixed(value: Any, path: str) -> Any:
        if type(value) is not tuple or len(value) != len(parts):
            raise WireError(f"{path}: expected a tuple of {len(parts)}")
        return [p[1](v, f"{path}[{i}]") for i, (p, v) in enumerate(zip(parts, value, strict=True))]

    return dec_fixed, enc_fixed


def _compile_dict(args: tuple[Any, ...], limit: Limit | None) -> tuple[Converter, Converter]:
    key_tp, val_tp = args
    key_base = get_args(key_tp)[0] if get_origin(key_tp) is Annotated else key_tp
    if key_base not in (str, bytes):  # msgpack with strict map keys reads only these
        raise TypeError(f"dict keys must be str or bytes, not {key_tp!r}")
    key_dec, key_enc = _compile(key_tp, None)
    val_dec, val_enc = _compile(val_tp, None)

    def dec(value: Any, path: str) -> Any:
        if type(value) is not dict:
            raise WireError(f"{path}: expected a map")
        _check_len(len(value), limit, path)
        return {key_dec(k, f"{path}<key>"): val_dec(v, f"{path}[]") for k, v in value.items()}

    def enc(value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise WireError(f"{path}: expected a dict")
        _check_len(len(value), limit, path)
        try:
            keys = sorted(value)
        except TypeError as exc:
            raise WireError(f"{path}: dict keys are not comparable") from exc
        return {key_enc(k, f"{path}<key>"): val_enc(value[k], f"{path}[]") for k in keys}

    return dec, enc


def _compile_nested(spec: _Spec) -> tuple[Converter, Converter]:
    # Resolved at call time: the nested class may not be compiled (or fully defined) yet.
    def dec(value: Any, path: str) -> Any:
        fn = _compiled(spec).decode_fields
        assert fn is not None
        return fn(value, path)

    def enc(value: Any, path: str) -> Any:
        fn = _compiled(spec).encode_fields
        assert fn is not None
        return fn(value, path)

    return dec, enc


# ---------------------------------------------------------------------------------------------------
# Public codec.


def pack_plain(obj: Any) -> bytes:
    """msgpack of plain values (bin for bytes), for framing that is not itself a message type."""
    try:
        return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise WireError(f"cannot pack: {exc}") from exc


def unpack_plain(data: bytes, *, max_bytes: int) -> Any:
    """Unpack one msgpack value, refusing more than ``max_bytes`` before unpacking anything."""
    if type(data) is not bytes:
        raise WireError("expected bytes")
    if len(data) > max_bytes:
        raise WireError(f"{len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, max_ext_len=0, use_list=True)
    except _DECODE_ERRORS as exc:
        raise WireError(f"malformed msgpack: {type(exc).__name__}") from exc


def _plain_body(msg: object) -> tuple[_Spec, Any]:
    spec = _BY_CLASS.get(type(msg))
    if spec is None:
        raise WireError(f"not a registered message type: {type(msg).__name__}")
    enc = _compiled(spec).encode_fields
    assert enc is not None
    return spec, enc(msg, spec.type_name)


def encode_body(msg: object) -> bytes:
    """The body alone (no type tag), for envelopes that carry the type name beside it."""
    spec, body = _plain_body(msg)
    data = pack_plain(body)
    if len(data) > spec.max_bytes:
        raise WireError(f"{spec.type_name}: {len(data)} bytes exceeds the limit of {spec.max_bytes}")
    return data


def encode(msg: object) -> bytes:
    """``[type_name, body]`` as msgpack; raises WireError for a value a peer would reject."""
    # The limit is on the body alone, as for `encode_body`: a message is sendable in both framings
    # or in neither, whatever the length of its type tag.
    body = encode_body(msg)
    return _PAIR_HEADER + pack_plain(_BY_CLASS[type(msg)].type_name) + body


def _build(spec: _Spec, raw: Any) -> object:
    dec = _compiled(spec).decode_fields
    assert dec is not None
    try:
        return dec(raw, spec.type_name)
    except WireError:
        raise
    except _DECODE_ERRORS as exc:
        raise WireError(f"{spec.type_name}: {type(exc).__name__}") from exc


def decode_body(type_name: str, body: bytes) -> object:
    """Decode a body written by :func:`encode_body` as the message type ``type_name``."""
    if type(type_name) is not str:
        raise WireError("type name must be a string")
    spec = _spec_by_name(type_name)
    return _build(spec, unpack_plain(body, max_bytes=spec.max_bytes))


def global_max_bytes() -> int:
    """The largest encoded size of any registered type (limits for framing around messages)."""
    return max((s.max_bytes for s in _BY_NAME.values()), default=0) + TAG_OVERHEAD_BYTES


def decode(data: bytes) -> object:
    """Decode bytes written by :func:`encode`, choosing the class by the type tag."""
    if type(data) is not bytes:
        raise WireError("expected bytes")
    if len(data) > global_max_bytes():
        raise WireError(f"{len(data)} bytes exceeds every message limit")
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=True, max_ext_len=0, use_list=True, max_buffer_size=max(len(data), 1)
    )
    try:
        unpacker.feed(data)
        if unpacker.read_array_header() != 2:
            raise WireError("expected [type, body]")
        type_name = unpacker.unpack()
        if type(type_name) is not str:
            raise WireError("type tag must be a string")
        spec = _spec_by_name(type_name)
        body_bytes = len(data) - unpacker.tell()
        if body_bytes > spec.max_bytes:
            raise WireError(f"{type_name}: {body_bytes} bytes exceeds the limit of {spec.max_bytes}")
        body = unpacker.unpack()
        if unpacker.tell() != len(data):
            raise WireError("trailing bytes after the message")
    except WireError:
        raise
    except _DECODE_ERRORS as exc:
        raise WireError(f"malformed msgpack: {type(exc).__name__}") from exc
    return _build(spec, body)


def decode_as(data: bytes, cls: type[T]) -> T:
    """Decode and insist on one class: a message of any other type is a WireError."""
    msg = decode(data)
    if type(msg) is not cls:
        raise WireError(f"expected {type_name_of(cls)}, got {type_name_of(msg)}")
    return msg
