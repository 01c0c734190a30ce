"""Canonical, named, float32 state: how the swarm sees the model's weights and hashes them.

Naming (stable; other nodes and stored checkpoints depend on it):

* `trunk.<parameter name>` for every tensor that is not an expert's, e.g. `trunk.tok_emb.weight`,
  `trunk.blocks.0.attn.qkv.weight`, `trunk.blocks.0.moe.router.weight` (the router is trunk).
* `experts.{e:03d}.layers.{l}.{w_in|w_out}` for row e of layer l's stacked expert tensor, shapes
  `[D, F]` and `[F, D]`.

Canonical order is the names sorted as Python sorts str (code point order). `flat_state` returns its
dict in that order and `state_hash` sorts whatever mapping it is given, so the hash never depends on
insertion order.
"""

from __future__ import annotations

import re
import struct
import sys
from collections.abc import Iterable, Iterator, Mapping

import blake3
import numpy as np
import torch
from torch import Tensor, nn

from moeswarm.model.model import EXPERT_TENSORS, MoETransformer

TRUNK_PREFIX = "trunk."
_EXPERT_NAME = re.compile(r"^experts\.(\d{3})\.layers\.(\d+)\.(w_in|w_out)$")
_HASH_DOMAIN = b"moeswarm.state.v1\x00"


class StateError(ValueError):
    """A flat state that does not fit the model: unknown or missing name, wrong shape or dtype."""


def expert_name(expert: int, layer: int, tensor: str) -> str:
    return f"experts.{expert:03d}.layers.{layer}.{tensor}"


def expert_id_of_name(name: str) -> int | None:
    """The expert id a flat name belongs to, or None for trunk (and for names that are neither)."""
    match = _EXPERT_NAME.match(name)
    return int(match.group(1)) if match else None


expert_ids_of_name = expert_id_of_name  # second spelling, so callers written against either name work


def is_trunk(name: str) -> bool:
    return name.startswith(TRUNK_PREFIX)


def _stacked(model: MoETransformer) -> Iterator[tuple[int, str, nn.Parameter]]:
    for layer, moe in enumerate(model.moe_layers()):
        for tensor in EXPERT_TENSORS:
            yield layer, tensor, getattr(moe, tensor)


def _stacked_ids(model: MoETransformer) -> set[int]:
    return {id(p) for _, _, p in _stacked(model)}


def trunk_parameters(model: MoETransformer) -> list[tuple[str, nn.Parameter]]:
    """Trunk parameters with their flat names, in the model's definition order."""
    stacked = _stacked_ids(model)
    return [(TRUNK_PREFIX + n, p) for n, p in model.named_parameters() if id(p) not in stacked]


def stacked_expert_parameters(model: MoETransformer) -> list[tuple[int, str, nn.Parameter]]:
    """(layer, tensor name, stacked parameter [E, ...]) for every MoE layer, in definition order."""
    return list(_stacked(model))


def _check_experts(model: MoETransformer, experts: Iterable[int] | None) -> list[int]:
    n = model.config.n_experts
    if experts is None:
        return list(range(n))
    chosen = sorted(set(experts))
    bad = [e for e in chosen if not 0 <= e < n]
    if bad:
        raise StateError(f"expert ids {bad} out of range 0..{n - 1}")
    return chosen


def _cpu_f32(t: Tensor) -> Tensor:
    return t.detach().to(device="cpu", dtype=torch.float32, copy=True).contiguous()


def state_names(
    model: MoETransformer, experts: Iterable[int] | None = None, include_trunk: bool = True
) -> list[str]:
    """The names `flat_state` would return for these arguments, in canonical order, without copying."""
    names = [n for n, _ in trunk_parameters(model)] if include_trunk else []
    for e in _check_experts(model, experts):
        names.extend(expert_name(e, layer, tensor) for layer, tensor, _ in _stacked(model))
    return sorted(names)


