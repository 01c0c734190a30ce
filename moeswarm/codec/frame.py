"""One self-describing frame for a named set of delta tensors, and its bounded decoder.

Layout (integers little-endian):

    prefix   b"MSDC" | version u8 | compression u8 (0 none, 1 zstd) | body_len u64
    body     header_len u32 | header (msgpack, see header.py) | zero padding to 8 |
             the index planes of each top-k tensor, then the value-stream sections, each padded to 8

With zstd the bytes after the prefix are one zstd frame that must inflate to exactly ``body_len`` bytes.
Section sizes follow from the header, so the decoder checks every count against ``elements_max`` and
every size against the actual byte count before it allocates anything for the tensors.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import zstandard
from torch import Tensor

from moeswarm.codec import lowrank, sparse
from moeswarm.codec.errors import CodecError
from moeswarm.codec.header import (
    ELEMENTS_MAX,
    HEADER_BYTES_MAX,
    NAME_CHARS_MAX,
    NDIM_MAX,
    TENSORS_MAX,
    VERSION,
    Header,
    TensorEntry,
    parse_header,
)
from moeswarm.codec.spec import CodecSpec, parse_spec
from moeswarm.codec.values import all_finite, decode_values, encode_values, section_sizes

MAGIC = b"MSDC"
PREFIX = struct.Struct("<4sBBQ")
HEADER_LEN = struct.Struct("<I")
ALIGN_BYTES = 8
PAYLOAD_BYTES_PER_ELEMENT_MAX = 12
ZSTD_READ_BYTES = 1 << 22


@dataclass(slots=True)
class _Planned:
    """A tensor after its structure stage, waiting for the shared value stage."""

    entry: TensorEntry
    x: Tensor
    values: Tensor
    index_bytes: Tensor | None = None
    kept_at: Tensor | None = None
    factors: tuple[Tensor, Tensor] | None = None


def encode_delta(
    tensors: Mapping[str, Tensor],
    spec: CodecSpec | str,
    residual: Mapping[str, Tensor] | None = None,
) -> tuple[bytes, dict[str, Tensor]]:
    """Compress ``tensors + residual``; returns the frame and the error to add to next round's delta.

    Tensors of any floating dtype or device are taken as float32 on the CPU. Raises ValueError for
    input that cannot be a delta (non-finite values, bad names, mismatched residual shapes).
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    if len(tensors) > TENSORS_MAX:
        raise ValueError(f"a delta holds at most {TENSORS_MAX} tensors, got {len(tensors)}")
    prepared = {name: _prepared(name, t, residual) for name, t in tensors.items()}
    plans = [_structure(name, x, spec) for name, x in prepared.items()]
    streams = [p.values for p in plans]
    stream = streams[0] if len(streams) == 1 else torch.cat(streams) if streams else torch.empty(0)
    value_sections, stream_error = encode_values(stream, spec.values, spec.block)
    new_residual = {}
    offset = 0
    for plan in plans:
        count = plan.entry.value_count
        new_residual[plan.entry.name] = _residual(plan, stream_error[offset : offset + count])
        offset += count
    header = Header(spec.values, spec.block, tuple(p.entry for p in plans)).pack()
    pieces: list[bytes | memoryview] = [HEADER_LEN.pack(len(header)), header, _padding(4 + len(header))]
    sections = [p.index_bytes for p in plans if p.index_bytes is not None] + value_sections
    for section in sections:
        raw = section.contiguous().view(torch.uint8).numpy().data
        pieces += [raw, _padding(raw.nbytes)]
    body_len = sum(len(p) if isinstance(p, bytes) else p.nbytes for p in pieces)
    if spec.zstd_level is None:
        return b"".join([PREFIX.pack(MAGIC, VERSION, 0, body_len), *pieces]), new_residual
    compressor = zstandard.ZstdCompressor(level=spec.zstd_level, write_content_size=True)
    stream_z = compressor.compressobj(size=body_len)
    out = [PREFIX.pack(MAGIC, VERSION, 1, body_len)]
    out += [stream_z.compress(piece) for piece in pieces]
    out.append(stream_z.flush())
    return b"".join(out), new_residual


