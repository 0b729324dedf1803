"""The command line's grammar: the commands and their options; a run's options become one
``RunOptions`` here (``run_options``), the simulator's one ``SimulatorConfig`` (``simulator_config``)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.api.modelinfo import MODELS
from orchestrator.options import TABLE, RunOptions
from orchestrator.settings import BATCH, DEFAULTS, LIMITS, SETTINGS
from orchestrator.simulator import BatchSettings, FaultKind, FaultRates, Limits, SimulatorConfig, Timing

STREAM_FAULTS = tuple(kind.value for kind in FaultKind)
BATCH_FAULTS = ("errored", "expired", "rate_limited", "overloaded")


LONGEST_REPLY = max(limits.max_output for limits in MODELS.values())
WATCH_PORT = 8766  # of ``orchestrator watch`` and ``run --watch`` (the simulator's is 8765)


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535 (0: any free port), not {text}")
    return port


def _probability(text: str, known: Sequence[str] = STREAM_FAULTS) -> tuple[str, float]:
    kind, sep, value = text.partition("=")
    if not sep or kind not in known:
        raise argparse.ArgumentTypeError(f"expected KIND=P with KIND one of {', '.join(known)}")
    probability = _number(value)
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


def _reply_range(text: str) -> tuple[int, int]:
    """A reply length range: no reply is longer than the largest max_tokens any model accepts."""
    bounds = _int_range(text)
    if bounds[1] > LONGEST_REPLY:
        raise argparse.ArgumentTypeError(
            f"a reply is at most {LONGEST_REPLY:,} tokens (the largest max_tokens a model accepts), not {bounds[1]:,}"
        )
    return bounds


def _number(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if math.isnan(number):
        raise argparse.ArgumentTypeError("not a number: nan")
    return number


def _positive(text: str) -> float:
    """A number above 0 ('inf' allowed)."""
    number = _number(text)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return number


def _seconds(text: str) -> float:
    """A finite number of seconds, at least 0."""
    number = _number(text)
    if not 0 <= number < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, at least 0, not {text}")
    return number


def _seconds_range(text: str) -> tuple[float, float | None]:
    """``S`` or ``MIN:MAX`` seconds (finite, at least 0, MIN <= MAX)."""
    low, sep, high = text.partition(":")
    bounds = _seconds(low), _seconds(high) if sep else None
    if bounds[1] is not None and bounds[1] < bounds[0]:
        raise argparse.ArgumentTypeError("expected MIN <= MAX")
    return bounds


def add_simulator_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("simulator")
    group.add_argument("--seed", type=int, default=0, help="seed of replies and faults (default 0)")
    group.add_argument("--speed", type=_positive, default=1.0, help="time factor; 'inf' for no delays (default 1)")
    group.add_argument("--ttft", type=_seconds, default=0.5, help="seconds to first token (default 0.5)")
    group.add_argument("--tps", type=_positive, default=60.0, help="output tokens per second per stream (default 60)")
    group.add_argument(
        "--reply-tokens", type=_reply_range, default=(20, 300), metavar="MIN:MAX", help="reply length range"
    )
    group.add_argument(
        "--tokens-per-delta",
        type=_int_range,
        default=SimulatorConfig.tokens_per_delta,
        metavar="N|MIN:MAX",
        help="tokens per content delta, drawn per delta (default %(default)s)",
    )
    group.add_argument("--sim-rpm", type=_positive, help="requests per minute the simulator allows")
    group.add_argument("--sim-itpm", type=_positive, help="input tokens per minute the simulator allows")
    group.add_argument("--sim-otpm", type=_positive, help="output tokens per minute the simulator allows")
    group.add_argument("--burst-seconds", type=_positive, default=1.0, help="bucket capacity in seconds of refill")
    group.add_argument("--spend-cap", action="store_true", help="answer every request with the spend-limit 429")
    group.add_argument(
        "--fault",
        type=_probability,
        action="append",
        default=[],
        metavar="KIND=P",
        help=f"inject a fault with probability P; KIND: {', '.join(k.value for k in FaultKind)}",
    )
    group.add_argument(
        "--refusals",
        type=lambda text: _probability(f"refusal={text}", ("refusal",))[1],
        default=0.0,
        metavar="P",
        help="share of conversations refused (stop_reason refusal, with stop_details), seeded (default 0)",
    )
    group.add_argument("--stall-seconds", type=_seconds, default=30.0, help="how long a stall lasts (default 30)")
    group.add_argument("--reject-key", action="append", default=[], help="an x-api-key to answer with 401")
    group.add_argument(
        "--sim-model",
        action="append",
        default=[],
        metavar="ID",
        help="a model id the simulator serves beside the known ones (any other gets the API's 404); repeatable",
    )
    group.add_argument(
        "--no-count-tokens",
        action="store_true",
        help="answer POST /v1/messages/count_tokens with 404, as some servers do",
    )
    group.add_argument(
        "--batch-seconds",
        type=_seconds_range,
        default=(BatchSettings.seconds, None),
        metavar="S|MIN:MAX",
        help="seconds a message batch takes to end, not scaled by --speed; MIN:MAX: each batch a seeded time "
        f"of its own in that range, its requests at seeded times within it (default {BatchSettings.seconds:g})",
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
        refusals=args.refusals,
        timing=Timing(ttft=args.ttft, tokens_per_second=args.tps, speed=args.speed),
        limits=Limits(
            rpm=args.sim_rpm,
            itpm=args.sim_itpm,
            otpm=args.sim_otpm,
            burst_seconds=args.burst_seconds,
            spend_cap=args.spend_cap,
        ),
        faults=FaultRates(stall_seconds=args.stall_seconds, **rates),
        batches=BatchSettings(
            seconds=args.batch_seconds[0], seconds_max=args.batch_seconds[1], **dict(args.batch_fault)
        ),
        reject_api_keys=frozenset(args.reject_key),
        count_tokens_endpoint=not args.no_count_tokens,
        extra_models=frozenset(args.sim_model),
    )


def add_endpoint_options(parser: argparse.ArgumentParser, resume: bool = False) -> None:
    """Where a run sends its requests, and what a run (or resume) may do once: options never stored."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--simulate", action="store_true", help="run against the built-in simulator (no API key)")
    where.add_argument(
        "--base-url",
        help="API base URL (default: "
        + ("the endpoint of the job's last run)" if resume else "ANTHROPIC_BASE_URL or the real API)"),
    )
    parser.add_argument(
        "--allow-endpoint-change",
        action="store_true",
        help="go on against another endpoint than the one the job's results came from (they are kept)",
    )
    parser.add_argument("--retry-errored", action="store_true", help="run the requests that ended errored again")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    add_endpoint_options(parser)
    parser.add_argument("--db", help="job database (default: RESULTS/job.sqlite)")
    parser.add_argument(
        "--results", help="results folder (default: results/<job name>; with --simulate, results/simulated/<job name>)"
    )
    parser.add_argument("--allow-changed", action="store_true", help="update a job whose job file has changed")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    parser.add_argument(
        "--dry-run", action="store_true", help="count requests, estimate tokens, cost and duration; send nothing"
    )
    parser.add_argument("--prices", help="a prices file overriding the shipped one (for the cost shown)")
    parser.add_argument(
        "--watch",
        type=port_number,
        nargs="?",
        const=WATCH_PORT,
        metavar="PORT",
        help=f"serve a live view of the run on 127.0.0.1:PORT (default {WATCH_PORT}; 0: any free port)",
    )
    add_setting_options(parser)
    group = parser.add_argument_group(
        "request defaults (these override a job spec's [defaults]; each line's own fields override these)"
    )
    group.add_argument("--model")
    group.add_argument("--max-tokens", type=int)
    group.add_argument("--system")
    group.add_argument("--temperature", type=float)
    group.add_argument(
        "--output-schema",
        metavar="FILE",
        help="a JSON schema every reply must fit (structured outputs): sets output_config.format, "
        "checked before anything is sent; results carry the parsed JSON as 'output'",
    )
    add_simulator_options(parser)


