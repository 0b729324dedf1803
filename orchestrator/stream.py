"""One request's life: stream an attempt, keep its partial output visible, retry, finish."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import anthropic
import anyio
import httpx2

from orchestrator.accumulate import Accumulator
from orchestrator.limits import Limiter, Permit, estimate_input_tokens
from orchestrator.models import JobSettings, Outcome, Request, State, Usage
from orchestrator.recover import Recovery, Strategy, after_break, finish_without_continuation, join, next_params
from orchestrator.retry import Backoff, BrokenStream, Failure, classify
from orchestrator.sse import SSEDecoder
from orchestrator.store import AttemptEnded, Checkpoint

_REQUIRED = ("model", "max_tokens", "messages")


@dataclass
class LiveAttempt:
    """An attempt in flight: the writer checkpoints it while the stream fills it."""

    request_id: int
    number: int
    started_at: float
    model: str = ""
    acc: Accumulator = field(default_factory=Accumulator)
    first_token_at: float | None = None
    checkpointed: int = -1  # deltas at the last checkpoint

    @property
    def key(self) -> tuple[int, int]:
        return (self.request_id, self.number)

    @property
    def dirty(self) -> bool:
        return self.acc.deltas != self.checkpointed

    def usage(self) -> Usage:
        """What this attempt has been billed so far."""
        usage = Usage.from_dict(self.acc.usage)
        usage.output_tokens = self.acc.output_tokens
        return usage

    def checkpoint(self, now: float) -> Checkpoint:
        self.checkpointed = self.acc.deltas
        acc = self.acc
        usage = self.usage()
        return Checkpoint(
            request_id=self.request_id,
            number=self.number,
            partial=acc.snapshot() if acc.started else None,
            message_id=acc.message_id,
            usage=usage,
            first_token_at=self.first_token_at,
            at=now,
        )

    def ended(
        self,
        now: float,
        outcome: Outcome,
        failure: Failure | None = None,
        final: tuple[State, dict[str, Any]] | None = None,
        next_state: State = State.RUNNING,
    ) -> AttemptEnded:
        checkpoint = self.checkpoint(now)
        if final is not None and final[0] is State.SUCCEEDED:
            checkpoint = replace(checkpoint, partial=None)  # the message is the result
        return AttemptEnded(
            checkpoint=checkpoint,
            outcome=outcome,
            reason=None if failure is None else failure.reason,
            status=None if failure is None else failure.status,
            error=None if failure is None else failure.error,
            final=final,
            next_state=next_state,
        )


class Sink(Protocol):
    """Where a request's attempts are reported: the writer."""

    async def started(self, live: LiveAttempt) -> None: ...

    async def ended(self, live: LiveAttempt, record: AttemptEnded) -> None: ...


async def stream_attempt(
    client: anthropic.AsyncAnthropic,
    params: dict[str, Any],
    live: LiveAttempt,
    limiter: Limiter | None = None,
    permit: Permit | None = None,
) -> None:
    """Stream one attempt into ``live.acc``; raise if it does not end with ``message_stop``.

    The SDK sends the request (auth, headers, retries off, status errors raised as its own
    exceptions); the body is read raw and decoded here, which costs a fraction of the SDK's
    typed events. An in-band ``error`` event is raised as the SDK raises it: an
    ``APIStatusError`` whose status is the stream's 200.
    """
    acc = live.acc
    decoder = SSEDecoder()
    # Job files hold raw Messages params: send the required ones as arguments and the rest
    # verbatim, so any field the API accepts goes through whatever this SDK version types.
    rest = {key: value for key, value in params.items() if key not in _REQUIRED}
    async with client.messages.with_streaming_response.create(
        model=params["model"],
        max_tokens=params["max_tokens"],
        messages=params["messages"],
        stream=True,
        extra_body=rest or None,
    ) as response:
        http = response.http_response
        if limiter is not None:
            limiter.observe(params["model"], http.headers)
        async for chunk in http.aiter_bytes():
            for name, data in decoder.feed(chunk):
                if name == "ping":
                    continue
                if name == "error":
                    raise _in_band_error(http, data)
                acc.feed(json.loads(data))
            if live.first_token_at is None and acc.deltas:
                live.first_token_at = time.time()
            if limiter is not None and permit is not None and acc.started:
                if not permit.input_corrected:
                    usage = acc.usage
                    limiter.input_known(
                        permit, (usage.get("input_tokens") or 0) + (usage.get("cache_creation_input_tokens") or 0)
                    )
                limiter.output_streamed(permit, acc.output_tokens)
    if not acc.done:
        raise BrokenStream("the stream ended without message_stop")


