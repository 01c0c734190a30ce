"""Deterministic robust aggregation of the deltas a round commits.

Every honest node applies the same committed list of deltas and must arrive at the same weights bit for
bit, on any CPU. Library reductions (`sum`, `mean`, `norm`) may change their summation order with the
machine's vector width, so combining contributors uses only element-wise operations in a fixed
contributor order (`acc.add_(x)` one at a time), which IEEE-754 rounds identically everywhere. Where a
scalar decision depends on a norm (clipping radius, outlier test), the norm is computed in float64 and
rounded to 7 significant digits, so a last-ulp difference between machines cannot change the outcome
short of landing exactly on a rounding boundary.

Rules, per tensor:
- fewer than 3 contributors: mean (nothing robust can be done with two votes);
- experts, 3 or more: coordinate-wise trimmed mean (or median);
- trunk, 3 or more: centered clipping (Karimireddy, He & Jaggi 2021) started from the coordinate-wise
  median. The paper centres on the previous round's aggregate; starting from the median needs no extra
  replicated state and is as robust for the one-shot, per-round use here.
Median and Krum are known to drift on non-iid shards even with no attacker, hence trimmed mean for
experts and clipping for the trunk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import torch


class Rule(StrEnum):
    MEAN = "mean"
    TRIMMED_MEAN = "trimmed_mean"
    MEDIAN = "median"
    CENTERED_CLIP = "centered_clip"


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregationConfig:
    expert_rule: Rule = Rule.TRIMMED_MEAN
    trunk_rule: Rule = Rule.CENTERED_CLIP
    trim_fraction: float = 0.2
    clip_iterations: int = 3
    clip_radius_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.trim_fraction < 0.5:
            raise ValueError("trim_fraction must be in [0, 0.5)")
        if not 1 <= self.clip_iterations <= 16:
            raise ValueError("clip_iterations must be in [1, 16]")
        if not self.clip_radius_scale > 0:
            raise ValueError("clip_radius_scale must be positive")


ROBUST_MIN_CONTRIBUTORS = 3


def stable_norm(x: torch.Tensor) -> float:
    """L2 norm as a decision input: float64 accumulation rounded to 7 significant digits."""
    value = float(torch.sum(x.double() * x.double()).sqrt().item())
    if not math.isfinite(value):
        return value
    return float(f"{value:.7g}")


def stable_dot(a: torch.Tensor, b: torch.Tensor) -> float:
    value = float(torch.sum(a.double() * b.double()).item())
    if not math.isfinite(value):
        return value
    return float(f"{value:.7g}")


def ordered_sum(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    acc = xs[0].clone()
    for x in xs[1:]:
        acc.add_(x)
    return acc


def mean(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    return ordered_sum(xs).div_(float(len(xs)))


def trimmed_mean(xs: Sequence[torch.Tensor], trim_fraction: float) -> torch.Tensor:
    n = len(xs)
    k = max(1, math.floor(trim_fraction * n))
    if n - 2 * k < 1:
        return median(xs)
    # Sorting is exact, so the kept values are the same on every machine; summing rows one at a time
    # keeps the order fixed.
    sorted_values = torch.sort(torch.stack(list(xs)), dim=0).values
    kept = [sorted_values[i] for i in range(k, n - k)]
    return ordered_sum(kept).div_(float(len(kept)))


def median(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Coordinate-wise median; with an even count, the mean of the two middle values."""
    n = len(xs)
    sorted_values = torch.sort(torch.stack(list(xs)), dim=0).values
    if n % 2 == 1:
        return sorted_values[n // 2].clone()
    return (sorted_values[n // 2 - 1] + sorted_values[n // 2]).div_(2.0)


def centered_clip(xs: Sequence[torch.Tensor], iterations: int, radius_scale: float) -> torch.Tensor:
    """v ← v + mean_i clip(x_i − v, τ), τ = radius_scale × median_i ‖x_i − v‖, from v = median."""
    v = median(xs)
    for _ in range(iterations):
        diffs = [x - v for x in xs]
        norms = [stable_norm(d) for d in diffs]
        radius = radius_scale * sorted(norms)[len(norms) // 2]
        for d, norm in zip(diffs, norms, strict=True):
            if norm > radius and norm > 0.0:
                d.mul_(radius / norm)
        v.add_(mean(diffs))
    return v


def combine(xs: Sequence[torch.Tensor], rule: Rule, config: AggregationConfig) -> torch.Tensor:
    """Aggregate contributions to one tensor, given in the committed (fixed) order."""
    if not xs:
        raise ValueError("combine needs at least one contribution")
    if len(xs) < ROBUST_MIN_CONTRIBUTORS or rule is Rule.MEAN:
        return mean(xs)
    if rule is Rule.TRIMMED_MEAN:
        return trimmed_mean(xs, config.trim_fraction)
    if rule is Rule.MEDIAN:
        return median(xs)
    return centered_clip(xs, config.clip_iterations, config.clip_radius_scale)


def staleness_weight(staleness_rounds: int) -> float:
    """A delta s rounds late enters with weight 1/(1+s) (DESIGN §4.6)."""
    if staleness_rounds < 0:
        raise ValueError("staleness cannot be negative")
    return 1.0 / (1.0 + staleness_rounds)