def add_setting_options(parser: argparse.ArgumentParser) -> None:
    """The run settings (``settings.SETTINGS``) and rate limits, for ``run`` and ``resume``."""
    group = parser.add_argument_group("running (these override a job spec's [run])")
    group.add_argument(
        "--batch",
        dest="mode",
        action="store_const",
        const=BATCH,
        help="run through the Message Batches API (half the price, results within 24 h): --mode batch",
    )
    for setting in SETTINGS:
        default = getattr(DEFAULTS, setting.name)
        group.add_argument(
            setting.flag,
            dest=setting.name,
            type=setting.kind,
            choices=setting.choices or None,
            help=f"{setting.help} (default {default})",
        )
    group = parser.add_argument_group(
        "rate limits (per minute, for every model; a spec's [limits] can set them per model). "
        "Limits not given are learned from the API's anthropic-ratelimit-* headers"
    )
    for setting in LIMITS:
        group.add_argument(setting.flag, dest=setting.name, type=float, help=setting.help)


def run_parser() -> argparse.ArgumentParser:
    """The ``run`` command's options alone: the Python API takes them as keyword arguments."""
    parser = argparse.ArgumentParser(prog="orchestrator run")
    add_run_options(parser)
    return parser


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


def run_options(args: argparse.Namespace) -> RunOptions:
    """The ``run`` command's options as RunOptions (checked: a bad value names its option)."""
    return RunOptions(
        job=Path(args.job),
        db=Path(args.db) if args.db else None,
        results=Path(args.results) if args.results else None,
        simulate=simulator_config(args) if args.simulate else None,
        base_url=args.base_url,
        allow_changed=args.allow_changed,
        allow_endpoint_change=args.allow_endpoint_change,
        retry_errored=args.retry_errored,
        quiet=args.quiet,
        watch=args.watch,
        prices=Path(args.prices) if args.prices else None,
        model=args.model,
        max_tokens=args.max_tokens,
        system=args.system,
        temperature=args.temperature,
        output_schema=Path(args.output_schema) if args.output_schema else None,
        **setting_options(args),
    )


def setting_options(args: argparse.Namespace) -> dict[str, Any]:
    """The run settings and limits given on the command line, by name (``add_setting_options``)."""
    return {setting.name: getattr(args, setting.name) for setting in TABLE}