def _prepared(name: str, tensor: Tensor, residual: Mapping[str, Tensor] | None) -> Tensor:
    if not isinstance(name, str) or not 1 <= len(name) <= NAME_CHARS_MAX:
        raise ValueError(f"tensor names must be strings of 1..{NAME_CHARS_MAX} characters, got {name!r}")
    if not isinstance(tensor, Tensor) or not tensor.is_floating_point() or tensor.dim() > NDIM_MAX:
        raise ValueError(f"tensor {name!r} must be a floating tensor of at most {NDIM_MAX} dimensions")
    x = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()
    if residual is not None and name in residual:
        carried = residual[name]
        if tuple(carried.shape) != tuple(x.shape):
            raise ValueError(
                f"residual for {name!r} has shape {tuple(carried.shape)}, tensor {tuple(x.shape)}"
            )
        x = x + carried.detach().to(device="cpu", dtype=torch.float32)
    if not all_finite(x):
        raise ValueError(f"tensor {name!r} holds inf or nan")
    return x


def _structure(name: str, x: Tensor, spec: CodecSpec) -> _Planned:
    """Top-k indices or low-rank factors or nothing for one tensor; values are encoded later, jointly."""
    shape = tuple(x.shape)
    flat = x.view(-1)
    if spec.structure == "topk":
        kept_at = sparse.select_top(flat, sparse.kept_count(flat.numel(), spec.fraction))
        width, index_bytes = sparse.encode_indices(kept_at)
        entry = TensorEntry(name, shape, "topk", kept=kept_at.numel(), width=width)
        return _Planned(entry, x, flat[kept_at], index_bytes=index_bytes, kept_at=kept_at)
    if spec.structure == "lowrank" and lowrank.applies(shape, spec.rank):
        p_MR, q_NR = lowrank.factorize(x, spec.rank, name)
        entry = TensorEntry(name, shape, "lowrank", rank=spec.rank)
        return _Planned(entry, x, torch.cat([p_MR.view(-1), q_NR.view(-1)]), factors=(p_MR, q_NR))
    return _Planned(TensorEntry(name, shape, "dense"), x, flat)


def _residual(plan: _Planned, error: Tensor) -> Tensor:
    """x - x_hat for one tensor, given the value-stage error of its slice of the stream."""
    x = plan.x
    if plan.entry.layout == "topk":
        assert plan.kept_at is not None
        out = x.view(-1).clone()
        out[plan.kept_at] = error
        return out.view(x.shape)
    if plan.entry.layout == "lowrank":
        assert plan.factors is not None
        p_MR, q_NR = plan.factors
        split = p_MR.numel()
        p_hat = p_MR - error[:split].view(p_MR.shape)
        q_hat = q_NR - error[split:].view(q_NR.shape)
        # The sender's own error may use a library matmul: only the receivers must agree bit for bit.
        return torch.addmm(x, p_hat, q_hat.T, alpha=-1)
    return error.view(x.shape)


def decode_delta(data: bytes, *, elements_max: int) -> dict[str, Tensor]:
    """Frame -> float32 tensors by name. Any malformed, oversized or inconsistent input raises CodecError.

    ``elements_max`` bounds the total element count of all tensors (what the receiver is ready to hold);
    nothing larger than a small multiple of it is ever allocated.
    """
    if not 0 <= elements_max <= ELEMENTS_MAX:
        raise ValueError(f"elements_max must be in [0, {ELEMENTS_MAX}]")
    body = _body(data if isinstance(data, bytes) else bytes(data), elements_max)
    if len(body) < HEADER_LEN.size:
        raise CodecError("frame body too short for its header length")
    (header_len,) = HEADER_LEN.unpack_from(body)
    if header_len > min(HEADER_BYTES_MAX, len(body) - HEADER_LEN.size):
        raise CodecError(f"header length {header_len} exceeds the frame or {HEADER_BYTES_MAX} bytes")
    header = parse_header(bytes(body[HEADER_LEN.size : HEADER_LEN.size + header_len]), elements_max)
    value_count = sum(e.value_count for e in header.entries)
    index_sizes = [e.index_bytes for e in header.entries if e.layout == "topk"]
    value_sizes = section_sizes(header.values, value_count, header.block)
    offset = _aligned(HEADER_LEN.size + header_len)
    expected = offset + sum(_aligned(size) for size in index_sizes + value_sizes)
    if expected != len(body):
        raise CodecError(f"frame body is {len(body)} bytes, its header describes {expected}")
    whole = torch.frombuffer(body, dtype=torch.uint8) if body else torch.empty(0, dtype=torch.uint8)
    sections = []
    for size in index_sizes + value_sizes:
        sections.append(whole[offset : offset + size])
        offset += _aligned(size)
    stream = decode_values(sections[len(index_sizes) :], header.values, value_count, header.block)
    if not all_finite(stream):
        raise CodecError("frame values decode to inf or nan")
    return _split(header, sections[: len(index_sizes)], stream)


