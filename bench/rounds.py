"""The round protocol's learning, without the network: N engines in one process, R rounds of H steps.

Every node's engine trains its placement's experts on its own data shard, encodes its delta with the
codec (error feedback included), and all engines apply the same commit. What is left out is only what
cannot change the weights: signatures, PBFT, gossip, deadlines. So this isolates the choices that
decide the swarm's held-out bpb — codec, aggregation rule, outer optimizer, replicas — from timing,
and runs each in a few minutes on a CPU. The held-out bpb after every round is printed, the
uncompressed run can be printed beside it as the baseline (`--baseline`).

    python bench/rounds.py --codec lowrank:32+int8+zstd --baseline [--rounds 6 --inner-steps 25] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moeswarm.model.config import preset
from moeswarm.model.data import load_corpus
from moeswarm.model.trainer import TrainConfig
from moeswarm.placement import Member, place
from moeswarm.swarm.aggregate import AggregationConfig, Rule
from moeswarm.swarm.apply import Contribution
from moeswarm.swarm.engine import EngineConfig, SwarmEngine
from moeswarm.swarm.outer import OuterConfig

EVAL_BATCHES = 16
NO_CODEC = "none"


def run(args: argparse.Namespace, codec: str) -> dict[str, Any]:
    corpus = load_corpus(None)
    model = preset("cpu-tiny")
    total = args.rounds * args.inner_steps
    nodes = [f"{i:02x}" * 32 for i in range(args.nodes)]
    placement = place(model.n_experts, [Member(node_id=n, region="local") for n in nodes],
                      min(args.replicas, args.nodes))
    aggregation = (AggregationConfig(expert_rule=Rule.MEAN, trunk_rule=Rule.MEAN) if args.aggregation == "mean"
                   else AggregationConfig())
    engines = []
    for index, node in enumerate(nodes):
        train = TrainConfig(batch_size=args.batch_size, lr=args.lr, total_steps=total, seed=index,
                            warmup_steps=min(30, max(1, total // 20)), schedule="cosine")
        engine = SwarmEngine(EngineConfig(model=model, train=train, codec=codec if codec != NO_CODEC else "fp32",
                                          aggregation=aggregation,
                                          outer=OuterConfig(lr=args.outer_lr, momentum=args.outer_momentum)),
                             corpus)
        engine.set_assignment([e for e in range(model.n_experts) if node in placement.owners(e)], index, len(nodes))
        engines.append(engine)
    curve: list[float] = []
    payload_bytes = 0
    started = time.perf_counter()
    for r in range(args.rounds):
        contributions = []
        for node, engine in zip(nodes, engines, strict=True):
            engine.train(args.inner_steps)
            delta = engine.delta()
            if codec != NO_CODEC:
                payload = engine.encode(delta)
                payload_bytes += len(payload)
                delta = engine.decode(payload, list(delta), engine.allowed_names(engine.owned))
            contributions.append(Contribution(node_id=node, delta=delta))
        for engine in engines:
            engine.apply(contributions, r + 1, 0)
        curve.append(engines[0].evaluate(EVAL_BATCHES))
        print(f"  {codec:<24} round {r + 1}: held-out {curve[-1]:.4f} bpb  ({time.perf_counter() - started:.0f} s)",
              flush=True)
    return {"codec": codec, "heldout_bpb": curve, "payload_bytes": payload_bytes}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--codec", default="lowrank:32+int8+zstd", help=f"a codec spec, or {NO_CODEC!r}")
    p.add_argument("--baseline", action="store_true", help="also run uncompressed deltas in the same run")
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--inner-steps", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--aggregation", choices=("robust", "mean"), default="robust")
    p.add_argument("--outer-lr", type=float, default=1.0)
    p.add_argument("--outer-momentum", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    runs = [run(args, args.codec)]
    if args.baseline and args.codec != NO_CODEC:
        runs.append(run(args, NO_CODEC))
    print(f"{'codec':<26}{'final held-out bpb':>20}{'payload MB':>12}")
    for result in runs:
        print(f"{result['codec']:<26}{result['heldout_bpb'][-1]:>20.4f}{result['payload_bytes'] / 1e6:>12.2f}")
    if len(runs) == 2:
        gap = 100 * (runs[0]["heldout_bpb"][-1] / runs[1]["heldout_bpb"][-1] - 1)
        print(f"{args.codec} vs uncompressed: {gap:+.2f}%")
    if args.json:
        print(json.dumps({"runs": runs, "nodes": args.nodes, "rounds": args.rounds, "inner_steps": args.inner_steps,
                          "replicas": args.replicas, "aggregation": args.aggregation}, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
