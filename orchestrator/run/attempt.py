"""One attempt: stream a request into an accumulator that the writer checkpoints while it fills."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import anthropic
import httpx2

from orchestrator.api.accumulate import Accumulator
from orchestrator.api.failures import Failure
from orchestrator.api.sse import SSEDecoder
from orchestrator.errors import BrokenStream, MalformedStream
from orchestrator.models import INTERRUPTED_REASON, AttemptEnded, Checkpoint, Outcome, State, Usage, Waits
from orchestrator.run.limits import Limiter, Permit

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
    sent_at: float | None = None  # when the rate limiter let it go
    waits: Waits | None = None  # what it waited for before that
    checkpointed: int = -1  # deltas at the last checkpoint
    kept: dict[str, Any] | None = None  # what the reply kept before this attempt (written with its start)
    corrects: tuple[int, int] | None = None  # (number, output tokens) of an interrupted attempt, recounted
    output_estimate: int | None = None  # the output the server counted in the broken stream's text

    @property
    def output_estimated(self) -> bool:
        """Whether the output billed is our estimate: a stream that broke before its message_delta."""
        return self.acc.started and not self.acc.counted

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
        if self.output_estimate is not None and self.output_estimated:
            usage.output_tokens = max(usage.output_tokens, self.output_estimate)
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
            output_estimated=self.output_estimated,
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
            reason=failure.reason
            if failure is not None
            else INTERRUPTED_REASON
            if outcome is Outcome.INTERRUPTED
            else None,
            status=None if failure is None else failure.status,
            error=None if failure is None else failure.error,
            final=final,
            next_state=next_state,
            kept=self.kept,
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
    on_start: Callable[[], None] | None = None,
) -> None:
    """Stream one attempt into ``live.acc``; raise unless it ends with the whole message.

    The SDK sends the request (auth, headers, retries off, status errors raised as its own
    exceptions); the body is read raw and decoded here, which costs a fraction of the SDK's
    typed events. An in-band ``error`` event is raised as the SDK raises it: an
    ``APIStatusError`` whose status is the stream's 200. Data that is not UTF-8 JSON, or an
    event the accumulation cannot take, raises ``MalformedStream``; a body that ends before
    the message is complete (see ``Accumulator.done``), ``BrokenStream``. ``on_start`` is called
    once ``message_start`` has come (the response has begun: its cache writes are readable).
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
                if not data:  # the SDK skips an event without data
                    continue
                try:
                    event = json.loads(data.decode())
                except ValueError as exc:  # not UTF-8, or not JSON
                    raise MalformedStream(f"undecodable {name} event ({exc}): {data[:200]!r}") from None
                acc.feed(event)
            if on_start is not None and acc.started:
                on_start()
                on_start = None
            if live.first_token_at is None and acc.deltas:
                live.first_token_at = time.time()
            if limiter is not None and permit is not None and acc.started:
                if not permit.input_corrected:
                    usage = acc.usage
                    limiter.input_known(
                        permit, (usage.get("input_tokens") or 0) + (usage.get("cache_creation_input_tokens") or 0)
                    )
                limiter.output_streamed(permit, acc.output_tokens)
        decoder.finish()
    if not acc.done:
        raise BrokenStream("the stream ended without message_stop, its message incomplete")


def _in_band_error(response: httpx2.Response, data: bytes) -> anthropic.APIStatusError:
    try:
        body: Any = json.loads(data)
    except ValueError:
        body = data.decode(errors="replace")
    return anthropic.APIStatusError(f"error event in the stream: {body}", response=response, body=body)
