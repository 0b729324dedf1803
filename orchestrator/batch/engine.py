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
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from decimal import Decimal

import anthropic
import anyio

from orchestrator.api.failures import Failure
from orchestrator.api.prefix import PLACEMENT_BYTES, CachePlan, place
from orchestrator.batch.calls import Caller, CallFailed
from orchestrator.batch.plan import Splitter, request_size
from orchestrator.batch.results import collect
from orchestrator.batch.submit import Refused, create, describe, watermark
from orchestrator.crash import crash_point
from orchestrator.errors import DatabaseBusy, StorageError
from orchestrator.models import BatchResult, Outcome, State
from orchestrator.pricing import BATCH, PriceTable
from orchestrator.runtime.budget import Budget, worst_case
from orchestrator.runtime.cacheplan import cache_plan
from orchestrator.runtime.progress import Snapshot, View, show_progress
from orchestrator.runtime.signals import watch_signals
from orchestrator.runtime.summary import Summary
from orchestrator.settings import JobSettings
from orchestrator.store import BatchRow, Store
from orchestrator.store.batches import COLLECTED, ENDED, SUBMITTING

PAGE = 2000  # pending requests read at once while splitting
POLL_CAP = 60.0  # seconds between polls at most
NOT_FOUND = 404
BUSY_RETRY = 0.5  # seconds between two tries of a busy database (SQLite itself waits 5 s first)

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
    ) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.view = view
        self.prices = prices
        self.sleep = sleep
        self.caller = Caller(settings, sleep=sleep)
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
        self._started = 0.0
        self._since = 0.0

    def stop(self) -> None:
        """Detach: stop submitting and polling; the batches keep running on the server."""
        self.stopping = True
        self._work.cancel()

    # -- progress ------------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        before, finished = self._before, self.finished
        open_batches = [row for row in self._batches if row.open]
        ended = sum(1 for row in self._batches if row.state == COLLECTED)
        detail = f"batches {ended}/{len(self._batches)} ended"
        expiry = min((row.expires_at for row in open_batches if row.expires_at is not None), default=None)
        if expiry is not None:
            detail += f", expires {time.strftime('%Y-%m-%d %H:%M', time.localtime(expiry))}"
        return Snapshot(
            done=before[State.SUCCEEDED] + before[State.ERRORED] + finished[State.SUCCEEDED] + finished[State.ERRORED],
            total=sum(before.values()),
            in_flight=sum(row.requests for row in open_batches),
            failed=before[State.ERRORED] + finished[State.ERRORED],
            retries=finished[State.PENDING],
            output_tokens=self._output_tokens,
            elapsed=anyio.current_time() - self._started,
            done_this_run=finished[State.SUCCEEDED] + finished[State.ERRORED],
            cost=self._cost,
            cap=self.budget.cap,
            detail=detail,
            note=None if self.busy_since is None else "database busy (locked by another process)",
        )

    def _applied(self, chunk: list[BatchResult], states: Counter[str]) -> None:
        self.finished.update(states)
        for result in chunk:
            self._output_tokens += result.usage.output_tokens
            if self._cost is not None and result.final is not None and result.final[0] is State.SUCCEEDED:
                cost = self.prices.cost(result.final[1]["model"], result.usage, BATCH) if self.prices else None
                self._cost = None if cost is None else self._cost + cost
        crash_point("results")

    # -- the spend cap ---------------------------------------------------------------------

    def _release(self, key: int) -> None:
        """A batch collected or refused: its worst case gives way to what it was billed."""
        self.budget.reserved -= self._reserved.pop(key, Decimal(0))
        self.budget.spent = self._cost or Decimal(0)

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

    async def _submit_pending(self) -> None:
        """Split the pending requests into batches under both limits and submit each in turn; under a
        spend cap, only as many as it allows."""
        splitter = Splitter(self.settings.batch_size)
        group: list[int] = []
        group_worst = Decimal(0)
        after = 0
        while not self.budget.refused and (page := await self.store.to_batch(after, PAGE, self._since)):
            for request_id, custom_id, params in page:
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
            after = page[-1][0]
        if group:
            await self._submit(group, splitter.size, group_worst)

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
        for row in await self._refresh():
            if row.state == SUBMITTING:
                await self._create(row, reconcile=True)
        delay = self.settings.poll_interval
        while True:
            await self._submit_pending()
            self.busy_since = None  # written: not busy (any more)
            open_batches = await self._refresh()
            if not open_batches:
                return
            ended = False
            for row in open_batches:
                ended = await self._poll(row) or ended
            await self._refresh()
            if ended:
                delay = self.settings.poll_interval
                continue
            await self.sleep(delay)
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
            self._cost = self.prices.total(await store.billed_by_tier(None, None))
        self.budget.spent = self._cost or Decimal(0)
        await self._reserve_open()
        if self.settings.cache != "off":  # the docs recommend the 1-hour TTL for batches sharing a prefix
            self.plan = await cache_plan(store, "1h")
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
                    await self._loop_in_spite_of_a_busy_database()
            except CallFailed as exc:
                self.aborted = exc.failure
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
            cost=self._cost,
            cap=self.budget.cap,
            storage=self.storage,
        )
