"""The job in batch mode: submit the pending requests in message batches, poll them, collect their results.

    reconcile intents -> [ submit pending -> poll open batches -> collect ended ones ]* -> done

One loop, every step durable before the next (see ``submit``): a crash or a stop at any moment
loses nothing and submits nothing twice; the next run reconciles, polls and collects. Polls of
batches in flight start ``poll_interval`` apart and double while none ends (up to a minute).
Results worth another try (``api_error``, ``overloaded_error``, ``expired``) go into the next
batch, within ``max_attempts``; ``canceled`` ones wait for a later run. The first Ctrl-C (or
SIGTERM) detaches: the batches keep running on the server and ``resume`` picks them up; a
second exits at once.

The spend cap (``max_cost``) holds as in streaming, at batch prices: a request goes into a batch
only if what the job has spent plus the worst case of everything submitted and not yet collected,
this request included, stays within it; after a refusal nothing more is submitted, the batches in
flight end, and the run stops with ``capped``. A busy database is waited out (``BUSY_RETRY``), one
that cannot be written (full, read-only) stops the run with ``storage``: every step is durable
before the next, and results not yet applied stay on the server, so nothing received is lost and
the next run goes on where this one stopped.

Streaming what the batches leave (``stream.Streamer``, rounds of the streaming engine beside
the loop): under a deadline (``deadline.py`` plans it), the share the deadline cannot leave to
batches streams at once, the rest goes to batches spread over several, and a live batch is
canceled once its unfinished work must stream to meet the deadline (what it has finished is
kept; its requests stream only once it has ended). Without one, the few requests left after
resubmissions stream instead of waiting for another batch, when that is sooner.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from decimal import Decimal
from functools import partial
from typing import Any

import anthropic
import anyio

from orchestrator.api.failures import Failure
from orchestrator.api.prefix import PLACEMENT_BYTES, CachePlan, place
from orchestrator.batch import deadline as planner
from orchestrator.batch.calls import Caller, CallFailed
from orchestrator.batch.plan import Splitter, request_size
from orchestrator.batch.results import collect
from orchestrator.batch.stream import Streamer, StreamJobs, StreamRun
from orchestrator.batch.submit import Refused, create, describe, watermark
from orchestrator.crash import crash_point
from orchestrator.errors import DatabaseBusy, StorageError
from orchestrator.models import BatchResult, Outcome, State
from orchestrator.pricing import BATCH, PriceTable, money, plus
from orchestrator.runtime.budget import Budget, worst_case
from orchestrator.runtime.cacheplan import cache_plan
from orchestrator.runtime.progress import Quiet, Snapshot, View, show_progress
from orchestrator.runtime.signals import watch_signals
from orchestrator.runtime.summary import Summary
from orchestrator.settings import JobSettings, limit_specs
from orchestrator.store import BatchRow, Store
from orchestrator.store.batches import CANCELING, COLLECTED, ENDED, SUBMITTING
from orchestrator.when import deadline_at, span

PAGE = 2000  # pending requests read at once while splitting
POLL_CAP = 60.0  # seconds between polls at most
NOT_FOUND = 404
BUSY_RETRY = 0.5  # seconds between two tries of a busy database (SQLite itself waits 5 s first)
FEW = 0.01  # the requests left after resubmissions stream (when sooner) if at most this share of the job
FEW_AT_LEAST = 10  # ... or this many
BATCH_SECONDS = 3600.0  # how long a batch is assumed to take until one of the job's has ended

DETACHING = "Detaching: the batches keep running on the server"


class BatchJob:
    """One run of a job in batch mode: ``await job.run()``; ``job.stop()`` detaches."""

    def __init__(
        self,
        store: Store,
        client: anthropic.AsyncAnthropic,
        settings: JobSettings,
        view: View,
        prices: PriceTable | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        clock: Callable[[], float] = time.time,
        say: Callable[[str], None] | None = None,
        stream: StreamJobs | None = None,
    ) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.view = view
        self.prices = prices
        self.sleep = sleep
        self.clock = clock  # Unix time (the deadline's clock)
        self.say = say or (lambda message: print(message, file=sys.stderr, flush=True))
        self.caller = Caller(settings, sleep=sleep)
        self.deadline: float | None = None  # Unix time the job is to be done by
        # Streaming what the batches leave needs the streaming engine (``stream``); without it, none.
        self.can_stream = stream is not None
        jobs: StreamJobs = stream or _no_streaming
        self.streamer = Streamer(store.path, jobs, settings, prices, lambda: self.budget.reserved, clock)
        self._streaming = False  # whether requests left pending go to streaming rather than to a batch
        self._round_done: anyio.Event | None = None  # set when the stream round running ends
        self._rounds: anyio.abc.TaskGroup | None = None
        self._canceled_at: dict[int, float] = {}  # batches this run canceled (to move them), when
        self._cancel_allowance = planner.CANCEL_ALLOWANCE
        self._moved = 0  # requests in the batches this run canceled
        self.stopping = False
        self.aborted: Failure | None = None
        self.storage: StorageError | None = None  # the database cannot be written: the run stopped
        self.plan: CachePlan | None = None  # where cache breakpoints go (None: requests sent as stored)
        self.busy_since: float | None = None  # the database has been busy since (anyio time)
        cap = None if settings.max_cost is None else Decimal(str(settings.max_cost))
        self.budget = Budget(cap, prices)
        self._reserved: dict[int, Decimal] = {}  # the worst case of each batch not yet collected, by key
        self.finished: Counter[str] = Counter()  # requests by new state, from the results applied this run
        self._work = anyio.CancelScope()
        self._before: dict[str, int] = {}
        self._batches: list[BatchRow] = []
        self._output_tokens = 0
        self._cost: Decimal | None = None
        self._cost_streamed: Decimal | None = None  # the same tokens all at the streaming price
        self._started = 0.0
        self._since = 0.0

    def stop(self) -> None:
        """Detach: stop submitting and polling; the batches keep running on the server."""
        self.stopping = True
        self.streamer.stop()
        self._work.cancel()

    # -- progress ------------------------------------------------------------------------

    def notes(self) -> dict[str, Any]:
        """What watchers read of this run beside the requests and batches (``orchestrator watch``);
        its stream rounds write their own while they run."""
        return {"mode": "batch", "pid": os.getpid(), "cap_usd": self.settings.max_cost}

    def snapshot(self) -> Snapshot:
        before, finished = self._before, self.finished
        open_batches = [row for row in self._batches if row.open]
        ended = sum(1 for row in self._batches if row.state == COLLECTED)
        detail = f"batches {ended}/{len(self._batches)} ended"
        expiry = min((row.expires_at for row in open_batches if row.expires_at is not None), default=None)
        if expiry is not None and self.deadline is None:
            detail += f", expires {time.strftime('%Y-%m-%d %H:%M', time.localtime(expiry))}"
        stream = self.streamer.snapshot()
        streamed = self.streamer.streamed + (stream.done_this_run if stream else 0)
        if streamed or stream is not None:
            detail += f", {streamed:,} streamed"
        if self.deadline is not None:
            left = self.deadline - self.clock()
            when = time.strftime("%H:%M", time.localtime(self.deadline))
            detail += f", deadline {when} (in {span(left)})" if left > 0 else f", deadline {when} passed"
            detail += f", {money(self.cost_streamed())} if all streamed"
        cost = self.cost()
        return Snapshot(
            done=before[State.SUCCEEDED]
            + before[State.ERRORED]
            + finished[State.SUCCEEDED]
            + finished[State.ERRORED]
            + streamed,
            total=sum(before.values()),
            in_flight=sum(row.requests for row in open_batches) + (stream.in_flight if stream else 0),
            failed=before[State.ERRORED] + finished[State.ERRORED],
            retries=finished[State.PENDING] + (stream.retries if stream else 0),
            output_tokens=self._output_tokens + self.streamer.output_tokens + (stream.output_tokens if stream else 0),
            elapsed=anyio.current_time() - self._started,
            done_this_run=finished[State.SUCCEEDED] + finished[State.ERRORED] + streamed,
            cost=cost,
            cap=self.budget.cap,
            detail=detail,
            note=None if self.busy_since is None else "database busy (locked by another process)",
        )

    def cost(self) -> Decimal | None:
        """USD billed so far by the whole job: before this run, by its batches and by its streams."""
        return plus(self._cost, self.streamer.cost())

    def cost_streamed(self) -> Decimal | None:
        """What the tokens billed so far would have cost all streamed."""
        return plus(self._cost_streamed, self.streamer.cost())

    def _applied(self, chunk: list[BatchResult], states: Counter[str]) -> None:
        self.finished.update(states)
        for result in chunk:
            self._output_tokens += result.usage.output_tokens
            if self.prices is None or result.final is None or result.final[0] is not State.SUCCEEDED:
                continue
            model = result.final[1]["model"]
            self._cost = plus(self._cost, self.prices.cost(model, result.usage, BATCH))
            self._cost_streamed = plus(self._cost_streamed, self.prices.cost(model, result.usage))
        crash_point("results")

    # -- the spend cap ---------------------------------------------------------------------

    def _release(self, key: int) -> None:
        """A batch collected or refused: its worst case gives way to what it was billed."""
        self.budget.reserved -= self._reserved.pop(key, Decimal(0))
        self.budget.spent = self.cost() or Decimal(0)

    async def _reserve_open(self) -> None:
        """The worst case of the batches an earlier run left in flight."""
        if self.budget.cap is None:
            return
        for row in await self.store.batches(open_only=True):
            worst = Decimal(0)
            for _, params in await self.store.batch_members(row.key):
                one = worst_case(self.prices, json.loads(params), BATCH) if self.prices else None
                worst += one or Decimal(0)  # every model is priced under a cap (job._check_priced)
            self._reserved[row.key] = worst
            self.budget.reserved += worst

    # -- the loop --------------------------------------------------------------------------

    async def _refresh(self) -> list[BatchRow]:
        self._batches = await self.store.batches()
        return [row for row in self._batches if row.open]

    async def _create(self, row: BatchRow, *, reconcile: bool) -> None:
        try:
            await create(self.client, self.caller, self.store, row, reconcile=reconcile, plan=self.plan)
        except Refused as exc:
            failure = exc.failure
            await self.store.batch_refused(row.key, failure.outcome, failure.reason, failure.status, failure.error)
            self._release(row.key)
            if failure.outcome is not Outcome.PERMANENT:
                raise CallFailed(failure) from None
        crash_point("recorded")

    async def _submit(self, request_ids: list[int], size: int, worst: Decimal) -> None:
        mark = await watermark(self.client, self.caller)
        row = await self.store.intend_batch(request_ids, size, mark)
        self._reserved[row.key] = worst
        crash_point("intended")
        await self._create(row, reconcile=False)
        await self._refresh()

    async def _submit_pending(self, limit: int | None = None, batch_size: int | None = None) -> None:
        """Split the pending requests (the first ``limit`` of them) into batches under both limits and
        submit each in turn; under a spend cap, only as many as it allows."""
        splitter = Splitter(batch_size or self.settings.batch_size)
        group: list[int] = []
        group_worst = Decimal(0)
        after = 0
        left = limit
        while not self.budget.refused and left != 0 and (page := await self.store.to_batch(after, PAGE, self._since)):
            for request_id, custom_id, params in page[:left]:
                sent = place(json.loads(params), self.plan)[0] if self.plan is not None else json.loads(params)
                worst = self.budget.admit(sent, BATCH) if self.budget.cap is not None else Decimal(0)
                if worst is None:
                    break  # the cap: nothing more is submitted
                size = splitter.size
                slack = PLACEMENT_BYTES if self.plan is not None else 0  # what breakpoints may add
                if splitter.add(request_size(custom_id, params) + slack) and group:
                    await self._submit(group, size, group_worst)
                    group, group_worst = [], Decimal(0)
                group.append(request_id)
                group_worst += worst
            if left is not None:
                left = max(0, left - len(page))
            after = page[-1][0]
        if group:
            await self._submit(group, splitter.size, group_worst)

    # -- streaming what the batches leave ----------------------------------------------------

    async def _pace(self) -> float:
        """Requests a second streaming gets through: measured this run, else from the limits."""
        output, max_tokens, size = await self.store.request_sizes()
        limits, _ = limit_specs(self.settings.limits)
        return planner.stream_pace(
            self.settings.concurrency,
            output if output is not None else max_tokens,
            size / 4,
            rpm=limits.rpm,
            itpm=limits.itpm,
            otpm=limits.otpm,
            headroom=self.settings.headroom,
            measured=self.streamer.pace(),
        )

    def _batch_seconds(self) -> float:
        """How long this job's batches took (the longest that ended), or BATCH_SECONDS before one has."""
        spans = [
            row.ended_at - row.created_at
            for row in self._batches
            if row.ended_at is not None and row.created_at is not None and row.key not in self._canceled_at
        ]
        return max(spans, default=BATCH_SECONDS)

    async def _stream_the_few_left(self) -> bool:
        """Whether the requests left pending after resubmissions (every pending one sent back by a batch
        result worth another try) stream instead of going into another batch: when they are few (FEW
        of the job, or FEW_AT_LEAST) and streaming them is sooner than a batch."""
        if not self.can_stream:
            return False
        pending, retries = await self.store.pending_retries()
        few = max(FEW_AT_LEAST, int(FEW * sum(self._before.values())))
        if not pending or pending != retries or pending > few:
            return False  # not only requests whose batch results are worth another try, or not few
        seconds = planner.streaming_seconds(pending, await self._pace())
        return seconds < self._batch_seconds()

    async def _stream_round(self) -> None:
        """One round of streaming; what stops it (the API, the cap, the database) stops the job."""
        summary = await self.streamer.round()
        if summary.storage is not None:
            self.storage = summary.storage
        if summary.aborted is not None:
            self.aborted = summary.aborted
        if summary.capped:
            self.budget.refused = True
        if self.storage is not None or self.aborted is not None:
            self._work.cancel()

    def _start_streaming(self, pending: int) -> bool:
        """Start a stream round if there is something to stream and none runs; whether one runs."""
        if self.streamer.job is None and self.streamer.idle.is_set():
            if not pending or self.budget.refused or self._rounds is None:
                return False
            self._rounds.start_soon(self._stream_round)
            self.streamer.idle = anyio.Event()  # running from now (the round sets it when it ends)
        return True

    # -- the deadline ----------------------------------------------------------------------

    async def _resolve_deadline(self) -> None:
        """The job's deadline as a Unix time: the one recorded when it was given (a resume keeps it),
        or, given anew, from now."""
        text = self.settings.deadline
        if text is None:
            return
        assert self.can_stream, "a deadline needs the streaming engine beside the batches"
        stored = await self.store.deadline()
        if stored is not None and stored[0] == text:
            self.deadline = stored[1]
            return
        self.deadline = deadline_at(text, self.clock())  # DeadlineError: the caller names the option
        await self.store.set_deadline(text, self.deadline)

    async def _plan_deadline(self) -> None:
        """Under a deadline: submit to batches what the deadline leaves time to move, spread over
        several batches; the rest streams at once (all of it where the deadline cannot be met)."""
        assert self.deadline is not None
        counts = await self.store.counts()
        pending = counts[State.PENDING]
        in_batches = sum(row.requests for row in self._batches if row.open)
        now, pace = self.clock(), await self._pace()
        share = min(
            pending, planner.stream_share(pending + in_batches, now, self.deadline, pace, self._cancel_allowance)
        )
        streaming = planner.streaming_seconds(pending + in_batches, pace)
        if not planner.can_meet(pending + in_batches, now, self.deadline, pace):
            self.say(
                f"The deadline cannot be met: streaming the {pending + in_batches:,} requests left takes about "
                f"{span(streaming)} at {pace:.2f} requests/s, and {span(self.deadline - now)} are left. "
                "Streaming them all now (the fastest)."
            )
        elif not isinstance(self.view, Quiet):
            self.say(
                f"Deadline in {span(self.deadline - now)}: {pending - share:,} requests to message batches, "
                f"{share:,} streamed now; streaming everything would take about {span(streaming)}."
            )
        batched = pending - share
        if batched:
            await self._submit_pending(batched, planner.batch_split(batched, self.settings.batch_size))
        self._streaming = True

    def _live(self, open_batches: list[BatchRow]) -> list[planner.LiveBatch]:
        return [
            planner.LiveBatch(row.key, row.created_at or row.intended_at, row.requests, row.state == CANCELING)
            for row in open_batches
            if row.id is not None and row.state != ENDED
        ]

    async def _move(self, open_batches: list[BatchRow], look: float) -> float:
        """Cancel the batches whose unfinished work must stream now to meet the deadline; how long
        until the plan must be looked at again."""
        assert self.deadline is not None
        queued = (await self.store.counts())[State.PENDING]
        stream = self.streamer.snapshot()
        queued += stream.in_flight if stream else 0
        live, now, pace = self._live(open_batches), self.clock(), await self._pace()
        for key in planner.to_move(now, self.deadline, queued, live, pace, self._cancel_allowance, look):
            row = next(row for row in open_batches if row.key == key)
            assert row.id is not None
            batch = await self.caller(partial(self.client.messages.batches.cancel, row.id))
            await self.store.batch_seen(key, describe(batch))
            self._canceled_at[key] = self.clock()
            self._moved += row.requests
            live = [b if b.key != key else planner.LiveBatch(b.key, b.created, b.unfinished, True) for b in live]
        return planner.next_look(now, self.deadline, queued, live, pace, self._cancel_allowance)

    def _measure_cancel(self, row: BatchRow) -> None:
        """A batch this run canceled has ended: cancels take about this long (twice the longest seen)."""
        asked = self._canceled_at.get(row.key)
        if asked is not None:
            self._cancel_allowance = max(planner.SOONEST, 2 * (self.clock() - asked))

    async def _poll(self, row: BatchRow) -> bool:
        """Bring one open batch up to date, and collect it once it has ended; whether it has.

        A batch (or its results) the server no longer has (404: deleted, or results past their 29
        days) is collected as it is: its requests without a result go back to pending."""
        assert row.id is not None
        batch_id = row.id
        try:
            if row.state != ENDED:
                batch = await self.caller(lambda: self.client.messages.batches.retrieve(batch_id))
                crash_point("polled")
                await self.store.batch_seen(row.key, describe(batch))
                if batch.processing_status != "ended":
                    return False
            await collect(
                self.client, self.caller, self.store, row.key, batch_id, self.settings.max_attempts, self._applied
            )
        except CallFailed as exc:
            if exc.failure.status != NOT_FOUND:
                raise
            await self.store.batch_collected(row.key)
        self._release(row.key)
        return True

    async def _loop(self) -> None:
        await self.store.write([], [], self.notes())
        for row in await self._refresh():
            if row.state == SUBMITTING:
                await self._create(row, reconcile=True)
        if self.deadline is not None and not self._streaming:
            await self._plan_deadline()
        delay = self.settings.poll_interval
        while True:
            if not self._streaming:
                if await self._stream_the_few_left():
                    self._streaming = True
                else:
                    await self._submit_pending()
            self.busy_since = None  # written: not busy (any more)
            open_batches = await self._refresh()
            streaming = self._streaming and self._start_streaming((await self.store.counts())[State.PENDING])
            if not open_batches:
                if not streaming:
                    return
                await self.streamer.idle.wait()
                if not self.streamer.last_done or self.budget.refused:
                    return  # the round ended nothing more (a stop), or the cap holds the rest
                continue
            ended = False
            for row in open_batches:
                done = await self._poll(row)
                if done:
                    self._measure_cancel(row)
                ended = done or ended
            open_batches = await self._refresh()
            wait = delay
            if self.deadline is not None:
                wait = min(delay, await self._move(open_batches, delay))
            if ended:
                delay = self.settings.poll_interval
                continue
            await self.sleep(max(planner.SOONEST, wait) if wait < delay else delay)
            delay = min(POLL_CAP, delay * 2)

    async def _loop_in_spite_of_a_busy_database(self) -> None:
        """The loop, taken up again while the database is busy; stopped when it cannot be written.
        Every step is durable before the next, so the loop begins again where it was."""
        while True:
            try:
                await self._loop()
                return
            except DatabaseBusy:
                if self.busy_since is None:
                    self.busy_since = anyio.current_time()
                await self.sleep(BUSY_RETRY)
            except StorageError as exc:
                self.storage = exc
                return

    async def run(self, *, handle_signals: bool = True) -> Summary:
        """Run every pending request through message batches to its end, or until detached or aborted."""
        store = self.store
        await store.reset_interrupted()
        self._before = await store.counts()
        if self.prices is not None:
            billed = await store.billed_by_tier(None, None)
            self._cost, self._cost_streamed = self.prices.total(billed), self.prices.total_streamed(billed)
        self.budget.spent = self._cost or Decimal(0)
        await self._reserve_open()
        if self.settings.cache != "off":  # the docs recommend the 1-hour TTL for batches sharing a prefix
            self.plan = await cache_plan(store, "1h")
        await self._resolve_deadline()
        self._started = anyio.current_time()
        self._since = time.time()
        async with anyio.create_task_group() as outer:
            outer.start_soon(show_progress, self.view, self.snapshot)
            if handle_signals:
                outer.start_soon(
                    watch_signals, lambda: self.stopping, self.stop, "Detaching: the batches keep running on the server"
                )
            try:
                with self._work:
                    async with anyio.create_task_group() as self._rounds:
                        try:
                            await self._loop_in_spite_of_a_busy_database()
                        except CallFailed as exc:
                            self.aborted = exc.failure
                            self.streamer.stop()  # what it has received is saved
            finally:
                with anyio.CancelScope(shield=True):
                    await self._refresh()
                    self.view.update(self.snapshot())
                    self.view.close()
                outer.cancel_scope.cancel()
        open_batches = [row for row in self._batches if row.open]
        return Summary(
            counts=await store.counts(),
            billed=await store.billed(),
            elapsed=anyio.current_time() - self._started,
            stopped=self.stopping,
            aborted=self.aborted,
            detached=len(open_batches),
            capped=self.budget.refused,
            cost=self.cost(),
            cap=self.budget.cap,
            storage=self.storage,
        )


def _no_streaming(store: Store, settings: JobSettings) -> StreamRun:
    raise AssertionError("a batch job without the streaming engine never streams")
