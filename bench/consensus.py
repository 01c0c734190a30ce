"""PBFT state machines alone: commits per second, commit latency and signature cost, no network.

Usage: python bench/consensus.py [--sizes 4,7,10] [--commits 300] [--json]

n replicas are joined by an in-memory FIFO queue and driven as fast as one CPU core allows: the
primary proposes a value, every message is handed to its receiver at once, every replica's
application executes the decision (a hash chain) and reports its state digest, so checkpoints and
log truncation run too. A commit's latency is the wall time from the proposal until a quorum of
replicas delivered it; commits run one after another, as the swarm's rounds do.

Signature cost: every vote is signed once and verified by every receiver, and again inside each
certificate that carries it. The figures count Ed25519 verifications actually computed per commit
and multiply by the measured cost of one verification. Two setups run on the same workload:

- ``per-replica cache`` (baseline): each replica remembers only the signatures it verified itself,
  as on separate machines;
- ``shared cache``: one verified-signature cache for all replicas, as in the simulator.

Wall-clock figures on a shared machine are noisy; the verification counts are exact.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moeswarm.consensus import (
    Broadcast,
    Config,
    Deliver,
    Effect,
    Kind,
    Replica,
    Send,
    Validation,
)
from moeswarm.identity import Identity, VerifiedSignatureCache, verify

CONFIG = Config(checkpoint_interval=16, window=64, view_timeout=1e9, view_timeout_max=1e9)


class Counting(VerifiedSignatureCache):
    """A verified-signature cache that also counts the verifications it had to compute."""

    def __init__(self) -> None:
        super().__init__(entries_max=1_000_000)
        self.computed = 0

    def verify(self, node_id: str, data: bytes, sig: bytes) -> bool:
        misses = self.misses
        ok = super().verify(node_id, data, sig)
        self.computed += self.misses - misses
        return ok


def _run(n: int, commits: int, shared: bool) -> dict[str, float]:
    identities = sorted((Identity.generate(bytes([i + 1]) * 32) for i in range(n)), key=lambda x: x.node_id)
    members = [i.node_id for i in identities]
    caches = [Counting()] if shared else [Counting() for _ in range(n)]
    replicas = {
        ident.node_id: Replica(
            ident,
            members,
            CONFIG,
            lambda seq, value: Validation.VALID,
            verifier=caches[0 if shared else k].verify,
        )
        for k, ident in enumerate(identities)
    }
    states = dict.fromkeys(members, b"")
    delivered = dict.fromkeys(members, 0)
    queue: deque[tuple[str, str, object]] = deque()

    def perform(node: str, effects: list[Effect]) -> None:
        for e in effects:
            if isinstance(e, Broadcast):
                queue.extend((node, peer, e.msg) for peer in members if peer != node)
            elif isinstance(e, Send):
                queue.append((node, e.to, e.msg))
            elif isinstance(e, Deliver):
                delivered[node] = e.seq
                value = e.proposal.value if e.proposal.kind is Kind.VALUE else b""
                states[node] = hashlib.blake2b(states[node] + value, digest_size=32).digest()
                perform(node, replicas[node].executed(e.seq, states[node], 0.0))

    quorum = next(iter(replicas.values())).q
    latencies = []
    start = time.perf_counter()
    for seq in range(1, commits + 1):
        began = time.perf_counter()
        primary = next(iter(replicas.values())).primary
        perform(primary, replicas[primary].propose(b"value-%d" % seq, 0.0))
        while sum(1 for d in delivered.values() if d >= seq) < quorum:
            sender, to, msg = queue.popleft()
            perform(to, replicas[to].on_message(msg, sender, 0.0))
        latencies.append(time.perf_counter() - began)
        while queue:  # let the stragglers finish before the next round, as the swarm does
            sender, to, msg = queue.popleft()
            perform(to, replicas[to].on_message(msg, sender, 0.0))
    wall = time.perf_counter() - start
    latencies.sort()
    computed = sum(c.computed for c in caches)
    return {
        "commits_per_s": commits / wall,
        "p50_commit_ms": 1000 * latencies[len(latencies) // 2],
        "p99_commit_ms": 1000 * latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
        "verifies_per_commit": computed / commits,
    }


def _verify_us() -> float:
    ident = Identity.generate(b"v" * 32)
    data = b"x" * 96
    sig = ident.sign(data)
    rounds = 2000
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(rounds):
            verify(ident.node_id, data, sig)
        best = min(best, (time.perf_counter() - t0) / rounds)
    return best * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4,7,10", help="replica counts (default 4,7,10)")
    parser.add_argument("--commits", type=int, default=300, help="commits per size (default 300)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line of the figures")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    verify_us = _verify_us()
    print(f"one Ed25519 verification: {verify_us:.1f} us (best of 3 x 2000)")
    header = f"{'n':>3} {'setup':<18} {'commits/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'verifies/commit':>16} {'verify ms/commit':>17}"
    print(header)
    results = []
    for n in sizes:
        for setup, shared in (("per-replica cache", False), ("shared cache", True)):
            fig = _run(n, args.commits, shared)
            fig["verify_ms_per_commit"] = fig["verifies_per_commit"] * verify_us / 1000
            results.append({"n": n, "setup": setup, **{k: round(v, 3) for k, v in fig.items()}})
            print(
                f"{n:>3} {setup:<18} {fig['commits_per_s']:>10.1f} {fig['p50_commit_ms']:>8.2f} "
                f"{fig['p99_commit_ms']:>8.2f} {fig['verifies_per_commit']:>16.1f} {fig['verify_ms_per_commit']:>17.2f}"
            )
    for n in sizes:
        base = next(r for r in results if r["n"] == n and r["setup"] == "per-replica cache")
        shared = next(r for r in results if r["n"] == n and r["setup"] == "shared cache")
        ratio = base["verifies_per_commit"] / max(shared["verifies_per_commit"], 1e-9)
        print(f"n={n}: a shared cache computes {ratio:.1f}x fewer verifications than per-replica caches")
    if args.json:
        print(json.dumps({"verify_us": round(verify_us, 2), "commits": args.commits, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
