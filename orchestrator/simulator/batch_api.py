"""The Message Batches endpoints over aiohttp: create, retrieve, list, cancel, delete and results.

Each request of a batch is answered by ``Simulator.render_message``, the same function as a
``stream: false`` request, so a batch result equals the streamed and the non-streamed reply
(the message id aside, and ``usage.service_tier``, which is ``"batch"`` as the API reports it).
Its params are validated when it is processed, as the API does: an invalid one becomes an
``errored`` result, not a 400 of the whole batch.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import anyio.lowlevel
from aiohttp import web

from orchestrator.simulator.batches import Batches, BatchStats, Status, draw_failure, parse_requests
from orchestrator.simulator.faults import FaultSpecError, find_directive, parse_fault_spec
from orchestrator.simulator.replies import block_text, conversation_key, last_user
from orchestrator.simulator.validation import RequestInvalid, error_body, validate

if TYPE_CHECKING:
    from orchestrator.simulator.config import SimulatorConfig

BATCHES_PATH = "/v1/messages/batches"
RESULTS_CONTENT_TYPE = "application/x-jsonl"
LINES_PER_WRITE = 256  # the results file goes out in chunks of this many lines
DEFAULT_LIMIT, MAX_LIMIT = 20, 1000
SETTLE_SLICE = 200  # requests processed between two chances for other requests to run

Action = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


class Host(Protocol):
    """What the batch endpoints use of the simulator that serves them (``server.Simulator``)."""

    config: SimulatorConfig

    def next_id(self, prefix: str) -> str: ...
    def rejected(self, request: web.Request) -> bool: ...
    def error(
        self, status: int, error_type: str, message: str, request_id: str, *, retry_after: float | None = None
    ) -> web.Response: ...
    def spend_limited(self, request_id: str) -> web.Response: ...
    def attempt(self, fingerprint: bytes) -> int: ...
    def render_message(self, body: dict[str, Any]) -> dict[str, Any]: ...
    def notify(self) -> None: ...


def _bad(message: str) -> RequestInvalid:
    return RequestInvalid(400, "invalid_request_error", message)


class BatchAPI:
    """The batch endpoints of one simulator, on its clock, with its stats, auth and replies."""

    def __init__(self, simulator: Host, clock: Callable[[], float], stats: BatchStats) -> None:
        self._sim = simulator
        self._clock = clock
        config = simulator.config
        self.store = Batches(config.batches, config.seed, time.time() - clock(), stats)
        self._endpoint_rng = random.Random(f"{config.seed}:batch-endpoints")

    def routes(self) -> list[web.RouteDef]:
        def handler(action: Action) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
            async def handle(request: web.Request) -> web.StreamResponse:
                return await self._handle(request, action)

            return handle

        return [
            web.post(BATCHES_PATH, handler(self._create)),
            web.get(BATCHES_PATH, handler(self._list)),
            web.get(BATCHES_PATH + "/{id}", handler(self._retrieve)),
            web.delete(BATCHES_PATH + "/{id}", handler(self._delete)),
            web.post(BATCHES_PATH + "/{id}/cancel", handler(self._cancel)),
            web.get(BATCHES_PATH + "/{id}/results", handler(self._results)),
        ]

    async def settle(self) -> None:
        """Bring every batch up to the simulator's clock, letting other requests run between slices."""
        while self.store.settle(self._clock(), self._process, SETTLE_SLICE):
            await anyio.lowlevel.checkpoint()

    # -- processing one request ---------------------------------------------------------

    def _process(self, custom_id: str, params: dict[str, Any]) -> dict[str, Any]:
        sim = self._sim
        config = sim.config
        try:
            body = validate(params, extra_models=config.extra_models)
            if body.get("stream", False):
                raise _bad("stream: streaming is not supported for the requests of a Message Batch")
            spec = find_directive(block_text(last_user(body)["content"]))
            forced = parse_fault_spec(spec) if spec else None
        except RequestInvalid as exc:
            return _errored(exc.error_type, exc.message)
        except FaultSpecError as exc:
            return _errored("invalid_request_error", f"sim-fault: {exc}")
        fingerprint = conversation_key(config.seed, body)
        failure = draw_failure(config.batches, config.seed, fingerprint, sim.attempt(fingerprint), forced)
        if failure == "expired":
            return {"type": "expired"}
        if failure == "overloaded_error":
            return _errored(failure, "Overloaded")
        if failure is not None:
            return _errored(failure, "Internal server error")
        message = sim.render_message(body)
        message["usage"]["service_tier"] = "batch"  # as the API reports a batch request's usage
        return {"type": "succeeded", "message": message}

    # -- HTTP -----------------------------------------------------------------------------

    async def _handle(self, request: web.Request, action: Action) -> web.StreamResponse:
        sim = self._sim
        request_id = sim.next_id("req")
        try:
            if sim.rejected(request):
                return sim.error(401, "authentication_error", "invalid x-api-key", request_id)
            refusal = self._endpoint_fault(request_id)
            if refusal is not None:
                return refusal
            await self.settle()
            return await action(request, request_id)
        except RequestInvalid as exc:
            return sim.error(exc.status, exc.error_type, exc.message, request_id)
        finally:
            sim.notify()

    def _endpoint_fault(self, request_id: str) -> web.Response | None:
        settings = self.store.settings
        roll = self._endpoint_rng.random()
        faults = self.store.stats.endpoint_faults
        if roll < settings.rate_limited:
            faults["rate_limited"] += 1
            message = "Number of requests to the Message Batches API has exceeded your rate limit. Please retry later."
            return self._sim.error(429, "rate_limit_error", message, request_id, retry_after=1.0)
        if roll < settings.rate_limited + settings.overloaded:
            faults["overloaded"] += 1
            return self._sim.error(529, "overloaded_error", "Overloaded", request_id)
        return None

    def _describe(self, request: web.Request, batch_id: str) -> dict[str, Any]:
        return self.store.describe(self.store.get(batch_id), f"{request.scheme}://{request.host}")

    async def _create(self, request: web.Request, request_id: str) -> web.StreamResponse:
        if self._sim.config.limits.spend_cap:
            return self._sim.spend_limited(request_id)
        settings = self.store.settings
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():  # read it all, so that a 413 reaches the client
            size += len(chunk)
            if size <= settings.max_bytes:
                chunks.append(chunk)
        if size > settings.max_bytes:
            raise RequestInvalid(
                413,
                "request_too_large",
                f"Request exceeds the maximum size of {settings.max_bytes:,} bytes for a Message Batch",
            )
        try:
            body = json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError):
            raise _bad("Request body is not valid JSON") from None
        custom_ids, params = parse_requests(body, settings.max_requests)
        batch = self.store.create(self._sim.next_id("msgbatch"), self._clock(), custom_ids, params)
        return _json(self._describe(request, batch.id), request_id)

    async def _retrieve(self, request: web.Request, request_id: str) -> web.StreamResponse:
        return _json(self._describe(request, request.match_info["id"]), request_id)

    async def _list(self, request: web.Request, request_id: str) -> web.StreamResponse:
        query = request.query
        try:
            limit = int(query.get("limit", DEFAULT_LIMIT))
        except ValueError:
            raise _bad("limit: Input should be a valid integer") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise _bad(f"limit: Input should be between 1 and {MAX_LIMIT}")
        after_id, before_id = query.get("after_id"), query.get("before_id")
        if after_id is not None and before_id is not None:
            raise _bad("after_id and before_id cannot be given together")
        batches, has_more = self.store.page(limit, after_id, before_id)
        data = [self._describe(request, batch.id) for batch in batches]
        return _json(
            {
                "data": data,
                "has_more": has_more,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
            },
            request_id,
        )

    async def _cancel(self, request: web.Request, request_id: str) -> web.StreamResponse:
        batch = self.store.cancel(request.match_info["id"], self._clock())
        return _json(self._describe(request, batch.id), request_id)

    async def _delete(self, request: web.Request, request_id: str) -> web.StreamResponse:
        batch_id = request.match_info["id"]
        self.store.delete(batch_id)
        return _json({"id": batch_id, "type": "message_batch_deleted"}, request_id)

    async def _results(self, request: web.Request, request_id: str) -> web.StreamResponse:
        batch = self.store.get(request.match_info["id"])
        if batch.status is not Status.ENDED:
            raise _bad(
                f"Message Batch {batch.id} is {batch.status.value}: its results can be retrieved once it has ended"
            )
        response = web.StreamResponse(headers={"request-id": request_id, "content-type": RESULTS_CONTENT_TYPE})
        response.enable_chunked_encoding()
        await response.prepare(request)
        lines = batch.lines
        try:
            for start in range(0, len(lines), LINES_PER_WRITE):
                await response.write(b"".join(lines[start : start + LINES_PER_WRITE]))
            await response.write_eof()
        except ConnectionResetError:
            pass  # the client went away
        return response


def _errored(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "errored", "error": error_body(error_type, message, None)}


def _json(payload: dict[str, Any], request_id: str) -> web.Response:
    return web.json_response(payload, headers={"request-id": request_id})
