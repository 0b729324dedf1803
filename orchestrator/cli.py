"""Command-line parsing and wiring only; nothing imports this module."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import anthropic
import anyio
import httpx2

from orchestrator.dryrun import DryRun, count_samples, plan
from orchestrator.dryrun import render as render_dry_run
from orchestrator.engine import Job, Summary
from orchestrator.errors import JobAborted, JobChangedError, OrchestratorError, UserError
from orchestrator.export import export_results
from orchestrator.jobfile import JobSpec, load_spec, read_requests
from orchestrator.models import JobSettings, State
from orchestrator.pricing import load_prices
from orchestrator.progress import Snapshot, describe, make_view
from orchestrator.report import Filters, find_databases, job_report, render_csv, render_json, render_text
from orchestrator.report_html import render_html
from orchestrator.simulator import (
    BatchSettings,
    FaultKind,
    FaultRates,
    Limits,
    Simulator,
    SimulatorConfig,
    Timing,
    serve,
)
from orchestrator.store import open_store

RESULTS_ROOT = Path("results")
SETTINGS_DEFAULTS = JobSettings()
STREAM_FAULTS = tuple(kind.value for kind in FaultKind)
BATCH_FAULTS = ("errored", "expired", "rate_limited", "overloaded")


def _probability(text: str, known: Sequence[str] = STREAM_FAULTS) -> tuple[str, float]:
    kind, sep, value = text.partition("=")
    if not sep or kind not in known:
        raise argparse.ArgumentTypeError(f"expected KIND=P with KIND one of {', '.join(known)}")
    probability = float(value)
    if not 0 <= probability <= 1:
        raise argparse.ArgumentTypeError("a probability is between 0 and 1")
    return kind, probability


def _batch_probability(text: str) -> tuple[str, float]:
    return _probability(text, BATCH_FAULTS)


def _int_range(text: str) -> tuple[int, int]:
    """``N`` or ``MIN:MAX``, positive integers."""
    low, _, high = text.partition(":")
    try:
        bounds = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError("expected N or MIN:MAX") from None
    if not 1 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError("expected 1 <= MIN <= MAX")
    return bounds


def _add_simulator_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("simulator")
    group.add_argument("--seed", type=int, default=0, help="seed of replies and faults (default 0)")
    group.add_argument("--speed", type=float, default=1.0, help="time factor; 'inf' for no delays (default 1)")
    group.add_argument("--ttft", type=float, default=0.5, help="seconds to first token (default 0.5)")
    group.add_argument("--tps", type=float, default=60.0, help="output tokens per second per stream (default 60)")
    group.add_argument(
        "--reply-tokens", type=_int_range, default=(20, 300), metavar="MIN:MAX", help="reply length range"
    )
    group.add_argument(
        "--tokens-per-delta", type=_int_range, default=(1, 1), metavar="N|MIN:MAX", help="tokens per delta (default 1)"
    )
    group.add_argument("--sim-rpm", type=float, help="requests per minute the simulator allows")
    group.add_argument("--sim-itpm", type=float, help="input tokens per minute the simulator allows")
    group.add_argument("--sim-otpm", type=float, help="output tokens per minute the simulator allows")
    group.add_argument("--burst-seconds", type=float, default=1.0, help="bucket capacity in seconds of refill")
    group.add_argument("--spend-cap", action="store_true", help="answer every request with the spend-limit 429")
    group.add_argument(
        "--fault",
        type=_probability,
        action="append",
        default=[],
        metavar="KIND=P",
        help=f"inject a fault with probability P; KIND: {', '.join(k.value for k in FaultKind)}",
    )
    group.add_argument("--stall-seconds", type=float, default=30.0)
    group.add_argument("--reject-key", action="append", default=[], help="an x-api-key to answer with 401")
    group.add_argument(
        "--batch-seconds",
        type=float,
        default=BatchSettings.seconds,
        help=f"seconds a message batch takes to end, not scaled by --speed (default {BatchSettings.seconds:g})",
    )
    group.add_argument(
        "--batch-fault",
        type=_batch_probability,
        action="append",
        default=[],
        metavar="KIND=P",
        help="batch requests errored/expired, or batch endpoints answering 429 (rate_limited) or 529 (overloaded), "
        "with probability P",
    )


def simulator_config(args: argparse.Namespace) -> SimulatorConfig:
    rates = dict(args.fault)
    return SimulatorConfig(
        seed=args.seed,
        reply_min=args.reply_tokens[0],
        reply_max=args.reply_tokens[1],
        tokens_per_delta=args.tokens_per_delta,
        timing=Timing(ttft=args.ttft, tokens_per_second=args.tps, speed=args.speed),
        limits=Limits(
            rpm=args.sim_rpm,
            itpm=args.sim_itpm,
            otpm=args.sim_otpm,
            burst_seconds=args.burst_seconds,
            spend_cap=args.spend_cap,
        ),
        faults=FaultRates(stall_seconds=args.stall_seconds, **rates),
        batches=BatchSettings(seconds=args.batch_seconds, **dict(args.batch_fault)),
        reject_api_keys=frozenset(args.reject_key),
    )


async def _simulate(args: argparse.Namespace) -> int:
    simulator = Simulator(simulator_config(args))
    async with serve(simulator, args.host, args.port) as url:
        print(f"simulator listening on {url}  (stats: {url}/_simulator/stats; Ctrl-C stops)", flush=True)
        await anyio.sleep_forever()
    return 0


# -- run / resume ------------------------------------------------------------------------


def _settings(args: argparse.Namespace, spec_run: dict[str, Any], spec_limits: dict[str, Any]) -> JobSettings:
    """Built-in defaults, then the job spec's [run] and [limits] tables, then command line options."""
    values = {**SETTINGS_DEFAULTS.__dict__, **spec_run, "limits": dict(spec_limits)}
    for name in (
        "concurrency",
        "max_attempts",
        "retry_max_seconds",
        "checkpoint_interval",
        "read_timeout",
        "recover",
        "headroom",
    ):
        given = getattr(args, name)
        if given is not None:
            values[name] = given
    for name in ("rpm", "itpm", "otpm"):
        given = getattr(args, name)
        if given is not None:
            values["limits"][name] = given
    settings = JobSettings(**values)
    if settings.concurrency < 1 or settings.max_attempts < 1 or settings.checkpoint_interval <= 0:
        raise UserError("--concurrency and --max-attempts must be at least 1, --checkpoint-interval above 0")
    if not 0 < settings.headroom <= 1:
        raise UserError("--limit-headroom must be above 0 and at most 1")
    if settings.recover not in ("auto", "prefill", "continue", "restart"):
        raise UserError("recover must be one of auto, prefill, continue, restart")
    return settings


