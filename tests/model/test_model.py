"""Routing, dispatch and the model's shapes and losses."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moeswarm.model.config import PRESETS, ConfigError, MoEConfig, preset
from moeswarm.model.model import MoETransformer, combine, dispatch, plan_dispatch, route, undispatch

TINY = MoEConfig(name="test", d_model=32, n_layers=2, n_heads=2, n_experts=4, top_k=2, d_ff=48, context=16)


@settings(max_examples=40, deadline=None)
@given(
    n_tokens=st.integers(1, 64),
    n_experts=st.integers(1, 9),
    k_seed=st.integers(0, 10_000),
)
def test_every_token_gets_exactly_k_distinct_experts_with_weights_summing_to_one(
    n_tokens: int, n_experts: int, k_seed: int
) -> None:
    gen = torch.Generator().manual_seed(k_seed)
    top_k = 1 + k_seed % n_experts
    logits = torch.randn(n_tokens, n_experts, generator=gen) * 3
    routing = route(logits, top_k)
    assert routing.experts_NK.shape == (n_tokens, top_k)
    for row in routing.experts_NK.tolist():
        assert len(set(row)) == top_k
        assert all(0 <= e < n_experts for e in row)
    torch.testing.assert_close(routing.weights_NK.sum(-1), torch.ones(n_tokens))
    assert bool((routing.weights_NK > 0).all())
    # the chosen experts are the most probable ones
    kth_best = routing.probs_NE.topk(top_k, dim=-1).values[:, -1:]
    chosen = routing.probs_NE.gather(1, routing.experts_NK)
    assert bool((chosen >= kth_best).all())


@settings(max_examples=40, deadline=None)
@given(n_tokens=st.integers(1, 50), n_experts=st.integers(1, 8), seed=st.integers(0, 10_000))
def test_dispatch_groups_by_expert_and_undispatch_inverts_it(
    n_tokens: int, n_experts: int, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    top_k = 1 + seed % n_experts
    routing = route(torch.randn(n_tokens, n_experts, generator=gen), top_k)
    plan = plan_dispatch(routing.experts_NK, n_experts)
    x = torch.randn(n_tokens, 5, generator=gen)
    grouped = dispatch(x, plan)
    assert grouped.shape == (n_tokens * top_k, 5)
    assert sum(plan.counts) == n_tokens * top_k
    # sorted assignments: expert ids are non-decreasing and each slice holds its expert's tokens
    sorted_experts = routing.experts_NK.reshape(-1)[plan.order_A]
    assert bool((sorted_experts[1:] >= sorted_experts[:-1]).all())
    start = 0
    for e, count in enumerate(plan.counts):
        tokens = (plan.order_A[start : start + count] // top_k).tolist()
        assert tokens == sorted(tokens)  # stable: token order kept inside an expert's slice
        assert all(e in routing.experts_NK[t].tolist() for t in tokens)
        start += count
    # undispatch is the exact inverse: every token's K slots hold its own row
    assert torch.equal(undispatch(grouped, plan), x.unsqueeze(1).expand(n_tokens, top_k, 5))
    # combining identical expert outputs with weights that sum to one gives the token back
    torch.testing.assert_close(combine(grouped, plan, routing.weights_NK), x)


def test_moe_layer_matches_a_per_token_reference() -> None:
    model = MoETransformer(TINY, seed=3)
    moe = model.moe_layers()[0]
    x = torch.randn(2, 5, TINY.d_model, generator=torch.Generator().manual_seed(1))
    y, balance, z_loss = moe(x)
    flat = x.reshape(-1, TINY.d_model)
    routing = route(moe.router(flat), TINY.top_k)
    expected = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        for slot in range(TINY.top_k):
            e = int(routing.experts_NK[t, slot])
            h = torch.nn.functional.gelu(flat[t] @ moe.w_in[e])
            expected[t] += routing.weights_NK[t, slot] * (h @ moe.w_out[e])
    torch.testing.assert_close(y.reshape(-1, TINY.d_model), expected, rtol=1e-5, atol=1e-6)
    assert sum(moe.last_counts) == flat.shape[0] * TINY.top_k
    assert balance.item() >= 0.99  # E * sum f_e P_e is >= 1 up to ties, 1 when balanced
    assert z_loss.item() > 0


def test_forward_shapes_and_initial_loss_is_near_uniform() -> None:
    model = MoETransformer(TINY, seed=0)
    idx = torch.randint(0, 256, (3, TINY.context))
    out = model(idx[:, :-1], idx[:, 1:])
    assert out.logits.shape == (3, TINY.context - 1, 256)
    assert out.ce is not None
    assert out.loss is not None
    assert abs(out.ce.item() / math.log(2) - 8.0) < 0.1  # ≈ 8 bits per byte before training
    assert out.loss.item() > out.ce.item()
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(ValueError, match="exceeds the model context"):
        model(torch.zeros(1, TINY.context + 1, dtype=torch.long))


def test_same_seed_same_init_and_different_seed_different_init() -> None:
    a, b, c = MoETransformer(TINY, seed=5), MoETransformer(TINY, seed=5), MoETransformer(TINY, seed=6)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb), name
        if "ln" not in name:
            assert not torch.equal(pa, pc), name


def test_presets_have_the_documented_shapes() -> None:
    tiny = preset("cpu-tiny")
    shape = (tiny.d_model, tiny.n_layers, tiny.n_heads, tiny.n_experts, tiny.top_k, tiny.d_ff, tiny.context)
    assert shape == (128, 4, 4, 8, 2, 256, 128)
    small = MoETransformer(preset("gpu-small"))
    assert small.config.n_experts == 16
    assert 90e6 < small.num_params() < 110e6
    assert small.num_params(active=True) < small.num_params()


def test_config_round_trips_through_json_and_rejects_bad_values() -> None:
    for config in PRESETS.values():
        assert MoEConfig.from_json(config.to_json()) == config
    with pytest.raises(ConfigError, match="unknown config fields: colour"):
        MoEConfig.from_dict({**TINY.to_dict(), "colour": "blue"})
    with pytest.raises(ConfigError, match="not divisible"):
        MoEConfig(d_model=30, n_heads=4)
    with pytest.raises(ConfigError, match="top_k"):
        MoEConfig(n_experts=2, top_k=3)
    with pytest.raises(ConfigError, match="positive integer"):
        MoEConfig.from_dict({"n_layers": "4"})
    with pytest.raises(ConfigError, match="finite"):
        MoEConfig(dropout=float("nan"))
    with pytest.raises(ConfigError, match="valid JSON"):
        MoEConfig.from_json("{")
    with pytest.raises(ConfigError, match="unknown preset"):
        preset("huge")
