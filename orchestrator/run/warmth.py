"""Which cacheable prefixes are warm, being warmed, or cold, on the caller's clock (pure).

A prefix's cache entry becomes readable only once the response that writes it has begun, so
for each prefix one request leads (it writes the entry) and the others sharing it wait for its
``message_start``, then go at full concurrency and read. A prefix stays warm for its TTL from
the start of the last request that used it (a read refreshes it); idle longer than that, it is
cold again, and one request warms it again. A leader that fails before its response begins
hands the lead to the next request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator.api.prefix import Breakpoint

MARGIN = 5.0  # seconds: an entry this close to its expiry counts as cold (our clock is not the server's)


@dataclass(frozen=True)
class Turn:
    """What a request does now: wait for ``wait`` to be warmed, or go, leading ``leads``."""

    wait: int | None = None
    leads: tuple[int, ...] = ()


@dataclass
class Warmth:
    warm: dict[int, float] = field(default_factory=dict)  # prefix key -> when its entry expires
    leading: set[int] = field(default_factory=set)  # prefixes whose leader is in flight

    def turn(self, points: Sequence[Breakpoint], now: float) -> Turn:
        """Whether a request with these breakpoints goes now (leading the cold ones) or waits."""
        cold = []
        for point in points:
            if point.key in self.leading:
                return Turn(wait=point.key)
            if self.warm.get(point.key, now) - MARGIN <= now:
                cold.append(point.key)
        self.leading.update(cold)
        return Turn(leads=tuple(cold))

    def would_wait(self, points: Sequence[Breakpoint]) -> bool:
        return any(point.key in self.leading for point in points)

    def began(self, points: Sequence[Breakpoint], leads: Sequence[int], started: float) -> None:
        """The response of a request sent at ``started`` has begun: its prefixes are warm."""
        for point in points:
            self.warm[point.key] = max(self.warm.get(point.key, started), started + point.ttl)
        self.leading.difference_update(leads)

    def failed(self, leads: Sequence[int]) -> None:
        """A leader ended before its response began: the next request leads."""
        self.leading.difference_update(leads)
