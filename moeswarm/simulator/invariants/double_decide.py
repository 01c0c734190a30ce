"""No double decision: an honest replica delivers each sequence number once, in order, across restarts."""

from __future__ import annotations


class NoDoubleDecide:
    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def observe(self, node: str, seq: int, applied_seq: int) -> str | None:
        """``applied_seq``: how far the replica's (durable) application had got before this delivery."""
        if seq <= applied_seq:
            return f"double decide: {node} delivered seq {seq} again (already applied {applied_seq})"
        if seq != applied_seq + 1:
            return f"gap: {node} delivered seq {seq} after {applied_seq} without a state transfer"
        self.last[node] = seq
        return None
