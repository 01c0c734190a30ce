"""The outer optimizer: applies a round's aggregated delta to the global weights.

Plain averaging is lr 1 with no momentum (W += Δ). DiLoCo uses Nesterov momentum (lr 0.7, μ 0.9) on
the "outer gradient" −Δ. Each operation is a separate element-wise op (no fused add-with-alpha), so the
result is bit-identical on every CPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True, kw_only=True)
class OuterConfig:
    lr: float = 1.0
    momentum: float = 0.0
    nesterov: bool = True
    warmup_rounds: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.lr <= 4.0:
            raise ValueError("outer lr must be in (0, 4]")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError("outer momentum must be in [0, 1)")
        if self.warmup_rounds < 0:
            raise ValueError("warmup_rounds cannot be negative")

    @property
    def uses_momentum(self) -> bool:
        return self.momentum > 0.0

    def lr_at(self, round_index: int) -> float:
        """Linear warm-up from plain averaging (lr 1, the safe start) to the configured lr."""
        if self.warmup_rounds == 0 or round_index >= self.warmup_rounds:
            return self.lr
        frac = (round_index + 1) / (self.warmup_rounds + 1)
        return 1.0 + (self.lr - 1.0) * frac


def outer_step(
    weights: dict[str, torch.Tensor],
    momentum: dict[str, torch.Tensor],
    delta: Mapping[str, torch.Tensor],
    config: OuterConfig,
    round_index: int,
) -> None:
    """Update `weights` (and `momentum`, when used) in place with the aggregated `delta`."""
    lr = config.lr_at(round_index)
    for name in sorted(delta):
        d = delta[name]
        if config.uses_momentum:
            m = momentum.get(name)
            if m is None:
                m = torch.zeros_like(d)
                momentum[name] = m
            m.mul_(config.momentum).add_(d)
            step = (d + m * config.momentum) if config.nesterov else m.clone()
        else:
            step = d
        weights[name].add_(step * lr if lr != 1.0 else step)
