"""Calls to the batch endpoints, retried as the API asks: 429 and 5xx with backoff (``retry-after``
honoured), connection failures too where a repeat cannot do harm, for up to ``retry_max_seconds``."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio

from orchestrator.api.failures import Failure, classify
from orchestrator.models import Outcome
from orchestrator.runtime.backoff import Backoff
from orchestrator.settings import JobSettings

T = TypeVar("T")
REFUSALS = frozenset({429, 529})  # answers that say the server did nothing


class CallFailed(Exception):
    """A call refused for good (4xx, the job's key or spend cap), or still failing after the time allowed."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.reason}: {failure.error.get('error', {}).get('message')}")
        self.failure = failure


class Unsure(Exception):
    """A call that is not safe to repeat failed in a way that leaves open whether the server acted."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


@dataclass
class Caller:
    settings: JobSettings
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    clock: Callable[[], float] = time.monotonic
    rng: random.Random = field(default_factory=random.Random)
    retries: int = 0  # calls repeated, over the run

    async def __call__(self, call: Callable[[], Awaitable[T]], *, repeatable: bool = True) -> T:
        """``call()``, repeated while it fails in a retryable way. Not ``repeatable`` (a create): a failure
        after which the server may have acted (a dropped connection, a 5xx other than 529) raises Unsure."""
        give_up_at = self.clock() + self.settings.retry_max_seconds
        number = 0
        while True:
            number += 1
            try:
                return await call()
            except Exception as exc:
                failure = classify(exc)
                if failure is None:
                    raise
                if failure.outcome in (Outcome.FATAL, Outcome.PERMANENT):
                    raise CallFailed(failure) from None
                if not repeatable and failure.status not in REFUSALS:
                    raise Unsure(failure) from None
                if self.clock() >= give_up_at:
                    raise CallFailed(failure) from None
            await self.pause(number, failure)

    async def pause(self, number: int, failure: Failure) -> None:
        """Wait before repeating a call that failed ``number`` times in a row (``retry-after`` honoured)."""
        self.retries += 1
        backoff = Backoff(self.settings.backoff_base, self.settings.backoff_cap)
        await self.sleep(backoff.delay(number, failure.retry_after, self.rng))
