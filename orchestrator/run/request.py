"""One request's life: limits, attempts, recovery of broken streams, retries, the final record."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import anthropic
import anyio

from orchestrator.api.failures import Failure, classify
from orchestrator.api.prefix import Breakpoint, CachePlan, place
from orchestrator.api.tokens import estimate_input_tokens
from orchestrator.models import AttemptEnded, Outcome, Request, State, Waits
from orchestrator.run.attempt import LiveAttempt, Sink, stream_attempt
from orchestrator.run.cachegate import CacheGate
from orchestrator.run.count import TokenCounter, generated_text
from orchestrator.run.limits import Limiter
from orchestrator.run.reach import Reach, unreachable
from orchestrator.run.recover import Recovery, Strategy, after_break, finish_without_continuation, join, next_params
from orchestrator.runtime.backoff import Backoff, Retries
from orchestrator.runtime.budget import Budget
from orchestrator.settings import JobSettings


@dataclass
class RequestRunner:
    """Runs requests to their end: limits, attempts, recovery of broken streams, retries, the final record."""

    client: anthropic.AsyncAnthropic
    sink: Sink
    settings: JobSettings
    limiter: Limiter
    on_fatal: Callable[[Failure], None]
    budget: Budget = field(default_factory=Budget)
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.monotonic
    reach: Reach = field(default_factory=Reach)  # whether the endpoint can be reached at all
    plan: CachePlan | None = None  # where breakpoints go (None: the body is sent as given)
    gate: CacheGate | None = None  # cache-aware launching (None: every request goes at once)

    def __post_init__(self) -> None:
        self.backoff = Backoff(self.settings.backoff_base, self.settings.backoff_cap)
        self.retries = Retries(self.backoff, self.settings.max_attempts, self.settings.retry_max_seconds)
        self.strategy = Strategy(self.settings.recover)
        self.counter = TokenCounter(self.client)

    def would_wait(self, request: Request) -> bool:
        """Whether the request would wait now for its prefix to be warmed by another one."""
        return self.gate is not None and self.gate.would_wait(place(request.params, self.plan)[1])

    async def run(self, request: Request) -> None:
        began = self.clock()
        number = request.attempts
        recovery = Recovery.from_dict(request.kept)
        correction: tuple[int, int] | None = None
        if request.interrupted is not None:  # cut by a stop or a crash: continue from its last checkpoint
            billed_known = not request.interrupted_estimated
            recovery, tokens = await self._keep(recovery, request.params, request.interrupted, billed_known)
            if tokens is not None and request.interrupted_estimated:
                correction = (request.attempts, tokens)
        estimate = estimate_input_tokens(request.params)
        while True:
            recovery = await self._counted(recovery, request.params["model"])
            params = next_params(request.params, recovery)
            number += 1
            # What the reply keeps is written with the attempt's start, before anything is sent:
            # an attempt cut short is then joined to it, however many times that happens.
            live = LiveAttempt(
                request.id, number, time.time(), request.params["model"], kept=recovery.to_dict(), corrects=correction
            )
            correction = None
            if params is None:  # the kept reply already holds every token asked for
                await self.sink.started(live)
                message = finish_without_continuation(recovery, request.params["max_tokens"])
                final = (State.SUCCEEDED, message)
                await self._end(live, live.ended(time.time(), Outcome.SUCCEEDED, final=final), recovery)
                return
            body, points = place(params, self.plan) if self.gate is not None else (params, [])
            launched, failure = await self._attempt(body, points, live, estimate)
            if not launched:  # launching it could pass the spend cap: the job launches nothing more
                return
            if failure is None:
                self.reach.answer()
                message = join(recovery, live.acc.message())
                final = (State.SUCCEEDED, message)
                await self._end(live, live.ended(time.time(), Outcome.SUCCEEDED, final=final), recovery)
                return
            self._feedback(params["model"], failure)
            wait = self.retries.next_wait(number - request.attempts, began, self.clock(), failure.retry_after, self.rng)
            if failure.reached:
                self.reach.answer()
            elif self.reach.missed(wait is None or failure.outcome is Outcome.PERMANENT):
                failure = unreachable(failure, self.reach.streak)
            if failure.outcome is Outcome.FATAL:
                ended = live.ended(time.time(), Outcome.FATAL, failure, next_state=State.PENDING)
                await self._end(live, ended, recovery)
                self.on_fatal(failure)
                return
            if failure.outcome is Outcome.PERMANENT or wait is None:
                final = (State.ERRORED, failure.error)
                await self._end(live, live.ended(time.time(), failure.outcome, failure, final=final), recovery)
                return
            if failure.outcome is Outcome.BROKEN and live.acc.started:
                partial = live.acc.snapshot()
                recovery, live.output_estimate = await self._keep(recovery, params, partial, live.acc.counted)
            await self._end(live, live.ended(time.time(), failure.outcome, failure), recovery)
            await anyio.sleep(wait)

    async def _attempt(
        self, body: dict[str, Any], points: list[Breakpoint], live: LiveAttempt, estimate: int
    ) -> tuple[bool, Failure | None]:
        """One attempt of ``body``, once its prefix is warm (or it leads the warming): whether it
        was launched (the spend cap may refuse it), and its failure if it failed."""
        gate = self.gate
        entered = self.clock()
        leads = await gate.enter(points) if gate is not None and points else ()
        prefix_wait = self.clock() - entered
        begun = False
        try:
            worst = self.budget.admit(body)
            if worst is None:
                return False, None
            if points and not leads:  # a warm prefix is read: reads do not count against the ITPM
                estimate = max(estimate - points[-1].tokens, 1)
            permit = await self.limiter.acquire(body["model"], estimate, body["max_tokens"])
            live.sent_at = time.time()
            live.waits = Waits(slot=permit.slot_wait, rate_limit=permit.rate_wait, prefix=prefix_wait)
            await self.sink.started(live)
            sent = gate.now() if gate is not None else 0.0

            def started() -> None:
                nonlocal begun
                begun = True
                if gate is not None and points:
                    gate.began(points, leads, sent)

            failure: Failure | None = None
            try:
                await stream_attempt(self.client, body, live, self.limiter, permit, on_start=started)
            except Exception as exc:
                failure = classify(exc)
                if failure is None:
                    raise
            finally:
                self.limiter.release(permit, live.acc.output_tokens, completed=live.acc.done, deltas=live.acc.deltas)
                self.budget.settle(worst, body["model"], live.usage())
            return True, failure
        finally:
            if gate is not None and leads and not begun:
                gate.failed(leads)

    async def _keep(
        self, recovery: Recovery, params: dict[str, Any], partial: dict[str, Any], billed_known: bool
    ) -> tuple[Recovery, int | None]:
        """The recovery after an attempt broke with ``partial``; and, unless the stream said it
        (``billed_known``), the server's count of what the attempt generated (its billed output)."""
        kept = after_break(recovery, self.strategy, params, partial)
        generated = generated_text(partial)
        if billed_known and (kept.counted or kept.counted_text != generated):
            return kept, None  # the server counted the attempt's output; _counted counts the kept text
        tokens = await self.counter.count(params["model"], generated)
        if tokens is not None and not kept.counted and kept.counted_text == generated:
            kept = kept.with_count(tokens)
        return kept, tokens

    async def _counted(self, recovery: Recovery, model: str) -> Recovery:
        """The recovery with its kept text counted by the server where it was only bounded (and the
        server says: else the bound stands, and the reply stops short of max_tokens)."""
        if recovery.counted:
            return recovery
        tokens = await self.counter.count(model, recovery.counted_text)
        return recovery if tokens is None else recovery.with_count(tokens)

    def _feedback(self, model: str, failure: Failure) -> None:
        """What the limiter learns from a failure: headers, a 429's cool-down, an overload."""
        if failure.headers is not None:
            self.limiter.observe(model, failure.headers)
        if failure.status == 429:
            self.limiter.pause(failure.retry_after if failure.retry_after is not None else self.backoff.base)
        if failure.status == 529 or failure.reason == "in_band_overloaded_error":
            self.limiter.overloaded()

    async def _end(self, live: LiveAttempt, record: AttemptEnded, recovery: Recovery) -> None:
        """Report an attempt's end with what the reply keeps: while the request goes on, the kept
        reply (for a later attempt, or a resume); with a success, how it was recovered."""
        if record.final is None:
            record = replace(record, kept=recovery.to_dict())
        elif record.final[0] is State.SUCCEEDED and recovery.summary() is not None:
            record = replace(record, recovery=recovery.summary())
        # The attempt's end is its final checkpoint: it must reach the writer even if we are
        # being cancelled right now.
        with anyio.CancelScope(shield=True):
            await self.sink.ended(live, record)
