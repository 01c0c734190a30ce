"""Low-rank (PowerSGD-style) approximation of a 2-D delta: M ~ P @ Q.T with P (m, r), Q (n, r).

One power iteration from a random start matrix, then P is orthonormalised, so Q = M.T @ P is the best
rank-r fit in P's column space. Vogels et al. (2019) warm-start from the previous round's Q; we keep no
factor state between rounds and seed the start from the name and a sample of the matrix itself instead.
The start must change from round to round: with a fixed one, M + residual maps onto the same column space
every time (the residual is orthogonal to it), so error feedback could never send the other directions.

Reconstruction multiplies out rank-1 outer products one at a time with element-wise ops in a fixed order,
never a library matmul, so every machine rebuilds the same float32 bits from the same factors.
"""

from __future__ import annotations

import torch
from blake3 import blake3
from torch import Tensor

SEED_SAMPLE_ELEMENTS = 4096
RECONSTRUCT_BLOCK_ELEMENTS = 1 << 16


def applies(shape: tuple[int, ...], rank: int) -> bool:
    """Only 2-D weights for which the factors are smaller than the matrix itself."""
    return len(shape) == 2 and rank * (shape[0] + shape[1]) < shape[0] * shape[1]


def factorize(matrix: Tensor, rank: int, name: str) -> tuple[Tensor, Tensor]:
    """(m, n) float32 -> P (m, r), Q (n, r)."""
    rows, cols = matrix.shape
    flat = matrix.reshape(-1)
    sample = flat[:: max(1, flat.numel() // SEED_SAMPLE_ELEMENTS)].contiguous()
    hasher = blake3(f"{name}\x00{rows}x{cols}\x00".encode())
    hasher.update(sample.view(torch.uint8).numpy().data)
    seed = int.from_bytes(hasher.digest(length=8), "big") >> 1
    start_NR = torch.randn(cols, rank, generator=torch.Generator().manual_seed(seed))
    p_MR = matrix @ start_NR
    p_MR, _ = torch.linalg.qr(p_MR, mode="reduced")
    q_NR = matrix.T @ p_MR
    return p_MR.contiguous(), q_NR.contiguous()


def reconstruct(p_MR: Tensor, q_NR: Tensor) -> Tensor:
    """Sum of rank-1 outer products, one at a time, over blocks of rows small enough to stay in cache."""
    rows, rank = p_MR.shape
    cols = q_NR.shape[0]
    out_MN = torch.zeros(rows, cols, dtype=torch.float32)
    step = max(1, RECONSTRUCT_BLOCK_ELEMENTS // max(1, cols))
    term = torch.empty(min(step, rows), cols, dtype=torch.float32)
    q_RN = q_NR.T.contiguous()
    for start in range(0, rows, step):
        block = out_MN[start : start + step]
        scratch = term[: block.shape[0]]
        for r in range(rank):
            torch.mul(p_MR[start : start + step, r : r + 1], q_RN[r : r + 1], out=scratch)
            block.add_(scratch)
    return out_MN
