"""The commands: each reads its parsed options, calls the Python API (``orchestrator.library``) and
prints what it got."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio

from orchestrator.cli.output import print_status, print_summary
from orchestrator.cli.parser import run_options, setting_options, simulator_config
from orchestrator.library import Job, JobResult, arender_report, dry_run, out_path, report_databases, run


async def run_job(args: argparse.Namespace) -> int:
    options = run_options(args)
    if args.dry_run:
        print(await dry_run(options), end="")
        return 0
    return _ended(await run(options), options.quiet)


def _ended(result: JobResult, quiet: bool) -> int:
    """Print how a run ended; its exit status (or the error it stopped with, raised)."""
    if not quiet or result.error or result.stopped:
        print_summary(result)
    if result.error is not None:
        raise result.error
    if result.stopped and result.detached:
        print(
            f"Detached: {result.detached:,} message batches keep running on the server. "
            f"Resume with: orchestrator resume {result.db} (it polls them and collects their results), "
            f"or cancel them: orchestrator cancel {result.db}",
            file=sys.stderr,
        )
        return 130
    if result.stopped:
        print(f"Stopped. Resume with: orchestrator resume {result.db}", file=sys.stderr)
        return 130
    if not result.complete:
        print(f"Some requests did not finish. Run again with: orchestrator resume {result.db}", file=sys.stderr)
        return 1
    return 0


async def resume(args: argparse.Namespace) -> int:
    job = Job(Path(args.db), python=False)
    options = await job.resume_options(
        simulate=args.simulate or None,
        base_url=args.base_url,
        quiet=True if args.quiet else None,  # else as stored
        allow_endpoint_change=args.allow_endpoint_change,
        retry_errored=args.retry_errored,
        settings=setting_options(args),
    )
    return _ended(await run(options), options.quiet)


async def cancel_job(args: argparse.Namespace) -> int:
    db = Path(args.db)
    canceled = await Job(db, python=False).acancel(base_url=args.base_url)
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
    db = Path(args.db)
    async with Job(db, python=False).awatch(
        host=args.host, port=args.port, show_text=args.show_text, prices=args.prices
    ) as url:
        print(f"watching {db} at {url}  (Ctrl-C stops)", flush=True)
        await anyio.sleep_forever()
    return 0


async def status(args: argparse.Namespace) -> int:
    print_status(await Job(Path(args.db), python=False).astatus(prices=args.prices), args.json)
    return 0


STDOUT = "-"  # --out -: standard output, as in every Unix tool


async def export(args: argparse.Namespace) -> int:
    job = Job(Path(args.db), python=False)
    out = sys.stdout if args.out == STDOUT else args.out
    done = await job.aexport(out, format=args.format, prices=args.prices, excel_safe=args.excel_safe)
    if args.format == "csv":
        note = f" ({done.unfinished:,} of them unfinished)" if done.unfinished else ""
    else:
        note = f" ({done.unfinished:,} unfinished requests left out)" if done.unfinished else ""
    print(f"wrote {done.written:,} results to {done.path or 'standard output'}{note}", file=sys.stderr)
    return 0


async def report(args: argparse.Namespace) -> int:
    text = await arender_report(
        args.db, format=args.format, prices=args.prices, since=args.since, until=args.until, models=args.model
    )
    if args.out and args.out != STDOUT:
        out_path(args.out, *report_databases(args.db), named="--out").write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