def _split(header: Header, index_sections: list[Tensor], stream: Tensor) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    indices_left = iter(index_sections)
    offset = 0
    for entry in header.entries:
        values = stream[offset : offset + entry.value_count]
        offset += entry.value_count
        if entry.layout == "topk":
            indices = sparse.decode_indices(next(indices_left), entry.kept, entry.width, entry.numel)
            dense = torch.zeros(entry.numel, dtype=torch.float32)
            dense[indices] = values
            out[entry.name] = dense.view(entry.shape)
        elif entry.layout == "lowrank":
            rows, cols = entry.shape
            split = rows * entry.rank
            p_MR = values[:split].view(rows, entry.rank)
            q_NR = values[split:].view(cols, entry.rank)
            matrix = lowrank.reconstruct(p_MR, q_NR)
            if not all_finite(matrix):
                raise CodecError(f"tensor {entry.name!r} overflows when its factors are multiplied out")
            out[entry.name] = matrix
        else:
            out[entry.name] = values.view(entry.shape)
    return out


def _body(data: bytes, elements_max: int) -> bytearray:
    if len(data) < PREFIX.size:
        raise CodecError(f"frame of {len(data)} bytes is shorter than its {PREFIX.size}-byte prefix")
    magic, version, compression, body_len = PREFIX.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise CodecError(f"not a version-{VERSION} delta frame (magic {magic!r}, version {version})")
    body_max = (
        HEADER_LEN.size
        + HEADER_BYTES_MAX
        + ALIGN_BYTES * (2 + TENSORS_MAX)
        + PAYLOAD_BYTES_PER_ELEMENT_MAX * elements_max
    )
    if body_len > body_max:
        raise CodecError(
            f"frame body of {body_len} bytes exceeds the bound of {body_max} for {elements_max} elements"
        )
    if compression == 0:
        if len(data) - PREFIX.size != body_len:
            raise CodecError(f"frame declares {body_len} body bytes but carries {len(data) - PREFIX.size}")
        return bytearray(memoryview(data)[PREFIX.size :])
    if compression != 1:
        raise CodecError(f"unknown frame compression {compression}")
    return _inflate(memoryview(data)[PREFIX.size :], body_len)


def _inflate(compressed: memoryview, body_len: int) -> bytearray:
    """zstd with the output capped at the declared (and already bounded) size, read into one buffer."""
    try:
        declared = zstandard.frame_content_size(compressed)
        if declared not in (-1, body_len):
            raise CodecError(f"zstd frame declares {declared} bytes, the prefix {body_len}")
        body = bytearray(body_len)
        view = memoryview(body)
        filled = 0
        with zstandard.ZstdDecompressor().stream_reader(compressed, read_size=ZSTD_READ_BYTES) as reader:
            while filled < body_len:
                got = reader.readinto(view[filled : filled + ZSTD_READ_BYTES])
                if got == 0:
                    break
                filled += got
            trailing = reader.read(1)
    except zstandard.ZstdError as exc:
        raise CodecError(f"zstd payload is corrupt: {exc}") from exc
    if filled != body_len or trailing:
        raise CodecError(f"zstd payload does not inflate to the declared {body_len} bytes")
    return body


def _aligned(size: int) -> int:
    return -(-size // ALIGN_BYTES) * ALIGN_BYTES


def _padding(size: int) -> bytes:
    return bytes(_aligned(size) - size)
