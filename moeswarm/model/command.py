"""`moe-swarm train`: the single-node baseline, the same model and data the swarm trains.

Writes into --out: `model.safetensors` (flat canonical names, loadable by plain
`safetensors.torch.load_file`; the config JSON is also in its metadata), `config.json`, `loss.csv`,
`loss.png` and `summary.json`. With --json the last line of stdout is the summary as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from moeswarm.cli import CliError
from moeswarm.model.config import PRESETS, preset
from moeswarm.model.data import Corpus, DataError, load_corpus
from moeswarm.model.model import MoETransformer
from moeswarm.model.state import flat_state, state_hash_hex
from moeswarm.model.trainer import SCHEDULES, TrainConfig, Trainer, resolve_device

_DEFAULTS = TrainConfig()


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="cpu-tiny", help="model size (default cpu-tiny)"
    )
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps (default 600)")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per step (default 32)")
    parser.add_argument(
        "--lr", type=float, default=_DEFAULTS.lr, help=f"peak learning rate (default {_DEFAULTS.lr})"
    )
    parser.add_argument(
        "--schedule", choices=SCHEDULES, default="cosine", help="LR after warm-up (default cosine)"
    )
    parser.add_argument(
        "--data",
        action="append",
        metavar="PATH",
        help="text files, directories or globs (repeatable); default: the Python standard library's source",
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and batch order (default 0)")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/train"), help="output directory (default runs/train)"
    )
    parser.add_argument(
        "--eval-every", type=int, default=100, help="held-out evaluation interval in steps (default 100)"
    )
    parser.add_argument(
        "--eval-batches", type=int, default=16, help="held-out batches per evaluation (default 16)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--json", action="store_true", help="print the summary as one JSON object on the last line"
    )


def _check(args: argparse.Namespace) -> None:
    for name in ("steps", "batch_size", "eval_every", "eval_batches"):
        if getattr(args, name) <= 0:
            raise CliError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise CliError(f"--lr must be a positive number, got {args.lr}")


def _say(args: argparse.Namespace, line: str) -> None:
    print(line, flush=True)


def _describe(corpus: Corpus) -> str:
    return (
        f"data: {corpus.source}: {corpus.train.numel() / 1e6:.1f} MB train ({corpus.train_files} files), "
        f"{corpus.heldout.numel() / 1e6:.2f} MB held-out ({corpus.heldout_files} files)"
    )


def _save(out: Path, model: MoETransformer, trainer: Trainer, summary: dict[str, Any]) -> None:
    import safetensors.torch

    out.mkdir(parents=True, exist_ok=True)
    config_json = model.config.to_json()
    state = flat_state(model)
    summary["state_hash"] = state_hash_hex(state)
    meta = {"format": "moeswarm.flat.v1", "config": config_json, "state_hash": summary["state_hash"]}
    safetensors.torch.save_file(state, str(out / "model.safetensors"), metadata=meta)
    (out / "config.json").write_text(json.dumps(model.config.to_dict(), indent=2, sort_keys=True) + "\n")
    trainer.write_curve(out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def run(args: argparse.Namespace) -> int:
    _check(args)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    started = time.perf_counter()
    try:
        corpus = load_corpus(args.data)
        config = preset(args.preset)
        model = MoETransformer(config, seed=args.seed)
        train_config = TrainConfig(
            batch_size=args.batch_size,
            lr=args.lr,
            schedule=args.schedule,
            total_steps=args.steps,
            warmup_steps=min(_DEFAULTS.warmup_steps, args.steps // 10),
            seed=args.seed,
            eval_batches=args.eval_batches,
        )
        trainer = Trainer(
            model, corpus, train_config, device=device, progress=not (args.no_progress or args.json)
        )
        _say(args, _describe(corpus))
        _say(
            args,
            f"model: {config.name}, {model.num_params() / 1e6:.2f}M parameters "
            f"({model.num_params(active=True) / 1e6:.2f}M active per byte), device {device.type}",
        )
        first_bpb = trainer.evaluate()
        trainer.record_eval(first_bpb)
        _say(args, f"step 0: held-out {first_bpb:.3f} bpb")
        heldout_bpb = first_bpb
        while trainer.step < args.steps:
            stats = trainer.train(min(args.eval_every, args.steps - trainer.step))
            heldout_bpb = trainer.evaluate()
            trainer.record_eval(heldout_bpb)
            _say(
                args,
                f"step {trainer.step}: train {stats.train_bpb:.3f} bpb, held-out {heldout_bpb:.3f} bpb, "
                f"{stats.tokens_per_s:,.0f} tokens/s",
            )
    except DataError as exc:
        raise CliError(str(exc)) from None
    tokens = trainer.step * args.batch_size * config.context
    summary: dict[str, Any] = {
        "preset": config.name,
        "final_bpb": round(heldout_bpb, 4),
        "initial_bpb": round(first_bpb, 4),
        "tokens_per_s": round(tokens / trainer.seconds, 1) if trainer.seconds else 0.0,
        "steps": trainer.step,
        "batch_size": args.batch_size,
        "context": config.context,
        "seconds": round(time.perf_counter() - started, 2),
        "train_seconds": round(trainer.seconds, 2),
        "device": device.type,
        "seed": args.seed,
    }
    try:
        _save(args.out, model, trainer, summary)
    except OSError as exc:
        raise CliError(f"cannot write results to {args.out}: {exc.strerror or exc}") from None
    _say(
        args,
        f"final held-out {heldout_bpb:.3f} bits per byte after {trainer.step} steps; "
        f"{summary['tokens_per_s']:,.0f} tokens/s; {summary['seconds']:.0f} s; saved to {args.out}",
    )
    if args.json:
        print(json.dumps(summary), flush=True)
    return 0
