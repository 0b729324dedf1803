"""The simulator's rate limits: RPM, ITPM and OTPM buckets, and the headers that report them."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from orchestrator.api.bucket import TokenBucket
from orchestrator.simulator.config import Limits

_UNLIMITED = 1_000_000_000


@dataclass(frozen=True)
class Refusal:
    limit: str  # "requests", "input-tokens" or "output-tokens"
    retry_after: float  # seconds


def _rfc3339(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ServerLimits:
    """Admission like the API: a request is refused when any of its three buckets cannot take it.

    RPM takes one per request and ITPM the request's input tokens at admission; OTPM only needs
    to be positive at admission and is charged as tokens are generated (``charge_output``).
    """

    def __init__(self, limits: Limits, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        now = clock()
        self._wall_offset = time.time() - now

        def bucket(limit: float | None) -> TokenBucket | None:
            return None if limit is None else TokenBucket.per_minute(limit, now, limits.burst_seconds)

        self.buckets: dict[str, TokenBucket | None] = {
            "requests": bucket(limits.rpm),
            "input-tokens": bucket(limits.itpm),
            "output-tokens": bucket(limits.otpm),
        }
        self._limits = {"requests": limits.rpm, "input-tokens": limits.itpm, "output-tokens": limits.otpm}

    def admit(self, input_tokens: int) -> Refusal | None:
        now = self._clock()
        wants = {"requests": 1.0, "input-tokens": float(input_tokens), "output-tokens": 1.0}
        waits = {
            name: bucket.wait_time(wants[name], now) for name, bucket in self.buckets.items() if bucket is not None
        }
        refused = [(wait, name) for name, wait in waits.items() if wait > 0]
        if refused:
            wait, name = max(refused)
            return Refusal(limit=name, retry_after=wait)
        for name in ("requests", "input-tokens"):
            bucket = self.buckets[name]
            if bucket is not None:
                bucket.take(wants[name], now)
        return None

    def charge_output(self, tokens: int) -> None:
        bucket = self.buckets["output-tokens"]
        if bucket is not None and tokens:
            bucket.take(tokens, self._clock())

    def limit_of(self, name: str) -> float | None:
        return self._limits[name]

    def headers(self) -> dict[str, str]:
        now = self._clock()
        out: dict[str, str] = {}
        totals = [0, 0, 0.0]  # limit, remaining, reset of input+output
        for name, bucket in self.buckets.items():
            if bucket is None:
                limit, remaining, to_full = _UNLIMITED, _UNLIMITED, 0.0
            else:
                bucket.refill(now)
                limit = int(self._limits[name] or 0)
                remaining = max(0, math.floor(bucket.level))
                to_full = bucket.time_to_full(now)
            if name != "requests":
                # Rounded to the nearest thousand, as the API documents it: up to 500 more than remains.
                remaining = (remaining + 500) // 1000 * 1000 if limit >= 1000 else remaining
                totals[0] += limit
                totals[1] += remaining
                totals[2] = max(totals[2], to_full)
            out[f"anthropic-ratelimit-{name}-limit"] = str(limit)
            out[f"anthropic-ratelimit-{name}-remaining"] = str(remaining)
            out[f"anthropic-ratelimit-{name}-reset"] = _rfc3339(now + self._wall_offset + to_full)
        out["anthropic-ratelimit-tokens-limit"] = str(totals[0])
        out["anthropic-ratelimit-tokens-remaining"] = str(totals[1])
        out["anthropic-ratelimit-tokens-reset"] = _rfc3339(now + self._wall_offset + totals[2])
        return out
