"""The tensor side of a node's rounds: the global state, local training, deltas, and applying commits.

The engine holds the committed global state — weights `W_r`, outer momentum `M_r`, round `r`, epoch
`e` and `H_r` — and a local model that trains from it. It is synchronous and does no I/O: the daemon
runs its methods in a worker thread, one at a time, so the event loop keeps serving while it trains.

`H_r = blake3(canonical W_r ∪ M_r, r, e)`; every honest node computes it bit for bit because applying
a commit is deterministic (see `apply` and `aggregate`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from moeswarm.codec import CodecError, decode_delta, encode_delta
from moeswarm.model.config import MoEConfig
from moeswarm.model.data import Corpus
from moeswarm.model.model import MoETransformer
from moeswarm.model.state import expert_id_of_name, flat_state, is_trunk, load_flat_state, state_hash
from moeswarm.model.trainer import TrainConfig, Trainer, TrainStats
from moeswarm.swarm import POISON_MODES
from moeswarm.swarm.aggregate import AggregationConfig
from moeswarm.swarm.apply import Contribution, ScreenConfig, ScreenResult, aggregate, screen
from moeswarm.swarm.outer import OuterConfig, outer_step

MOMENTUM_PREFIX = "outer_momentum."
GENESIS_SEED = 1234  # every node builds the same round-0 weights from this seed


class DeltaRejected(ValueError):
    """A delta blob's payload that must not enter a commit; the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    model: MoEConfig
    train: TrainConfig
    codec: str = "lowrank:32+int8+zstd"
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    screen: ScreenConfig = field(default_factory=ScreenConfig)
    outer: OuterConfig = field(default_factory=OuterConfig)
    device: str = "cpu"
    poison: str | None = None  # a deliberately Byzantine node (tests, `up --byzantine`)

    def __post_init__(self) -> None:
        if self.poison is not None and self.poison not in POISON_MODES:
            raise ValueError(f"poison must be one of {POISON_MODES}")


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyReport:
    round: int
    state_hash: bytes
    accepted: tuple[str, ...]
    rejected: dict[str, str]


