"""Running a job: from a job file (or the job stored in a database) to its results.

What ``orchestrator run``/``resume`` do, without any printing of their own: find the job's
store, refuse or apply a changed job file, merge the settings, build the SDK client (against the
built-in simulator or an endpoint), run the job, export its results. The command line and the
Python API are thin layers over ``run`` and ``dry_run``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from orchestrator.api.modelinfo import MODELS, model_limits
from orchestrator.batch.plan import Splitter
from orchestrator.client import open_client
from orchestrator.crash import crash_point
from orchestrator.endpoint import SIMULATOR, check_key, endpoint_of, has_key
from orchestrator.errors import JobAborted, JobChangedError, UserError
from orchestrator.jobs.read import read_requests
from orchestrator.jobs.spec import JobSpec, load_spec
from orchestrator.models import State
from orchestrator.options import RunOptions
from orchestrator.pricing import PriceTable, load_prices
from orchestrator.report.dryrun import DryRun, count_samples, plan
from orchestrator.results import export_results
from orchestrator.run.files import make_room, pool_size
from orchestrator.runtime.collector import fewer_collections
from orchestrator.runtime.progress import LoadProgress, Quiet, make_view
from orchestrator.settings import BATCH, DEFAULTS, JobSettings, merge
from orchestrator.store import (
    JobRow,
    Store,
    discard_interrupted_load,
    loading_marker,
    open_store,
    remove_store,
    runner_lock,
)
from orchestrator.when import DeadlineError, deadline_at

if TYPE_CHECKING:
    from orchestrator.runtime.summary import Summary

log = logging.getLogger("orchestrator")
log.addHandler(logging.NullHandler())  # silent unless the application configures logging (the command line does)
RESULTS_ROOT = Path("results")
SIMULATED_ROOT = RESULTS_ROOT / "simulated"  # simulated jobs never share a folder with real ones by default


@dataclass
class Outcome:
    summary: Summary
    db: Path
    results: Path  # results.jsonl
    written: int | None  # lines in it; None: not written (the job is not complete)


@asynccontextmanager
async def _new_store_kept_if_loaded(db: Path) -> AsyncIterator[Store]:
    """The job's store with its runner lock held (``JobRunning`` at once if another process runs
    it); one created here is removed again if no job was loaded into it (bad input)."""
    if loading_marker(db).exists():
        async with runner_lock(db):  # not while another process loads it
            if discard_interrupted_load(db):
                log.warning(f"note: {db}: its first load was interrupted; loading the job again")
    created = [path for path in (db.parent, db) if not path.exists()]
    loaded = True
    try:
        async with open_store(db) as store, runner_lock(db):  # refused: nothing loaded, nothing removed
            try:
                yield store
            except BaseException:
                if created:
                    with anyio.CancelScope(shield=True):
                        loaded = await store.job() is not None
                raise
    except BaseException:
        if not loaded:
            remove_store(db)
            if db.parent in created and not any(db.parent.iterdir()):
                db.parent.rmdir()
        raise


def _spec(options: RunOptions) -> JobSpec | None:
    """The job file's spec; None when it is gone and a database is named (the stored job runs)."""
    if options.job.exists() or options.db is None:
        return load_spec(options.job, options.request_defaults(), options.option)
    return None


def _places(options: RunOptions, spec: JobSpec | None) -> tuple[Path, Path]:
    """(results folder, database) of a job."""
    for flag, given in (("--results", options.results), ("--db", options.db)):
        if given is not None and str(given) == "-":
            raise UserError(
                f"{flag} - : a job's results are a folder and its database a file, not standard output; "
                "write the results to standard output with: orchestrator export DB --out -"
            )
    results = options.results or (spec.results if spec else None)
    if results is None:
        root = RESULTS_ROOT if options.simulate is None else SIMULATED_ROOT
        results = options.db.parent if options.db else root / (spec.name if spec else options.job.stem)
    return results, options.db or results / "job.sqlite"


async def _check_endpoint(store: Store, options: RunOptions, db: Path, endpoint: str) -> bool:
    """Refuse a run against another endpoint than the one the job's answers came from, unless
    allowed; whether the job holds simulated results after this run."""
    job = await store.job()
    if job is None:
        return endpoint == SIMULATOR
    answered = await store.has_answers()
    if job.endpoint not in (None, endpoint) and answered and not options.allow_endpoint_change:
        raise UserError(
            f"{db} holds results from {job.endpoint}, and this run is against {endpoint}: one endpoint's "
            f"results must not pass for another's. Resume it where it ran (orchestrator resume {db}), run it "
            f"as a new job ({options.option('results')} or {options.option('db')} elsewhere), or pass "
            f"{options.option('allow_endpoint_change')} to go on here "
            "(the results already there are kept"
            + (", and the job stays marked simulated)." if job.simulated else ").")
        )
    return endpoint == SIMULATOR or (answered and job.simulated)