@torch.no_grad()
def flat_state(
    model: MoETransformer, experts: Iterable[int] | None = None, include_trunk: bool = True
) -> dict[str, Tensor]:
    """Copy of the chosen weights as contiguous float32 CPU tensors, keyed by flat name in canonical order.

    `experts=None` means every expert; an empty iterable means none. The tensors are fresh copies: the
    caller may keep or modify them while training goes on.
    """
    out: dict[str, Tensor] = {}
    if include_trunk:
        for name, p in trunk_parameters(model):
            out[name] = _cpu_f32(p)
    for e in _check_experts(model, experts):
        for layer, tensor, p in _stacked(model):
            out[expert_name(e, layer, tensor)] = _cpu_f32(p[e])
    return {name: out[name] for name in sorted(out)}


def _targets(model: MoETransformer) -> dict[str, tuple[nn.Parameter, int | None]]:
    """flat name -> (parameter, row of the stacked tensor or None for a whole trunk tensor)."""
    targets: dict[str, tuple[nn.Parameter, int | None]] = {n: (p, None) for n, p in trunk_parameters(model)}
    for e in range(model.config.n_experts):
        for layer, tensor, p in _stacked(model):
            targets[expert_name(e, layer, tensor)] = (p, e)
    return targets


@torch.no_grad()
def load_flat_state(model: MoETransformer, state: Mapping[str, Tensor], strict: bool = True) -> None:
    """Write flat entries back into the model (cast to the parameter's dtype and device).

    strict=True: `state` must hold exactly the full set of names. strict=False: any subset, e.g. trunk
    plus a few experts; absent entries keep their current values. Unknown names and shape mismatches are
    always a `StateError`, checked for every entry before anything is written, so a bad state leaves the
    model untouched.
    """
    targets = _targets(model)
    unknown = sorted(set(state) - set(targets))
    if unknown:
        raise StateError(f"unknown state names: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    if strict:
        missing = sorted(set(targets) - set(state))
        if missing:
            raise StateError(f"missing {len(missing)} state names, e.g. {', '.join(missing[:5])}")
    for name, value in state.items():
        param, row = targets[name]
        want = tuple(param.shape[1:] if row is not None else param.shape)
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise StateError(f"{name}: expected a floating-point tensor, got {type(value).__name__}")
        if tuple(value.shape) != want:
            raise StateError(f"{name}: shape {tuple(value.shape)} does not match the model's {want}")
    for name, value in state.items():
        param, row = targets[name]
        (param[row] if row is not None else param).copy_(value)


def _tensor_bytes(t: Tensor) -> memoryview:
    if t.dtype != torch.float32:
        raise StateError(f"state_hash covers float32 tensors only, got {t.dtype}")
    arr = t.detach().to("cpu").contiguous().numpy().reshape(-1)
    if sys.byteorder != "little":
        arr = arr.astype("<f4")
    return arr.view(np.uint8).data


def state_hash(state: Mapping[str, Tensor], extra: bytes = b"") -> bytes:
    """32-byte blake3 digest of the canonical bytes of a flat state, the same on every machine.

    Canonical bytes: a domain tag, then for each name in sorted order: u32 name length, UTF-8 name,
    the dtype tag `f32`, u32 rank, u64 per dimension, and the data as little-endian IEEE float32 in
    C order (bit patterns as they are, so -0.0 and 0.0 hash differently); finally u64 length of `extra`
    and `extra` (e.g. the round number and membership epoch). All integers little-endian.
    """
    hasher = blake3.blake3(_HASH_DOMAIN)
    for name in sorted(state):
        t = state[name]
        encoded = name.encode("utf-8")
        hasher.update(struct.pack("<I", len(encoded)) + encoded + b"f32")
        hasher.update(struct.pack(f"<I{t.dim()}Q", t.dim(), *t.shape))
        hasher.update(_tensor_bytes(t))
    hasher.update(struct.pack("<Q", len(extra)) + extra)
    return hasher.digest()


def state_hash_hex(state: Mapping[str, Tensor], extra: bytes = b"") -> str:
    return state_hash(state, extra).hex()


def model_hash(model: MoETransformer, extra: bytes = b"") -> bytes:
    """`state_hash` of the model's complete flat state."""
    return state_hash(flat_state(model), extra)
