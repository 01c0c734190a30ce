from __future__ import annotations

from moeswarm.consensus import Kind, Proposal
from moeswarm.simulator.app import make_invalid_value, make_value
from moeswarm.simulator.invariants import Agreement, NoDoubleDecide, Progress, Validity

A = Proposal(kind=Kind.VALUE, value=make_value(b"a"))
B = Proposal(kind=Kind.VALUE, value=make_value(b"b"))


def test_agreement_flags_two_decisions_at_one_seq() -> None:
    check = Agreement()
    assert check.observe("n0", 1, A) is None
    assert check.observe("n1", 1, A) is None
    problem = check.observe("n2", 1, B)
    assert problem is not None
    assert "seq 1" in problem


def test_validity_flags_invalid_and_unproposed_values() -> None:
    check = Validity()
    check.proposed_value(A.value)
    assert check.observe("n0", 1, A) is None
    assert check.observe("n0", 2, B) is not None  # nobody proposed it
    bad = make_invalid_value(b"x")
    check.proposed_value(bad)
    assert "invalid" in (check.observe("n0", 3, Proposal(kind=Kind.VALUE, value=bad)) or "")
    assert check.observe("n0", 4, Proposal(kind=Kind.NULL)) is None


def test_no_double_decide_flags_repeats_and_gaps() -> None:
    check = NoDoubleDecide()
    assert check.observe("n0", 1, 0) is None
    assert "again" in (check.observe("n0", 1, 1) or "")
    assert "gap" in (check.observe("n0", 5, 1) or "")


def test_progress_requires_every_honest_replica_past_the_heal() -> None:
    check = Progress(bound_s=10.0)
    check.heal(5.0, highest_decided=7)
    assert check.deadline() == 15.0
    assert not check.done({"n0": 8, "n1": 7})
    assert "n1" in (check.verdict({"n0": 8, "n1": 7}) or "")
    assert check.done({"n0": 8, "n1": 9})
