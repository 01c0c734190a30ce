"""`moe-swarm simulate`: run the consensus cores under seeded faults and report what broke."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace

from moeswarm.cli import CliError
from moeswarm.simulator.faults import ALL_FAULTS
from moeswarm.simulator.runner import Summary, percentile, run_seed, run_seeds, summarise
from moeswarm.simulator.world import Outcome, Settings, default_consensus

FAILURES_SHOWN_MAX = 5
NODES_MAX = 64


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=int, default=4, help="replicas (default 4)")
    parser.add_argument("--byzantine", type=int, default=1, help="Byzantine replicas among them (default 1)")
    parser.add_argument("--seeds", type=int, default=100, help="schedules to run (default 100)")
    parser.add_argument("--first-seed", type=int, default=0, help="seed of the first schedule (default 0)")
    parser.add_argument(
        "--faults",
        default="all",
        help=f"comma-separated faults to mix in, 'all' or 'none' (known: {','.join(ALL_FAULTS)})",
    )
    parser.add_argument("--duration", type=float, default=8.0, help="mean fault phase in virtual seconds")
    parser.add_argument("--seed", type=int, default=None, help="run this one schedule only")
    parser.add_argument("--trace", action="store_true", help="with --seed: print every event")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    parser.add_argument("--codec", action="store_true", help="send every message through the wire codec")
    # Test only: a deliberately unsafe quorum size, to show the simulator catches a broken protocol.
    parser.add_argument("--unsafe-quorum", type=int, default=None, help=argparse.SUPPRESS)


def _faults(text: str) -> frozenset[str]:
    if text == "all":
        return frozenset(ALL_FAULTS)
    if text == "none":
        return frozenset()
    chosen = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = sorted(chosen - set(ALL_FAULTS))
    if unknown:
        raise CliError(f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(ALL_FAULTS)}")
    return chosen


def _settings(args: argparse.Namespace) -> Settings:
    if not 1 <= args.nodes <= NODES_MAX:
        raise CliError(f"--nodes must be between 1 and {NODES_MAX}")
    f = (args.nodes - 1) // 3
    if not 0 <= args.byzantine <= f:
        raise CliError(f"--byzantine must be between 0 and {f} for {args.nodes} nodes (f = (n-1)//3)")
    if args.seeds < 1 or args.jobs < 1 or args.duration <= 0:
        raise CliError("--seeds, --jobs and --duration must be positive")
    if args.trace and args.seed is None:
        raise CliError("--trace replays one schedule: give it with --seed")
    consensus = default_consensus()
    if args.unsafe_quorum is not None:
        consensus = replace(consensus, unsafe_quorum=args.unsafe_quorum)
    return Settings(
        nodes=args.nodes,
        byzantine=args.byzantine,
        faults=_faults(args.faults),
        fault_phase_s=args.duration,
        consensus=consensus,
        codec=args.codec,
    )


def reproduce_command(args: argparse.Namespace, seed: int) -> str:
    parts = ["moe-swarm simulate", f"--nodes {args.nodes}", f"--byzantine {args.byzantine}"]
    if args.faults != "all":
        parts.append(f"--faults {args.faults}")
    if args.duration != 8.0:
        parts.append(f"--duration {args.duration}")
    if args.unsafe_quorum is not None:
        parts.append(f"--unsafe-quorum {args.unsafe_quorum}")
    parts.append(f"--seed {seed} --trace")
    return " ".join(parts)


def run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    failures: list[Outcome] = []

    def note(outcome: Outcome) -> None:
        if outcome.violations and len(failures) < FAILURES_SHOWN_MAX:
            failures.append(outcome)

    if args.seed is not None:
        start = time.perf_counter()
        outcome = run_seed(args.seed, settings, trace=print if args.trace else None)
        summary = Summary()
        summary.add(outcome)
        summary.wall_s = time.perf_counter() - start
        note(outcome)
        print(f"plan: {outcome.plan}")
    else:
        seeds = range(args.first_seed, args.first_seed + args.seeds)
        summary = summarise(run_seeds(seeds, settings, jobs=args.jobs), note)
    _print_table(args, summary)
    for outcome in failures:
        print(f"\nseed {outcome.seed} FAILED: {outcome.plan}")
        for violation in outcome.violations[:3]:
            print(f"  {violation}")
        print(f"  reproduce with: {reproduce_command(args, outcome.seed)}")
    if args.json:
        print(json.dumps(_figures(args, summary)))
    sys.stdout.flush()
    return 1 if summary.violations else 0


def _figures(args: argparse.Namespace, s: Summary) -> dict[str, object]:
    latencies = s.latencies_ms or []
    return {
        "seeds": s.seeds,
        "nodes": args.nodes,
        "byzantine": args.byzantine,
        "faults": args.faults,
        "commits": s.commits,
        "view_changes": s.view_changes,
        "violations": s.violations,
        "failed_seeds": s.failed_seeds or [],
        "p50_commit_ms": round(percentile(latencies, 50), 1),
        "p99_commit_ms": round(percentile(latencies, 99), 1),
        "events": s.events,
        "jobs": args.jobs,
        "wall_s": round(s.wall_s, 2),
    }


def _print_table(args: argparse.Namespace, s: Summary) -> None:
    latencies = s.latencies_ms or []
    rows = [
        ("schedules", f"{s.seeds}"),
        ("nodes / byzantine", f"{args.nodes} / {args.byzantine}"),
        ("faults", args.faults),
        ("commits", f"{s.commits}"),
        ("view changes", f"{s.view_changes}"),
        ("violations", f"{s.violations}" + (f" (seeds {s.failed_seeds[:10]})" if s.failed_seeds else "")),
        ("commit latency p50", f"{percentile(latencies, 50):.1f} ms (virtual)"),
        ("commit latency p99", f"{percentile(latencies, 99):.1f} ms (virtual)"),
        ("events", f"{s.events}"),
        ("wall time", f"{s.wall_s:.1f} s ({args.jobs} job{'s' if args.jobs > 1 else ''})"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
