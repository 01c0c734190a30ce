"""Turn a committed round's deltas into the next global weights, identically on every honest node.

Order of work, all on CPU in float32 with the fixed contributor order of the commit:
1. screen: drop contributions that are non-finite, far larger than the round's median, or whose trunk
   points away from the others (a sign-flipped or scaled poisoner);
2. aggregate each tensor over the contributions that carry it (robust rules in `aggregate`);
3. the outer optimizer turns the aggregate into new weights and momentum.
Screening uses only quantities computed from the committed list, so every honest node drops the same
contributors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from moeswarm.swarm.aggregate import (
    ROBUST_MIN_CONTRIBUTORS,
    AggregationConfig,
    combine,
    median,
    stable_dot,
    stable_norm,
)

State = dict[str, torch.Tensor]


@dataclass(frozen=True, slots=True, kw_only=True)
class Contribution:
    node_id: str
    delta: Mapping[str, torch.Tensor]
    weight: float = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ScreenConfig:
    norm_ratio_max: float = 4.0
    trunk_cosine_min: float = 0.0


@dataclass(slots=True)
class ScreenResult:
    accepted: list[Contribution] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)


def _sq_norm(delta: Mapping[str, torch.Tensor], names: Sequence[str]) -> float:
    total = 0.0
    for name in names:
        t = delta[name]
        total += float(torch.sum(t.double() * t.double()).item())
    return total


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def screen(
    contributions: Sequence[Contribution], is_trunk: Callable[[str], bool], config: ScreenConfig
) -> ScreenResult:
    """Drop non-finite, oversized and trunk-opposing contributions; keep the committed order."""
    result = ScreenResult()
    finite: list[Contribution] = []
    for c in contributions:
        if all(bool(torch.isfinite(t).all()) for t in c.delta.values()):
            finite.append(c)
        else:
            result.rejected[c.node_id] = "non-finite values"
    if len(finite) < ROBUST_MIN_CONTRIBUTORS:
        result.accepted = finite
        return result
    norms = {c.node_id: float(f"{_sq_norm(c.delta, sorted(c.delta)) ** 0.5:.7g}") for c in finite}
    norm_median = _median(list(norms.values()))
    trunk_names = sorted({n for c in finite for n in c.delta if is_trunk(n)})
    trunk_median = _trunk_median(finite, trunk_names)
    for c in finite:
        if norm_median > 0 and norms[c.node_id] > config.norm_ratio_max * norm_median:
            result.rejected[c.node_id] = (
                f"delta norm {norms[c.node_id]:.4g} > {config.norm_ratio_max} x median {norm_median:.4g}"
            )
            continue
        cosine = _trunk_cosine(c, trunk_names, trunk_median)
        if cosine is not None and cosine < config.trunk_cosine_min:
            result.rejected[c.node_id] = f"trunk cosine {cosine:.3f} to the median < {config.trunk_cosine_min}"
            continue
        result.accepted.append(c)
    return result


def _trunk_median(contributions: Sequence[Contribution], names: Sequence[str]) -> State:
    out: State = {}
    for name in names:
        xs = [c.delta[name] for c in contributions if name in c.delta]
        if len(xs) >= ROBUST_MIN_CONTRIBUTORS:
            out[name] = median(xs)
    return out


def _trunk_cosine(c: Contribution, names: Sequence[str], reference: State) -> float | None:
    dot = 0.0
    sq_a = 0.0
    sq_b = 0.0
    for name in names:
        if name not in c.delta or name not in reference:
            continue
        a, b = c.delta[name], reference[name]
        dot += stable_dot(a, b)
        sq_a += stable_norm(a) ** 2
        sq_b += stable_norm(b) ** 2
    if sq_a == 0.0 or sq_b == 0.0:
        return None
    return float(f"{dot / (sq_a**0.5 * sq_b**0.5):.7g}")


def aggregate(
    contributions: Sequence[Contribution], is_trunk: Callable[[str], bool], config: AggregationConfig
) -> State:
    """Per tensor, combine the contributions that carry it (already screened, in committed order)."""
    names = sorted({n for c in contributions for n in c.delta})
    out: State = {}
    for name in names:
        xs = []
        for c in contributions:
            if name not in c.delta:
                continue
            x = c.delta[name].to(torch.float32)
            # A separate multiply keeps rounding identical across CPUs (no fused multiply-add).
            xs.append(x * c.weight if c.weight != 1.0 else x)
        rule = config.trunk_rule if is_trunk(name) else config.expert_rule
        out[name] = combine(xs, rule, config)
    return out
