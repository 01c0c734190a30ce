"""Placement: the invariants every node relies on to agree on who trains which expert."""

from __future__ import annotations

import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moeswarm.placement import Member, Placement, moved_fraction, place


def swarm(count: int, regions: int = 4, prefix: str = "node") -> list[Member]:
    return [Member(f"{prefix}-{i}", f"region-{i % regions}") for i in range(count)]


def regions_of(placement: Placement, members: list[Member], expert: int) -> set[str]:
    region = {m.node_id: m.region for m in members}
    return {region[node] for node in placement.owners(expert)}


def test_headline_configuration_meets_the_targets() -> None:
    members = swarm(8)
    placement = place(64, members, replicas=2)
    for expert in range(64):
        owners = placement.owners(expert)
        assert len(owners) == 2
        assert len(set(owners)) == 2
        assert len(regions_of(placement, members, expert)) >= 2
    assert placement.load_report().max_over_mean <= 1.25
    joined = place(64, [*members, Member("node-8", "region-0")], replicas=2)
    assert moved_fraction(placement, joined) <= 1.2 / 8
    assert joined.load_report().max_over_mean <= 1.25


def test_join_moves_about_one_nth_on_average_over_member_sets() -> None:
    moved = []
    for trial in range(40):
        members = swarm(8, prefix=f"t{trial}")
        joiner = Member(f"t{trial}-new", f"region-{trial % 4}")
        moved.append(moved_fraction(place(64, members, 2), place(64, [*members, joiner], 2)))
    assert statistics.mean(moved) <= 1.2 / 9


def test_leave_moves_only_the_leavers_share_on_average() -> None:
    moved = []
    for trial in range(40):
        members = swarm(9, prefix=f"t{trial}")
        leaver = members[trial % 9]
        remaining = [m for m in members if m != leaver]
        moved.append(moved_fraction(place(64, members, 2), place(64, remaining, 2)))
    assert statistics.mean(moved) <= 1.2 / 9


def test_every_expert_spans_two_regions_over_many_member_sets() -> None:
    for trial in range(30):
        members = swarm(8, prefix=f"s{trial}")
        placement = place(64, members, 2)
        assert all(len(regions_of(placement, members, e)) == 2 for e in range(64)), trial
        assert placement.load_report().max_over_mean <= 1.25


def test_capacity_weights_give_proportional_load() -> None:
    ratios = []
    for trial in range(30):
        members = [*swarm(7, prefix=f"w{trial}"), Member(f"w{trial}-big", "region-3", capacity=2.0)]
        report = place(64, members, 2).load_report()
        big = report.loads[f"w{trial}-big"]
        small = statistics.mean(load for node, load in report.loads.items() if not node.endswith("big"))
        ratios.append(big / small)
    assert 1.7 <= statistics.mean(ratios) <= 2.3


@pytest.mark.parametrize("nodes", [4, 5])
def test_small_swarm_of_the_local_launcher(nodes: int) -> None:
    members = [Member(f"n{i}", "local") for i in range(nodes)]
    placement = place(8, members, 2)
    assert all(len(set(placement.owners(e))) == 2 for e in range(8))
    assert {node for e in range(8) for node in placement.owners(e)} == {m.node_id for m in members}
    assert placement.load_report().max_over_mean <= 1.25


def test_replicas_are_capped_at_the_node_count() -> None:
    placement = place(8, swarm(2), replicas=3)
    assert placement.replicas == 2
    assert all(sorted(placement.owners(e)) == ["node-0", "node-1"] for e in range(8))


def test_ring_method_keeps_the_same_invariants() -> None:
    members = swarm(8)
    placement = place(64, members, 2, vnodes_per_unit=32, method="ring")
    assert all(len(regions_of(placement, members, e)) == 2 for e in range(64))
    assert placement.load_report().max_over_mean <= 1.25


@pytest.mark.parametrize(
    ("members", "replicas"),
    [
        ([], 2),
        ([Member("a", "r"), Member("a", "s")], 2),
        ([Member("a", "r")], 0),
    ],
)
def test_bad_arguments_are_refused(members: list[Member], replicas: int) -> None:
    with pytest.raises(ValueError, match=r"member|replicas"):
        place(8, members, replicas)


@pytest.mark.parametrize("capacity", [0.0, -1.0, float("nan"), float("inf")])
def test_member_capacity_must_be_positive_and_finite(capacity: float) -> None:
    with pytest.raises(ValueError, match="capacity"):
        Member("a", "r", capacity)


members_strategy = st.lists(
    st.builds(
        Member,
        node_id=st.text(min_size=1, max_size=8),
        region=st.sampled_from(["a", "b", "c", "d", "e"]),
        capacity=st.sampled_from([0.5, 1.0, 1.0, 2.0, 3.0]),
    ),
    min_size=1,
    max_size=12,
    unique_by=lambda m: m.node_id,
)


@settings(max_examples=150, deadline=None)
@given(
    members=members_strategy,
    num_experts=st.integers(0, 80),
    replicas=st.integers(1, 4),
    seed=st.integers(0, 2**32),
)
def test_placement_invariants_hold_for_any_member_set(
    members: list[Member], num_experts: int, replicas: int, seed: int
) -> None:
    placement = place(num_experts, members, replicas)
    shuffled = list(members)
    random.Random(seed).shuffle(shuffled)
    assert dict(place(num_experts, shuffled, replicas)) == dict(placement)
    expected = min(replicas, len(members))
    assert placement.replicas == expected
    assert len(placement) == num_experts
    for expert, owners in placement.items():
        assert len(owners) == expected
        assert len(set(owners)) == expected
        for node in owners:
            assert expert in placement.experts_of(node)
    total = sum(len(placement.experts_of(m.node_id)) for m in members)
    assert total == num_experts * expected


@settings(max_examples=100, deadline=None)
@given(
    nodes=st.integers(2, 12),
    regions=st.integers(1, 4),
    num_experts=st.integers(1, 80),
    replicas=st.integers(1, 3),
)
def test_equal_capacities_stay_within_the_load_bound(
    nodes: int, regions: int, num_experts: int, replicas: int
) -> None:
    placement = place(num_experts, swarm(nodes, regions), replicas)
    expected = min(replicas, nodes)
    share = num_experts * expected / nodes
    bound = max(1, -(-num_experts * expected // nodes), int(1.25 * share + 1e-9))
    assert max(placement.load_report().loads.values()) <= bound
