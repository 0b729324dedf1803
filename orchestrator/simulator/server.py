"""The simulator's HTTP server: the Messages API over aiohttp, with limits, timing and faults."""

from __future__ import annotations

import hashlib
import json
import math
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
from orchestrator.simulator.config import SimulatorConfig
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
    input_tokens_billed: int = 0
    output_tokens_billed: int = 0
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
            "output_tokens_billed": self.output_tokens_billed,
            "batches": self.batches.as_dict(),
        }


def sse(event: str, payload: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


_DELTA_HEAD = (
    b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":'
)
_PING = sse("ping", {"type": "ping"})
_BLOCK_START = sse(
    "content_block_start",
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
)
_BLOCK_STOP = sse("content_block_stop", {"type": "content_block_stop", "index": 0})
_MESSAGE_STOP = sse("message_stop", {"type": "message_stop"})


def _delta(text: str) -> bytes:
    return _DELTA_HEAD + json.dumps(text).encode() + b"}}\n\n"


class ClientGone(Exception):
    """The client closed the connection while we were writing."""


class Simulator:
    """An Anthropic-compatible Messages API server. ``serve()`` runs it on a loopback port."""

    def __init__(self, config: SimulatorConfig | None = None, clock: Callable[[], float] = time.monotonic):
        self.config = config or SimulatorConfig()
        self.stats = Stats()
        self.limits = ServerLimits(self.config.limits, clock)
        self._attempts: Counter[bytes] = Counter()
        self._serial = 0
        self._changed = anyio.Event()
        self.batches = BatchAPI(self, clock, self.stats.batches)

    def _notify(self) -> None:
        """Wake whoever waits in ``until``: the stats have changed."""
        self._changed.set()
        self._changed = anyio.Event()

    async def until(self, predicate: Callable[[Stats], bool]) -> None:
        """Wait until ``predicate(stats)`` holds; tests use it instead of sleeping."""
        while not predicate(self.stats):
            await self._changed.wait()

    # -- identifiers ------------------------------------------------------------------

    def _next_id(self, prefix: str) -> str:
        self._serial += 1
        digest = hashlib.blake2b(f"{self.config.seed}:{prefix}:{self._serial}".encode(), digest_size=11)
        return f"{prefix}_01{digest.hexdigest()}"

    # -- responses --------------------------------------------------------------------

    def _headers(self, request_id: str) -> dict[str, str]:
        return {"request-id": request_id, **self.limits.headers()}

    def _error(
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

    def _usage(self, input_tokens: int, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": output_tokens,
            "service_tier": "standard",
        }

    def _message(self, model: str, text: str | None, stop: str | None, usage: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self._next_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [] if text is None else [{"type": "text", "text": text}],
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }

    # -- handlers ---------------------------------------------------------------------

    def _rejected(self, request: web.Request) -> bool:
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
        return validate(body, count_only=count_only)

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        request_id = self._next_id("req")
        if self._rejected(request):
            return self._error(401, "authentication_error", "invalid x-api-key", request_id)
        try:
            body = await self._read_body(request, count_only=True)
        except RequestInvalid as exc:
            return self._error(exc.status, exc.error_type, exc.message, request_id)
        return web.json_response({"input_tokens": count_input_tokens(body)}, headers={"request-id": request_id})

    async def stats_view(self, request: web.Request) -> web.StreamResponse:
        await self.batches.settle()
        return web.json_response(self.stats.as_dict())

    async def messages(self, request: web.Request) -> web.StreamResponse:
        try:
            return await self._messages(request)
        finally:
            self._notify()

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        request_id = self._next_id("req")
        self.stats.requests += 1
        outcomes = self.stats.outcomes
        if self._rejected(request):
            outcomes["unauthorized"] += 1
            return self._error(401, "authentication_error", "invalid x-api-key", request_id)
        try:
            body = await self._read_body(request, count_only=False)
            forced_spec = request.headers.get("x-sim-fault") or find_directive(block_text(last_user(body)["content"]))
            forced = parse_fault_spec(forced_spec) if forced_spec else None
        except RequestInvalid as exc:
            outcomes["invalid" if exc.status == 400 else "not_found"] += 1
            return self._error(exc.status, exc.error_type, exc.message, request_id)
        except FaultSpecError as exc:
            outcomes["invalid"] += 1
            return self._error(400, "invalid_request_error", f"x-sim-fault: {exc}", request_id)

        if self.config.limits.spend_cap:
            outcomes["spend_limited"] += 1
            return self._error(
                429,
                "rate_limit_error",
                "You have reached your specified API usage limits. You will regain access on the first of next month.",
                request_id,
                details={"error_code": "enforced_spend_limit_reached"},
            )

        input_tokens = count_input_tokens(body)
        refusal = self.limits.admit(input_tokens)
        if refusal is not None:
            outcomes["rate_limited"] += 1
            self.stats.rate_limited += 1
            limit = self.limits.limit_of(refusal.limit)
            message = (
                f"This request would exceed the rate limit for your organization of {int(limit or 0):,} "
                f"{refusal.limit.replace('-', ' ')} per minute. For details, refer to: "
                "https://docs.claude.com/en/api/rate-limits."
            )
            return self._error(429, "rate_limit_error", message, request_id, retry_after=refusal.retry_after)

        config = self.config
        plan = plan_reply(config.seed, body, config.reply_min, config.reply_max)
        fingerprint = conversation_key(config.seed, body)
        self._attempts[fingerprint] += 1
        deltas = -(-len(plan.tokens) // config.tokens_per_delta)
        fault = choose_fault(
            forced=forced,
            rates=config.faults,
            seed=config.seed,
            fingerprint=fingerprint,
            attempt=self._attempts[fingerprint],
            deltas=deltas,
        )
        if fault is not None:
            self.stats.faults_injected[fault.kind.value] += 1
        if fault is not None and fault.kind in BEFORE_STREAM:
            outcomes[fault.kind.value] += 1
            if fault.kind is FaultKind.OVERLOADED:
                return self._error(529, "overloaded_error", "Overloaded", request_id)
            return self._error(500, "api_error", "Internal server error", request_id)

        self.stats.input_tokens_billed += input_tokens  # refused requests are not billed
        if not body.get("stream", False):
            return await self._complete(body, request_id)
        return await self._stream(request, body, plan, deltas, fault, input_tokens, request_id)

    def render_message(self, body: dict[str, Any]) -> dict[str, Any]:
        """The whole reply to a valid request body, as ``stream: false`` returns it and a batch result holds it."""
        config = self.config
        plan = plan_reply(config.seed, body, config.reply_min, config.reply_max)
        usage = self._usage(count_input_tokens(body), len(plan.tokens))
        return self._message(body["model"], "".join(plan.tokens), plan.stop_reason, usage)

    async def _complete(self, body: dict[str, Any], request_id: str) -> web.Response:
        message = self.render_message(body)
        n = message["usage"]["output_tokens"]
        timing = self.config.timing
        await anyio.sleep(timing.scaled(timing.ttft + n / timing.tokens_per_second))
        self.limits.charge_output(n)
        self.stats.output_tokens_billed += n
        self.stats.outcomes["ok"] += 1
        return web.json_response(message, headers=self._headers(request_id))

    async def _stream(
        self,
        request: web.Request,
        body: dict[str, Any],
        plan: ReplyPlan,
        deltas: int,
        fault: Fault | None,
        input_tokens: int,
        request_id: str,
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
        await response.prepare(request)
        stats.streams_now += 1
        stats.peak_streams = max(stats.peak_streams, stats.streams_now)
        emitter = _Emitter(self, response, plan)
        start = self._message(body["model"], None, None, self._usage(input_tokens, 1))
        emitter.pending += [
            sse("message_start", {"type": "message_start", "message": start}),
            _BLOCK_START,
            _PING,
        ]
        outcome = "ok"
        try:
            if fault is None or fault.kind is FaultKind.STALL:
                if fault is not None:
                    await emitter.run_until(fault.after)
                    stats.stalls_now += 1
                    self._notify()
                    try:
                        await anyio.sleep(fault.seconds)
                    finally:
                        stats.stalls_now -= 1
                    outcome = "stalled"
                await emitter.run_until(deltas)
                final_usage = {
                    "input_tokens": input_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": emitter.tokens,
                }
                emitter.pending += [
                    _BLOCK_STOP,
                    sse(
                        "message_delta",
                        {
                            "type": "message_delta",
                            "delta": {"stop_reason": plan.stop_reason, "stop_sequence": None},
                            "usage": final_usage,
                        },
                    ),
                    _MESSAGE_STOP,
                ]
                await emitter.flush()
                await response.write_eof()
                return response
            await emitter.run_until(fault.after)
            outcome = fault.kind.value
            if fault.kind is FaultKind.ERROR_EVENT:
                emitter.pending.append(
                    sse(
                        "error",
                        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                    )
                )
                await emitter.flush()
                await response.write_eof()
            elif fault.kind is FaultKind.TRUNCATE:
                await emitter.flush()
                await response.write_eof()
            else:  # DROP: close the socket without the final chunk
                await emitter.flush()
                assert request.transport is not None
                request.transport.close()
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


class _Emitter:
    """Writes a stream's deltas on schedule: tokens due within one tick go out in one write."""

    def __init__(self, simulator: Simulator, response: web.StreamResponse, plan: ReplyPlan) -> None:
        self._simulator = simulator
        self._response = response
        self._per_delta = simulator.config.tokens_per_delta
        self._tokens = plan.tokens
        self._deltas = _group(plan.tokens, self._per_delta)
        timing = simulator.config.timing
        self._tick = timing.scaled(timing.tick)
        self._interval = timing.scaled(self._per_delta / timing.tokens_per_second)
        self._first = anyio.current_time() + timing.scaled(timing.ttft)
        self.pending: list[bytes] = []
        self.sent = 0  # deltas sent
        self.tokens = 0  # output tokens emitted (billed)

    async def flush(self) -> None:
        if self.pending:
            data = b"".join(self.pending)
            self.pending.clear()
            if self._response.task is None or self._response.task.done():
                raise ClientGone
            await self._response.write(data)

    async def run_until(self, stop: int) -> None:
        while True:
            now = anyio.current_time()
            if now >= self._first:
                due = stop if self._interval <= 0 else min(stop, 1 + int((now - self._first) / self._interval))
                if due > self.sent:
                    batch = self._deltas[self.sent : due]
                    self.pending.extend(_delta(text) for text in batch)
                    tokens = min(due * self._per_delta, len(self._tokens)) - self.tokens
                    self.tokens += tokens
                    self._simulator.limits.charge_output(tokens)
                    self.sent = due
            await self.flush()
            if self.sent >= stop:
                return
            next_due = self._first + self.sent * self._interval
            await anyio.sleep(max(next_due - anyio.current_time(), self._tick))


def _group(tokens: list[str], per_delta: int) -> list[str]:
    return ["".join(tokens[i : i + per_delta]) for i in range(0, len(tokens), per_delta)]


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
