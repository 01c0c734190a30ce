from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moeswarm.swarm.aggregate import AggregationConfig, Rule, combine, median, staleness_weight, trimmed_mean
from moeswarm.swarm.apply import Contribution, ScreenConfig, aggregate, screen
from moeswarm.swarm.outer import OuterConfig, outer_step


def _is_trunk(name: str) -> bool:
    return name.startswith("trunk.")


def _honest(seed: int, n: int, size: int = 4096) -> list[Contribution]:
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(size, generator=g)
    out = []
    for i in range(n):
        noise = 0.3 * torch.randn(size, generator=g)
        out.append(
            Contribution(
                node_id=f"n{i}",
                delta={"trunk.w": common + noise, "experts.000.w": common[:64] + noise[:64]},
            )
        )
    return out


def test_two_contributors_are_averaged() -> None:
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 6.0])
    out = combine([a, b], Rule.TRIMMED_MEAN, AggregationConfig())
    assert torch.equal(out, torch.tensor([2.0, 4.0]))


def test_trimmed_mean_ignores_one_extreme_value_per_side() -> None:
    xs = [torch.tensor([v]) for v in (1.0, 2.0, 3.0, 1000.0, -1000.0)]
    assert torch.equal(trimmed_mean(xs, 0.2), torch.tensor([2.0]))


def test_median_even_count_is_midpoint() -> None:
    xs = [torch.tensor([v]) for v in (4.0, 1.0, 3.0, 2.0)]
    assert torch.equal(median(xs), torch.tensor([2.5]))


def test_centered_clip_bounds_one_huge_outlier() -> None:
    honest = [torch.full((100,), 1.0) + 0.01 * i for i in range(4)]
    poisoned = [*honest, torch.full((100,), 1e6)]
    out = combine(poisoned, Rule.CENTERED_CLIP, AggregationConfig())
    assert float(out.max()) < 2.0


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=1, max_value=7), st.integers(min_value=0, max_value=2**31 - 1))
def test_aggregation_bit_identical_across_thread_counts(n: int, seed: int) -> None:
    contributions = _honest(seed, n)
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            results.append(aggregate(contributions, _is_trunk, AggregationConfig()))
    finally:
        torch.set_num_threads(previous)
    for name in results[0]:
        assert torch.equal(results[0][name], results[1][name])


def test_screen_rejects_scaled_flipped_and_nan_poisoners() -> None:
    honest = _honest(1, 4)
    scaled = Contribution(node_id="scaled", delta={k: v * 100 for k, v in honest[0].delta.items()})
    flipped = Contribution(node_id="flipped", delta={k: -v for k, v in honest[1].delta.items()})
    nan = Contribution(
        node_id="nan", delta={k: torch.full_like(v, float("nan")) for k, v in honest[2].delta.items()}
    )
    result = screen([*honest, scaled, flipped, nan], _is_trunk, ScreenConfig())
    assert set(result.rejected) == {"scaled", "flipped", "nan"}
    assert [c.node_id for c in result.accepted] == ["n0", "n1", "n2", "n3"]


def test_screen_keeps_all_honest() -> None:
    honest = _honest(2, 5)
    assert screen(honest, _is_trunk, ScreenConfig()).rejected == {}


def test_staleness_weight() -> None:
    assert staleness_weight(0) == 1.0
    assert staleness_weight(3) == 0.25


def test_plain_averaging_adds_delta() -> None:
    w = {"a": torch.tensor([1.0, 1.0])}
    outer_step(w, {}, {"a": torch.tensor([0.5, -0.5])}, OuterConfig(), round_index=0)
    assert torch.equal(w["a"], torch.tensor([1.5, 0.5]))


def test_nesterov_momentum_accumulates() -> None:
    w = {"a": torch.tensor([0.0])}
    m: dict[str, torch.Tensor] = {}
    cfg = OuterConfig(lr=0.5, momentum=0.5)
    outer_step(w, m, {"a": torch.tensor([1.0])}, cfg, round_index=0)
    # m = 1; step = d + 0.5 m = 1.5; w = 0.75
    assert torch.equal(m["a"], torch.tensor([1.0]))
    assert torch.equal(w["a"], torch.tensor([0.75]))
    outer_step(w, m, {"a": torch.tensor([1.0])}, cfg, round_index=1)
    # m = 1.5; step = 1 + 0.75 = 1.75; w = 0.75 + 0.875
    assert torch.equal(w["a"], torch.tensor([1.625]))


def test_outer_lr_warmup_starts_at_plain_averaging() -> None:
    cfg = OuterConfig(lr=0.7, momentum=0.9, warmup_rounds=3)
    assert cfg.lr_at(0) > cfg.lr_at(2) > cfg.lr_at(3) == 0.7
