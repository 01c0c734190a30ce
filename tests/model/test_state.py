"""Flat named state, its hash, and training only a chosen set of experts."""

from __future__ import annotations

import struct
from pathlib import Path

import blake3
import pytest
import safetensors.torch
import torch

from moeswarm.model.config import MoEConfig
from moeswarm.model.model import MoETransformer
from moeswarm.model.optim import MaskedAdamW, set_trainable
from moeswarm.model.state import (
    StateError,
    expert_id_of_name,
    flat_state,
    is_trunk,
    load_flat_state,
    model_hash,
    state_hash,
    state_hash_hex,
    state_names,
)

TINY = MoEConfig(name="test", d_model=32, n_layers=2, n_heads=2, n_experts=4, top_k=2, d_ff=48, context=16)


def _steps(model: MoETransformer, optimizer: MaskedAdamW, n: int, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        batch = torch.randint(0, 256, (4, TINY.context + 1), generator=gen)
        out = model(batch[:, :-1], batch[:, 1:])
        assert out.loss is not None
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.mask_gradients()
        optimizer.step()


def test_names_are_stable_sorted_and_cover_every_weight_once() -> None:
    model = MoETransformer(TINY)
    state = flat_state(model)
    names = list(state)
    assert names == sorted(names) == state_names(model)
    assert "experts.003.layers.1.w_out" in state
    assert "trunk.blocks.0.moe.router.weight" in state
    assert state["experts.002.layers.0.w_in"].shape == (TINY.d_model, TINY.d_ff)
    assert state["experts.002.layers.0.w_out"].shape == (TINY.d_ff, TINY.d_model)
    assert sum(t.numel() for t in state.values()) == model.num_params()
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in state.values())
    assert {expert_id_of_name(n) for n in names} == {None, 0, 1, 2, 3}
    assert all(is_trunk(n) == (expert_id_of_name(n) is None) for n in names)
    assert expert_id_of_name("trunk.blocks.0.moe.w_in") is None


def test_partial_flat_state_selects_experts_and_trunk() -> None:
    model = MoETransformer(TINY)
    only = flat_state(model, experts=[2], include_trunk=False)
    assert {expert_id_of_name(n) for n in only} == {2}
    assert len(only) == 2 * TINY.n_layers
    assert all(is_trunk(n) for n in flat_state(model, experts=[]))
    with pytest.raises(StateError, match="out of range"):
        flat_state(model, experts=[4])


def test_flat_state_round_trip_and_partial_load() -> None:
    src, dst = MoETransformer(TINY, seed=1), MoETransformer(TINY, seed=2)
    assert model_hash(src) != model_hash(dst)
    load_flat_state(dst, flat_state(src))
    assert model_hash(src) == model_hash(dst)

    other = MoETransformer(TINY, seed=3)
    before = flat_state(dst)
    other_state = flat_state(other)
    load_flat_state(dst, flat_state(other, experts=[1], include_trunk=False), strict=False)
    after = flat_state(dst)
    for name in after:
        expected = other_state[name] if expert_id_of_name(name) == 1 else before[name]
        assert torch.equal(after[name], expected), name


def test_load_flat_state_rejects_bad_states_without_writing() -> None:
    model = MoETransformer(TINY)
    good = flat_state(model)
    digest = model_hash(model)
    with pytest.raises(StateError, match="missing"):
        load_flat_state(model, flat_state(model, experts=[0]))
    bad_shape = {**good, "experts.000.layers.0.w_in": torch.zeros(3, 3)}
    with pytest.raises(StateError, match="shape"):
        load_flat_state(model, bad_shape)
    unknown = {
        "trunk.tok_emb.weight": torch.zeros_like(good["trunk.tok_emb.weight"]),
        "experts.009.layers.0.w_in": torch.zeros(1),
    }
    with pytest.raises(StateError, match="unknown"):
        load_flat_state(model, unknown, strict=False)
    assert model_hash(model) == digest


def test_state_hash_depends_on_every_bit_name_and_extra_but_not_order() -> None:
    state = flat_state(MoETransformer(TINY))
    digest = state_hash(state)
    assert len(digest) == 32
    assert state_hash_hex(state) == digest.hex()
    assert state_hash(dict(reversed(list(state.items())))) == digest
    assert state_hash(state, extra=b"round 1") != digest
    flipped = dict(state)
    t = flipped["trunk.ln_f.bias"].clone()
    t.view(torch.int32)[0] ^= 1  # one bit of one float
    flipped["trunk.ln_f.bias"] = t
    assert state_hash(flipped) != digest
    renamed = {("trunk.zz" if n == "trunk.ln_f.bias" else n): v for n, v in state.items()}
    assert state_hash(renamed) != digest
    with pytest.raises(StateError, match="float32"):
        state_hash({"x": torch.zeros(2, dtype=torch.float64)})


