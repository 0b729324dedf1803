"""The commands: each reads its parsed options, calls the library and prints what it got."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import anyio

from orchestrator.cli.output import print_status, print_summary
from orchestrator.cli.parser import build_parser
from orchestrator.errors import UserError
from orchestrator.job import SIMULATOR, aborted_error, cancel, dry_run, run, stored_job
from orchestrator.options import run_options, simulator_config
from orchestrator.pricing import load_prices
from orchestrator.report.dryrun import render as render_dry_run
from orchestrator.report.export import export_csv, export_results, output_counts
from orchestrator.report.figures import Filters, find_databases, job_report, render_csv, render_json, render_text
from orchestrator.report.html import render_html
from orchestrator.settings import LIMITS, SETTINGS
from orchestrator.store import open_reader


async def run_job(args: argparse.Namespace) -> int:
    options = run_options(args)
    if args.dry_run:
        result, settings = await dry_run(options)
        print(render_dry_run(result, load_prices(options.prices), settings.limits, args.job), end="")
        return 0
    outcome = await run(options)
    summary = outcome.summary
    if not args.quiet or summary.aborted or summary.stopped:
        print_summary(summary, outcome.db, outcome.results, outcome.written)
    error = aborted_error(outcome)
    if error is not None:
        raise error
    if summary.stopped and summary.detached:
        print(
            f"Detached: {summary.detached:,} message batches keep running on the server. "
            f"Resume with: orchestrator resume {outcome.db} (it polls them and collects their results), "
            f"or cancel them: orchestrator cancel {outcome.db}",
            file=sys.stderr,
        )
        return 130
    if summary.stopped:
        print(f"Stopped. Resume with: orchestrator resume {outcome.db}", file=sys.stderr)
        return 130
    if not summary.complete:
        print(f"Some requests did not finish. Run again with: orchestrator resume {outcome.db}", file=sys.stderr)
        return 1
    return 0


async def resume(args: argparse.Namespace) -> int:
    job = await stored_job(Path(args.db))
    argv = job.spec["argv"]
    resumed = build_parser().parse_args(argv)
    resumed.argv = argv
    resumed.db = args.db
    resumed.quiet = resumed.quiet or args.quiet
    resumed.allow_endpoint_change = args.allow_endpoint_change
    resumed.retry_errored = args.retry_errored
    # The endpoint given, else the one of the job's last run (not necessarily its first's).
    if args.simulate or args.base_url:
        resumed.simulate, resumed.base_url = args.simulate, args.base_url
    elif job.endpoint is not None:
        resumed.simulate = job.endpoint == SIMULATOR
        resumed.base_url = None if resumed.simulate else job.endpoint
    for setting in (*SETTINGS, *LIMITS):
        if getattr(args, setting.name) is not None:
            setattr(resumed, setting.name, getattr(args, setting.name))
    return await run_job(resumed)


async def cancel_job(args: argparse.Namespace) -> int:
    db = Path(args.db)
    base_url = args.base_url
    if base_url is None:  # the endpoint the job ran against
        job = await stored_job(db)
        stored = build_parser().parse_args(job.spec["argv"])
        base_url = job.endpoint or (SIMULATOR if stored.simulate else stored.base_url)
        if base_url == SIMULATOR:
            raise UserError(
                f"{db} ran against the built-in simulator (--simulate): its batches ended with that process; "
                "give --base-url to cancel them on a server"
            )
    canceled = await cancel(db, base_url)
    if not canceled:
        print(f"{db}: no message batches in progress", file=sys.stderr)
        return 0
    print(
        f"canceling {len(canceled):,} message batches ({', '.join(canceled)}); what they finished is kept and the "
        f"rest stays pending: orchestrator resume {db} collects their results",
        file=sys.stderr,
    )
    return 0


async def simulate(args: argparse.Namespace) -> int:
    from orchestrator.simulator import Simulator, serve

    simulator = Simulator(simulator_config(args))
    async with serve(simulator, args.host, args.port) as url:
        print(f"simulator listening on {url}  (stats: {url}/_simulator/stats; Ctrl-C stops)", flush=True)
        await anyio.sleep_forever()
    return 0


async def watch(args: argparse.Namespace) -> int:
    from orchestrator.watch import Watcher, serve_watch

    db = Path(args.db)
    if not db.exists():
        raise UserError(f"{db}: no such job database")
    watcher = Watcher(db, load_prices(Path(args.prices) if args.prices else None), show_text=args.show_text)
    async with serve_watch(watcher, args.host, args.port) as url:
        print(f"watching {db} at {url}  (Ctrl-C stops)", flush=True)
        await anyio.sleep_forever()
    return 0


async def status(args: argparse.Namespace) -> int:
    db = Path(args.db)
    if not db.exists():
        raise UserError(f"{db}: no such job database")
    async with open_reader(db) as store:
        job = await store.job()
        counts = await store.counts()
        billed = await store.billed()
        by_tier = await store.billed_by_tier(None, None)
        first = await store.first_start()
        batches = await store.batches()
        outputs = sum((await output_counts(store)).values(), Counter[str]())
    if job is None:
        raise UserError(f"{db} holds no job")
    cost = load_prices(Path(args.prices) if args.prices else None).total(by_tier)
    print_status(db, job, counts, billed, cost, first, batches, args.json, outputs)
    return 0


STDOUT = "-"  # --out -: standard output, as in every Unix tool


def _out_path(out: str, *databases: Path) -> Path:
    """Where ``--out`` writes: refused if it is a job database read (or a folder)."""
    path = Path(out)
    if path.exists() and any(path.resolve() == db.resolve() for db in databases):
        raise UserError(f"--out {out} is the job's database: choose another file (or --out - for standard output)")
    if path.is_dir():
        raise UserError(f"--out {out} is a folder: name a file in it (or --out - for standard output)")
    return path


async def export(args: argparse.Namespace) -> int:
    db = Path(args.db)
    if not db.exists():
        raise UserError(f"{db}: no such job database")
    if args.excel_safe and args.format != "csv":
        raise UserError("--excel-safe is for --format csv (a spreadsheet reads CSV; JSONL keeps the text as it is)")
    out = (
        sys.stdout
        if args.out == STDOUT
        else _out_path(args.out, db)
        if args.out
        else db.parent / f"results.{args.format}"
    )
    async with open_reader(db) as store:
        if args.format == "csv":
            prices = load_prices(Path(args.prices) if args.prices else None)
            written, unfinished = await export_csv(store, out, prices, excel_safe=args.excel_safe)
            note = f" ({unfinished:,} of them unfinished)" if unfinished else ""
        else:
            written, unfinished = await export_results(store, out)
            note = f" ({unfinished:,} unfinished requests left out)" if unfinished else ""
    where = "standard output" if out is sys.stdout else out
    print(f"wrote {written:,} results to {where}{note}", file=sys.stderr)
    return 0


async def report(args: argparse.Namespace) -> int:
    prices = load_prices(Path(args.prices) if args.prices else None)
    databases = find_databases([Path(p) for p in args.db])
    if not databases:
        raise UserError(f"no job database found in {', '.join(args.db)}")
    filters = Filters(since=args.since, until=args.until, models=tuple(args.model))
    reports = []
    for db in databases:
        if not db.exists():
            raise UserError(f"{db}: no such job database")
        async with open_reader(db) as store:
            reports.append(await job_report(store, db, prices, filters))
    if args.format == "json":
        text = render_json(reports, prices)
    elif args.format == "csv":
        text = render_csv(reports)
    elif args.format == "html":
        text = render_html(reports, prices)
    else:
        text = render_text(reports, prices)
    if args.out and args.out != STDOUT:
        _out_path(args.out, *databases).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