async def _load(store: Store, options: RunOptions, spec: JobSpec, results: Path, db: Path) -> None:
    """Load the job file into the store: the first time, or when it changed and that is allowed."""
    job = await store.job()
    fingerprint = spec.fingerprint()
    if job is not None and job.fingerprint == fingerprint:
        return
    if job is not None and not options.allow_changed:
        raise JobChangedError(
            f"{options.job} has changed since the job in {db} was created from it. "
            f"Run it as a new job with {options.option('db')}/{options.option('results')} elsewhere, or pass "
            f"{options.option('allow_changed')} to update "
            "the job (changed and new requests run; unchanged results are kept)."
        )
    stored = {
        "options": options.to_json(),
        "job": str(options.job.resolve()),
        "results": str(results.resolve()),
        "run": spec.run,  # so that the job runs the same if its file is gone
        "limits": spec.limits,
    }
    progress = LoadProgress(quiet=options.quiet)
    added, changed = await store.load(spec.name, stored, fingerprint, read_requests(spec, bulk=True), progress)
    if job is not None:
        log.info(f"job updated: {added:,} new and {changed:,} changed requests")


async def run(options: RunOptions) -> Outcome:
    """Run a job to its end (or until stopped); raises JobAborted when the API stopped it."""
    importing = _engines_importing()
    spec = _spec(options)
    results, db = _places(options, spec)
    settings = merge(spec.run if spec else {}, spec.limits if spec else {}, options.given, options.option)
    if settings.deadline is not None and not db.exists():  # a new job: refused before anything is stored
        _deadline(settings.deadline, time.time(), options)
    prices = load_prices(options.prices)
    check_key(options.simulate is not None)
    endpoint = endpoint_of(options.simulate is not None, options.base_url)
    async with _new_store_kept_if_loaded(db) as store:
        crash_point("store")
        simulated = await _check_endpoint(store, options, db, endpoint)
        if spec is None:
            job = await store.job()
            if job is None:
                raise UserError(f"{options.job}: no such job file, and {db} holds no job")
            log.warning(f"note: {options.job} is gone; running the job as stored in {db}")
            settings = merge(job.spec.get("run", {}), job.spec.get("limits", {}), options.given, options.option)
        else:
            await _load(store, options, spec, results, db)
        await store.set_endpoint(endpoint, simulated)
        if options.retry_errored:
            log.info(f"{await store.retry_errored():,} errored requests run again")
        if settings.max_cost is not None:
            await _check_priced(store, prices, options)
        await _check_models(store, options.simulate.extra_models if options.simulate else frozenset())
        counts = await store.counts()
        done = counts[State.SUCCEEDED] + counts[State.ERRORED]
        in_flight = await store.batches(open_only=True)
        if in_flight and settings.mode != BATCH:
            raise UserError(
                f"{db} has {len(in_flight)} message batches in flight: resume it in batch mode "
                f"(orchestrator resume {db}, or --batch), or cancel them first (orchestrator cancel {db})"
            )
        if settings.deadline is None and await store.deadline() is not None:
            await store.drop_deadline()  # run without it now: status and report no longer judge by it
        if settings.mode != BATCH:
            pending = counts[State.PENDING] + counts[State.RUNNING]
            make_room(pool_size(settings.concurrency, pending), in_process_server=options.simulate is not None)
        await anyio.to_thread.run_sync(importing.join)
        from orchestrator.batch.engine import BatchJob  # imported by now
        from orchestrator.run.engine import Job

        async with (
            open_client(options.simulate, options.base_url, settings) as client,
            _watching(db, options.watch, prices),
        ):
            view = make_view(sum(counts.values()), done, quiet=options.quiet)
            with fewer_collections():
                if settings.mode == BATCH:
                    # What the batches leave (moved before a deadline, the few left) streams.
                    def streaming(store: Store, settings: JobSettings) -> Job:
                        return Job(store, client, settings, Quiet(), prices)

                    try:
                        summary = await BatchJob(store, client, settings, view, prices, stream=streaming).run()
                    except DeadlineError as exc:  # one given anew (not the stored one) that has passed
                        raise UserError(f"{options.option('deadline')}: {exc}") from None
                else:
                    summary = await Job(store, client, settings, view, prices).run()
        out = results / "results.jsonl"
        written = None
        if summary.complete:
            # Only at the job's end: a stop must be quick at any size (`orchestrator export` writes
            # what is done at any time).
            written, _ = await export_results(store, out)
    return Outcome(summary, db, out, written)


