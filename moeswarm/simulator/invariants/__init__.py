"""Invariant checkers, one per module, fed by the world as honest replicas deliver decisions.

Each returns a violation message (or None); the world records every violation with the virtual time
and the replica, and a schedule with any violation fails.
"""

from moeswarm.simulator.invariants.agreement import Agreement
from moeswarm.simulator.invariants.double_decide import NoDoubleDecide
from moeswarm.simulator.invariants.progress import Progress
from moeswarm.simulator.invariants.validity import Validity

__all__ = ["Agreement", "NoDoubleDecide", "Progress", "Validity"]
