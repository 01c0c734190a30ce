"""Placement figures: balance and movement on a join/leave, ours against plain consistent hashing.

Usage: python bench/placement.py [--experts 64] [--replicas 2] [--nodes 8] [--regions 4] [--trials 300] [--json]

Prints the headline configuration (node ids node-0..node-7, regions region-0..3, node-8 joins) and then
statistics over --trials member sets with random-looking ids, because with only E x R assignments the
moved fraction of one join varies by a few assignments from one id set to another. Baselines in the same
run: the plain ring and plain rendezvous hashing without load bounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moeswarm.placement import Member, Method, Placement, moved_fraction, place

UNBOUNDED = 1e9


@dataclass(frozen=True)
class Variant:
    name: str
    method: Method
    load_factor: float


VARIANTS = (
    Variant("rendezvous+bounded (default)", "rendezvous", 1.25),
    Variant("ring+bounded", "ring", 1.25),
    Variant("rendezvous plain (baseline)", "rendezvous", UNBOUNDED),
    Variant("ring plain (baseline)", "ring", UNBOUNDED),
)


def members_for(prefix: str, count: int, regions: int) -> list[Member]:
    return [Member(f"{prefix}-{i}", f"region-{i % regions}") for i in range(count)]


def spans_regions(placement: Placement, members: list[Member], wanted: int) -> bool:
    region = {m.node_id: m.region for m in members}
    return all(len({region[n] for n in owners}) >= wanted for owners in placement.values())


def measure(variant: Variant, args: argparse.Namespace) -> dict[str, float]:
    joins, leaves, balance = [], [], []
    spread_ok = 0
    for trial in range(args.trials):
        members = members_for(f"t{trial}", args.nodes, args.regions)
        joiner = Member(f"t{trial}-new", f"region-{trial % args.regions}")

        def run(ms: list[Member]) -> Placement:
            return place(
                args.experts, ms, args.replicas, method=variant.method, load_factor=variant.load_factor
            )

        base = run(members)
        joins.append(moved_fraction(base, run([*members, joiner])))
        leaves.append(moved_fraction(base, run(members[1:])))
        balance.append(base.load_report().max_over_mean)
        spread_ok += spans_regions(base, members, min(2, args.regions))
    joins.sort()
    return {
        "join_moved_mean": statistics.mean(joins),
        "join_moved_p90": joins[int(0.9 * len(joins))],
        "join_moved_max": joins[-1],
        "leave_moved_mean": statistics.mean(leaves),
        "max_over_mean_mean": statistics.mean(balance),
        "max_over_mean_worst": max(balance),
        "all_span_2_regions_fraction": spread_ok / args.trials,
    }


def headline(args: argparse.Namespace) -> dict[str, float]:
    members = members_for("node", args.nodes, args.regions)
    base = place(args.experts, members, args.replicas)
    joined = place(args.experts, [*members, Member(f"node-{args.nodes}", "region-0")], args.replicas)
    distinct = all(len(set(owners)) == len(owners) for owners in base.values())
    return {
        "distinct_nodes": float(distinct),
        "spans_2_regions": float(spans_regions(base, members, min(2, args.regions))),
        "max_over_mean": base.load_report().max_over_mean,
        "join_moved": moved_fraction(base, joined),
        "one_over_n": 1 / args.nodes,
        "one_over_n_plus_1": 1 / (args.nodes + 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=64)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--nodes", type=int, default=8)
    parser.add_argument("--regions", type=int, default=4)
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    head = headline(args)
    print(
        f"headline: {args.experts} experts x R={args.replicas} over {args.nodes} nodes in {args.regions} regions"
    )
    print(
        f"  distinct nodes per expert: {bool(head['distinct_nodes'])}, every expert spans 2 regions: "
        f"{bool(head['spans_2_regions'])}, max/mean load {head['max_over_mean']:.3f} (target <= 1.25)"
    )
    print(
        f"  join moved {head['join_moved']:.4f} of assignments; 1.2/n = {1.2 / args.nodes:.4f}, "
        f"1.2/(n+1) = {1.2 / (args.nodes + 1):.4f}"
    )
    print(f"\nover {args.trials} member sets (join: n -> n+1, leave: n -> n-1)")
    print(
        f"{'variant':30} {'join mean':>9} {'p90':>7} {'max':>7} {'leave':>7} {'max/mean':>9} {'worst':>7} {'2-region':>8}"
    )
    results: dict[str, object] = {"headline": head}
    for variant in VARIANTS:
        row = measure(variant, args)
        results[variant.name] = row
        print(
            f"{variant.name:30} {row['join_moved_mean']:9.4f} {row['join_moved_p90']:7.4f} "
            f"{row['join_moved_max']:7.4f} {row['leave_moved_mean']:7.4f} {row['max_over_mean_mean']:9.3f} "
            f"{row['max_over_mean_worst']:7.3f} {row['all_span_2_regions_fraction']:8.2f}"
        )
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
