"""Cache-aware launching: the waiting part of ``warmth`` (requests wait on events, not polls)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anyio

from orchestrator.api.prefix import Breakpoint
from orchestrator.run.warmth import Warmth


class CacheGate:
    """Holds a request whose prefix is being warmed until the leader's response begins."""

    def __init__(self, clock: Callable[[], float] = anyio.current_time) -> None:
        self.warmth = Warmth()
        self._clock = clock
        self._events: dict[int, anyio.Event] = {}
        self.held = 0  # requests waiting now

    def would_wait(self, points: Sequence[Breakpoint]) -> bool:
        return self.warmth.would_wait(points)

    async def enter(self, points: Sequence[Breakpoint]) -> tuple[int, ...]:
        """Wait until this request may go; return the prefixes it leads (writes first)."""
        while True:
            turn = self.warmth.turn(points, self._clock())
            if turn.wait is None:
                return turn.leads
            event = self._events.setdefault(turn.wait, anyio.Event())
            self.held += 1
            try:
                await event.wait()
            finally:
                self.held -= 1

    def began(self, points: Sequence[Breakpoint], leads: Sequence[int], started: float) -> None:
        self.warmth.began(points, leads, started)
        self._wake(leads)

    def failed(self, leads: Sequence[int]) -> None:
        self.warmth.failed(leads)
        self._wake(leads)

    def now(self) -> float:
        return self._clock()

    def _wake(self, leads: Sequence[int]) -> None:
        for key in leads:
            event = self._events.pop(key, None)
            if event is not None:
                event.set()
