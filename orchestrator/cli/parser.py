"""The command line's grammar: the commands, around the run options of ``orchestrator.options``."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from orchestrator.options import (
    WATCH_PORT,
    add_endpoint_options,
    add_run_options,
    add_setting_options,
    add_simulator_options,
    port_number,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Concurrent, resumable batch runs against the Anthropic Messages API.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a job (JSONL, text file, folder of prompts, or .toml spec)")
    run.add_argument("job")
    add_run_options(run)
    resume = commands.add_parser("resume", help="continue the job stored in a database")
    resume.add_argument("db")
    resume.add_argument("--quiet", action="store_true")
    add_endpoint_options(resume, resume=True)
    add_setting_options(resume)  # given here, they override the job's stored settings (e.g. a higher --max-cost)
    cancel = commands.add_parser("cancel", help="cancel the message batches of a job in batch mode")
    cancel.add_argument("db")
    cancel.add_argument("--base-url", help="API base URL (default: the one the job ran with)")
    status = commands.add_parser("status", help="counts, tokens and ETA of a job")
    status.add_argument("db")
    status.add_argument("--json", action="store_true")
    status.add_argument("--prices", help="a prices file overriding the shipped one (for the cost shown)")
    export = commands.add_parser("export", help="rewrite results.jsonl from the database, or write a CSV")
    export.add_argument("db")
    export.add_argument(
        "--format",
        choices=["jsonl", "csv"],
        default="jsonl",
        help="jsonl: the Batches results shape (default); csv: one row per request, a table's columns joined "
        "with custom_id, result type, reply text, stop_reason, error, tokens and cost",
    )
    export.add_argument(
        "--out", help="a file, or - for standard output (default: results.jsonl or results.csv beside the database)"
    )
    export.add_argument(
        "--excel-safe",
        action="store_true",
        help="CSV for spreadsheets: cells that begin with = + - @ (or a tab or carriage return) get a leading ' "
        "so that a spreadsheet shows them as text instead of running them as formulas (plain numbers are kept)",
    )
    export.add_argument("--prices", help="a prices file overriding the shipped one (for the CSV's cost)")
    report = commands.add_parser("report", help="usage, cost, latency and throughput of jobs")
    report.add_argument("db", nargs="+", help="job databases, or folders of them (such as results/)")
    report.add_argument("--format", choices=["text", "json", "csv", "html"], default="text")
    report.add_argument("--out", help="write to this file instead of standard output (-: standard output)")
    report.add_argument("--prices", help="a prices file (JSON, as orchestrator/data/prices.json) to override with")
    report.add_argument("--since", type=_when, help="requests finished (attempts started) from this date-time")
    report.add_argument("--until", type=_when, help="... and before this one")
    report.add_argument("--model", action="append", default=[], help="only this model (id or family); repeatable")
    simulate = commands.add_parser("simulate", help="run the Anthropic-compatible simulator")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=port_number, default=8765)
    add_simulator_options(simulate)
    watch = commands.add_parser("watch", help="a live view of a job in the browser (reads its database only)")
    watch.add_argument("db")
    watch.add_argument("--port", type=port_number, default=WATCH_PORT, help=f"default {WATCH_PORT}; 0: any free port")
    watch.add_argument("--host", default="127.0.0.1", help="the address to serve on (default 127.0.0.1: this machine)")
    watch.add_argument("--show-text", action="store_true", help="show the latest prompts and replies too")
    watch.add_argument("--prices", help="a prices file overriding the shipped one (for the cost shown)")
    return parser


def _when(text: str) -> float:
    """A date or date-time (ISO 8601; UTC unless it says otherwise) as unix time."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date: {text!r} (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
