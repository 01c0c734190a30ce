"""A suspicion timer whose timeout shrinks as independent peers confirm the suspicion (Lifeguard).

It starts at ``max`` and moves toward ``min`` as ``log(confirmations + 1) / log(expected + 1)``: a node
that is really dead is soon suspected by several peers and declared dead quickly, while a lone (possibly
slow) accuser has to wait the full ``max`` -- time for the suspect to hear of it and refute.
"""

from __future__ import annotations

import math


class Suspicion:
    def __init__(self, *, started: float, low_s: float, high_s: float, expected: int, accuser: str) -> None:
        if not 0 < low_s <= high_s:
            raise ValueError("need 0 < low_s <= high_s")
        self.started = started
        self.low_s = low_s
        self.high_s = high_s
        self.expected = max(0, expected)
        self.accusers = {accuser}

    @property
    def confirmations(self) -> int:
        return len(self.accusers) - 1

    def confirm(self, accuser: str) -> bool:
        """Count an accusation; True if it came from a peer that had not accused yet."""
        if accuser in self.accusers or self.confirmations >= self.expected:
            return False
        self.accusers.add(accuser)
        return True

    def timeout_s(self) -> float:
        if self.expected == 0:
            return self.low_s
        frac = math.log(self.confirmations + 1) / math.log(self.expected + 1)
        return max(self.low_s, self.high_s - (self.high_s - self.low_s) * frac)

    def deadline(self) -> float:
        return self.started + self.timeout_s()
