"""The simulator's HTTP server: the Messages API over aiohttp, with limits, timing and faults."""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
from aiohttp import web

from orchestrator.simulator.batch_api import BatchAPI
from orchestrator.simulator.batches import BatchStats
from orchestrator.simulator.cache import InputUsage, PromptCache
from orchestrator.simulator.config import SimulatorConfig
from orchestrator.simulator.events import (
    ERROR_EVENT,
    WireEvent,
    content_of,
    fault_position,
    stream_events,
    with_malformed,
)
from orchestrator.simulator.faults import (
    BEFORE_STREAM,
    Fault,
    FaultKind,
    FaultSpecError,
    choose_fault,
    find_directive,
    parse_fault_spec,
)
from orchestrator.simulator.ratelimit import ServerLimits
from orchestrator.simulator.replies import (
    ReplyPlan,
    block_text,
    conversation_key,
    count_input_tokens,
    input_segments,
    last_user,
    plan_reply,
)
from orchestrator.simulator.validation import RequestInvalid, error_body, validate

STATS_PATH = "/_simulator/stats"
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


@dataclass
class Stats:
    """What the simulator did, for tests and benchmarks."""

    requests: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    faults_injected: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    streams_now: int = 0
    stalls_now: int = 0
    peak_streams: int = 0
    input_tokens_billed: int = 0  # uncached input
    cache_creation_input_tokens_billed: int = 0
    cache_read_input_tokens_billed: int = 0
    output_tokens_billed: int = 0
    events_sent: int = 0  # server-sent events of every stream
    count_tokens_calls: int = 0
    batches: BatchStats = field(default_factory=BatchStats)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "outcomes": dict(self.outcomes),
            "faults_injected": dict(self.faults_injected),
            "rate_limited": self.rate_limited,
            "streams_now": self.streams_now,
            "stalls_now": self.stalls_now,
            "peak_streams": self.peak_streams,
            "input_tokens_billed": self.input_tokens_billed,
            "cache_creation_input_tokens_billed": self.cache_creation_input_tokens_billed,
            "cache_read_input_tokens_billed": self.cache_read_input_tokens_billed,
            "output_tokens_billed": self.output_tokens_billed,
            "events_sent": self.events_sent,
            "count_tokens_calls": self.count_tokens_calls,
            "batches": self.batches.as_dict(),
        }


class ClientGone(Exception):
    """The client closed the connection while we were writing."""


