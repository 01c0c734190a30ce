"""Top-k sparsification: which entries to send, and their positions as compact gap-coded bytes.

Selecting the exact k largest magnitudes with ``torch.topk`` over tens of millions of entries runs at
well under 200 MB/s on one core, so for large tensors two thresholds are estimated from a strided sample,
four standard deviations of the sample count either side of the k-th value: entries above the higher
one are kept outright, and the exact cut is made only among the few entries between the two. If the
sample misjudged (the cut does not fall inside the band), the exact selection runs over the whole
tensor instead.

Positions travel as gaps between successive sorted indices (``gap = idx[i] - idx[i-1] - 1``), in the
narrowest of 1, 2 or 4 bytes that holds the largest gap, split into byte planes (all low bytes, then all
next bytes): the high planes are mostly zero and zstd shrinks them to almost nothing. Any gap values decode
to strictly increasing indices, so the receiver only has to check the last one against the tensor size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from moeswarm.codec.errors import CodecError

SAMPLE_ELEMENTS_MAX = 1 << 18
SAMPLE_ELEMENTS_MIN = 4096
SAMPLE_HITS = 64
BAND_SIGMAS = 4.0
EXACT_ELEMENTS_MAX = 1 << 13  # below this, one kthvalue over everything is cheaper than sampling
INDEX_WIDTHS = (1, 2, 4)


def kept_count(numel: int, fraction: float) -> int:
    """At least one entry of a non-empty tensor, so a tiny bias still moves."""
    return 0 if numel == 0 else min(numel, max(1, math.ceil(fraction * numel)))


def select_top(x: Tensor, k: int) -> Tensor:
    """Sorted int64 indices of the k largest |x| of a 1-D tensor."""
    numel = x.numel()
    if k >= numel:
        return torch.arange(numel, dtype=torch.int64)
    magnitude = x.abs()
    # Enough sample points that ~SAMPLE_HITS of them lie above the threshold; an odd stride so a stride
    # equal to a power-of-two row length cannot sample one column only.
    target = min(
        SAMPLE_ELEMENTS_MAX, max(SAMPLE_ELEMENTS_MIN, math.ceil(SAMPLE_HITS * numel / k), numel // 64)
    )
    if numel <= max(EXACT_ELEMENTS_MAX, 2 * target):
        return _exact_top(magnitude, k)
    sample = magnitude[:: (numel // target) | 1]
    hits = k * sample.numel() / numel
    margin = BAND_SIGMAS / math.sqrt(max(hits, 1.0))
    upper = _sample_threshold(sample, hits * (1 + margin))
    lower = _sample_threshold(sample, hits * (1 - margin))
    # Entries above `lower` are surely kept; the exact cut is made only inside the band [upper, lower].
    sure = magnitude > lower
    band = torch.nonzero((magnitude >= upper) & ~sure).view(-1)
    need = k - int(torch.count_nonzero(sure))
    if need < 0 or need > band.numel():
        return _exact_top(magnitude, k)
    sure[band[_exact_top(magnitude[band], need)]] = True
    return torch.nonzero(sure).view(-1)


def _sample_threshold(sample: Tensor, above: float) -> Tensor:
    """The value with about ``above`` sample points over it."""
    count = min(sample.numel(), max(1, math.ceil(above)))
    return torch.kthvalue(sample, sample.numel() - count + 1).values


def _exact_top(magnitude: Tensor, k: int) -> Tensor:
    """Positions of the k largest values, ascending; ties at the k-th value go to the lowest positions.

    ``kthvalue`` plus a mask is about twice as fast as ``topk`` followed by a sort, and nonzero() already
    yields the positions in order.
    """
    if k == 0:
        return torch.empty(0, dtype=torch.int64)
    if k >= magnitude.numel():
        return torch.arange(magnitude.numel(), dtype=torch.int64)
    kth = torch.kthvalue(magnitude, magnitude.numel() - k + 1).values
    above = magnitude > kth
    missing = k - int(torch.count_nonzero(above))
    if missing > 0:
        ties = torch.nonzero(magnitude == kth).view(-1)[:missing]
        above[ties] = True
    return torch.nonzero(above).view(-1)


def encode_indices(indices: Tensor) -> tuple[int, Tensor]:
    """Sorted int64 indices -> (byte width, uint8 tensor of ``width`` planes of ``len(indices)`` bytes)."""
    if indices.numel() == 0:
        return 1, torch.empty(0, dtype=torch.uint8)
    gaps = _gaps(indices)
    largest_gap = int(gaps.max())
    width = next(width for width in INDEX_WIDTHS if largest_gap < 1 << (8 * width))
    if width == 1:
        return width, gaps.to(torch.uint8)
    planes = [((gaps >> (8 * plane)) & 0xFF).to(torch.uint8) for plane in range(width)]
    return width, torch.cat(planes)


def decode_indices(planes: Tensor, count: int, width: int, numel: int) -> Tensor:
    if width not in INDEX_WIDTHS:
        raise CodecError(f"index width must be one of {INDEX_WIDTHS}, got {width}")
    if count == 0:
        return torch.empty(0, dtype=torch.int64)
    gaps = torch.zeros(count, dtype=torch.int64)
    for plane in range(width):
        gaps |= planes[plane * count : (plane + 1) * count].to(torch.int64) << (8 * plane)
    indices = torch.cumsum(gaps + 1, dim=0) - 1
    if int(indices[-1]) >= numel:
        raise CodecError(f"sparse index {int(indices[-1])} is outside a tensor of {numel} elements")
    return indices


def _gaps(indices: Tensor) -> Tensor:
    """idx[i] - idx[i-1] - 1 with idx[-1] = -1, so the first gap is the first index itself."""
    gaps = torch.empty_like(indices)
    gaps[0] = indices[0]
    torch.sub(indices[1:], indices[:-1], out=gaps[1:])
    gaps[1:] -= 1
    return gaps