def test_state_hash_is_pinned_for_a_known_state() -> None:
    """The canonical byte layout is a cross-machine contract: this digest must never change silently."""
    state = {
        "b": torch.tensor([1.0, -0.0]),
        "a": torch.arange(6, dtype=torch.float32).view(2, 3),
        "s": torch.tensor(2.5),
    }
    spec = b"moeswarm.state.v1\x00"
    spec += (
        struct.pack("<I", 1)
        + b"a"
        + b"f32"
        + struct.pack("<IQQ", 2, 2, 3)
        + struct.pack("<6f", 0, 1, 2, 3, 4, 5)
    )
    spec += struct.pack("<I", 1) + b"b" + b"f32" + struct.pack("<IQ", 1, 2) + struct.pack("<2f", 1.0, -0.0)
    spec += struct.pack("<I", 1) + b"s" + b"f32" + struct.pack("<I", 0) + struct.pack("<f", 2.5)
    spec += struct.pack("<Q", 1) + b"x"
    assert state_hash(state, extra=b"x") == blake3.blake3(spec).digest()
    assert (
        state_hash_hex(state, extra=b"x")
        == "567494dd7fe046709387062a0eab41ba5001b41faa4fd3843fd356988b12b7b4"
    )


def test_safetensors_round_trip_keeps_the_state_hash(tmp_path: Path) -> None:
    model = MoETransformer(TINY, seed=4)
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(flat_state(model), str(path))
    loaded = safetensors.torch.load_file(str(path))
    assert state_hash(loaded) == model_hash(model)
    fresh = MoETransformer(TINY, seed=5)
    load_flat_state(fresh, loaded)
    assert model_hash(fresh) == model_hash(model)


def test_frozen_experts_stay_bit_identical_through_adamw_steps() -> None:
    model = MoETransformer(TINY, seed=0)
    # first train everything so every expert has non-zero Adam moments, then freeze some
    optimizer = MaskedAdamW(model, set_trainable(model), lr=1e-2, weight_decay=0.1)
    _steps(model, optimizer, 3)
    trainable = set_trainable(model, [1, 2])
    optimizer.set_trainable(trainable)
    before = flat_state(model)
    _steps(model, optimizer, 4, seed=1)
    after = flat_state(model)
    changed = {expert_id_of_name(n) for n in after if not torch.equal(before[n], after[n])}
    assert changed == {None, 1, 2}
    for name in after:
        if expert_id_of_name(name) in (0, 3):
            assert torch.equal(before[name], after[name]), name


def test_frozen_trunk_leaves_trunk_and_other_experts_bit_identical() -> None:
    model = MoETransformer(TINY, seed=0)
    optimizer = MaskedAdamW(model, set_trainable(model, [0], trunk=False), lr=1e-2)
    before = flat_state(model)
    _steps(model, optimizer, 2)
    after = flat_state(model)
    assert {expert_id_of_name(n) for n in after if not torch.equal(before[n], after[n])} == {0}


def test_masked_adamw_with_every_expert_matches_torch_adamw() -> None:
    ours, ref = MoETransformer(TINY, seed=7), MoETransformer(TINY, seed=7)
    optimizer = MaskedAdamW(ours, set_trainable(ours), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    decay = [p for p in ref.parameters() if p.dim() >= 2]
    no_decay = [p for p in ref.parameters() if p.dim() < 2]
    reference = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-3,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        batch = torch.randint(0, 256, (4, TINY.context + 1), generator=gen)
        for model in (ours, ref):
            out = model(batch[:, :-1], batch[:, 1:])
            assert out.loss is not None
            model.zero_grad()
            out.loss.backward()
        optimizer.step()
        reference.step()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_optimizer_flat_state_round_trip() -> None:
    model = MoETransformer(TINY, seed=0)
    optimizer = MaskedAdamW(model, set_trainable(model, [0, 3]), lr=1e-2)
    _steps(model, optimizer, 2)
    saved = optimizer.flat_state()
    assert list(saved) == sorted(saved)
    assert saved["adam.step.experts.000.layers.0.w_in"].item() == 2
    assert saved["adam.step.experts.001.layers.0.w_in"].item() == 0
    other = MaskedAdamW(model, set_trainable(model), lr=1e-2)
    other.load_flat_state(saved)
    assert state_hash(other.flat_state()) == state_hash(saved)
    with pytest.raises(StateError):
        other.load_flat_state({k: v for k, v in saved.items() if "tok_emb" not in k})
