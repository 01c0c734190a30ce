"""Value formats: how a flat run of float32 numbers becomes bytes (fp32, fp16, bf16, block-wise int8).

Each encoder also returns the reconstruction the receiver will see, so the caller can keep the error
(x - x_hat) as error feedback. Decoding is element-wise only (no reductions), so every machine gets the
same float32 bits from the same bytes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from moeswarm.codec.errors import CodecError
from moeswarm.codec.spec import Values

FP16_MAX = 65504.0
INT8_LEVELS = 127

_WIDTH = {"fp32": 4, "fp16": 2, "bf16": 2}
_TORCH_DTYPE = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_RAW_DTYPE = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.int16}


def section_sizes(kind: Values, count: int, block: int) -> list[int]:
    """Byte sizes of the sections ``count`` values take; int8 keeps float32 scales ahead of the codes."""
    if kind == "int8":
        return [4 * -(-count // block), count]
    return [_WIDTH[kind] * count]


def encode_values(x: Tensor, kind: Values, block: int) -> tuple[list[Tensor], Tensor]:
    """1-D finite float32 -> (sections as flat tensors whose bytes go on the wire, error x - x_hat).

    Written to allocate as little as possible: on one core, first-touching a fresh 256 MB buffer costs
    about as much as three in-place passes over it, so the error buffer doubles as scratch space.
    """
    if kind == "fp32":
        return [x], torch.zeros_like(x)
    if kind in ("fp16", "bf16"):
        narrow = x.to(_TORCH_DTYPE[kind])
        if not all_finite(narrow):
            narrow = x.clamp(-FP16_MAX, FP16_MAX).to(_TORCH_DTYPE[kind])
        error = torch.empty_like(x)
        error.copy_(narrow)
        torch.sub(x, error, out=error)
        return [narrow.view(_RAW_DTYPE[kind])], error
    if kind == "int8":
        return _encode_int8(x, block)
    raise ValueError(f"unknown value format {kind!r}")


def _encode_int8(x: Tensor, block: int) -> tuple[list[Tensor], Tensor]:
    """Absmax per block: each block's largest magnitude maps to +-127, so one outlier costs only its block.

    No clamp is needed: |x| * (127 / absmax) exceeds 127 by at most a rounding error, which rounds to 127.
    """
    count = x.numel()
    padded = -(-count // block) * block
    blocks = x if padded == count else torch.nn.functional.pad(x, (0, padded - count))
    blocks = blocks.view(-1, block)
    work = torch.empty_like(blocks)
    torch.abs(blocks, out=work)
    absmax = work.amax(dim=1, keepdim=True)
    scale = absmax / INT8_LEVELS
    inverse = torch.where(absmax > 0, INT8_LEVELS / absmax, torch.zeros_like(absmax))
    torch.mul(blocks, inverse, out=work)
    work.round_()
    codes = work.to(torch.int8)
    work.mul_(scale)
    torch.sub(blocks, work, out=work)
    return [scale.view(-1), codes.view(-1)[:count]], work.view(-1)[:count]


def all_finite(t: Tensor) -> bool:
    """A float32 sum is finite only if every element is (inf and nan propagate), and one summing pass is
    several times faster than ``isfinite().all()`` on one core; only a huge finite sum needs the exact
    check."""
    if bool(torch.isfinite(t.sum(dtype=torch.float32))):
        return True
    return bool(torch.isfinite(t).all())


def decode_values(sections: list[Tensor], kind: Values, count: int, block: int) -> Tensor:
    """Sections (uint8 views of exactly ``section_sizes`` bytes) -> 1-D float32 (the caller checks that
    the values are finite, once, after any reconstruction that could overflow)."""
    if kind == "int8":
        scale = _as(sections[0], torch.float32)
        if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
            raise CodecError("int8 block scales must be finite and non-negative")
        codes = _as(sections[1], torch.int8)
        padded = -(-count // block) * block
        wide = codes.to(torch.float32)
        if padded != count:
            wide = torch.nn.functional.pad(wide, (0, padded - count))
        return (wide.view(-1, block) * scale.view(-1, 1)).view(-1)[:count]
    if kind not in _WIDTH:
        raise CodecError(f"unknown value format {kind!r}")
    raw = _as(sections[0], _RAW_DTYPE[kind])
    return raw.view(_TORCH_DTYPE[kind]).to(torch.float32)


def _as(section: Tensor, dtype: torch.dtype) -> Tensor:
    """Reinterpret a uint8 section; copies only when the section is not aligned for ``dtype``."""
    width = torch.empty((), dtype=dtype).element_size()
    if section.data_ptr() % width:
        section = section.clone()
    return section.view(dtype)
