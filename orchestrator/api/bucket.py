"""A continuously refilled token bucket: pure arithmetic over times passed in by the caller.

The same arithmetic serves both sides of a rate limit: the simulator uses it to reject
requests the way the API does, and the runner's limiter uses it to wait before it would
be rejected. Nothing here reads a clock or sleeps.

A bucket holds at most ``capacity`` units and refills at ``rate`` units per second. A take
is allowed when the level covers it, or when the bucket is full and the take is larger
than the whole capacity (so one oversized request is not blocked forever); the level may
then go negative, which is a debt repaid by refill before anything else is allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class TokenBucket:
    capacity: float
    rate: float  # units per second
    level: float
    updated: float  # the time ``level`` was last brought up to date

    @classmethod
    def per_minute(cls, limit: float, now: float, burst_seconds: float = 60.0) -> TokenBucket:
        """A bucket for a per-minute limit that holds ``burst_seconds`` worth of refill."""
        rate = limit / 60.0
        capacity = max(1.0, rate * burst_seconds)
        return cls(capacity=capacity, rate=rate, level=capacity, updated=now)

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
            self.updated = now

    def _needed(self, amount: float) -> float:
        """The level at which a take of ``amount`` is allowed."""
        return min(amount, self.capacity)

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds from ``now`` until ``take(amount)`` would succeed (0 if it would now)."""
        self.refill(now)
        missing = self._needed(amount) - self.level
        if missing <= 0:
            return 0.0
        if self.rate <= 0:
            return math.inf
        return missing / self.rate

    def take(self, amount: float, now: float) -> None:
        """Take ``amount`` unconditionally (for usage already incurred); the level may go negative."""
        self.refill(now)
        self.level -= amount

    def give_back(self, amount: float, now: float) -> None:
        """Return units taken earlier (a reservation that was not used)."""
        self.refill(now)
        self.level = min(self.capacity, self.level + amount)

    def time_to_full(self, now: float) -> float:
        self.refill(now)
        if self.level >= self.capacity:
            return 0.0
        if self.rate <= 0:
            return math.inf
        return (self.capacity - self.level) / self.rate
