"""SWIM in simulation: how long the group takes to learn of a crash, and false positives under loss with
one slow node, Lifeguard on against plain SWIM (the baseline) in the same run.

Usage: python bench/gossip.py [--sizes 8,32,128] [--seeds 5] [--fp-nodes 32] [--fp-seconds 300] [--json]

Crash: a warmed-up group (20 s of simulated time), one random member stops; we record when it is first
suspected, first declared dead, and when every live member has declared it dead. The suspicion timeout
is suspicion_mult x log10(n) x probe interval, so these should grow about like log n.

False positives: --fp-nodes members, 5% of messages lost, every member handles an inbound message in
8 ms and one member in 80 ms (10x slower; its timers still fire on time, so its own probes time out
with the acks unread), no crash, --fp-seconds of simulated time. A false positive is a healthy member
declared dead (counted per declaring member); the slow member itself being declared dead is reported
apart, as Lifeguard's paper does. Times are simulated, so the figures do not depend on this machine's
load; only the wall time does.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moeswarm.gossip import Dead, GossipConfig, Suspect
from tests.gossip.sim import Cluster, Network

WARMUP_S = 20.0
SERVICE_S = 0.008
DETECT_LIMIT_S = 120.0


def detection(size: int, seed: int, lifeguard: bool) -> dict[str, float]:
    cluster = Cluster(size, seed=seed, config=GossipConfig(lifeguard=lifeguard))
    cluster.run_until(WARMUP_S)
    victim = cluster.ids[cluster.rng.randrange(1, size)]
    cluster.crash(victim)
    crashed_at = cluster.now
    live = set(cluster.ids) - {victim}

    def everyone_knows(c: Cluster) -> bool:
        return live <= {o.node for o in c.events(Dead, victim)}

    cluster.run_until(crashed_at + DETECT_LIMIT_S, stop=everyone_knows)
    suspects, deaths = cluster.events(Suspect, victim), cluster.events(Dead, victim)
    return {
        "first_suspect_s": suspects[0].time - crashed_at if suspects else math.inf,
        "first_dead_s": deaths[0].time - crashed_at if deaths else math.inf,
        "all_dead_s": cluster.now - crashed_at if everyone_knows(cluster) else math.inf,
    }


def false_positives(size: int, seed: int, seconds: float, lifeguard: bool) -> dict[str, float]:
    network = Network(loss=0.05, service_s=SERVICE_S)
    cluster = Cluster(size, seed=seed, config=GossipConfig(lifeguard=lifeguard), network=network)
    slow = cluster.ids[1]
    network.slow[slow] = 10.0
    cluster.run_until(seconds)
    deaths = cluster.events(Dead)
    healthy = [o for o in deaths if getattr(o.effect, "node", None) != slow]
    raised = [
        o
        for o in cluster.events(Suspect)
        if o.node == getattr(o.effect, "accuser", None) and getattr(o.effect, "node", None) != slow
    ]
    return {
        "healthy_declared_dead": len(healthy),
        "healthy_declared_dead_per_node_hour": len(healthy) / (size * seconds / 3600),
        "of_which_by_slow_node": sum(1 for o in healthy if o.node == slow),
        "slow_node_declared_dead": len(deaths) - len(healthy),
        "suspicions_of_healthy_raised": len(raised),
        "messages_per_node_s": cluster.messages_sent / (size * seconds),
    }


def mean_of(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.mean(row[key] for row in rows) for key in rows[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="8,32,128")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--fp-nodes", type=int, default=32)
    parser.add_argument("--fp-seconds", type=float, default=300.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    results: dict[str, object] = {}

    print(f"crash detection, simulated seconds after the crash (mean of {args.seeds} seeds)")
    print(f"{'n':>5} {'mode':10} {'suspected':>10} {'1st dead':>9} {'all dead':>9} {'all/log10 n':>12}")
    detect: dict[str, dict[str, dict[str, float]]] = {}
    for size in (int(s) for s in args.sizes.split(",")):
        for mode, lifeguard in (("lifeguard", True), ("swim", False)):
            row = mean_of([detection(size, seed, lifeguard) for seed in range(args.seeds)])
            detect.setdefault(str(size), {})[mode] = row
            print(
                f"{size:5} {mode:10} {row['first_suspect_s']:10.2f} {row['first_dead_s']:9.2f} "
                f"{row['all_dead_s']:9.2f} {row['all_dead_s'] / math.log10(size):12.2f}",
                flush=True,
            )
    results["detection"] = detect

    print(
        f"\nfalse positives: {args.fp_nodes} nodes, 5% loss, inbound handling {SERVICE_S * 1000:.0f} ms/message, "
        f"one node 10x slower, {args.fp_seconds:.0f} s, {args.seeds} seeds (sums over seeds)"
    )
    print(
        f"{'mode':16} {'healthy dead':>12} {'/node-hour':>10} {'by slow':>8} {'slow dead':>9} "
        f"{'suspicions':>10} {'msg/node/s':>10}"
    )
    fp: dict[str, dict[str, float]] = {}
    for mode, lifeguard in (("swim (baseline)", False), ("lifeguard", True)):
        rows = [
            false_positives(args.fp_nodes, seed, args.fp_seconds, lifeguard) for seed in range(args.seeds)
        ]
        totals = {key: float(sum(row[key] for row in rows)) for key in rows[0]}
        for key in ("healthy_declared_dead_per_node_hour", "messages_per_node_s"):
            totals[key] = statistics.mean(r[key] for r in rows)
        totals["runs_with_healthy_declared_dead"] = float(
            sum(1 for r in rows if r["healthy_declared_dead"] > 0)
        )
        fp[mode] = totals
        print(
            f"{mode:16} {totals['healthy_declared_dead']:12.0f} {totals['healthy_declared_dead_per_node_hour']:10.2f} "
            f"{totals['of_which_by_slow_node']:8.0f} {totals['slow_node_declared_dead']:9.0f} "
            f"{totals['suspicions_of_healthy_raised']:10.0f} {totals['messages_per_node_s']:10.1f}",
            flush=True,
        )
    results["false_positives"] = fp
    print(f"\nwall time {time.perf_counter() - started:.0f} s")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
