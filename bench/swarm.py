"""The swarm against its two baselines, on the same number of training tokens, in one run.

(a) swarm:   `moe-swarm up --nodes N --rounds R --inner-steps H` (real processes on loopback);
(b) sync DP: one process, batch N×B, R×H steps — what synchronous data-parallel training over N
             nodes computes, step for step;
(c) single:  one node alone, batch B, R×H steps (a swarm node's own share of the work).

All three are scored by the same evaluator on the same held-out windows. Bytes: the swarm's bytes
sent by all nodes (from their metrics) against what synchronous data-parallel would send — the fp32
gradient of every parameter, every step, from every node.

    python bench/swarm.py [--nodes 4 --rounds 6 --inner-steps 25 --batch-size 32] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from moeswarm.model.config import preset  # noqa: E402
from moeswarm.model.data import load_corpus  # noqa: E402
from moeswarm.model.model import MoETransformer  # noqa: E402
from moeswarm.model.state import load_flat_state  # noqa: E402
from moeswarm.model.trainer import TrainConfig, Trainer  # noqa: E402
from moeswarm.store import NodeStore  # noqa: E402
from moeswarm.swarm.engine import GENESIS_SEED  # noqa: E402

EVAL_BATCHES = 16


def _trainer(model: MoETransformer, corpus: Any, batch: int, steps: int, lr: float, seed: int) -> Trainer:
    cfg = TrainConfig(batch_size=batch, lr=lr, total_steps=steps, seed=seed, eval_batches=EVAL_BATCHES,
                      warmup_steps=min(30, max(1, steps // 20)))
    return Trainer(model, corpus, cfg, experts=None, device="cpu")


def evaluate(model: MoETransformer, corpus: Any, batch: int) -> float:
    return _trainer(model, corpus, batch, 1, 1e-3, 0).evaluate(EVAL_BATCHES)


def run_baseline(corpus: Any, batch: int, steps: int, lr: float, eval_batch: int) -> tuple[float, float]:
    model = MoETransformer(preset("cpu-tiny"), seed=GENESIS_SEED)
    trainer = _trainer(model, corpus, batch, steps, lr, seed=1)
    started = time.perf_counter()
    trainer.train(steps)
    return evaluate(model, corpus, eval_batch), time.perf_counter() - started


def run_swarm(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    if workdir.exists():
        shutil.rmtree(workdir)
    cmd = [
        sys.executable, "-m", "moeswarm", "up", "--nodes", str(args.nodes), "--rounds", str(args.rounds),
        "--inner-steps", str(args.inner_steps), "--batch-size", str(args.batch_size), "--dir", str(workdir),
        "--base-port", str(args.base_port), "--json",
    ]
    for extra in args.node_arg:
        cmd.append(f"--node-arg={extra}")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"swarm run failed with exit code {proc.returncode}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    summary["wall_s"] = wall
    return summary


def swarm_model(workdir: Path) -> tuple[MoETransformer, list[dict[str, Any]]]:
    """The swarm's final weights, from node-0's newest checkpoint (written when it drained)."""
    store = NodeStore(workdir / "node-0")
    try:
        manifest = store.checkpoints.latest()
        if manifest is None:
            raise SystemExit("the swarm left no checkpoint in node-0")
        state, _ = store.checkpoints.load(manifest.round)
        rounds = list(manifest.meta.get("rounds", []))
    finally:
        store.close()
    model = MoETransformer(preset("cpu-tiny"), seed=GENESIS_SEED)
    load_flat_state(model, state)
    return model, rounds


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--inner-steps", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--base-port", type=int, default=7300)
    p.add_argument("--workdir", default=".moeswarm-bench")
    p.add_argument("--node-arg", action="append", default=[], help="extra flag for every node, e.g. --outer-lr=0.7")
    p.add_argument("--swarm-only", action="store_true", help="skip the two baselines (they are deterministic)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    workdir = ROOT / args.workdir
    steps = args.rounds * args.inner_steps

    swarm = run_swarm(args, workdir)
    corpus = load_corpus(None)
    model, _ = swarm_model(workdir)
    swarm_bpb = evaluate(model, corpus, args.batch_size)
    latencies = [float(x) for x in swarm.get("commit_latencies_ms", [])]

    if args.swarm_only:
        syncdp_bpb = single_bpb = syncdp_s = single_s = float("nan")
    else:
        syncdp_bpb, syncdp_s = run_baseline(corpus, args.batch_size * args.nodes, steps, args.lr, args.batch_size)
        single_bpb, single_s = run_baseline(corpus, args.batch_size, steps, args.lr, args.batch_size)

    n_params = sum(p.numel() for p in model.parameters())
    sync_dp_bytes = n_params * 4 * steps * args.nodes
    figures = {
        "nodes": args.nodes,
        "rounds": swarm.get("rounds"),
        "inner_steps": args.inner_steps,
        "tokens": steps * args.batch_size * args.nodes * preset("cpu-tiny").context,
        "swarm_bpb": round(swarm_bpb, 4),
        "syncdp_bpb": round(syncdp_bpb, 4),
        "single_bpb": round(single_bpb, 4),
        "swarm_vs_syncdp_pct": round(100 * (swarm_bpb - syncdp_bpb) / syncdp_bpb, 2),
        "bytes_sent": swarm.get("bytes_sent"),
        "sync_dp_bytes": sync_dp_bytes,
        "bytes_ratio": round(sync_dp_bytes / max(1, int(swarm.get("bytes_sent") or 1)), 1),
        "rounds_per_min": round(60 * float(swarm.get("rounds") or 0) / swarm["wall_s"], 2),
        "commit_p50_ms": _percentile(latencies, 0.5),
        "commit_p99_ms": _percentile(latencies, 0.99),
        "contributors_per_round": swarm.get("contributors_per_round", []),
        "swarm_wall_s": round(swarm["wall_s"], 1),
        "syncdp_wall_s": round(syncdp_s, 1),
        "single_wall_s": round(single_s, 1),
    }
    print(f"{'run':<28}{'held-out bpb':>14}")
    print(f"{'(a) swarm':<28}{swarm_bpb:>14.4f}")
    print(f"{'(b) synchronous DP':<28}{syncdp_bpb:>14.4f}")  # nan with --swarm-only
    print(f"{'(c) single node':<28}{single_bpb:>14.4f}")
    print(f"swarm vs sync DP: {figures['swarm_vs_syncdp_pct']:+.2f}%")
    print(f"bytes: swarm sent {figures['bytes_sent']:,}, sync DP would send {sync_dp_bytes:,} "
          f"({figures['bytes_ratio']}x fewer)")
    print(f"rounds/min {figures['rounds_per_min']}, commit latency p50 {figures['commit_p50_ms']} ms, "
          f"p99 {figures['commit_p99_ms']} ms")
    print(f"deltas in each round's commit: {figures['contributors_per_round']}")
    if args.json:
        clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in figures.items()}
        print(json.dumps(clean, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
