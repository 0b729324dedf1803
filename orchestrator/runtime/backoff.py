"""When to try a request again (pure): capped exponential backoff with full jitter, under one stop
rule that owns both the number of attempts and the time budget."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with full jitter; a server's retry-after wins when longer."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        jittered = rng.uniform(0, ceiling)
        return max(jittered, retry_after or 0.0)


@dataclass(frozen=True)
class Retries:
    """The stop rule of one request: at most ``max_attempts`` attempts, and no attempt later than
    ``max_seconds`` after the first; the wait before the next attempt never passes that time."""

    backoff: Backoff
    max_attempts: int
    max_seconds: float

    def next_wait(
        self, tried: int, started: float, now: float, retry_after: float | None, rng: random.Random
    ) -> float | None:
        """Seconds to wait before attempt ``tried + 1``, or None: give up. ``started`` is when the
        first attempt of this run began. A server's ``retry-after`` beyond the budget gives up now
        (an earlier attempt would be refused); our own backoff is cut to what is left."""
        left = started + self.max_seconds - now
        if tried >= self.max_attempts or left <= 0:
            return None
        if retry_after is not None and retry_after > left:
            return None
        return min(self.backoff.delay(tried, retry_after, rng), left)
