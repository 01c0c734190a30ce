"""Progress: once the network has healed (and at most f replicas are faulty), every honest replica
delivers something decided after the heal within a bounded virtual time."""

from __future__ import annotations


class Progress:
    def __init__(self, bound_s: float) -> None:
        self.bound_s = bound_s
        self.healed_at: float | None = None
        self.target = 0

    def heal(self, now: float, highest_decided: int) -> None:
        self.healed_at = now
        self.target = highest_decided

    def done(self, positions: dict[str, int]) -> bool:
        """Every honest replica got beyond what was decided when the network healed."""
        return self.healed_at is not None and all(seq > self.target for seq in positions.values())

    def deadline(self) -> float | None:
        return None if self.healed_at is None else self.healed_at + self.bound_s

    def verdict(self, positions: dict[str, int]) -> str | None:
        if self.done(positions):
            return None
        stuck = sorted(node for node, seq in positions.items() if seq <= self.target)
        return f"progress: {', '.join(stuck)} still at or below seq {self.target} {self.bound_s:.0f}s after the heal"
