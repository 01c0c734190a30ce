"""Agreement: no two honest replicas decide different proposals at the same sequence number."""

from __future__ import annotations

from moeswarm.consensus import Proposal


class Agreement:
    def __init__(self) -> None:
        self.decided: dict[int, tuple[Proposal, str]] = {}

    def observe(self, node: str, seq: int, proposal: Proposal) -> str | None:
        first = self.decided.get(seq)
        if first is None:
            self.decided[seq] = (proposal, node)
            return None
        if first[0] != proposal:
            return f"agreement: seq {seq} decided as {_show(first[0])} by {first[1]} and {_show(proposal)} by {node}"
        return None


def _show(p: Proposal) -> str:
    if p.kind.value == "value":
        return f"value {p.digest().hex()[:10]}"
    return p.kind.value
