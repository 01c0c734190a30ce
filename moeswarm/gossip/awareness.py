"""Lifeguard's local health multiplier: a node that misses acks and nacks probes more patiently.

A slow node (overloaded CPU, long GC pauses) sees its own probes time out and would otherwise accuse
healthy peers. Every sign that the problem may be local (a failed probe, a missing nack from an indirect
helper, having to refute a suspicion of ourselves) raises the score; a successful probe lowers it. Probe
interval and timeout are multiplied by ``score + 1``.
"""

from __future__ import annotations


class Awareness:
    def __init__(self, score_max: int, enabled: bool = True) -> None:
        if score_max < 1:
            raise ValueError("score_max must be >= 1")
        self.score_max = score_max
        self.enabled = enabled
        self.score = 0

    def apply(self, delta: int) -> None:
        if self.enabled:
            self.score = min(self.score_max - 1, max(0, self.score + delta))

    def scale(self, seconds: float) -> float:
        return seconds * (self.score + 1)