def _in_band_error(response: httpx2.Response, data: bytes) -> anthropic.APIStatusError:
    try:
        body: Any = json.loads(data)
    except ValueError:
        body = data.decode(errors="replace")
    return anthropic.APIStatusError(f"error event in the stream: {body}", response=response, body=body)


@dataclass
class RequestRunner:
    """Runs requests to their end: limits, attempts, recovery of broken streams, retries, the final record."""

    client: anthropic.AsyncAnthropic
    sink: Sink
    settings: JobSettings
    limiter: Limiter
    on_fatal: Callable[[Failure], None]
    rng: random.Random = field(default_factory=random.Random)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.backoff = Backoff(self.settings.backoff_base, self.settings.backoff_cap)
        self.strategy = Strategy(self.settings.recover)

    async def run(self, request: Request) -> None:
        settings = self.settings
        give_up_at = self.clock() + settings.retry_max_seconds
        number = request.attempts
        recovery = Recovery.from_dict(request.kept)
        if request.interrupted is not None:  # cut by a stop or a crash: continue from its last checkpoint
            recovery = after_break(
                recovery, self.strategy, request.params, request.interrupted, request.interrupted_tokens
            )
        estimate = estimate_input_tokens(request.params)
        while True:
            params = next_params(request.params, recovery)
            number += 1
            live = LiveAttempt(request.id, number, time.time(), request.params["model"])
            if params is None:  # the kept reply already holds every token asked for
                await self.sink.started(live)
                message = finish_without_continuation(recovery)
                final = (State.SUCCEEDED, message)
                await self._end(live, live.ended(time.time(), Outcome.SUCCEEDED, final=final), recovery)
                return
            permit = await self.limiter.acquire(params["model"], estimate, params["max_tokens"])
            await self.sink.started(live)
            failure: Failure | None = None
            try:
                await stream_attempt(self.client, params, live, self.limiter, permit)
            except Exception as exc:
                failure = classify(exc)
                if failure is None:
                    raise
            finally:
                self.limiter.release(permit, live.acc.output_tokens, completed=live.acc.done)
            if failure is None:
                message = join(recovery, live.acc.message())
                final = (State.SUCCEEDED, message)
                await self._end(live, live.ended(time.time(), Outcome.SUCCEEDED, final=final), recovery)
                return
            self._feedback(params["model"], failure)
            if failure.outcome is Outcome.FATAL:
                ended = live.ended(time.time(), Outcome.FATAL, failure, next_state=State.PENDING)
                await self._end(live, ended, recovery)
                self.on_fatal(failure)
                return
            out_of_tries = number - request.attempts >= settings.max_attempts or self.clock() >= give_up_at
            if failure.outcome is Outcome.PERMANENT or out_of_tries:
                final = (State.ERRORED, failure.error)
                await self._end(live, live.ended(time.time(), failure.outcome, failure, final=final), recovery)
                return
            if failure.outcome is Outcome.BROKEN:
                partial = live.acc.snapshot() if live.acc.started else None
                recovery = after_break(recovery, self.strategy, params, partial, live.acc.output_tokens)
            await self._end(live, live.ended(time.time(), failure.outcome, failure), recovery)
            await anyio.sleep(self.backoff.delay(number - request.attempts, failure.retry_after, self.rng))

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
