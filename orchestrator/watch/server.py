"""The watcher's web server: the page, ``/status.json`` and ``/charts``, read from the store read-only.

Each read opens the job's database read-only (``store.open_reader``: short statements of a WAL
reader, never a write, never the runner's lock), so it works beside a run in another process or in
this one, and on a finished job. Reads happen only when someone asks, and are paced by their cost:
the numbers at most every ``STATUS_EVERY`` seconds, or ``1 / SHARE`` times as long as their read
took, and the charts (which read every request) every ``CHARTS_EVERY``, or ``1 / CHARTS_SHARE``
times as long: a watcher spends at most about ``SHARE + CHARTS_SHARE`` of its time reading, however
large the job (a run with ``--watch`` included); readers in between get the last answer.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from aiohttp import web

from orchestrator.errors import StorageError, UserError
from orchestrator.models import Usage
from orchestrator.pricing import PriceTable
from orchestrator.report.figures import Filters, job_report
from orchestrator.report.html import charts
from orchestrator.store import JobRow, Store, open_reader
from orchestrator.watch.figures import Rates, Reading, status
from orchestrator.watch.page import PAGE

STATUS_EVERY = 1.0  # seconds, at the least, between two reads of the numbers
CHARTS_EVERY = 5.0  # ... and of the charts
SHARE = 0.05  # of the time a watcher may spend reading the numbers
CHARTS_SHARE = 0.02  # ... and the charts
REPLIES = 5  # the latest replies shown with --show-text
SECRETS = ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN")  # never shown, wherever they might turn up
LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class Models:
    """The models a job's requests name, read once per request (new requests are read as they come)."""

    def __init__(self) -> None:
        self.fingerprint: str | None = None
        self.after = 0
        self.names: set[str] = set()

    async def of(self, store: Store, job: JobRow) -> set[str]:
        if job.fingerprint != self.fingerprint:  # a changed job file may have changed its requests
            self.fingerprint, self.after, self.names = job.fingerprint, 0, set()
        found = await store.request_models(self.after)
        if found:
            self.after = found[-1][0]
            self.names.update(model for _, model in found)
        return self.names


async def read(db: Path, prices: PriceTable, models: Models, replies: int = 0) -> Reading:
    """One look at the job in ``db``, read-only."""
    if not db.exists():
        raise UserError(f"{db}: no such job database (yet)")
    async with open_reader(db) as store:
        job = await store.job()
        if job is None:
            raise UserError(f"{db} holds no job yet")
        names = await models.of(store, job)
        if len(names) == 1:  # most jobs: no request read for its model
            by_tier = await store.billed_by_tier_of(next(iter(names)))
        else:
            by_tier = await store.billed_by_tier(None, None)
        billed = Usage()
        for usage in by_tier.values():
            billed.add(usage)
        batches = await store.batches()
        deadline = await store.deadline()
        return Reading(
            at=time.time(),
            job=job,
            counts=await store.counts(),
            billed=billed,
            cost=prices.total(by_tier),
            retries=await store.retries(),
            failures=await store.failure_kinds(),
            batches=batches,
            notes=await store.run_notes(),
            first_start=await store.first_start(),
            replies=await store.latest_replies(replies) if replies else [],
            deadline=None if deadline is None else deadline[1],
            ways=await store.succeeded_by_way() if batches else None,  # a streaming job: no query
            cost_streamed=prices.total_streamed(by_tier),
        )


def redact(text: str) -> str:
    """``text`` without the API key or auth token of this process's environment."""
    for name in SECRETS:
        secret = os.environ.get(name)
        if secret and len(secret) >= 8:
            text = text.replace(secret, "[redacted]")
    return text


class Paced:
    """The last answer of a read, read again only once its time is due."""

    def __init__(self, every: float, share: float) -> None:
        self.every = every
        self.share = share
        self.interval = every
        self._due = -1.0
        self._answer = ""
        self._lock = anyio.Lock()

    async def get(self, read: Callable[[], Awaitable[str]]) -> str:
        async with self._lock:
            if time.monotonic() >= self._due:
                started = time.monotonic()
                self._answer = await read()
                cost = time.monotonic() - started
                self.interval = max(self.every, cost / self.share)
                self._due = time.monotonic() + self.interval - cost
            return self._answer


class Watcher:
    """What the server answers for one job database."""

    def __init__(self, db: Path, prices: PriceTable, *, show_text: bool = False, every: float = STATUS_EVERY) -> None:
        self.db = db
        self.prices = prices
        self.show_text = show_text
        self.rates = Rates()
        self.models = Models()
        self._status = Paced(every, SHARE)
        self._charts = Paced(max(every, CHARTS_EVERY) if every else 0.0, CHARTS_SHARE)

    async def _read_status(self) -> str:
        try:
            reading = await read(self.db, self.prices, self.models, REPLIES if self.show_text else 0)
        except (UserError, StorageError, FileNotFoundError) as exc:
            answer: dict[str, Any] = {"error": str(exc)}
        else:
            self.rates.add(reading)
            answer = status(reading, self.rates)
        answer["database"] = str(self.db)
        answer["refresh_seconds"] = self._status.interval
        answer["charts_refresh_seconds"] = self._charts.interval
        return redact(json.dumps(answer))

    async def _read_charts(self) -> str:
        try:
            async with open_reader(self.db) as store:
                report = await job_report(store, self.db, self.prices, Filters())
        except (UserError, StorageError, FileNotFoundError):
            return ""
        return redact(charts([report], report.total()))

    async def status(self) -> str:
        """``/status.json``'s body."""
        return await self._status.get(self._read_status)

    async def charts(self) -> str:
        """The report's charts of the job so far (an HTML fragment of inline SVG)."""
        return await self._charts.get(self._read_charts)


HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    # The page fetches nothing but its own JSON and charts: no network beyond this server.
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:",
}


def make_app(watcher: Watcher, host: str) -> web.Application:
    loopback = host in LOOPBACK

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        # Bound to loopback, answer only requests addressed to loopback (no DNS rebinding).
        if loopback and request.host.rsplit(":", 1)[0] not in LOOPBACK:
            raise web.HTTPForbidden(text="this watcher answers only on loopback addresses")
        response: web.StreamResponse = await handler(request)
        response.headers.update(HEADERS)
        return response

    async def page(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def status_json(request: web.Request) -> web.Response:
        return web.Response(text=await watcher.status(), content_type="application/json")

    async def charts_html(request: web.Request) -> web.Response:
        return web.Response(text=await watcher.charts(), content_type="text/html")

    app = web.Application(middlewares=[guard])
    app.router.add_get("/", page)
    app.router.add_get("/status.json", status_json)
    app.router.add_get("/charts", charts_html)
    return app


@asynccontextmanager
async def serve_watch(watcher: Watcher, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Serve ``watcher`` on ``host:port`` (0: any free port) and yield its URL."""
    runner = web.AppRunner(make_app(watcher, host), handle_signals=False, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise UserError(
                f"cannot serve the watcher on {host}:{port} ({exc.strerror}): choose another --port (0: any free one)"
            ) from None
        bound_port = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{bound_port}/"
    finally:
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