def _request_defaults(args: argparse.Namespace) -> dict[str, Any]:
    given = {
        "model": args.model,
        "max_tokens": args.max_tokens,
        "system": args.system,
        "temperature": args.temperature,
    }
    return {key: value for key, value in given.items() if value is not None}


@asynccontextmanager
async def _client(args: argparse.Namespace, settings: JobSettings) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The SDK client: against the built-in simulator with --simulate, else the real API."""
    limits = httpx2.Limits(max_connections=settings.concurrency + 8, max_keepalive_connections=settings.concurrency)
    timeout = httpx2.Timeout(settings.read_timeout, connect=10.0)
    if args.simulate:
        async with serve(Simulator(simulator_config(args))) as url:
            http = anthropic.DefaultAsyncHttpxClient(limits=limits, timeout=timeout)
            async with anthropic.AsyncAnthropic(
                base_url=url, api_key="sk-simulator", max_retries=0, http_client=http
            ) as client:
                yield client
        return
    if not os.environ.get("ANTHROPIC_API_KEY") and not os.environ.get("ANTHROPIC_AUTH_TOKEN"):
        raise UserError("no API key: set ANTHROPIC_API_KEY, or run against the built-in simulator with --simulate")
    http = anthropic.DefaultAsyncHttpxClient(limits=limits, timeout=timeout)
    async with anthropic.AsyncAnthropic(base_url=args.base_url, max_retries=0, http_client=http) as client:
        yield client


def _print_summary(summary: Summary, db: Path, out: Path, written: int) -> None:
    counts = summary.counts
    billed = summary.billed
    print(
        f"{counts[State.SUCCEEDED]:,} succeeded, {counts[State.ERRORED]:,} errored, "
        f"{counts[State.PENDING] + counts[State.RUNNING]:,} not done, in {summary.elapsed:.1f} s; "
        f"billed {billed.input_tokens:,} input and {billed.output_tokens:,} output tokens over all attempts",
        file=sys.stderr,
    )
    if summary.pauses or summary.cuts:
        print(
            f"rate limits: {summary.pauses:,} pool-wide pauses after a 429, concurrency cut {summary.cuts:,} times "
            "after overloads",
            file=sys.stderr,
        )
    print(f"results: {out} ({written:,} lines); database: {db}", file=sys.stderr)


async def _run(args: argparse.Namespace) -> int:
    job_path = Path(args.job)
    prices_path = Path(args.prices) if args.prices else None
    spec = load_spec(job_path, _request_defaults(args)) if job_path.exists() or args.db is None else None
    results_dir = Path(args.results) if args.results else (spec.results if spec and spec.results else None)
    if results_dir is None:
        results_dir = Path(args.db).parent if args.db else RESULTS_ROOT / (spec.name if spec else job_path.stem)
    db_path = Path(args.db) if args.db else results_dir / "job.sqlite"
    settings = _settings(args, spec.run if spec else {}, spec.limits if spec else {})
    if args.dry_run:
        if spec is None:
            raise UserError(f"{job_path}: no such job file")
        return await _dry_run(args, spec, settings, prices_path)
    async with open_store(db_path) as store:
        job = await store.job()
        if spec is None:
            if job is None:
                raise UserError(f"{job_path}: no such job file, and {db_path} holds no job")
            print(f"note: {job_path} is gone; running the job as stored in {db_path}", file=sys.stderr)
            settings = _settings(args, job.spec.get("run", {}), job.spec.get("limits", {}))
        else:
            fingerprint = spec.fingerprint()
            if job is not None and job.fingerprint != fingerprint and not args.allow_changed:
                raise JobChangedError(
                    f"{job_path} has changed since the job in {db_path} was created from it. "
                    "Run it as a new job with --db/--results elsewhere, or pass --allow-changed to update "
                    "the job (changed and new requests run; unchanged results are kept)."
                )
            if job is None or job.fingerprint != fingerprint:
                argv = [arg if arg != args.job else str(job_path.resolve()) for arg in args.argv]
                stored = {
                    "argv": argv,
                    "job": str(job_path.resolve()),
                    "results": str(results_dir.resolve()),
                    "run": spec.run,  # so that the job runs the same if its file is gone
                    "limits": spec.limits,
                }
                added, changed = await store.load(spec.name, stored, fingerprint, read_requests(spec))
                if job is not None:
                    print(f"job updated: {added:,} new and {changed:,} changed requests", file=sys.stderr)
        counts = await store.counts()
        total = sum(counts.values())
        done = counts[State.SUCCEEDED] + counts[State.ERRORED]
        async with _client(args, settings) as client:
            view = make_view(total, done, quiet=args.quiet)
            summary = await Job(store, client, settings, view, load_prices(prices_path)).run()
        out = results_dir / "results.jsonl"
        written, _ = await export_results(store, out)
    if not args.quiet or summary.aborted or summary.stopped:
        _print_summary(summary, db_path, out, written)
    if summary.aborted is not None:
        error = summary.aborted.error.get("error", {})
        raise JobAborted(
            f"the job stopped: {summary.aborted.reason} ({error.get('type')}: {error.get('message')}). "
            f"Fix the cause, then resume with: orchestrator resume {db_path}"
        )
    if summary.stopped:
        print(f"Stopped. Resume with: orchestrator resume {db_path}", file=sys.stderr)
        return 130
    if not summary.complete:
        print(f"Some requests did not finish. Run again with: orchestrator resume {db_path}", file=sys.stderr)
        return 1
    return 0


async def _dry_run(args: argparse.Namespace, spec: JobSpec, settings: JobSettings, prices_path: Path | None) -> int:
    models = plan(read_requests(spec))
    note: str | None = "no API key: input tokens are estimated (count_tokens needs one, or --simulate)"
    if args.simulate or os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN"):
        async with _client(args, settings) as client:
            note = await count_samples(client, models)
    result = DryRun(models=models, counted=note is None, note=note)
    print(render_dry_run(result, load_prices(prices_path), settings.limits, args.job), end="")
    return 0


async def _stored_argv(db: Path) -> list[str]:
    if not db.exists():
        raise UserError(f"{db}: no such job database")
    async with open_store(db, create=False) as store:
        job = await store.job()
    if job is None:
        raise UserError(f"{db} holds no job")
    argv: list[str] = job.spec["argv"]
    return argv


# -- status / export -----------------------------------------------------------------------


async def _status(args: argparse.Namespace) -> int:
    db = Path(args.db)
    if not db.exists():
        raise UserError(f"{db}: no such job database")
    async with open_store(db, create=False) as store:
        job = await store.job()
        counts = await store.counts()
        billed = await store.billed()
        first = await store.first_start()
    if job is None:
        raise UserError(f"{db} holds no job")
    total = sum(counts.values())
    done = counts[State.SUCCEEDED] + counts[State.ERRORED]
    elapsed = (job.updated_at - first) if first else 0.0
    snapshot = Snapshot(
        done=done,
        total=total,
        in_flight=counts[State.RUNNING],
        failed=counts[State.ERRORED],
        retries=0,
        output_tokens=billed.output_tokens,
        elapsed=elapsed,
        done_this_run=done,
    )
    if args.json:
        print(json.dumps({"job": job.name, "counts": counts, "billed": billed.as_dict(), "elapsed": elapsed}))
        return 0
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created_at))
    print(f"job {job.name}  ({db}, created {created})")
    print("  " + ", ".join(f"{state}: {counts[state]:,}" for state in State))
    print(f"  billed: {billed.input_tokens:,} input, {billed.output_tokens:,} output tokens")
    print(
        f"  elapsed {elapsed:.1f} s, last update {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(job.updated_at))}"
    )
    print("  " + describe(snapshot))
    return 0


async def _export(args: argparse.Namespace) -> int:
    db = Path(args.db)
    if not db.exists():
        raise UserError(f"{db}: no such job database")
    out = Path(args.out) if args.out else db.parent / "results.jsonl"
    async with open_store(db, create=False) as store:
        written, unfinished = await export_results(store, out)
    note = f" ({unfinished:,} unfinished requests left out)" if unfinished else ""
    print(f"wrote {written:,} results to {out}{note}", file=sys.stderr)
    return 0


def _when(text: str) -> float:
    """A date or date-time (ISO 8601; UTC unless it says otherwise) as unix time."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


