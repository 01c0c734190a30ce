"""The model's shape: one frozen dataclass, named presets, and a JSON form checked when read back.

The config travels with every checkpoint and every swarm join, so it must round-trip through JSON
exactly and refuse anything that would build a different model than the one its sender ran.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

VOCAB_SIZE = 256  # byte-level: one token per byte, so held-out loss in bits is bits per byte


class ConfigError(ValueError):
    """A model config that cannot describe a buildable model (bad value, unknown or missing field)."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MoEConfig:
    """Shape and regularisation of the byte-level MoE transformer.

    Every block is pre-norm attention followed by a top-k MoE MLP with `n_experts` GELU experts of width
    `d_ff`. `aux_loss_weight` scales the Switch load-balancing loss (1.0 when perfectly balanced);
    `z_loss_weight` scales the router z-loss (0 disables it).
    """

    name: str = "custom"
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_experts: int = 8
    top_k: int = 2
    d_ff: int = 256
    context: int = 128
    dropout: float = 0.0
    aux_loss_weight: float = 0.01
    z_loss_weight: float = 0.001
    init_std: float = 0.02
    vocab_size: int = VOCAB_SIZE

    def __post_init__(self) -> None:
        positive = ("d_model", "n_layers", "n_heads", "n_experts", "top_k", "d_ff", "context", "vocab_size")
        for field in positive:
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{field} must be a positive integer, got {value!r}")
        if self.vocab_size != VOCAB_SIZE:
            raise ConfigError(
                f"vocab_size must be {VOCAB_SIZE} (the model reads bytes), got {self.vocab_size}"
            )
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.top_k > self.n_experts:
            raise ConfigError(f"top_k={self.top_k} exceeds n_experts={self.n_experts}")
        if self.n_experts > 999:
            raise ConfigError("n_experts must be at most 999 (flat names use three digits)")
        for field in ("dropout", "aux_loss_weight", "z_loss_weight", "init_std"):
            value = getattr(self, field)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                raise ConfigError(f"{field} must be a finite number, got {value!r}")
            if value < 0:
                raise ConfigError(f"{field} must be >= 0, got {value!r}")
        if self.dropout >= 1:
            raise ConfigError(f"dropout must be < 1, got {self.dropout}")
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("name must be a non-empty string")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MoEConfig:
        """Build from a JSON object; unknown fields are an error so a newer format is not misread."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config fields: {', '.join(unknown)}")
        values = dict(data)
        for field in ("dropout", "aux_loss_weight", "z_loss_weight", "init_std"):
            if isinstance(values.get(field), int) and not isinstance(values.get(field), bool):
                values[field] = float(values[field])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> MoEConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config is not valid JSON: {exc}") from exc
        return cls.from_dict(data)


PRESETS: dict[str, MoEConfig] = {
    # The CPU default: trains to ~2.5 held-out bits per byte in a few minutes on two cores.
    "cpu-tiny": MoEConfig(
        name="cpu-tiny", d_model=128, n_layers=4, n_heads=4, n_experts=8, top_k=2, d_ff=256, context=128
    ),
    # ≈101M parameters in total (≈21M active per token), meant for one GPU in bf16.
    "gpu-small": MoEConfig(
        name="gpu-small", d_model=512, n_layers=8, n_heads=8, n_experts=16, top_k=2, d_ff=704, context=512
    ),
}


def preset(name: str) -> MoEConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None
