"""Training only some experts: the trainable set and an AdamW that never touches the others.

A node of the swarm trains the trunk plus the experts placement gives it; every other expert must come
out of its inner steps bit-identical, or its delta would not be zero and the round would mix in noise.
Masking gradients is not enough with stock AdamW: decoupled weight decay shrinks every row, and Adam's
moments keep moving a row after its gradient turns zero. `MaskedAdamW` therefore reads and writes only
the chosen rows of each stacked expert tensor, and keeps a step count per row so an expert that becomes
trainable later gets a correct bias correction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from moeswarm.model.model import MoETransformer
from moeswarm.model.state import StateError, expert_name, stacked_expert_parameters, trunk_parameters


@dataclasses.dataclass(frozen=True, slots=True)
class TrainableSet:
    """Which parameters an inner step may change: the trunk (or not) and a set of expert ids."""

    experts: frozenset[int]
    n_experts: int
    trunk: bool = True

    def __post_init__(self) -> None:
        bad = sorted(e for e in self.experts if not 0 <= e < self.n_experts)
        if bad:
            raise ValueError(f"expert ids {bad} out of range 0..{self.n_experts - 1}")

    @classmethod
    def everything(cls, n_experts: int) -> TrainableSet:
        return cls(frozenset(range(n_experts)), n_experts, True)

    @property
    def all_experts(self) -> bool:
        return len(self.experts) == self.n_experts

    def rows(self, device: torch.device) -> Tensor:
        return torch.tensor(sorted(self.experts), dtype=torch.long, device=device)


def set_trainable(
    model: MoETransformer, experts: Iterable[int] | None = None, trunk: bool = True
) -> TrainableSet:
    """Mark what backward should compute gradients for; returns the set to give `MaskedAdamW`.

    `experts=None` means all. Stacked expert tensors need gradients if any of their rows is trainable;
    `MaskedAdamW.mask_gradients` zeroes the frozen rows so they do not count in gradient clipping.
    """
    n = model.config.n_experts
    chosen = TrainableSet(frozenset(range(n) if experts is None else experts), n, trunk)
    for _, p in trunk_parameters(model):
        p.requires_grad_(trunk)
    for _, _, p in stacked_expert_parameters(model):
        p.requires_grad_(bool(chosen.experts))
    return chosen


@dataclasses.dataclass
class _Slot:
    name: str  # flat name (trunk) or "blocks.{l}.moe.{tensor}" (stacked)
    param: torch.nn.Parameter
    exp_avg: Tensor
    exp_avg_sq: Tensor
    step: Tensor  # float32: scalar for trunk, [E] for stacked (one count per expert)
    decay: bool
    layer: int | None  # MoE layer of a stacked tensor, None for trunk
    tensor: str | None


class MaskedAdamW:
    """AdamW (decoupled weight decay, bias-corrected moments) restricted to a `TrainableSet`.

    Weight decay applies to matrices and embeddings (dim >= 2), not to norms. `lr` may be changed
    between steps (the trainer's schedule does). The state survives `set_trainable`, so a node keeps its
    moments across rounds even when its experts change.
    """

    def __init__(
        self,
        model: MoETransformer,
        trainable: TrainableSet,
        *,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        weight_decay: float = 0.1,
    ) -> None:
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.trainable = trainable
        self._trunk: list[_Slot] = []
        self._stacked: list[_Slot] = []
        for name, p in trunk_parameters(model):
            self._trunk.append(self._slot(name, p, torch.zeros((), device=p.device), None, None))
        n = model.config.n_experts
        for layer, tensor, p in stacked_expert_parameters(model):
            step = torch.zeros(n, device=p.device)
            self._stacked.append(self._slot(f"blocks.{layer}.moe.{tensor}", p, step, layer, tensor))

    @staticmethod
    def _slot(name: str, p: torch.nn.Parameter, step: Tensor, layer: int | None, tensor: str | None) -> _Slot:
        zeros = torch.zeros_like(p, memory_format=torch.contiguous_format)
        return _Slot(name, p, zeros, zeros.clone(), step, p.dim() >= 2, layer, tensor)

    def set_trainable(self, trainable: TrainableSet) -> None:
        self.trainable = trainable

    def zero_grad(self) -> None:
        for slot in (*self._trunk, *self._stacked):
            slot.param.grad = None

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of everything outside the trainable set (before clipping)."""
        if not self.trainable.trunk:
            for slot in self._trunk:
                slot.param.grad = None
        for slot in self._stacked:
            grad = slot.param.grad
            if grad is None or self.trainable.all_experts:
                continue
            keep = torch.zeros(grad.shape[0], dtype=torch.bool, device=grad.device)
            keep[self.trainable.rows(grad.device)] = True
            grad[~keep] = 0.0

    @torch.no_grad()
    def step(self) -> None:
        if self.trainable.trunk:
            for slot in self._trunk:
                if slot.param.grad is not None:
                    self._update(slot, slot.param, slot.param.grad, slot.exp_avg, slot.exp_avg_sq, slot.step)
        if not self.trainable.experts:
            return
        for slot in self._stacked:
            if slot.param.grad is None:
                continue
            if self.trainable.all_experts:  # views: updated in place
                self._update(slot, slot.param, slot.param.grad, slot.exp_avg, slot.exp_avg_sq, slot.step)
                continue
            rows = self.trainable.rows(slot.param.device)
            p, m, v, step = (
                t.index_select(0, rows) for t in (slot.param, slot.exp_avg, slot.exp_avg_sq, slot.step)
            )
            self._update(slot, p, slot.param.grad.index_select(0, rows), m, v, step)
            for target, part in ((slot.param, p), (slot.exp_avg, m), (slot.exp_avg_sq, v), (slot.step, step)):
                target.index_copy_(0, rows, part)

    def _update(self, slot: _Slot, p: Tensor, grad: Tensor, m: Tensor, v: Tensor, step: Tensor) -> None:
        """One AdamW update of `p` in place; `step` is a scalar or one count per leading row."""
        beta1, beta2 = self.betas
        step.add_(1.0)
        m.lerp_(grad.to(m.dtype), 1.0 - beta1)
        v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        shape = (-1,) + (1,) * (p.dim() - 1) if step.dim() else ()
        bias1 = (1.0 - beta1**step).view(shape)
        bias2 = (1.0 - beta2**step).view(shape)
        if slot.decay and self.weight_decay:
            p.mul_(1.0 - self.lr * self.weight_decay)
        denom = (v / bias2).sqrt_().add_(self.eps)
        p.addcdiv_(m / bias1, denom, value=-self.lr)

    def flat_state(self) -> dict[str, Tensor]:
        """Moments and step counts as float32 CPU tensors named `adam.{exp_avg|exp_avg_sq|step}.<flat name>`,
        in canonical (sorted) order, per expert like the weights, so they hash and transfer the same way."""
        out: dict[str, Tensor] = {}
        for slot in self._trunk:
            for kind in ("exp_avg", "exp_avg_sq", "step"):
                out[f"adam.{kind}.{slot.name}"] = getattr(slot, kind).detach().float().cpu().clone()
        for slot in self._stacked:
            assert slot.layer is not None
            assert slot.tensor is not None
            for e in range(slot.param.shape[0]):
                name = expert_name(e, slot.layer, slot.tensor)
                for kind in ("exp_avg", "exp_avg_sq", "step"):
                    out[f"adam.{kind}.{name}"] = getattr(slot, kind)[e].detach().float().cpu().clone()
        return {k: out[k] for k in sorted(out)}

    @torch.no_grad()
    def load_flat_state(self, state: Mapping[str, Tensor]) -> None:
        """Inverse of `flat_state`; every name must be present and match in shape."""
        targets: dict[str, Tensor] = {}
        for slot in self._trunk:
            for kind in ("exp_avg", "exp_avg_sq", "step"):
                targets[f"adam.{kind}.{slot.name}"] = getattr(slot, kind)
        for slot in self._stacked:
            assert slot.layer is not None
            assert slot.tensor is not None
            for e in range(slot.param.shape[0]):
                for kind in ("exp_avg", "exp_avg_sq", "step"):
                    targets[f"adam.{kind}.{expert_name(e, slot.layer, slot.tensor)}"] = getattr(slot, kind)[e]
        if set(state) != set(targets):
            diff = sorted(set(state) ^ set(targets))
            raise StateError(f"optimizer state names differ from this model's, e.g. {', '.join(diff[:5])}")
        for name, value in state.items():
            if tuple(value.shape) != tuple(targets[name].shape):
                raise StateError(f"{name}: shape {tuple(value.shape)} != {tuple(targets[name].shape)}")
        for name, value in state.items():
            targets[name].copy_(value)
