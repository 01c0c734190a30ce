"""Validity: every decided value was proposed by someone and passes the application's validation."""

from __future__ import annotations

from moeswarm.consensus import Kind, Proposal
from moeswarm.simulator.app import is_well_formed


class Validity:
    def __init__(self) -> None:
        self.proposed: set[bytes] = set()
        self.reconfigurations: set[tuple[int, tuple[str, ...]]] = set()

    def proposed_value(self, value: bytes) -> None:
        self.proposed.add(value)

    def proposed_members(self, epoch: int, members: tuple[str, ...]) -> None:
        self.reconfigurations.add((epoch, members))

    def observe(self, node: str, seq: int, proposal: Proposal) -> str | None:
        if proposal.kind is Kind.VALUE:
            if not is_well_formed(proposal.value):
                return f"validity: {node} decided an invalid value at seq {seq}"
            if proposal.value not in self.proposed:
                return f"validity: {node} decided a value nobody proposed at seq {seq}"
        elif (
            proposal.kind is Kind.RECONFIGURE
            and (proposal.epoch, proposal.members) not in self.reconfigurations
        ):
            return f"validity: {node} decided a reconfiguration nobody proposed at seq {seq}"
        return None
