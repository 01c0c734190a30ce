"""Pacing for the transport: a token bucket for inbound messages and back-off for redials.

Both take time as an argument and randomness from an injected `random.Random`, so the transport's
policy can be checked with plain numbers and replayed from a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


class TokenBucket:
    """Allows `rate_per_s` events per second on average and bursts of up to `burst` events."""

    __slots__ = ("_level", "_rate_per_s", "_stamp", "burst")

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("a token bucket needs a positive rate and a burst of at least 1")
        self._rate_per_s = rate_per_s
        self.burst = burst
        self._level = float(burst)
        self._stamp = now

    def take(self, now: float, tokens: float = 1.0) -> bool:
        """Spend `tokens` if there are that many; time running backwards refills nothing."""
        elapsed = max(0.0, now - self._stamp)
        self._stamp = max(self._stamp, now)
        self._level = min(float(self.burst), self._level + elapsed * self._rate_per_s)
        if self._level >= tokens:
            self._level -= tokens
            return True
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """Exponential back-off with "equal jitter": half the delay is fixed, half drawn from the RNG.

    The fixed half keeps a redial storm from collapsing to zero delay; the random half spreads
    many nodes that lost the same peer at the same moment.
    """

    base_s: float
    max_s: float

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.max_s:
            raise ValueError("back-off needs 0 < base_s <= max_s")

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        ceiling = min(self.max_s, self.base_s * 2.0 ** min(attempt, 62))
        return ceiling / 2 + rng.uniform(0.0, ceiling / 2)
