"""The Python API: run a job (``run_job``, ``arun_job``) and open a stored one (``open_job``).

Every run option is a typed keyword-only parameter; they make one ``RunOptions`` (``options.py``),
the same object the command line makes from its options, and take one path from there
(``job.run``). The command line is a thin layer over this module: ``run``/``dry_run`` with the
``RunOptions`` it parsed, ``Job`` for a stored job, ``render_report`` for reports.

Notes (a changed job updated, errored requests run again, a job file gone) go to the
``orchestrator`` logger; nothing is written to stderr unless ``progress=True`` is asked for.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TypeVar

import anyio

from orchestrator.endpoint import SIMULATOR
from orchestrator.errors import JobAborted, JobChangedError, UserError
from orchestrator.job import RESULTS_ROOT, SIMULATED_ROOT, cancel, stored_job
from orchestrator.job import dry_run as plan_dry_run
from orchestrator.job import run as run_options
from orchestrator.messages import aborted_error, resume_hint
from orchestrator.models import State
from orchestrator.options import TABLE, RunOptions, resumed
from orchestrator.outputs import STATUSES, is_model, message_output, model_check, model_schema
from orchestrator.pricing import load_prices
from orchestrator.report.dryrun import render as render_dry_run
from orchestrator.report.export import export_csv, output_counts
from orchestrator.report.figures import Filters, find_databases, job_report, render_csv, render_json, render_text
from orchestrator.report.html import render_html
from orchestrator.results import Destination, export_results, result_line
from orchestrator.settings import DEFAULTS
from orchestrator.store import open_reader, open_store
from orchestrator.store.queries import read_results

if TYPE_CHECKING:
    from orchestrator.simulator.config import SimulatorConfig

JobInput = str | os.PathLike[str] | Iterable[Mapping[str, Any]]
INPUT_NAME = "input.jsonl"  # where an iterable of requests is written, in the job's results folder
T = TypeVar("T")


@dataclass(frozen=True)
class JobResult:
    """A run: its counts, tokens and cost, how it ended, and ``results()`` read back from the store."""

    db: Path
    results_file: Path  # results.jsonl
    counts: dict[str, int]  # requests by state: pending, running, succeeded, errored
    billed: dict[str, int]  # tokens billed over every attempt of the job (input_tokens, output_tokens, ...)
    cost: Decimal | None  # USD billed by the whole job; None if a model is unpriced
    elapsed: float  # seconds of this run
    written: int | None = None  # lines of results.jsonl; None: not written (the job is not complete)
    stopped: bool = False  # stopped by a signal (Ctrl-C) or a cancellation before its end
    detached: int = 0  # message batches left running on the server when it stopped
    pauses: int = 0  # pool-wide pauses after a 429
    cuts: int = 0  # concurrency cuts after overloads
    error: JobAborted | None = None  # why the API, the spend cap or the database stopped the job
    output_model: Any = None  # the pydantic model passed as output_schema, if one was
    ways: dict[str, int] | None = None  # a job with message batches: succeeded requests by way (batch, streamed)
    cost_streamed: Decimal | None = None  # what the same tokens would have cost all streamed
    deadline: float | None = None  # Unix time the job is to be done by (--deadline)
    done_at: float | None = None  # Unix time its last request finished, once all have

    @property
    def succeeded(self) -> int:
        return self.counts[State.SUCCEEDED]

    @property
    def errored(self) -> int:
        return self.counts[State.ERRORED]

    @property
    def complete(self) -> bool:
        return self.counts[State.PENDING] == 0 and self.counts[State.RUNNING] == 0

    def results(self) -> Iterator[dict[str, Any]]:
        """Every finished request in input order, as the lines of results.jsonl (the Batches results
        shape plus billed_usage, attempts, timing), read from the store one at a time. With a pydantic
        model as ``output_schema``, ``output`` is what the model validated."""
        return Job(self.db).results(model=self.output_model)

    def outputs(self) -> Iterator[Any]:
        """Each finished request's output, in input order (``Job.outputs``): model instances when a
        pydantic model was the ``output_schema``, else the parsed JSON; None where there is none valid."""
        return Job(self.db).outputs(model=self.output_model)

    def to_pandas(self) -> Any:
        """The outputs as a pandas DataFrame (``Job.to_pandas``)."""
        return Job(self.db).to_pandas(model=self.output_model)

    def raise_for_stop(self) -> JobResult:
        """This result, or the error it ended with: ``JobAborted`` (or ``StorageError``) when the job was
        stopped by the API, the spend cap or its database; ``KeyboardInterrupt`` when it was stopped."""
        if self.error is not None:
            raise self.error
        if self.stopped:
            raise KeyboardInterrupt(f"stopped; run it again to resume ({resume_hint(self.db, True)})")
        return self


@dataclass(frozen=True)
class BatchStatus:
    id: str | None  # None: intended, its create not answered yet
    state: str
    requests: int
    expires_at: float | None
    open: bool  # still in flight on the server


@dataclass(frozen=True)
class JobStatus:
    """A stored job's counts, tokens and cost (what ``orchestrator status`` shows)."""

    db: Path
    name: str
    endpoint: str | None  # where its last run ran: "simulator" or a base URL (None: not recorded)
    simulated: bool  # it holds replies of the built-in simulator
    created_at: float
    updated_at: float
    counts: dict[str, int]
    billed: dict[str, int]
    cost: Decimal | None
    elapsed: float  # from its first attempt to its last update
    batches: tuple[BatchStatus, ...]
    outputs: dict[str, int] | None = None  # structured outputs by status (a job with an output schema)
    ways: dict[str, int] | None = None  # succeeded requests by way: batch, streamed
    cost_streamed: Decimal | None = None  # what the same tokens would have cost all streamed
    deadline: float | None = None  # Unix time the job is to be done by (--deadline)
    done_at: float | None = None  # Unix time its last request finished, once all have

    def as_dict(self) -> dict[str, Any]:
        """As ``orchestrator status --json`` prints it."""
        cost = None if self.cost is None else float(round(self.cost, 6))  # as the report's JSON gives it
        shown = [
            {"id": b.id, "state": b.state, "requests": b.requests, "expires_at": b.expires_at} for b in self.batches
        ]
        return {
            "job": self.name,
            "endpoint": self.endpoint,
            "simulated": self.simulated,
            "counts": self.counts,
            "billed": self.billed,
            "cost_usd": cost,
            "elapsed": self.elapsed,
            **({"outputs": self.outputs} if self.outputs else {}),
            "ways": self.ways,
            "cost_streamed_usd": None if self.cost_streamed is None else float(round(self.cost_streamed, 6)),
            "deadline": self.deadline,
            "done_at": self.done_at,
            "batches": shown,
        }


