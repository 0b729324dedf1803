"""The Python API: ``run_job`` / ``arun_job`` run a job from code exactly as ``orchestrator run`` does.

The keyword arguments are the ``run`` command's long options with underscores (``base_url``,
``simulate``, ``concurrency``, ``max_cost``, ``results``, ...). They are checked here (names against
the command's options, run settings through ``settings.SETTINGS``) and become that command line,
which then takes the command's own path (``options.run_options`` -> ``job.run``): the same
store, the same checks and messages, and a stored command line that ``orchestrator resume DB``
runs again. An iterable of request dicts is first written, streamed, to ``input.jsonl`` in the
job's results folder (named by a hash of its content unless ``results`` or ``db`` is given), so
the same iterable is the same job and a rerun resumes it.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio

from orchestrator.errors import JobChangedError, UserError
from orchestrator.job import RESULTS_ROOT, SIMULATED_ROOT, aborted_error, run
from orchestrator.models import State
from orchestrator.options import run_options, run_parser
from orchestrator.pricing import load_prices
from orchestrator.report.export import result_line
from orchestrator.settings import LIMITS, SETTINGS
from orchestrator.store import open_store
from orchestrator.store.queries import read_results

JobInput = str | os.PathLike[str] | Iterable[Mapping[str, Any]]
INPUT_NAME = "input.jsonl"  # where an iterable of requests is written, in the job's results folder


@dataclass(frozen=True)
class JobResult:
    """A finished run: its counts, tokens and cost, and ``results()`` read back from the store."""

    db: Path
    results_file: Path  # results.jsonl
    counts: dict[str, int]  # requests by state: pending, running, succeeded, errored
    billed: dict[str, int]  # tokens billed over every attempt of the job (input_tokens, output_tokens, ...)
    cost: Decimal | None  # USD billed by the whole job; None if a model is unpriced
    elapsed: float  # seconds of this run

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
        shape plus billed_usage, attempts, timing), read from the store one at a time."""
        for row in read_results(self.db):
            if row["state"] in (State.SUCCEEDED, State.ERRORED):
                yield result_line(row)


def _options() -> dict[str, argparse.Action]:
    """The ``run`` command's long options by their Python names."""
    found = {}
    for action in run_parser()._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag not in ("--help", "--dry-run"):
                found[flag[2:].replace("-", "_")] = action
    return found


def _argv(options: Mapping[str, Any]) -> list[str]:
    """The ``run`` command line's options for the API's keyword arguments; UserError naming a bad one."""
    known = _options()
    settings = {setting.flag: setting for setting in (*SETTINGS, *LIMITS)}
    if options.get("simulate") and options.get("base_url"):
        raise UserError("give simulate or base_url, not both")
    argv: list[str] = []
    for name, value in options.items():
        action = known.get(name) if name != "dry_run" else None
        if action is None:
            raise UserError(f"unknown option {name!r} (the options are run's long options: {', '.join(sorted(known))})")
        flag = f"--{name.replace('_', '-')}"
        if value is None or value is False:
            continue
        if action.nargs == 0:  # a switch
            if value is not True:
                raise UserError(f"{flag} is a switch: pass True or False, not {value!r}")
            argv.append(flag)
            continue
        values = list(value) if action.default == [] and isinstance(value, list | tuple) else [value]
        for item in values:
            setting = settings.get(flag)
            try:
                if setting is not None:
                    setting.check(item)
                elif callable(action.type):
                    action.type(str(item))
            except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
                raise UserError(f"{flag} {exc}" if setting else f"{flag}: invalid value {item!r} ({exc})") from None
            if action.choices is not None and item not in action.choices:
                raise UserError(f"{flag} must be one of {', '.join(map(str, action.choices))}, not {item!r}")
            argv += [flag, str(item)]
    return argv


def _write_requests(requests: Iterable[Mapping[str, Any]], options: Mapping[str, Any]) -> tuple[Path, dict[str, Any]]:
    """Write an iterable of request dicts to the job's ``input.jsonl`` (streamed); the job file and
    the options with the results folder set."""
    given = options.get("results") or (Path(options["db"]).parent if options.get("db") else None)
    root = Path(given) if given else SIMULATED_ROOT if options.get("simulate") else RESULTS_ROOT
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
        folder = Path(given) if given else root / f"job-{digest.hexdigest()[:12]}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / INPUT_NAME
        if target.exists() and target.read_bytes() != partial.read_bytes() and not options.get("allow_changed"):
            raise JobChangedError(
                f"these requests differ from the job in {folder} (written to {target} by an earlier run). "
                "Run them as a new job with results=/db= elsewhere, or pass allow_changed=True to update the job."
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target, {**options, "results": str(folder)}


async def arun_job(job: JobInput, **options: Any) -> JobResult:
    """Run a job to its end inside the running event loop (Jupyter, asyncio code); see ``run_job``."""
    if isinstance(job, str | os.PathLike):
        path = Path(job)
    elif isinstance(job, Mapping) or not isinstance(job, Iterable):
        raise UserError("job must be a path or an iterable of request dicts")
    else:
        path, options = _write_requests(job, options)
    argv = ["run", str(path), *_argv(options)]
    args = run_parser().parse_args(argv[2:])
    args.job, args.argv = str(path), argv
    run_as = run_options(args)
    outcome = await run(run_as)
    error = aborted_error(outcome)
    if error is not None:
        raise error
    summary = outcome.summary
    if summary.stopped:
        raise KeyboardInterrupt(f"stopped; run it again to resume (orchestrator resume {outcome.db})")
    async with open_store(outcome.db, create=False) as store:  # streamed and batch attempts at their prices
        cost = load_prices(run_as.prices).total(await store.billed_by_tier(None, None))
    return JobResult(
        db=outcome.db,
        results_file=outcome.results,
        counts=dict(summary.counts),
        billed=summary.billed.as_dict(),
        cost=cost,
        elapsed=summary.elapsed,
    )


def run_job(job: JobInput, **options: Any) -> JobResult:
    """Run a job to its end, as ``orchestrator run`` does, and return its summary and results.

    ``job``: a job file or spec (any kind ``orchestrator run`` takes), or an iterable of request
    dicts (the Batches shape ``{"custom_id", "params"}`` or prompt dicts ``{"prompt", ...}``).
    ``options``: ``run``'s long options with underscores, e.g. ``simulate=True``,
    ``concurrency=16``, ``max_cost=5.0``, ``results="results/mine"``. Resumable: run it again
    (or ``orchestrator resume DB``) and it goes on where it stopped. Raises UserError (bad input
    or options, nothing sent), JobChangedError, JobAborted (stopped by the API or the spend cap).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise UserError(
            "run_job cannot run inside a running event loop (Jupyter, asyncio code): "
            "use `await orchestrator.arun_job(...)` there"
        )
    if threading.current_thread() is not threading.main_thread():
        raise UserError("run_job runs in the main thread (it handles Ctrl-C); use arun_job in other threads' loops")
    result: JobResult = anyio.run(functools.partial(arun_job, job, **options))
    return result
