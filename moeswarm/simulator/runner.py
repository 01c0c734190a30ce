"""Running many seeds (optionally over several processes) and summarising them."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from moeswarm.simulator.world import Outcome, Settings, World


def run_seed(seed: int, settings: Settings, trace: Callable[[str], None] | None = None) -> Outcome:
    return World(seed, settings, trace).run()


def _run_job(job: tuple[int, Settings]) -> Outcome:
    return run_seed(*job)


def run_seeds(seeds: Iterable[int], settings: Settings, jobs: int = 1) -> Iterator[Outcome]:
    """Outcomes in seed order; with ``jobs > 1`` seeds run in worker processes."""
    work = [(seed, settings) for seed in seeds]
    if jobs <= 1:
        for job in work:
            yield _run_job(job)
        return
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        yield from pool.imap(_run_job, work, chunksize=4)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100.0 * (len(ordered) - 1))))
    return ordered[index]


@dataclass(slots=True)
class Summary:
    seeds: int = 0
    commits: int = 0
    view_changes: int = 0
    violations: int = 0
    failed_seeds: list[int] | None = None
    events: int = 0
    wall_s: float = 0.0
    latencies_ms: list[float] | None = None

    def add(self, outcome: Outcome) -> None:
        self.seeds += 1
        self.commits += outcome.commits
        self.view_changes += outcome.view_changes
        self.violations += len(outcome.violations)
        self.events += outcome.events
        if outcome.violations:
            self.failed_seeds = [*(self.failed_seeds or []), outcome.seed]
        self.latencies_ms = [*(self.latencies_ms or []), *outcome.latencies_ms]


def summarise(outcomes: Iterable[Outcome], on_outcome: Callable[[Outcome], None] | None = None) -> Summary:
    start = time.perf_counter()
    summary = Summary()
    for outcome in outcomes:
        summary.add(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
    summary.wall_s = time.perf_counter() - start
    return summary
