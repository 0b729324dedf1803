"""The job: a producer pages requests from the store to a fixed pool of workers; one writer commits.

    producer --(bounded stream)--> N workers --(bounded stream)--> writer --> SQLite

Memory does not grow with the size of the job: the producer reads pages of pending requests
and the stream between it and the workers holds at most ``concurrency`` of them. The first
SIGINT/SIGTERM stops launching and cancels the streams in flight; the writer then records a
last checkpoint of each. A second signal exits at once (SQLite keeps the database consistent).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import anthropic
import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from orchestrator.api.failures import Failure
from orchestrator.errors import DatabaseBusy, StorageError
from orchestrator.models import Request, State, Usage
from orchestrator.pricing import STANDARD, PriceTable
from orchestrator.run.cachegate import CacheGate
from orchestrator.run.files import pool_size
from orchestrator.run.limits import Limiter, LimitState
from orchestrator.run.request import RequestRunner
from orchestrator.run.writer import Writer
from orchestrator.runtime.budget import Budget
from orchestrator.runtime.cacheplan import cache_plan
from orchestrator.runtime.progress import Quiet, Snapshot, View, show_progress
from orchestrator.runtime.signals import watch_signals
from orchestrator.runtime.summary import Summary
from orchestrator.settings import JobSettings, limit_specs
from orchestrator.store import Store

PARKED = 4  # requests parked waiting for a warm prefix, at most, per stream of the concurrency
STREAM_SECONDS = 10.0  # a guess at a stream's length, for the pace of a job (the TTL of its prefixes)
PAGE = 512  # requests read from the store at once, at the least (else as many as the concurrency)
WRITER_GRACE = 60.0  # seconds the writer gets for its last commit after a stop

STOPPING = "Stopping: no new requests; saving what is in flight"


async def _produce(store: Store, send: MemoryObjectSendStream[Request], budget: Budget, page_size: int) -> None:
    async with send:
        after = 0
        while page := await store.pending(after, page_size):
            for request in page:
                if budget.refused:  # the spend cap: nothing more is launched
                    return
                # Hand a request to a waiting worker (or the buffer) at once: an awaited send is a
                # turn of the event loop per request, which paces launches at thousands of streams.
                try:
                    send.send_nowait(request)
                except anyio.WouldBlock:
                    await send.send(request)
            after = page[-1].id


async def _consume(
    receive: MemoryObjectReceiveStream[Request],
    runner: RequestRunner,
    writer: Writer,
    park: Callable[[Request], bool],
) -> None:
    async with receive:
        async for request in receive:
            await writer.caught_up()  # no new request while the database is busy
            # A request waiting for its prefix to be warmed is parked aside: the requests behind
            # it (sharing nothing, say) are not held back.
            if not (runner.would_wait(request) and park(request)):
                await runner.run(request)


def cache_hit(billed: Usage) -> float | None:
    """The share of the prompt tokens read from the cache (None before any was cached)."""
    cached = billed.cache_read_input_tokens + billed.cache_creation_input_tokens
    if not cached:
        return None
    return billed.cache_read_input_tokens / (cached + billed.input_tokens)


def pace(settings: JobSettings) -> float:
    """Requests per second the job will run at, roughly: its RPM limit where one is given for every
    model, else its concurrency of streams of ``STREAM_SECONDS`` each."""
    default, _ = limit_specs(settings.limits)
    by_streams = settings.concurrency / STREAM_SECONDS
    return min(by_streams, default.rpm / 60) if default.rpm else by_streams


def limit_state(settings: JobSettings) -> LimitState:
    """The limiter's state from the settings: ``limits`` holds rpm/itpm/otpm for every model and
    tables of the same keys per model id."""
    default, per_model = limit_specs(settings.limits)
    return LimitState(settings.concurrency, per_model, default, headroom=settings.headroom)


class Job:
    """One run of a job: ``await job.run()``; ``job.stop()`` is what the first Ctrl-C does."""

    def __init__(
        self,
        store: Store,
        client: anthropic.AsyncAnthropic,
        settings: JobSettings,
        view: View,
        prices: PriceTable | None = None,
        limiter_clock: Callable[[], float] = anyio.current_time,
    ) -> None:
        self.store = store
        self.prices = prices
        self._billed_before: dict[tuple[str, str], Usage] = {}  # by (model, service tier)
        self.settings = settings
        self.view = view
        self.writer = Writer(store, settings.checkpoint_interval, on_failure=self._storage_failed, notes=self.notes)
        self.limiter = Limiter(limit_state(settings), clock=limiter_clock)
        cap = None if settings.max_cost is None else Decimal(str(settings.max_cost))
        self.budget = Budget(cap, prices)
        self.runner = RequestRunner(
            client=client,
            sink=self.writer,
            settings=settings,
            limiter=self.limiter,
            on_fatal=self._abort,
            budget=self.budget,
            gate=None if settings.cache == "off" else CacheGate(limiter_clock),
        )
        self._parked = 0
        self.stopping = False
        self.aborted: Failure | None = None
        self.storage: StorageError | None = None
        self._work = anyio.CancelScope()
        self._started = 0.0
        self._before: dict[str, int] = {state.value: 0 for state in State}  # counts as the run began (none yet)

    def stop(self) -> None:
        """Stop launching requests and cancel the streams in flight; the writer saves them."""
        self.stopping = True
        self._work.cancel()

    def _storage_failed(self, error: StorageError) -> None:
        """The database cannot be written: stop launching and cancel the streams (the writer keeps
        what they received and saves what still fits)."""
        self.storage = error
        self._work.cancel()

    def _abort(self, failure: Failure) -> None:
        if self.aborted is None:
            self.aborted = failure
        self._work.cancel()

    def cost(self) -> Decimal | None:
        """USD billed so far by the whole job (earlier runs, ended and live attempts of this one)."""
        if self.prices is None:
            return None
        billed: dict[tuple[str, str], Usage] = {}
        usages = [*self._billed_before.items()]
        usages += [((model, STANDARD), usage) for model, usage in self.writer.tally.billed_by_model.items()]
        usages += [((live.model, STANDARD), live.usage()) for live in self.writer.live.values()]
        for key, usage in usages:
            billed.setdefault(key, Usage()).add(usage)
        return self.prices.total(billed)

    def notes(self) -> dict[str, Any]:
        """What watchers read of this run beside the requests (``orchestrator watch``): the cap, the
        concurrency, the last rate-limit headers of each model."""
        state = self.limiter.state
        return {
            "mode": "stream",
            "pid": os.getpid(),
            "cap_usd": self.settings.max_cost,
            "concurrency": state.max_concurrency,
            "allowed": math.floor(state.allowed),
            "pauses": state.pauses,
            "cuts": state.cuts,
            "rate_limits": state.rate_limit_headers(),
        }

    def snapshot(self) -> Snapshot:
        writer, before = self.writer, self._before
        tally = writer.tally
        finished = sum(tally.finished.values())
        return Snapshot(
            done=before[State.SUCCEEDED] + before[State.ERRORED] + finished,
            total=sum(before.values()),
            in_flight=len(writer.live),
            failed=before[State.ERRORED] + tally.finished[State.ERRORED],
            retries=tally.retries,
            output_tokens=tally.billed.output_tokens + writer.live_output_tokens(),
            elapsed=anyio.current_time() - self._started,
            done_this_run=finished,
            cost=self.cost(),
            cap=self.budget.cap,
            note=writer.note(),
            cache_hit=cache_hit(tally.billed),
        )

    async def run(self, *, handle_signals: bool = True) -> Summary:
        """Run every pending request to its end, or until stopped or aborted."""
        store, settings, writer = self.store, self.settings, self.writer
        await store.reset_interrupted()
        self._before = await store.counts()
        self._billed_before = await store.billed_by_tier(None, None)
        self.budget.spent = self.cost() or Decimal(0)
        if self.runner.gate is not None:
            self.runner.plan = await cache_plan(store, requests_per_second=pace(settings))
        self._started = anyio.current_time()
        writer_done = anyio.Event()

        async def write() -> None:
            try:
                await writer.run()
            finally:
                writer_done.set()

        async with anyio.create_task_group() as outer:
            outer.start_soon(write)
            if not isinstance(self.view, Quiet):  # a snapshot walks every stream in flight
                outer.start_soon(show_progress, self.view, self.snapshot)
            if handle_signals:
                outer.start_soon(
                    watch_signals,
                    lambda: self.stopping,
                    self.stop,
                    "Stopping: no new requests; saving what is in flight",
                )
            try:
                with self._work:
                    async with anyio.create_task_group() as group:
                        pool = pool_size(settings.concurrency, self._before[State.PENDING])
                        send, receive = anyio.create_memory_object_stream[Request](pool)
                        # A page covers the whole pool: launches do not wait for the store, which
                        # is busy with checkpoints.
                        group.start_soon(_produce, store, send, self.budget, max(PAGE, pool))

                        async def parked(request: Request) -> None:
                            try:
                                await self.runner.run(request)
                            finally:
                                self._parked -= 1

                        def park(request: Request) -> bool:
                            if self._parked >= PARKED * pool:
                                return False
                            self._parked += 1
                            group.start_soon(parked, request)
                            return True

                        async with receive:
                            # Twice as many workers as streams: a request waiting out its backoff
                            # holds a worker but no stream, so the streams stay busy.
                            for _ in range(2 * pool):
                                group.start_soon(_consume, receive.clone(), self.runner, writer, park)
            finally:
                writer.close()
                # The writer's last commit (final checkpoints) must happen even while we are being
                # cancelled, but a writer stuck on its database must not hold the exit forever.
                with anyio.move_on_after(WRITER_GRACE, shield=True):
                    await writer_done.wait()
                    self.view.update(self.snapshot())
                    self.view.close()
                outer.cancel_scope.cancel()
        if writer.unsaved and self.storage is None:  # the database stayed busy to the end
            self.storage = writer.failure or DatabaseBusy(f"{store.path} stayed locked by another process")
        return Summary(
            counts=await store.counts(),
            billed=await store.billed(),
            elapsed=anyio.current_time() - self._started,
            stopped=self.stopping,
            aborted=self.aborted,
            pauses=self.limiter.state.pauses,
            cuts=self.limiter.state.cuts,
            capped=self.budget.refused,
            cost=self.cost(),
            cap=self.budget.cap,
            storage=self.storage,
            unsaved=await store.custom_ids(writer.unsaved),
        )
