from __future__ import annotations

from dataclasses import replace

import pytest

from moeswarm.simulator.faults import ALL_FAULTS
from moeswarm.simulator.runner import run_seed, run_seeds, summarise
from moeswarm.simulator.world import Settings, default_consensus

FOUR = Settings(nodes=4, byzantine=1)
SEVEN = Settings(nodes=7, byzantine=2)


def _violations(settings: Settings, seeds: range, *, stop_at_first: bool = False) -> dict[int, list[str]]:
    found = {}
    for outcome in run_seeds(seeds, settings):
        if outcome.violations:
            found[outcome.seed] = outcome.violations
            if stop_at_first:
                break
    return found


def test_a_seed_replays_exactly() -> None:
    first = run_seed(11, SEVEN)
    again = run_seed(11, SEVEN)
    assert (first.events, first.commits, first.latencies_ms, first.plan) == (
        again.events,
        again.commits,
        again.latencies_ms,
        again.plan,
    )


def test_four_replicas_one_byzantine_under_every_fault() -> None:
    assert _violations(FOUR, range(0, 200)) == {}


def test_seven_replicas_two_byzantine_under_every_fault() -> None:
    assert _violations(SEVEN, range(0, 150)) == {}


def test_schedules_make_progress_and_change_views() -> None:
    summary = summarise(run_seeds(range(0, 20), FOUR))
    assert summary.violations == 0
    assert summary.commits > 20 * 10
    assert summary.view_changes > 0  # the faults do force view changes


def test_every_message_through_the_codec() -> None:
    settings = replace(SEVEN, codec=True)
    assert _violations(settings, range(500, 506)) == {}


@pytest.mark.parametrize(("settings", "seeds"), [(FOUR, range(0, 40)), (SEVEN, range(0, 80))])
def test_a_quorum_of_2f_is_caught(settings: Settings, seeds: range) -> None:
    """The deliberately broken protocol (quorum 2f instead of 2f+1) must fail: the simulator can fail."""
    broken = replace(settings, consensus=replace(default_consensus(), unsafe_quorum=2 * settings.byzantine))
    found = _violations(broken, seeds, stop_at_first=True)
    assert found, "the simulator did not catch an unsafe quorum"
    assert any("agreement" in v for vs in found.values() for v in vs)


def test_each_fault_alone_keeps_safety_and_progress() -> None:
    for fault in ALL_FAULTS:
        settings = replace(FOUR, faults=frozenset({fault}))
        assert _violations(settings, range(1000, 1006)) == {}, fault


@pytest.mark.slow
def test_many_seeds_four_replicas() -> None:
    assert _violations(FOUR, range(10_000, 12_000)) == {}


@pytest.mark.slow
def test_many_seeds_seven_replicas() -> None:
    assert _violations(SEVEN, range(10_000, 10_600)) == {}
