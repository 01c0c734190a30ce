"""The inner training loop: AdamW steps over a chosen parameter set, held-out bits per byte, loss curve.

The round protocol drives one `Trainer` per node for the whole run: `train(H)` once per round, then
`load_flat_state` with the committed weights, then `train(H)` again. The optimizer's moments, the step
count (which drives the LR schedule) and the batch generator all carry over between calls.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from moeswarm.model.data import Corpus, Shard
from moeswarm.model.model import MoETransformer
from moeswarm.model.optim import MaskedAdamW, TrainableSet, set_trainable

SCHEDULES = ("cosine", "constant")
HISTORY_POINTS_MAX = 100_000  # loss-curve rows kept in memory; a long swarm run keeps its latest steps


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    """Inner-loop hyper-parameters. Defaults reach ≤ 2.5 held-out bpb with `cpu-tiny` in 600 steps.

    Schedule: linear warm-up over `warmup_steps`, then `cosine` decays to `lr * min_lr_ratio` at
    `total_steps` and stays there, or `constant` holds `lr`.
    """

    batch_size: int = 32
    lr: float = 5e-3
    schedule: str = "cosine"
    warmup_steps: int = 30
    total_steps: int = 600
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 0  # evaluate held-out bpb every N steps inside `train`; 0: only when asked
    eval_batches: int = 16
    eval_seed: int = 0  # held-out windows come from this seed alone, identical for every node

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for field in ("batch_size", "total_steps", "eval_batches"):
            if getattr(self, field) <= 0:
                raise ValueError(f"{field} must be positive, got {getattr(self, field)}")
        for field in ("warmup_steps", "eval_every"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must be >= 0, got {getattr(self, field)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def lr_at(self, step: int) -> float:
        """Learning rate for the 0-based step `step`."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        floor = self.lr * self.min_lr_ratio
        return floor + (self.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclasses.dataclass(frozen=True, slots=True)
class Point:
    """One row of the loss curve."""

    step: int  # steps done when recorded
    lr: float
    train_bpb: float  # cross-entropy of this step's batch in bits per byte
    heldout_bpb: float  # NaN when not evaluated at this step
    seconds: float  # training time so far (evaluation excluded)


@dataclasses.dataclass(frozen=True, slots=True)
class TrainStats:
    """What one `train(steps)` call did."""

    steps: int
    seconds: float
    tokens: int
    tokens_per_s: float
    train_bpb: float  # mean over the call's steps


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is a ValueError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


class Trainer:
    """Inner AdamW loop for one node: trunk + `experts` trainable, data from shard `shard=(i, n)`.

    Runs float32 on CPU (deterministic: same seed, data, shard and thread count give the same state
    hash) and bf16 autocast on CUDA. Dropout, off in the presets, would draw from torch's global RNG.
    """

    def __init__(
        self,
        model: MoETransformer,
        data: Corpus,
        config: TrainConfig | None = None,
        *,
        experts: Iterable[int] | None = None,
        shard: tuple[int, int] = (0, 1),
        device: str | torch.device = "cpu",
        progress: bool = False,
    ) -> None:
        self.config = config or TrainConfig()
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.model = model.to(self.device)
        self.data = data
        self.shard: Shard = data.shard(shard[0], shard[1], model.config.context)
        self.trainable: TrainableSet = set_trainable(model, experts)
        self.optimizer = MaskedAdamW(
            model,
            self.trainable,
            lr=self.config.lr,
            betas=self.config.betas,
            weight_decay=self.config.weight_decay,
        )
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.progress = progress
        self.step = 0  # optimizer steps taken over all `train` calls
        self.seconds = 0.0  # time spent in `train` steps
        self.history: deque[Point] = deque(maxlen=HISTORY_POINTS_MAX)
        self._heldout: list[Tensor] | None = None

    def set_trainable(self, experts: Iterable[int] | None, trunk: bool = True) -> None:
        """Change the trainable experts between rounds; optimizer moments of every expert are kept."""
        self.trainable = set_trainable(self.model, experts, trunk)
        self.optimizer.set_trainable(self.trainable)

    def set_shard(self, index: int, count: int) -> None:
        """Move to shard `index` of `count` (after a membership change); the batch generator carries on."""
        self.shard = self.data.shard(index, count, self.model.config.context)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(
            device_type=self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"
        )

    def train_step(self) -> float:
        """One optimizer step on a fresh batch from this node's shard; returns the batch's bits per byte."""
        batch = self.shard.sample(self.config.batch_size, self.generator).to(self.device, non_blocking=True)
        lr = self.config.lr_at(self.step)
        self.optimizer.lr = lr
        self.model.train()
        with self._autocast():
            out = self.model(batch[:, :-1], batch[:, 1:])
        assert out.loss is not None
        assert out.ce is not None
        self.optimizer.zero_grad()
        out.loss.backward()
        self.optimizer.mask_gradients()
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        self.optimizer.step()
        self.step += 1
        return float(out.ce.detach()) / math.log(2)

    def train(self, steps: int, stop: Callable[[], bool] | None = None) -> TrainStats:
        """Run `steps` optimizer steps (evaluating every `eval_every` steps); callable repeatedly.

        `stop` is asked before each step: a draining node must not sit out a whole round of training
        (minutes on a CPU) before it can checkpoint and exit. The stats count the steps actually taken.
        """
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        show = self.progress and sys.stderr.isatty()
        bar = tqdm(total=steps, disable=not show, unit="step", dynamic_ncols=True, leave=False)
        total_bpb = 0.0
        spent = 0.0
        done = 0
        try:
            for _ in range(steps):
                if stop is not None and stop():
                    break
                started = time.perf_counter()
                bpb = self.train_step()
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                spent += time.perf_counter() - started
                total_bpb += bpb
                heldout = math.nan
                if self.config.eval_every and self.step % self.config.eval_every == 0:
                    heldout = self.evaluate()
                    bar.set_postfix(train_bpb=f"{bpb:.3f}", heldout_bpb=f"{heldout:.3f}")
                elif self.step % 10 == 0:
                    bar.set_postfix(train_bpb=f"{bpb:.3f}")
                self.history.append(Point(self.step, self.optimizer.lr, bpb, heldout, self.seconds + spent))
                bar.update(1)
                done += 1
        finally:
            bar.close()
            self.seconds += spent
        tokens = done * self.config.batch_size * self.model.config.context
        return TrainStats(
            done, spent, tokens, tokens / spent if spent else 0.0, total_bpb / done if done else math.nan
        )

    @torch.no_grad()
    def evaluate(self, batches: int | None = None) -> float:
        """Held-out bits per byte over the first `batches` fixed held-out batches (default eval_batches).

        Every position of every window is scored; the windows depend only on the corpus, `eval_seed`,
        the batch size and the context, so all nodes evaluating the same weights report the same value.
        """
        n = self.config.eval_batches if batches is None else batches
        if n <= 0:
            raise ValueError(f"batches must be positive, got {n}")
        if self._heldout is None or len(self._heldout) < n:
            ctx = self.model.config.context
            self._heldout = self.data.heldout_batches(n, self.config.batch_size, ctx, self.config.eval_seed)
        was_training = self.model.training
        self.model.eval()
        total = 0.0
        try:
            for batch in self._heldout[:n]:
                batch = batch.to(self.device)
                with self._autocast():
                    out = self.model(batch[:, :-1], batch[:, 1:])
                assert out.ce is not None
                total += float(out.ce)
        finally:
            self.model.train(was_training)
        return total / n / math.log(2)

    def record_eval(self, heldout_bpb: float) -> None:
        """Attach a held-out figure measured outside `train` to the curve at the current step."""
        last = self.history[-1] if self.history else None
        if last is not None and last.step == self.step:
            self.history[-1] = dataclasses.replace(last, heldout_bpb=heldout_bpb)
        else:
            self.history.append(Point(self.step, self.optimizer.lr, math.nan, heldout_bpb, self.seconds))

    def write_curve(self, out_dir: Path) -> tuple[Path, Path]:
        """Write `loss.csv` (one row per step) and `loss.png` (train and held-out bpb against step)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        out_dir.mkdir(parents=True, exist_ok=True)
        csv_path, png_path = out_dir / "loss.csv", out_dir / "loss.png"
        with csv_path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([field.name for field in dataclasses.fields(Point)])
            for p in self.history:
                writer.writerow(
                    [p.step, f"{p.lr:.6g}", f"{p.train_bpb:.6f}", f"{p.heldout_bpb:.6f}", f"{p.seconds:.3f}"]
                )
        fig = Figure(figsize=(7, 4), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        train = [(p.step, p.train_bpb) for p in self.history if not math.isnan(p.train_bpb)]
        held = [(p.step, p.heldout_bpb) for p in self.history if not math.isnan(p.heldout_bpb)]
        if train:
            ax.plot(*zip(*train, strict=True), label="train (batch)", linewidth=0.8, alpha=0.7)
        if held:
            ax.plot(*zip(*held, strict=True), "o-", label="held-out", linewidth=1.5)
        ax.set_xlabel("step")
        ax.set_ylabel("bits per byte")
        ax.set_title(f"{self.model.config.name}: loss")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(png_path)
        return csv_path, png_path