@asynccontextmanager
async def _watching(db: Path, port: int | None, prices: PriceTable) -> AsyncIterator[None]:
    """The live view of the run (``orchestrator watch``), served while the block runs, if asked for."""
    if port is None:
        yield
        return
    from orchestrator.watch import Watcher, serve_watch

    async with serve_watch(Watcher(db, prices), "127.0.0.1", port) as url:
        log.info(f"watch the run at {url}")
        yield


def _engines_importing() -> threading.Thread:
    """The run engines, and the SDK with them (about 1.5 CPU-s of module code), imported on a
    thread of their own while the job file loads: SQLite's thread inserts meanwhile, so a million
    lines reach their first request about a second sooner (``scripts/bench_load.py``). A daemon:
    a run refused for its input does not wait for it."""

    def load_modules() -> None:
        import orchestrator.batch.engine
        import orchestrator.run.engine  # noqa: F401

    thread = threading.Thread(target=load_modules, name="orchestrator-imports", daemon=True)
    thread.start()
    return thread


async def _check_models(store: Store, served: frozenset[str]) -> None:
    """A note, before anything is sent, on the models of the job this version does not know: a model
    newer than its table runs as usual (so it is not refused), a mistyped one gets the API's 404."""
    unknown = [model for model in await store.models() if model_limits(model) is None and model not in served]
    if unknown:
        log.warning(
            f"note: {', '.join(unknown)}: not a model this version of orchestrator knows (it knows "
            f"{', '.join(sorted(MODELS))} and their dated ids). If the API does not serve it either, each of its "
            "requests ends errored with the API's 404 (not_found_error), unbilled."
        )


async def _check_priced(store: Store, prices: PriceTable, options: RunOptions) -> None:
    """A spend cap needs a price for every model of the job."""
    unpriced = [model for model in await store.models() if prices.price(model) is None]
    if unpriced:
        raise UserError(
            f"{options.option('max_cost')} needs a price for every model, and {', '.join(unpriced)} has none: "
            f"give prices with {options.option('prices')} FILE (the format of orchestrator/data/prices.json), "
            "or run without a cap"
        )


def _deadline(text: str, now: float, options: RunOptions) -> float:
    """The Unix time of a deadline given now; UserError (naming the option) if it is not one, or passed."""
    try:
        return deadline_at(text, now)
    except DeadlineError as exc:
        raise UserError(f"{options.option('deadline')}: {exc}") from None


async def dry_run(options: RunOptions) -> tuple[DryRun, JobSettings]:
    """What a job would cost and take, sending no message and writing nothing."""
    if not options.job.exists():
        raise UserError(f"{options.job}: no such job file")
    spec = load_spec(options.job, options.request_defaults(), options.option)
    settings = merge(spec.run, spec.limits, options.given, options.option)
    now = time.time()
    deadline = None if settings.deadline is None else _deadline(settings.deadline, now, options)
    splitter = Splitter(settings.batch_size)
    models = plan(read_requests(spec), splitter)
    note: str | None = "no API key: input tokens are estimated (count_tokens needs one, or --simulate)"
    if options.simulate is not None or has_key():
        async with open_client(options.simulate, options.base_url, settings) as client:
            note = await count_samples(client, models)
    found = DryRun(models, counted=note is None, note=note, batches=splitter.batches, deadline=deadline, now=now)
    return found, settings


async def cancel(db: Path, base_url: str | None) -> list[str]:
    """Cancel the message batches of the job in ``db`` still in flight; the ids of those asked to cancel."""
    from orchestrator.batch.calls import Caller, CallFailed  # these import the SDK
    from orchestrator.batch.cancel import cancel_batches

    if not db.exists():
        raise UserError(f"{db}: no such job database")
    async with open_store(db, create=False) as store:
        if await store.job() is None:
            raise UserError(f"{db} holds no job")
        if not await store.batches(open_only=True):
            return []
        async with open_client(None, base_url, DEFAULTS) as client:
            try:
                return await cancel_batches(client, Caller(DEFAULTS), store)
            except CallFailed as exc:
                raise JobAborted(f"the batches could not be canceled: {exc}") from None


async def stored_job(db: Path) -> JobRow:
    """The job stored in ``db``: the command line it was created with (``resume`` runs it again),
    the endpoint of its last run."""
    if not db.exists():
        raise UserError(f"{db}: no such job database")
    async with open_store(db, create=False) as store:
        job = await store.job()
    if job is None:
        raise UserError(f"{db} holds no job")
    return job
