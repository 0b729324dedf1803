"""Streaming what the batches leave (moved before a deadline, or the few left after resubmissions):
rounds of the streaming engine beside the batch loop, on a store connection of their own.

A round streams every request that is pending and in no batch: a request whose batch attempt is
still open (the batch may still end it, even while canceling) is never streamed (the store's
``pending`` leaves it out), so nothing is paid twice. The round's spend cap counts the worst case
of the batches in flight as already reserved. The streaming engine comes from above (``job``
hands a factory in): batch mode and streaming mode do not import each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Protocol

import anyio

from orchestrator.pricing import PriceTable
from orchestrator.runtime.budget import Budget
from orchestrator.runtime.progress import Snapshot
from orchestrator.runtime.summary import Summary
from orchestrator.settings import STREAM, JobSettings
from orchestrator.store import Store, open_store

MEASURED = 16  # requests streamed before the pace counts as measured


class StreamRun(Protocol):
    """One run of the streaming engine (``run.engine.Job``), as this module uses it."""

    budget: Budget

    async def run(self, *, handle_signals: bool = True) -> Summary: ...

    def stop(self) -> None: ...

    def snapshot(self) -> Snapshot: ...

    def cost(self) -> Decimal | None: ...


StreamJobs = Callable[[Store, JobSettings], StreamRun]  # (store, settings) -> a quiet streaming run


class Streamer:
    def __init__(
        self,
        path: Path,
        jobs: StreamJobs,
        settings: JobSettings,
        prices: PriceTable | None,
        reserved: Callable[[], Decimal],
        clock: Callable[[], float],
    ) -> None:
        self.path = path
        self.jobs = jobs
        self.settings = replace(settings, mode=STREAM)
        self.prices = prices
        self.reserved = reserved
        self.clock = clock
        self.job: StreamRun | None = None  # the round running, if any
        self.streamed = 0  # requests a round ended (succeeded or errored), this run
        self.seconds = 0.0  # spent in rounds, this run
        self.output_tokens = 0  # billed to rounds that ended
        self.spent: Decimal | None = Decimal(0)  # USD billed to rounds that ended (None: a model unpriced)
        self.last: Summary | None = None  # the last round's
        self.last_done = 0  # requests the last round ended
        self.idle = anyio.Event()  # set while no round runs
        self.idle.set()
        self._base: Decimal | None = None  # the job's cost when the running round began

    def pace(self) -> float | None:
        """Requests a second that streaming got through this run, once measured."""
        if self.streamed < MEASURED or self.seconds <= 0:
            return None
        return self.streamed / self.seconds

    def cost(self) -> Decimal | None:
        """USD billed to this run's rounds (the one running included)."""
        if self.spent is None or self.job is None:
            return self.spent
        now = self.job.cost()
        return None if now is None or self._base is None else self.spent + now - self._base

    def snapshot(self) -> Snapshot | None:
        return None if self.job is None else self.job.snapshot()

    def stop(self) -> None:
        if self.job is not None:
            self.job.stop()

    async def round(self) -> Summary:
        """Stream every request pending and in no batch, to its end (or a stop)."""
        started = self.clock()
        if self.idle.is_set():
            self.idle = anyio.Event()
        try:
            async with open_store(self.path) as store:
                job = self.jobs(store, self.settings)
                job.budget.reserved = self.reserved()
                self._base = None if self.prices is None else self.prices.total(await store.billed_by_tier(None, None))
                self.job = job
                try:
                    summary = await job.run(handle_signals=False)
                finally:
                    self.spent = self.cost()
                    self.job = None
                    ended = job.snapshot()
                    self.last_done = ended.done_this_run
                    self.streamed += self.last_done
                    self.output_tokens += ended.output_tokens
                    self.seconds += self.clock() - started
        finally:
            self.idle.set()
        self.last = summary
        return summary
