"""Which compression a delta gets, parsed from and printed as a short string such as "topk:0.01+int8+zstd".

A spec is a pipeline of at most one structure stage (``topk:FRACTION`` or ``lowrank:RANK``), at most one
value stage (``fp32``, ``fp16``, ``bf16``, ``int8[:BLOCK]``) and optional ``zstd[:LEVEL]`` framing, in
that order. The receiver never needs the spec: every frame describes itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Structure = Literal["dense", "topk", "lowrank"]
Values = Literal["fp32", "fp16", "bf16", "int8"]

VALUE_KINDS: tuple[Values, ...] = ("fp32", "fp16", "bf16", "int8")
BLOCK_DEFAULT = 256
BLOCK_MAX = 1 << 20
RANK_MAX = 1024
ZSTD_LEVEL_DEFAULT = 1
SPEC_CHARS_MAX = 200


class SpecError(ValueError):
    """A codec spec string or field that describes no valid pipeline (a local, user-facing mistake)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CodecSpec:
    """How to encode: structure (dense, top-k fraction, low-rank rank), value format, zstd level or None."""

    structure: Structure = "dense"
    fraction: float = 1.0
    rank: int = 0
    values: Values = "fp32"
    block: int = BLOCK_DEFAULT
    zstd_level: int | None = None

    def __post_init__(self) -> None:
        if self.structure not in ("dense", "topk", "lowrank"):
            raise SpecError(f"unknown structure {self.structure!r}")
        if self.structure == "topk" and not (math.isfinite(self.fraction) and 0 < self.fraction <= 1):
            raise SpecError(f"top-k fraction must be in (0, 1], got {self.fraction}")
        if self.structure == "lowrank" and not 1 <= self.rank <= RANK_MAX:
            raise SpecError(f"low-rank rank must be in [1, {RANK_MAX}], got {self.rank}")
        if self.values not in VALUE_KINDS:
            raise SpecError(f"unknown value format {self.values!r}; choose one of {', '.join(VALUE_KINDS)}")
        if not 1 <= self.block <= BLOCK_MAX:
            raise SpecError(f"int8 block must be in [1, {BLOCK_MAX}], got {self.block}")
        if self.zstd_level is not None and not 1 <= self.zstd_level <= 22:
            raise SpecError(f"zstd level must be in [1, 22], got {self.zstd_level}")

    @property
    def lossless(self) -> bool:
        return self.structure == "dense" and self.values == "fp32"

    def __str__(self) -> str:
        stages = []
        if self.structure == "topk":
            stages.append(f"topk:{self.fraction!r}")
        elif self.structure == "lowrank":
            stages.append(f"lowrank:{self.rank}")
        if self.values == "int8":
            stages.append("int8" if self.block == BLOCK_DEFAULT else f"int8:{self.block}")
        elif self.values != "fp32" or not stages:
            stages.append(self.values)
        if self.zstd_level is not None:
            stages.append("zstd" if self.zstd_level == ZSTD_LEVEL_DEFAULT else f"zstd:{self.zstd_level}")
        return "+".join(stages)

    @classmethod
    def parse(cls, text: str) -> CodecSpec:
        return parse_spec(text)


_GROUPS = {"topk": 0, "lowrank": 0, "fp32": 1, "none": 1, "fp16": 1, "bf16": 1, "int8": 1, "zstd": 2}
_PLAIN: dict[str, Values] = {"fp32": "fp32", "none": "fp32", "fp16": "fp16", "bf16": "bf16"}
_STAGES_HELP = "stages: topk:F (or topk:P%), lowrank:R, fp32, fp16, bf16, int8[:B], zstd[:L]"


def parse_spec(text: str) -> CodecSpec:
    """Parse "STAGE[:ARG]+..." (for CLI flags); raises SpecError naming the offending stage."""
    if not isinstance(text, str) or not text.strip() or len(text) > SPEC_CHARS_MAX:
        raise SpecError(f"codec spec must be a non-empty string of at most {SPEC_CHARS_MAX} characters")
    structure: Structure = "dense"
    fraction, rank, block = 1.0, 0, BLOCK_DEFAULT
    values: Values = "fp32"
    zstd_level: int | None = None
    last_group = -1
    for raw in text.strip().lower().split("+"):
        name, _, arg = raw.strip().partition(":")
        group = _GROUPS.get(name)
        if group is None:
            raise SpecError(f"unknown codec stage {raw!r}; {_STAGES_HELP}")
        if group <= last_group:
            raise SpecError(
                f"codec spec {text!r}: at most one structure, one value and one zstd stage, in that order"
            )
        last_group = group
        try:
            if name == "topk":
                structure = "topk"
                fraction = float(arg[:-1]) / 100 if arg.endswith("%") else float(arg)
            elif name == "lowrank":
                structure, rank = "lowrank", int(arg)
            elif name == "int8":
                values, block = "int8", int(arg) if arg else BLOCK_DEFAULT
            elif name == "zstd":
                zstd_level = int(arg) if arg else ZSTD_LEVEL_DEFAULT
            elif arg:
                raise SpecError(f"codec stage {raw!r} takes no argument")
            else:
                values = _PLAIN[name]
        except SpecError:
            raise
        except ValueError:
            raise SpecError(f"codec stage {raw!r} has a malformed argument") from None
    return CodecSpec(
        structure=structure, fraction=fraction, rank=rank, values=values, block=block, zstd_level=zstd_level
    )