class SwarmEngine:
    def __init__(self, config: EngineConfig, corpus: Corpus) -> None:
        self.config = config
        self.corpus = corpus
        model = MoETransformer(config.model, seed=GENESIS_SEED)
        self.weights: dict[str, torch.Tensor] = flat_state(model)
        self.momentum: dict[str, torch.Tensor] = {}
        self.round = 0
        self.epoch = 0
        self.trainer = Trainer(model, corpus, config.train, experts=(), device=config.device)
        self.owned: tuple[int, ...] = ()
        self.residual: dict[str, torch.Tensor] = {}
        self.state_hash = self._hash()
        self.rounds_trained = 0

    @property
    def model(self) -> MoETransformer:
        return self.trainer.model

    # --- global state -------------------------------------------------------------------------

    def _hash(self) -> bytes:
        full = dict(self.weights)
        full.update({MOMENTUM_PREFIX + k: v for k, v in self.momentum.items()})
        return state_hash(full, struct.pack("<QQ", self.round, self.epoch))

    def full_state(self) -> dict[str, torch.Tensor]:
        """Weights and outer momentum under one namespace, for checkpoints and state transfer."""
        full = dict(self.weights)
        full.update({MOMENTUM_PREFIX + k: v for k, v in self.momentum.items()})
        return full

    def install(self, state: Mapping[str, torch.Tensor], round_index: int, epoch: int, expected: bytes) -> None:
        """Adopt a checkpoint (own disk or a peer's) after checking it hashes to `expected`."""
        weights = {k: v.clone() for k, v in state.items() if not k.startswith(MOMENTUM_PREFIX)}
        momentum = {k[len(MOMENTUM_PREFIX):]: v.clone() for k, v in state.items() if k.startswith(MOMENTUM_PREFIX)}
        if set(weights) != set(self.weights):
            raise DeltaRejected("checkpoint names do not match this model")
        for name, value in weights.items():
            if value.shape != self.weights[name].shape or value.dtype != torch.float32:
                raise DeltaRejected(f"checkpoint tensor {name} has the wrong shape or dtype")
        previous = (self.weights, self.momentum, self.round, self.epoch)
        self.weights, self.momentum, self.round, self.epoch = weights, momentum, round_index, epoch
        if self._hash() != expected:
            self.weights, self.momentum, self.round, self.epoch = previous
            raise DeltaRejected("checkpoint does not hash to the expected state hash")
        self.state_hash = expected
        self.residual.clear()

    def set_epoch(self, epoch: int) -> None:
        """A committed reconfiguration moved the swarm to `epoch` (part of the state hash)."""
        self.epoch = epoch
        self.state_hash = self._hash()

    def set_assignment(self, owned: Iterable[int], shard_index: int, shard_count: int) -> None:
        """Experts this node trains (from placement) and its data shard (its index among members)."""
        self.owned = tuple(sorted(set(owned)))
        self.trainer.set_trainable(self.owned)
        self.trainer.set_shard(shard_index, shard_count)
        self.residual = {k: v for k, v in self.residual.items() if self._trained_name(k)}

    def _trained_name(self, name: str) -> bool:
        expert = expert_id_of_name(name)
        return expert is None or expert in self.owned

    # --- one round of local work ----------------------------------------------------------------

    def train(self, steps: int, stop: Callable[[], bool] | None = None) -> TrainStats:
        """Start from the committed weights and take `steps` inner steps on the owned set (fewer when
        `stop` says so)."""
        load_flat_state(self.model, self.weights)
        stats = self.trainer.train(steps, stop)
        self.rounds_trained += 1
        return stats

    def delta(self) -> dict[str, torch.Tensor]:
        """Local minus committed weights over trunk ∪ owned experts (what this node contributes)."""
        local = flat_state(self.model, experts=self.owned, include_trunk=True)
        out = {name: local[name] - self.weights[name] for name in local}
        mode = self.config.poison
        if mode == "scale":
            out = {k: v * 100.0 for k, v in out.items()}
        elif mode == "flip":
            out = {k: -v for k, v in out.items()}
        return out

    def encode(self, delta: Mapping[str, torch.Tensor]) -> bytes:
        """Compress with error feedback: what the codec dropped is added to next round's delta."""
        if self.config.poison == "nan":
            return _nan_payload(delta)
        payload, residual = encode_delta(delta, self.config.codec, self.residual)
        self.residual = dict(residual)
        return payload

    def elements_max(self) -> int:
        return sum(t.numel() for t in self.weights.values())

    def allowed_names(self, owners_experts: Iterable[int]) -> set[str]:
        experts = set(owners_experts)
        return {n for n in self.weights if is_trunk(n) or expert_id_of_name(n) in experts}

    def decode(self, payload: bytes, names: Sequence[str], allowed: set[str]) -> dict[str, torch.Tensor]:
        """Decode an untrusted payload and check it against the blob's manifest and the author's experts."""
        try:
            delta = decode_delta(payload, elements_max=self.elements_max())
        except CodecError as exc:
            raise DeltaRejected(f"payload does not decode: {exc}") from exc
        if sorted(delta) != sorted(names):
            raise DeltaRejected("payload tensors differ from the blob's manifest")
        extra = set(delta) - allowed
        if extra:
            raise DeltaRejected(f"delta touches tensors its author does not own: {sorted(extra)[:3]}")
        for name, value in delta.items():
            if value.shape != self.weights[name].shape:
                raise DeltaRejected(f"{name}: shape {tuple(value.shape)} != {tuple(self.weights[name].shape)}")
            if not bool(torch.isfinite(value).all()):
                raise DeltaRejected(f"{name}: non-finite values")
        return delta

    # --- committing --------------------------------------------------------------------------

    def screen(self, contributions: Sequence[Contribution]) -> ScreenResult:
        return screen(contributions, is_trunk, self.config.screen)

    def apply(self, contributions: Sequence[Contribution], new_round: int, epoch: int) -> ApplyReport:
        """Screen, aggregate and step the outer optimizer; deterministic given the ordered inputs."""
        result = self.screen(contributions)
        if result.accepted:
            agg = aggregate(result.accepted, is_trunk, self.config.aggregation)
            outer_step(self.weights, self.momentum, agg, self.config.outer, self.round)
        self.round = new_round
        self.epoch = epoch
        self.state_hash = self._hash()
        return ApplyReport(
            round=new_round,
            state_hash=self.state_hash,
            accepted=tuple(c.node_id for c in result.accepted),
            rejected=dict(result.rejected),
        )

    def evaluate(self, batches: int = 8) -> float:
        """Held-out bits per byte of the committed weights (the same figure on every node)."""
        load_flat_state(self.model, self.weights)
        return self.trainer.evaluate(batches)


def _nan_payload(delta: Mapping[str, torch.Tensor]) -> bytes:
    """A Byzantine node's NaN delta: a well-formed fp16 frame whose values are all NaN bit patterns.

    The codec refuses to encode non-finite values, so the poisoner patches the values in place, as an
    attacker writing its own bytes would; honest receivers must reject it when they decode.
    """
    payload, _ = encode_delta(delta, "fp16")
    values_bytes = 2 * sum(t.numel() for t in delta.values())
    return payload[:-values_bytes] + b"\xff" * values_bytes
