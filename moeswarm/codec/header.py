"""The frame header: which tensors a frame holds and how each is laid out, validated before any allocation.

The header is a msgpack map ``{"v": 1, "f": value format, "b": int8 block (int8 only), "t": [entries]}``;
an entry is ``{"n": name, "s": shape, "l": "dense"}``, plus ``"k"`` (kept count) and ``"w"`` (index byte
width) for ``"topk"``, or ``"r"`` (rank) for ``"lowrank"``. All tensors share one value stream: the dense
values, kept top-k values and low-rank factors of every tensor, in header order, so the value stage runs
once per frame rather than once per (often small) tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from moeswarm.codec import lowrank, sparse
from moeswarm.codec.errors import CodecError
from moeswarm.codec.spec import BLOCK_MAX, RANK_MAX, VALUE_KINDS, Values

VERSION = 1
HEADER_BYTES_MAX = 1 << 20
TENSORS_MAX = 4096
NAME_CHARS_MAX = 256
NDIM_MAX = 8
ELEMENTS_MAX = (1 << 31) - 1


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor's line in the header."""

    name: str
    shape: tuple[int, ...]
    layout: str
    kept: int = 0
    width: int = 0
    rank: int = 0

    @property
    def numel(self) -> int:
        return product(self.shape)

    @property
    def value_count(self) -> int:
        """How many numbers this tensor contributes to the shared value stream."""
        if self.layout == "topk":
            return self.kept
        if self.layout == "lowrank":
            return (self.shape[0] + self.shape[1]) * self.rank
        return self.numel

    @property
    def index_bytes(self) -> int:
        return self.width * self.kept if self.layout == "topk" else 0

    def to_header(self) -> dict[str, Any]:
        item: dict[str, Any] = {"n": self.name, "s": list(self.shape), "l": self.layout}
        if self.layout == "topk":
            item.update(k=self.kept, w=self.width)
        elif self.layout == "lowrank":
            item["r"] = self.rank
        return item


@dataclass(frozen=True, slots=True)
class Header:
    values: Values
    block: int
    entries: tuple[TensorEntry, ...]

    def pack(self) -> bytes:
        top: dict[str, Any] = {"v": VERSION, "f": self.values, "t": [e.to_header() for e in self.entries]}
        if self.values == "int8":
            top["b"] = self.block
        packed: bytes = msgpack.packb(top)
        return packed


def parse_header(raw: bytes, elements_max: int) -> Header:
    """msgpack bytes -> Header, or CodecError; total elements are checked against ``elements_max``."""
    try:
        top = msgpack.unpackb(
            raw,
            raw=False,
            strict_map_key=True,
            max_str_len=NAME_CHARS_MAX * 4,
            max_bin_len=0,
            max_array_len=TENSORS_MAX,
            max_map_len=8,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CodecError(f"frame header is not valid msgpack: {exc}") from exc
    if not isinstance(top, dict) or top.get("v") != VERSION or top.get("f") not in VALUE_KINDS:
        raise CodecError(f"frame header must be a version-{VERSION} map with a known value format")
    values: Values = top["f"]
    if set(top) != ({"v", "f", "t", "b"} if values == "int8" else {"v", "f", "t"}):
        raise CodecError("frame header has missing or unexpected keys")
    block = top.get("b", 1)
    if not is_int(block, 1, BLOCK_MAX):
        raise CodecError(f"int8 block must be in [1, {BLOCK_MAX}]")
    items = top["t"]
    if not isinstance(items, list):
        raise CodecError("frame header t must be a list")
    entries = tuple(_parse_entry(item) for item in items)
    if len({e.name for e in entries}) != len(entries):
        raise CodecError("frame header repeats a tensor name")
    total = 0
    for entry in entries:
        total += entry.numel
        if total > elements_max:
            raise CodecError(f"frame holds more than elements_max={elements_max} elements")
    return Header(values, block, entries)


_KEYS = {"dense": {"n", "s", "l"}, "topk": {"n", "s", "l", "k", "w"}, "lowrank": {"n", "s", "l", "r"}}


def _parse_entry(item: object) -> TensorEntry:
    if not isinstance(item, dict):
        raise CodecError("each tensor in the frame header must be a map")
    layout = item.get("l")
    if not isinstance(layout, str) or layout not in _KEYS:
        raise CodecError(f"unknown tensor layout {layout!r}")
    if set(item) != _KEYS[layout]:
        raise CodecError(f"{layout} tensor entry must have exactly the keys {sorted(_KEYS[layout])}")
    name, shape = item["n"], item["s"]
    if not isinstance(name, str) or not 1 <= len(name) <= NAME_CHARS_MAX:
        raise CodecError(f"tensor name must be a string of 1..{NAME_CHARS_MAX} characters")
    if (
        not isinstance(shape, list)
        or len(shape) > NDIM_MAX
        or not all(is_int(d, 0, ELEMENTS_MAX) for d in shape)
    ):
        raise CodecError(f"tensor {name!r}: shape must be a list of at most {NDIM_MAX} sizes")
    dims = tuple(shape)
    if product(dims) > ELEMENTS_MAX:
        raise CodecError(f"tensor {name!r}: shape {dims} is too large")
    if layout == "topk":
        kept, width = item["k"], item["w"]
        if not (is_int(kept, 0, product(dims)) and width in sparse.INDEX_WIDTHS):
            raise CodecError(f"tensor {name!r}: top-k count or index width out of range")
        return TensorEntry(name, dims, layout, kept=kept, width=width)
    if layout == "lowrank":
        rank = item["r"]
        if not (is_int(rank, 1, RANK_MAX) and lowrank.applies(dims, rank)):
            raise CodecError(f"tensor {name!r}: low-rank rank {rank!r} does not fit shape {dims}")
        return TensorEntry(name, dims, layout, rank=rank)
    return TensorEntry(name, dims, layout)


def is_int(value: object, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def product(dims: tuple[int, ...]) -> int:
    total = 1
    for d in dims:
        total *= d
    return total