@dataclass(frozen=True)
class Exported:
    path: Path | None  # None: written to the stream given
    written: int  # lines (jsonl) or rows (csv) written
    unfinished: int  # requests not finished: left out of a jsonl, rows without a result in a csv


def _sync(call: Callable[[], Awaitable[T]], name: str, twin: str) -> T:
    """Run ``call`` in an event loop of its own, refusing (naming the async twin) inside a running one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise UserError(
            f"{name} cannot run inside a running event loop (Jupyter, asyncio code): use `await {twin}` there"
        )

    async def main() -> T:
        return await call()

    return anyio.run(main)


@dataclass(frozen=True)
class Job:
    """A job stored in its database (``open_job(db)``): read it, export it, resume it, cancel its batches.

    ``python``: messages name options as Python keywords (the command line's handle names its options)."""

    db: Path
    python: bool = True

    def _named(self, name: str) -> str:
        return name if self.python else "--" + name.replace("_", "-")

    async def astatus(self, *, prices: str | os.PathLike[str] | None = None) -> JobStatus:
        if not self.db.exists():
            raise UserError(f"{self.db}: no such job database")
        async with open_reader(self.db) as store:
            job = await store.job()
            counts = await store.counts()
            billed = await store.billed()
            by_tier = await store.billed_by_tier(None, None)
            first = await store.first_start()
            batches = await store.batches()
            outputs = sum((await output_counts(store)).values(), Counter[str]())
            ways = await store.succeeded_by_way()
            deadline = await store.deadline()
            done_at = await store.done_at()
        if job is None:
            raise UserError(f"{self.db} holds no job")
        table = load_prices(_path(prices))
        return JobStatus(
            db=self.db,
            name=job.name,
            endpoint=job.endpoint,
            simulated=job.simulated,
            created_at=job.created_at,
            updated_at=job.updated_at,
            counts=counts,
            billed=billed.as_dict(),
            cost=table.total(by_tier),
            cost_streamed=table.total_streamed(by_tier),
            ways=ways,
            deadline=None if deadline is None else deadline[1],
            done_at=done_at,
            elapsed=(job.updated_at - first) if first else 0.0,
            batches=tuple(BatchStatus(b.id, b.state, b.requests, b.expires_at, b.open) for b in batches),
            outputs={name: outputs[name] for name in STATUSES} if outputs else None,
        )

    def status(self, *, prices: str | os.PathLike[str] | None = None) -> JobStatus:
        """Counts by state, tokens billed, cost (``prices``: a prices file overriding the shipped one)."""
        return _sync(lambda: self.astatus(prices=prices), "status", "job.astatus(...)")

    def results(self, *, model: Any = None) -> Iterator[dict[str, Any]]:
        """Every finished request in input order, as the lines of results.jsonl, read one at a time.
        ``model``: a pydantic model that checks the outputs instead of the stored schema (it validates
        its own, constraints the API does not take included)."""
        for _, line in self._rows(model):
            yield line

    def _rows(self, model: Any) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        if not self.db.exists():
            raise UserError(f"{self.db}: no such job database")
        check = None if model is None else model_check(model)
        for row in read_results(self.db):
            if row["state"] not in (State.SUCCEEDED, State.ERRORED):
                continue
            line = result_line(row)
            if check is not None and row["output_schema"] is not None:
                line.pop("output_error", None)
                message = row["result"] if row["state"] == State.SUCCEEDED else None
                line.update(message_output(message, check).fields())
            yield row, line

    def outputs(self, *, model: Any = None) -> Iterator[Any]:
        """Each finished request's output in input order (requests without an output schema left out):
        the parsed JSON, or with ``model`` (a pydantic model) an instance of it; None where the reply
        holds none valid (cut, refused, not JSON, failing the schema: ``results()`` says why)."""
        for _, line in self._rows(model):
            if "output" not in line:
                continue
            value = line["output"]
            yield value if model is None or value is None else model.model_validate(value)

    def to_pandas(self, *, model: Any = None) -> Any:
        """The outputs as a pandas DataFrame: ``custom_id``, one column per top-level property of the
        output schema (nested values as Python objects), and ``output_error``. Needs pandas
        (``pip install 'orchestrator[pandas]'``)."""
        try:
            import pandas
        except ImportError:
            raise UserError("to_pandas needs pandas: pip install 'orchestrator[pandas]'") from None
        properties: dict[str, None] = {}
        records = []
        for row, line in self._rows(model):
            if "output" not in line:
                continue
            properties.update(dict.fromkeys(json.loads(row["output_schema"]).get("properties") or {}))
            value = line["output"] if isinstance(line["output"], dict) else {}
            records.append((line["custom_id"], value, line.get("output_error")))
        columns = ["custom_id", *properties, "output_error"]
        rows = [[custom_id, *(value.get(name) for name in properties), error] for custom_id, value, error in records]
        return pandas.DataFrame(rows, columns=columns)

    async def aresults(self) -> AsyncIterator[dict[str, Any]]:
        """``results()`` inside an event loop."""
        if not self.db.exists():
            raise UserError(f"{self.db}: no such job database")
        async with open_reader(self.db) as store, aclosing(store.results()) as rows:
            async for row in rows:
                if row["state"] in (State.SUCCEEDED, State.ERRORED):
                    yield result_line(row)

    async def areport(self, *, prices: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        report: dict[str, Any] = json.loads(await arender_report([self.db], format="json", prices=prices))
        return report

    def report(self, *, prices: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """The JSON report (``orchestrator report DB --format json``) as a dict."""
        return _sync(lambda: self.areport(prices=prices), "report", "job.areport(...)")

    async def aexport(
        self,
        path: str | os.PathLike[str] | IO[str] | None = None,
        *,
        format: Literal["jsonl", "csv"] = "jsonl",
        prices: str | os.PathLike[str] | None = None,
        excel_safe: bool = False,
    ) -> Exported:
        if format not in ("jsonl", "csv"):
            raise UserError(f"{self._named('format')} must be jsonl or csv, not {format!r}")
        if excel_safe and format != "csv":
            raise UserError(
                f"{self._named('excel_safe')} is for {self._named('format')} csv "
                "(a spreadsheet reads CSV; JSONL keeps the text as it is)"
            )
        if not self.db.exists():
            raise UserError(f"{self.db}: no such job database")
        if path is None:
            out: Destination = self.db.parent / f"results.{format}"
        elif isinstance(path, str | os.PathLike):
            out = self.out_path(path)
        else:
            out = path
        async with open_reader(self.db) as store:
            if format == "csv":
                written, unfinished = await export_csv(store, out, load_prices(_path(prices)), excel_safe=excel_safe)
            else:
                written, unfinished = await export_results(store, out)
        return Exported(out if isinstance(out, Path) else None, written, unfinished)

    def out_path(self, out: str | os.PathLike[str]) -> Path:
        """Where an export or report writes: refused if it is this job's database (or a folder)."""
        return out_path(out, self.db, named="path" if self.python else "--out")

    def export(
        self,
        path: str | os.PathLike[str] | IO[str] | None = None,
        *,
        format: Literal["jsonl", "csv"] = "jsonl",
        prices: str | os.PathLike[str] | None = None,
        excel_safe: bool = False,
    ) -> Exported:
        """Write the results to ``path`` (a file, or an open text stream; default: results.jsonl or
        results.csv beside the database). jsonl: the Batches results shape, finished requests only;
        csv: one row per request, a table's columns joined with custom_id, result type, reply text,
        stop_reason, error, tokens and cost. ``excel_safe`` (csv): cells a spreadsheet would run as
        formulas get a leading '."""
        return _sync(
            lambda: self.aexport(path, format=format, prices=prices, excel_safe=excel_safe),
            "export",
            "job.aexport(...)",
        )

    async def resume_options(
        self,
        *,
        simulate: bool | SimulatorConfig | None = None,
        base_url: str | None = None,
        quiet: bool | None = None,
        allow_endpoint_change: bool = False,
        retry_errored: bool = False,
        settings: Mapping[str, Any] | None = None,
    ) -> RunOptions:
        """The options a resume runs with: the stored ones, the settings given now over them."""
        job = await stored_job(self.db)
        return resumed(
            RunOptions.from_json(job.spec.get("options", {}), python=self.python),
            self.db,
            job.endpoint,
            simulate=simulate,
            base_url=base_url,
            quiet=quiet,
            allow_endpoint_change=allow_endpoint_change,
            retry_errored=retry_errored,
            python=self.python,
            settings=settings,
        )

    async def aresume(
        self,
        *,
        simulate: bool | SimulatorConfig | None = None,
        base_url: str | None = None,
        progress: bool = False,
        allow_endpoint_change: bool = False,
        retry_errored: bool = False,
        mode: str | None = None,
        concurrency: int | None = None,
        max_attempts: int | None = None,
        retry_max_seconds: float | None = None,
        checkpoint_interval: float | None = None,
        read_timeout: float | None = None,
        backoff_base: float | None = None,
        backoff_cap: float | None = None,
        recover: str | None = None,
        max_cost: float | None = None,
        headroom: float | None = None,
        cache: str | None = None,
        batch_size: int | None = None,
        poll_interval: float | None = None,
        deadline: str | None = None,
        rpm: float | None = None,
        itpm: float | None = None,
        otpm: float | None = None,
    ) -> JobResult:
        """``resume`` inside an event loop."""
        given = {name: value for name, value in locals().items() if name in _SETTING_NAMES}
        options = await self.resume_options(
            simulate=simulate,
            base_url=base_url,
            quiet=not progress,
            allow_endpoint_change=allow_endpoint_change,
            retry_errored=retry_errored,
            settings=given,
        )
        return (await run(options)).raise_for_stop()

    def resume(
        self,
        *,
        simulate: bool | SimulatorConfig | None = None,
        base_url: str | None = None,
        progress: bool = False,
        allow_endpoint_change: bool = False,
        retry_errored: bool = False,
        mode: str | None = None,
        concurrency: int | None = None,
        max_attempts: int | None = None,
        retry_max_seconds: float | None = None,
        checkpoint_interval: float | None = None,
        read_timeout: float | None = None,
        backoff_base: float | None = None,
        backoff_cap: float | None = None,
        recover: str | None = None,
        max_cost: float | None = None,
        headroom: float | None = None,
        cache: str | None = None,
        batch_size: int | None = None,
        poll_interval: float | None = None,
        deadline: str | None = None,
        rpm: float | None = None,
        itpm: float | None = None,
        otpm: float | None = None,
    ) -> JobResult:
        """Run the stored job on to its end with the options it was stored with, the settings given
        here over them (e.g. a higher ``max_cost``), against the endpoint given here, else the one of
        its last run. Raises as ``run_job`` does."""
        keywords = dict(locals())
        del keywords["self"]
        return _sync(lambda: self._resume_here(keywords), "resume", "job.aresume(...)")

    async def _resume_here(self, keywords: dict[str, Any]) -> JobResult:
        _main_thread("resume")
        return await self.aresume(**keywords)

    async def acancel(self, *, base_url: str | None = None) -> list[str]:
        if base_url is None:  # the endpoint the job ran against
            job = await stored_job(self.db)
            stored = job.spec.get("options", {})
            base_url = job.endpoint or (SIMULATOR if "simulate" in stored else stored.get("base_url"))
            if base_url == SIMULATOR:
                raise UserError(
                    f"{self.db} ran against the built-in simulator ({self._named('simulate')}): its batches "
                    f"ended with that process; give {self._named('base_url')} to cancel them on a server"
                )
        return await cancel(self.db, base_url)

    def cancel(self, *, base_url: str | None = None) -> list[str]:
        """Cancel the job's message batches still in flight (batch mode), on the endpoint it ran against
        unless ``base_url`` is given; the ids of those asked to cancel. What they finished is kept and
        the rest stays pending: ``resume()`` collects their results."""
        return _sync(lambda: self.acancel(base_url=base_url), "cancel", "job.acancel(...)")

    @asynccontextmanager
    async def awatch(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        show_text: bool = False,
        prices: str | os.PathLike[str] | None = None,
    ) -> AsyncIterator[str]:
        """Serve the job's live view (``orchestrator watch``: a page and ``/status.json``) on
        ``host:port`` (0: any free port) while the block runs; yields its URL. Read-only: a run of
        the job may go on in another process. ``show_text``: the latest prompts and replies too."""
        from orchestrator.watch import Watcher, serve_watch

        if not self.db.exists():
            raise UserError(f"{self.db}: no such job database")
        watcher = Watcher(self.db, load_prices(_path(prices)), show_text=show_text)
        async with serve_watch(watcher, host, port) as url:
            yield url


def open_job(db: str | os.PathLike[str]) -> Job:
    """The job stored in ``db`` (a job.sqlite), to read, export, resume or cancel."""
    return Job(Path(db))


def out_path(out: str | os.PathLike[str], *databases: Path, named: str = "out") -> Path:
    """Where an export or a report is written: refused if it is a job database read (or a folder)."""
    path = Path(out)
    stdout = f"{named} - for standard output" if named.startswith("--") else "an open stream such as sys.stdout"
    if path.exists() and any(path.resolve() == db.resolve() for db in databases):
        raise UserError(f"{named} {out} is the job's database: choose another file (or {stdout})")
    if path.is_dir():
        raise UserError(f"{named} {out} is a folder: name a file in it (or {stdout})")
    return path


def _path(value: str | os.PathLike[str] | None) -> Path | None:
    return None if value is None else Path(value)


def _main_thread(name: str) -> None:
    if threading.current_thread() is not threading.main_thread():
        raise UserError(f"{name} runs in the main thread (it handles Ctrl-C); use a{name} in other threads' loops")


async def run(options: RunOptions) -> JobResult:
    """Run a job with ``options`` to its end or until stopped. The result says how it ended
    (``error``, ``stopped``); ``raise_for_stop()`` raises it. The command line's ``run`` and ``resume``."""
    outcome = await run_options(options)
    summary = outcome.summary
    prices = load_prices(options.prices)
    async with open_store(outcome.db, create=False) as store:  # streamed and batch attempts at their prices
        by_tier = await store.billed_by_tier(None, None)
        ways = await store.succeeded_by_way() if await store.batches() else None
        deadline = await store.deadline()
        done_at = await store.done_at()
    return JobResult(
        db=outcome.db,
        results_file=outcome.results,
        counts=dict(summary.counts),
        billed=summary.billed.as_dict(),
        cost=prices.total(by_tier),
        elapsed=summary.elapsed,
        written=outcome.written,
        stopped=summary.stopped,
        detached=summary.detached,
        pauses=summary.pauses,
        cuts=summary.cuts,
        error=aborted_error(summary, outcome.db, options.python),
        ways=ways,
        cost_streamed=prices.total_streamed(by_tier),
        deadline=None if deadline is None else deadline[1],
        done_at=done_at,
    )


async def dry_run(options: RunOptions) -> str:
    """What a job would cost and take, as ``orchestrator run --dry-run`` prints it; sends no message."""
    result, settings = await plan_dry_run(options)
    return render_dry_run(result, load_prices(options.prices), settings, str(options.job))


async def arender_report(
    databases: Sequence[str | os.PathLike[str]],
    *,
    format: Literal["text", "json", "csv", "html"] = "text",
    prices: str | os.PathLike[str] | None = None,
    since: float | None = None,
    until: float | None = None,
    models: Sequence[str] = (),
) -> str:
    """Usage, cost, latency and throughput of jobs (databases, or folders of them), as ``orchestrator
    report`` renders it; ``since``/``until``: unix times of attempts started; ``models``: ids or families."""
    table = load_prices(_path(prices))
    found = report_databases(databases)
    if not found:
        raise UserError(f"no job database found in {', '.join(map(str, databases))}")
    filters = Filters(since=since, until=until, models=tuple(models))
    reports = []
    for db in found:
        if not db.exists():
            raise UserError(f"{db}: no such job database")
        async with open_reader(db) as store:
            reports.append(await job_report(store, db, table, filters))
    now = time.time()
    if format == "json":
        return render_json(reports, table, now)
    if format == "csv":
        return render_csv(reports, now)
    if format == "html":
        return render_html(reports, table, now)
    return render_text(reports, table, now)


def report_databases(databases: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The job databases a report reads: those named, and those in the folders named."""
    return find_databases([Path(p) for p in databases])


def _write_requests(requests: Iterable[Mapping[str, Any]], options: RunOptions) -> RunOptions:
    """Write an iterable of request dicts to the job's ``input.jsonl`` (streamed); the options with it
    as the job file and the results folder set."""
    given = options.results or (options.db.parent if options.db else None)
    root = given if given else SIMULATED_ROOT if options.simulate is not None else RESULTS_ROOT
    root.mkdir(parents=True, exist_ok=True)
    partial = root / f".{INPUT_NAME}.{os.getpid()}.tmp"
    digest = hashlib.sha256()
    try:
        with partial.open("w", encoding="utf-8") as handle:
            for number, request in enumerate(requests, start=1):
                try:
                    line = json.dumps(request, ensure_ascii=False) + "\n"
                except (TypeError, ValueError) as exc:
                    raise UserError(f"request {number}: not JSON ({exc})") from None
                handle.write(line)
                digest.update(line.encode())
        folder = given if given else root / f"job-{digest.hexdigest()[:12]}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / INPUT_NAME
        if target.exists() and target.read_bytes() != partial.read_bytes() and not options.allow_changed:
            raise JobChangedError(
                f"these requests differ from the job in {folder} (written to {target} by an earlier run). "
                "Run them as a new job with results=/db= elsewhere, or pass allow_changed=True to update the job."
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return dataclasses.replace(options, job=target, results=folder)


_SETTING_NAMES = frozenset(setting.name for setting in TABLE)


def _options(job: JobInput, keywords: dict[str, Any]) -> tuple[RunOptions, Iterable[Mapping[str, Any]] | None]:
    """The keyword arguments of ``run_job``/``arun_job`` as RunOptions (checked, naming the keyword);
    the iterable of requests to write first, if the job is one."""
    simulate = keywords.pop("simulate")
    if simulate is False:
        simulate = None
    else:
        from orchestrator.simulator.config import SimulatorConfig  # a simulated run only

        if simulate is True:
            simulate = SimulatorConfig()
        elif not isinstance(simulate, SimulatorConfig):
            raise UserError(f"simulate must be True, False or a SimulatorConfig, not {simulate!r}")
    for name in ("db", "results", "prices"):
        if keywords[name] is not None:
            keywords[name] = Path(keywords[name])
    schema = keywords["output_schema"]
    if is_model(schema):  # a pydantic model: the schema the API takes for it (the model checks outputs)
        keywords["output_schema"] = model_schema(schema)
    elif schema is not None:
        keywords["output_schema"] = dict(schema) if isinstance(schema, Mapping) else Path(schema)
    keywords["quiet"] = not keywords.pop("progress")
    requests: Iterable[Mapping[str, Any]] | None = None
    if isinstance(job, str | os.PathLike):
        path = Path(job)
    elif isinstance(job, Mapping) or not isinstance(job, Iterable):
        raise UserError("job must be a path or an iterable of request dicts")
    else:
        path, requests = Path(INPUT_NAME), job
    return RunOptions(job=path, simulate=simulate, python=True, **keywords), requests


async def arun_job(
    job: JobInput,
    *,
    simulate: bool | SimulatorConfig = False,
    base_url: str | None = None,
    db: str | os.PathLike[str] | None = None,
    results: str | os.PathLike[str] | None = None,
    allow_changed: bool = False,
    allow_endpoint_change: bool = False,
    retry_errored: bool = False,
    progress: bool = False,
    watch: int | None = None,
    prices: str | os.PathLike[str] | None = None,
    model: str | None = None,
    max_tokens: int | None = None,
    system: str | None = None,
    temperature: float | None = None,
    output_schema: str | os.PathLike[str] | Mapping[str, Any] | type | None = None,
    mode: str | None = None,
    concurrency: int | None = None,
    max_attempts: int | None = None,
    retry_max_seconds: float | None = None,
    checkpoint_interval: float | None = None,
    read_timeout: float | None = None,
    backoff_base: float | None = None,
    backoff_cap: float | None = None,
    recover: str | None = None,
    max_cost: float | None = None,
    headroom: float | None = None,
    cache: str | None = None,
    batch_size: int | None = None,
    poll_interval: float | None = None,
    deadline: str | None = None,
    rpm: float | None = None,
    itpm: float | None = None,
    otpm: float | None = None,
) -> JobResult:
    """``run_job`` inside the running event loop (Jupyter, asyncio code); the same parameters."""
    options, requests = _options(job, _keywords(dict(locals())))
    if requests is not None:
        options = _write_requests(requests, options)
    return _with_model((await run(options)).raise_for_stop(), output_schema)


def _keywords(given: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in given.items() if name != "job"}


def run_job(
    job: JobInput,
    *,
    simulate: bool | SimulatorConfig = False,
    base_url: str | None = None,
    db: str | os.PathLike[str] | None = None,
    results: str | os.PathLike[str] | None = None,
    allow_changed: bool = False,
    allow_endpoint_change: bool = False,
    retry_errored: bool = False,
    progress: bool = False,
    watch: int | None = None,
    prices: str | os.PathLike[str] | None = None,
    model: str | None = None,
    max_tokens: int | None = None,
    system: str | None = None,
    temperature: float | None = None,
    output_schema: str | os.PathLike[str] | Mapping[str, Any] | type | None = None,
    mode: str | None = None,
    concurrency: int | None = None,
    max_attempts: int | None = None,
    retry_max_seconds: float | None = None,
    checkpoint_interval: float | None = None,
    read_timeout: float | None = None,
    backoff_base: float | None = None,
    backoff_cap: float | None = None,
    recover: str | None = None,
    max_cost: float | None = None,
    headroom: float | None = None,
    cache: str | None = None,
    batch_size: int | None = None,
    poll_interval: float | None = None,
    deadline: str | None = None,
    rpm: float | None = None,
    itpm: float | None = None,
    otpm: float | None = None,
) -> JobResult:
    """Run a job to its end, as ``orchestrator run`` does, and return its summary and results.

    ``job``: a job file or spec (any kind ``orchestrator run`` takes), or an iterable of request
    dicts (the Batches shape ``{"custom_id", "params"}`` or prompt dicts ``{"prompt", ...}``),
    written, streamed, to ``input.jsonl`` in the job's results folder (named by a hash of the
    requests unless ``results`` or ``db`` is given): the same requests are the same job, resumed.

    Where: ``simulate`` (True, or a ``SimulatorConfig``: the built-in simulator, no API key) or
    ``base_url`` (default ``ANTHROPIC_BASE_URL`` or the real API). ``db`` (default
    RESULTS/job.sqlite), ``results`` (default results/<job name>, results/simulated/<job name> when
    simulated). ``allow_changed``: update a job whose job file changed. ``allow_endpoint_change``,
    ``retry_errored``: for this run only. ``progress``: show progress on stderr (default: nothing
    is written to stderr; notes go to the ``orchestrator`` logger). ``watch``: serve a live view of
    the run on this port of 127.0.0.1 (0: any free port; ``orchestrator watch``). ``prices``: a prices file.
    ``model``, ``max_tokens``, ``system``, ``temperature``: request defaults over a spec's
    ``[defaults]``. ``output_schema``: a JSON schema (a file, the schema as a dict, or a pydantic model
    class) every reply must fit (structured outputs; results carry the parsed JSON as ``output``;
    ``outputs()`` yields it, as model instances for a model; ``to_pandas()`` one column per field). The run settings
    (None: the spec's ``[run]``/``[limits]``, else the default)
    are listed below.

    Raises UserError (bad input or options, nothing sent; the message names the keyword),
    JobChangedError, JobAborted (stopped by the API or the spend cap), KeyboardInterrupt (stopped).
    Resumable: run it again, or ``open_job(db).resume()``.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:  # before anything is written
        raise UserError(
            "run_job cannot run inside a running event loop (Jupyter, asyncio code): "
            "use `await orchestrator.arun_job(...)` there"
        )
    options, requests = _options(job, _keywords(dict(locals())))
    if requests is not None:
        options = _write_requests(requests, options)
    return _with_model(_sync(lambda: _run_here(options), "run_job", "orchestrator.arun_job(...)"), output_schema)


def _with_model(result: JobResult, output_schema: Any) -> JobResult:
    """The result, remembering a pydantic model given as ``output_schema`` (its ``outputs()`` are instances)."""
    return dataclasses.replace(result, output_model=output_schema) if is_model(output_schema) else result


async def _run_here(options: RunOptions) -> JobResult:
    _main_thread("run_job")
    return (await run(options)).raise_for_stop()


def _settings_doc() -> str:
    lines = ["", "Run settings:"]
    for setting in TABLE:
        default = getattr(DEFAULTS, setting.name, None)
        shown = "" if default is None else f", default {default}"
        lines.append(f"    {setting.name}: {setting.help} ({setting.describe()}{shown})")
    return "\n".join(lines) + "\n"


run_job.__doc__ = (run_job.__doc__ or "") + _settings_doc()
arun_job.__doc__ = (arun_job.__doc__ or "") + _settings_doc()
Job.resume.__doc__ = (Job.resume.__doc__ or "") + _settings_doc()
Job.aresume.__doc__ = (Job.aresume.__doc__ or "") + _settings_doc()