async def _report(args: argparse.Namespace) -> int:
    prices = load_prices(Path(args.prices) if args.prices else None)
    databases = find_databases([Path(p) for p in args.db])
    if not databases:
        raise UserError(f"no job database found in {', '.join(args.db)}")
    filters = Filters(since=args.since, until=args.until, models=tuple(args.model))
    reports = []
    for db in databases:
        if not db.exists():
            raise UserError(f"{db}: no such job database")
        async with open_store(db, create=False) as store:
            reports.append(await job_report(store, db, prices, filters))
    if args.format == "json":
        text = render_json(reports, prices)
    elif args.format == "csv":
        text = render_csv(reports)
    elif args.format == "html":
        text = render_html(reports, prices)
    else:
        text = render_text(reports, prices)
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


# -- parser --------------------------------------------------------------------------------


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--simulate", action="store_true", help="run against the built-in simulator (no API key)")
    parser.add_argument("--base-url", help="API base URL (default: ANTHROPIC_BASE_URL or the real API)")
    parser.add_argument("--db", help="job database (default: RESULTS/job.sqlite)")
    parser.add_argument("--results", help="results folder (default: results/<job name>)")
    parser.add_argument("--allow-changed", action="store_true", help="update a job whose job file has changed")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument(
        "--dry-run", action="store_true", help="count requests, estimate tokens, cost and duration; send nothing"
    )
    parser.add_argument("--prices", help="a prices file overriding the shipped one (for the cost shown)")
    group = parser.add_argument_group("running")
    group.add_argument("--concurrency", type=int, help=f"streams at once (default {SETTINGS_DEFAULTS.concurrency})")
    group.add_argument("--max-attempts", type=int, help=f"per request (default {SETTINGS_DEFAULTS.max_attempts})")
    group.add_argument("--retry-max-seconds", type=float, help="stop retrying a request after this long")
    group.add_argument(
        "--checkpoint-interval", type=float, help=f"seconds (default {SETTINGS_DEFAULTS.checkpoint_interval})"
    )
    group.add_argument("--read-timeout", type=float, help="seconds without a byte before a stream counts as stalled")
    group.add_argument(
        "--recover",
        choices=["auto", "prefill", "continue", "restart"],
        help="how a broken stream goes on: prefill (exact), continue (4.6+ models, not exact), restart; "
        "auto (default): prefill where the model accepts it, else restart",
    )
    group = parser.add_argument_group(
        "rate limits (per minute, for every model; a spec's [limits] can set them per model). "
        "Limits not given are learned from the API's anthropic-ratelimit-* headers"
    )
    group.add_argument("--rpm", type=float, help="requests per minute")
    group.add_argument("--itpm", type=float, help="input tokens per minute")
    group.add_argument("--otpm", type=float, help="output tokens per minute")
    group.add_argument(
        "--limit-headroom", dest="headroom", type=float, help="share of each limit to aim for (default 0.97)"
    )
    group = parser.add_argument_group("request defaults (a job spec's [defaults] and each line override these)")
    group.add_argument("--model")
    group.add_argument("--max-tokens", type=int)
    group.add_argument("--system")
    group.add_argument("--temperature", type=float)
    _add_simulator_options(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Concurrent, resumable batch runs against the Anthropic Messages API.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a job (JSONL, text file, folder of prompts, or .toml spec)")
    run.add_argument("job")
    _add_run_options(run)
    resume = commands.add_parser("resume", help="continue the job stored in a database")
    resume.add_argument("db")
    resume.add_argument("--quiet", action="store_true")
    status = commands.add_parser("status", help="counts, tokens and ETA of a job")
    status.add_argument("db")
    status.add_argument("--json", action="store_true")
    export = commands.add_parser("export", help="rewrite results.jsonl from the database")
    export.add_argument("db")
    export.add_argument("--out")
    report = commands.add_parser("report", help="usage, cost, latency and throughput of jobs")
    report.add_argument("db", nargs="+", help="job databases, or folders of them (such as results/)")
    report.add_argument("--format", choices=["text", "json", "csv", "html"], default="text")
    report.add_argument("--out", help="write to this file instead of standard output")
    report.add_argument("--prices", help="a prices file (JSON, as orchestrator/data/prices.json) to override with")
    report.add_argument("--since", type=_when, help="requests finished (attempts started) from this date-time")
    report.add_argument("--until", type=_when, help="... and before this one")
    report.add_argument("--model", action="append", default=[], help="only this model (id or family); repeatable")
    simulate = commands.add_parser("simulate", help="run the Anthropic-compatible simulator")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8765)
    _add_simulator_options(simulate)
    return parser


async def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "resume":
        argv = await _stored_argv(Path(args.db))
        resumed = build_parser().parse_args(argv)
        resumed.argv = argv
        resumed.db = args.db
        resumed.quiet = resumed.quiet or args.quiet
        return await _run(resumed)
    handlers = {"run": _run, "status": _status, "export": _export, "report": _report, "simulate": _simulate}
    return await handlers[args.command](args)


async def run_command(argv: Sequence[str]) -> int:
    """Run one command line in the current event loop; return its exit status."""
    args = build_parser().parse_args(argv)
    args.argv = list(argv)
    speed = getattr(args, "speed", 1.0)
    if math.isnan(speed) or speed <= 0:
        print("orchestrator: --speed must be positive (or inf)", file=sys.stderr)
        return 2
    try:
        return await _dispatch(args)
    except OrchestratorError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return exc.exit_status


def main(argv: Sequence[str] | None = None) -> NoReturn:
    try:
        status = anyio.run(run_command, list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        status = 130
    # Everything of ours is closed by now. Tearing down the SDK's module graph takes the
    # interpreter 0.7-1.7 s, which would delay every exit (Ctrl-C included): skip it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