class Simulator:
    """An Anthropic-compatible Messages API server. ``serve()`` runs it on a loopback port."""

    def __init__(self, config: SimulatorConfig | None = None, clock: Callable[[], float] = time.monotonic):
        self.config = config or SimulatorConfig()
        self.stats = Stats()
        self.limits = ServerLimits(self.config.limits, clock)
        self.cache = PromptCache()
        self._clock = clock
        self._attempts: Counter[bytes] = Counter()
        self._serial = 0
        self._changed = anyio.Event()
        self.batches = BatchAPI(self, clock, self.stats.batches)

    def notify(self) -> None:
        """Wake whoever waits in ``until``: the stats have changed."""
        self._changed.set()
        self._changed = anyio.Event()

    def attempt(self, fingerprint: bytes) -> int:
        """Count an attempt of the conversation ``fingerprint`` (streamed or in a batch); its number."""
        self._attempts[fingerprint] += 1
        return self._attempts[fingerprint]

    async def until(self, predicate: Callable[[Stats], bool]) -> None:
        """Wait until ``predicate(stats)`` holds; tests use it instead of sleeping."""
        while not predicate(self.stats):
            await self._changed.wait()

    # -- identifiers ------------------------------------------------------------------

    def next_id(self, prefix: str) -> str:
        """A new id of the API's form (``req_01...``, ``msg_01...``, ``msgbatch_01...``), seeded."""
        self._serial += 1
        digest = hashlib.blake2b(f"{self.config.seed}:{prefix}:{self._serial}".encode(), digest_size=11)
        return f"{prefix}_01{digest.hexdigest()}"

    # -- responses --------------------------------------------------------------------

    def _headers(self, request_id: str) -> dict[str, str]:
        return {"request-id": request_id, **self.limits.headers()}

    def error(
        self,
        status: int,
        error_type: str,
        message: str,
        request_id: str,
        *,
        retry_after: float | None = None,
        details: dict[str, str] | None = None,
    ) -> web.Response:
        headers = self._headers(request_id)
        headers["x-should-retry"] = "true" if status in (408, 409, 429) or status >= 500 else "false"
        if retry_after is not None:
            headers["retry-after"] = str(max(1, math.ceil(retry_after)))
        body = error_body(error_type, message, request_id)
        if details is not None:
            body["error"]["details"] = details
        return web.json_response(body, status=status, headers=headers)

    def _message(self, model: str, plan: ReplyPlan | None, usage: InputUsage, output_tokens: int) -> dict[str, Any]:
        """The message object: the whole non-streamed message, or (``plan`` None) message_start's."""
        return {
            "id": self.next_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [] if plan is None else content_of(plan),
            "stop_reason": None if plan is None else plan.stop_reason,
            "stop_sequence": None if plan is None else plan.stop_sequence,
            **({} if plan is None or plan.stop_details is None else {"stop_details": plan.stop_details}),
            "usage": {**usage.fields(), "output_tokens": output_tokens, "service_tier": "standard"},
        }

    def _plan(self, body: dict[str, Any]) -> ReplyPlan:
        config = self.config
        return plan_reply(config.seed, body, config.reply_min, config.reply_max, config.refusals)

    def _bill_input(self, usage: InputUsage) -> Callable[[], None]:
        """A Messages request is served: its input is billed and what it read lives on from now.

        Returns what to call once its response has begun: then what it wrote becomes readable.
        """
        started = self._clock()
        self.cache.start(usage, started)
        self.stats.input_tokens_billed += usage.input_tokens
        self.stats.cache_creation_input_tokens_billed += usage.cache_creation
        self.stats.cache_read_input_tokens_billed += usage.cache_read
        return lambda: self.cache.publish(usage, started, self._clock())

    def _bill_output(self, tokens: int) -> None:
        self.limits.charge_output(tokens)
        self.stats.output_tokens_billed += tokens

    def render_message(self, body: dict[str, Any], usage: InputUsage | None = None) -> dict[str, Any]:
        """The whole reply to a valid request body, as ``stream: false`` returns it and a batch result holds it.

        Without ``usage`` (a batch request) the prompt cache is looked up and written here; the
        Messages endpoint looks it up before admission and bills it itself.
        """
        if usage is None:
            now = self._clock()
            usage = self.cache.lookup(body["model"], input_segments(body), now)
            self.cache.start(usage, now)
            self.cache.publish(usage, now, now)
        plan = self._plan(body)
        return self._message(body["model"], plan, usage, plan.output_tokens)

    def spend_limited(self, request_id: str) -> web.Response:
        """The 429 of an organization past its spend limit: waiting will not clear it (no retry-after)."""
        return self.error(
            429,
            "rate_limit_error",
            "You have reached your specified API usage limits. You will regain access on the first of next month.",
            request_id,
            details={"error_code": "enforced_spend_limit_reached"},
        )

    # -- handlers ---------------------------------------------------------------------

    def rejected(self, request: web.Request) -> bool:
        """Whether the request's API key (``x-api-key`` or ``Authorization: Bearer``) is refused."""
        bearer = request.headers.get("authorization", "").removeprefix("Bearer ")
        key = request.headers.get("x-api-key") or bearer
        return key in self.config.reject_api_keys

    async def _read_body(self, request: web.Request, count_only: bool) -> dict[str, Any]:
        raw = await request.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise RequestInvalid(400, "invalid_request_error", "Request body is not valid JSON") from None
        return validate(body, count_only=count_only, extra_models=self.config.extra_models)

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        request_id = self.next_id("req")
        self.stats.count_tokens_calls += 1
        if self.rejected(request):
            return self.error(401, "authentication_error", "invalid x-api-key", request_id)
        if not self.config.count_tokens_endpoint:
            return self.error(404, "not_found_error", "Not Found", request_id)
        try:
            body = await self._read_body(request, count_only=True)
        except RequestInvalid as exc:
            return self.error(exc.status, exc.error_type, exc.message, request_id)
        return web.json_response({"input_tokens": count_input_tokens(body)}, headers={"request-id": request_id})

    async def stats_view(self, request: web.Request) -> web.StreamResponse:
        await self.batches.settle()
        return web.json_response(self.stats.as_dict())

    async def messages(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._messages(request)
        finally:
            self.notify()

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        request_id = self.next_id("req")
        self.stats.requests += 1
        outcomes = self.stats.outcomes
        if self.rejected(request):
            outcomes["unauthorized"] += 1
            return self.error(401, "authentication_error", "invalid x-api-key", request_id)
        try:
            body = await self._read_body(request, count_only=False)
            forced_spec = request.headers.get("x-sim-fault") or find_directive(block_text(last_user(body)["content"]))
            forced = parse_fault_spec(forced_spec) if forced_spec else None
        except RequestInvalid as exc:
            outcomes["invalid" if exc.status == 400 else "not_found"] += 1
            return self.error(exc.status, exc.error_type, exc.message, request_id)
        except FaultSpecError as exc:
            outcomes["invalid"] += 1
            return self.error(400, "invalid_request_error", f"x-sim-fault: {exc}", request_id)

        if self.config.limits.spend_cap:
            outcomes["spend_limited"] += 1
            return self.spend_limited(request_id)

        usage = self.cache.lookup(body["model"], input_segments(body), self._clock())
        refusal = self.limits.admit(usage.rate_limited)
        if refusal is not None:
            outcomes["rate_limited"] += 1
            self.stats.rate_limited += 1
            limit = self.limits.limit_of(refusal.limit)
            message = (
                f"This request would exceed the rate limit for your organization of {int(limit or 0):,} "
                f"{refusal.limit.replace('-', ' ')} per minute. For details, refer to: "
                "https://docs.claude.com/en/api/rate-limits."
            )
            return self.error(429, "rate_limit_error", message, request_id, retry_after=refusal.retry_after)

        config = self.config
        fingerprint = conversation_key(config.seed, body)
        attempt = self.attempt(fingerprint)
        fault = choose_fault(
            forced=forced, rates=config.faults, seed=config.seed, fingerprint=fingerprint, attempt=attempt
        )
        if fault is not None:
            self.stats.faults_injected[fault.kind.value] += 1
        if fault is not None and fault.kind in BEFORE_STREAM:
            outcomes[fault.kind.value] += 1
            if fault.kind is FaultKind.OVERLOADED:
                return self.error(529, "overloaded_error", "Overloaded", request_id)
            return self.error(500, "api_error", "Internal server error", request_id)

        begun = self._bill_input(usage)  # refused requests are not billed
        if not body.get("stream", False):
            return await self._complete(body, usage, request_id, begun)
        plan = self._plan(body)
        rng = random.Random(hashlib.sha256(b"stream:%d:" % attempt + fingerprint).digest())
        start = self._message(body["model"], None, usage, 1)
        final_usage = {**usage.fields(), "output_tokens": plan.output_tokens}
        del final_usage["cache_creation"]
        events = stream_events(
            plan, start, final_usage, rng, config.tokens_per_delta, config.odd_events, config.unknown_events
        )
        return await self._stream(request, events, len(plan.blocks), fault, request_id, begun)

    async def _complete(
        self, body: dict[str, Any], usage: InputUsage, request_id: str, begun: Callable[[], None]
    ) -> web.Response:
        message = self.render_message(body, usage)
        output_tokens = message["usage"]["output_tokens"]
        timing = self.config.timing
        await anyio.sleep(timing.scaled(timing.ttft))
        begun()  # the first token: the response has begun
        await anyio.sleep(timing.scaled(output_tokens / timing.tokens_per_second))
        self._bill_output(output_tokens)
        self.stats.outcomes["ok"] += 1
        return web.json_response(message, headers=self._headers(request_id))

    async def _stream(
        self,
        request: web.Request,
        events: list[WireEvent],
        blocks: int,
        fault: Fault | None,
        request_id: str,
        begun: Callable[[], None],
    ) -> web.StreamResponse:
        stats = self.stats
        response = web.StreamResponse(
            status=200,
            headers={
                **self._headers(request_id),
                "content-type": SSE_CONTENT_TYPE,
                "cache-control": "no-cache",
            },
        )
        try:
            await response.prepare(request)
        except ConnectionResetError:  # the client is gone already (killed, say)
            stats.outcomes["client_closed"] += 1
            return response
        stats.streams_now += 1
        stats.peak_streams = max(stats.peak_streams, stats.streams_now)
        self.notify()
        position = len(events) if fault is None else fault_position(fault, events)
        if fault is not None and fault.kind is FaultKind.MALFORMED:
            events = with_malformed(events, position, fault.variant, blocks)
        emitter = _Emitter(self, response, events, begun)
        outcome = "ok"
        try:
            if fault is None or fault.kind in (FaultKind.STALL, FaultKind.MALFORMED):
                if fault is not None and fault.kind is FaultKind.STALL:
                    await emitter.run_until(position)
                    stats.stalls_now += 1
                    self.notify()
                    try:
                        await anyio.sleep(fault.seconds)
                    finally:
                        stats.stalls_now -= 1
                outcome = "ok" if fault is None else fault.kind.value
                await emitter.run_until(len(events))
                await response.write_eof()
                return response
            await emitter.run_until(position)
            outcome = fault.kind.value
            if fault.kind is FaultKind.DROP:  # close the socket without the final chunk
                await emitter.flush()
                assert request.transport is not None
                request.transport.close()
                return response
            if fault.kind is FaultKind.ERROR_EVENT:
                emitter.pending.append(ERROR_EVENT)
            await emitter.flush()  # ERROR_EVENT, TRUNCATE, NO_STOP: a clean end of the body
            await response.write_eof()
            return response
        except (ClientGone, ConnectionResetError):
            outcome = "client_closed"
            return response
        except anyio.get_cancelled_exc_class():
            outcome = "client_closed"
            raise
        finally:
            stats.outcomes[outcome] += 1
            stats.streams_now -= 1
            stats.output_tokens_billed += emitter.tokens
            stats.events_sent += emitter.sent


class _Emitter:
    """Writes a stream's events on schedule: the events due within one tick go out in one write.

    An event is due once the tokens generated before it are: the first token ``ttft`` seconds
    after the start, the others at ``tokens_per_second``.
    """

    def __init__(
        self,
        simulator: Simulator,
        response: web.StreamResponse,
        events: list[WireEvent],
        begun: Callable[[], None] | None = None,
    ) -> None:
        self._simulator = simulator
        self._begun = begun  # called once message_start has been sent
        self._response = response
        self._events = events
        timing = simulator.config.timing
        self._tick = timing.scaled(timing.tick)
        first = anyio.current_time() + timing.scaled(timing.ttft)
        interval = timing.scaled(1 / timing.tokens_per_second)
        self._due = [0.0 if event.tokens == 0 else first + (event.tokens - 1) * interval for event in events]
        self.pending: list[bytes] = []
        self.sent = 0  # events sent
        self.tokens = 0  # output tokens generated (billed)

    async def flush(self) -> None:
        if self.pending:
            data = b"".join(self.pending)
            self.pending.clear()
            if self._response.task is None or self._response.task.done():
                raise ClientGone
            await self._response.write(data)

    async def run_until(self, stop: int) -> None:
        """Send the events before ``stop``, each when it is due."""
        while True:
            now = anyio.current_time()
            due = self.sent
            while due < stop and self._due[due] <= now:
                due += 1
            if due > self.sent:
                self.pending.extend(event.data for event in self._events[self.sent : due])
                tokens = self._events[due - 1].tokens - self.tokens
                self.tokens += tokens
                self._simulator.limits.charge_output(tokens)
                self.sent = due
            await self.flush()
            if self._begun is not None and self.sent:
                self._begun()
                self._begun = None
            if self.sent >= stop:
                return
            await anyio.sleep(max(self._due[self.sent] - anyio.current_time(), self._tick))


def make_app(simulator: Simulator) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/messages", simulator.messages)
    app.router.add_post("/v1/messages/count_tokens", simulator.count_tokens)
    app.router.add_get(STATS_PATH, simulator.stats_view)
    app.router.add_routes(simulator.batches.routes())
    return app


@asynccontextmanager
async def serve(simulator: Simulator, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run the simulator on ``host:port`` (0: an ephemeral port) and yield its base URL."""
    # handler_cancellation: a stream whose client went away stops at once (a stall included), and
    # shutdown does not wait on streams still in flight.
    runner = web.AppRunner(
        make_app(simulator),
        handle_signals=False,
        access_log=None,
        handler_cancellation=True,
        shutdown_timeout=0.5,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        bound_port = runner.addresses[0][1]
        yield f"http://{host}:{bound_port}"
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
