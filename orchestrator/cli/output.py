"""What the commands print: a run's summary and a job's status."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.models import State, Usage
from orchestrator.outputs import STATUSES, counts_text
from orchestrator.run.progress import Snapshot, describe
from orchestrator.store import BatchRow
from orchestrator.store.queries import JobRow

if TYPE_CHECKING:
    from orchestrator.run.engine import Summary


def print_summary(summary: Summary, db: Path, out: Path, written: int | None) -> None:
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
    if written is None:
        print(
            f"database: {db} (results.jsonl is written when the job is complete; "
            f"`orchestrator export {db}` writes what is done)",
            file=sys.stderr,
        )
    else:
        print(f"results: {out} ({written:,} lines); database: {db}", file=sys.stderr)


def _batch_line(row: BatchRow) -> str:
    expires = "" if row.expires_at is None else f", expires {_when(row.expires_at)}"
    return f"    {row.id or '(being created)'}: {row.state}, {row.requests:,} requests{expires}"


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def print_status(
    db: Path,
    job: JobRow,
    counts: dict[str, int],
    billed: Usage,
    cost: Decimal | None,
    first: float | None,
    batches: list[BatchRow],
    as_json: bool,
    outputs: Counter[str] | None = None,  # structured outputs by status, for a job with an output schema
) -> None:
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
        cost=cost,
    )
    if as_json:
        shown = [{"id": b.id, "state": b.state, "requests": b.requests, "expires_at": b.expires_at} for b in batches]
        cost_usd = None if cost is None else float(round(cost, 6))  # as the report's JSON gives it
        status: dict[str, Any] = {"job": job.name, "endpoint": job.endpoint, "simulated": job.simulated}
        status |= {"counts": counts, "billed": billed.as_dict(), "cost_usd": cost_usd, "elapsed": elapsed}
        if outputs:
            status["outputs"] = {name: outputs[name] for name in STATUSES}
        print(json.dumps({**status, "batches": shown}))
        return
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(job.created_at))
    print(f"job {job.name}  ({db}, created {created})")
    if job.simulated:
        print("  SIMULATED: it holds replies of the built-in simulator, not of the API")
    print(f"  endpoint of the last run: {job.endpoint or 'not recorded'}")
    print("  " + ", ".join(f"{state}: {counts[state]:,}" for state in State))
    print(f"  billed: {billed.input_tokens:,} input, {billed.output_tokens:,} output tokens")
    if outputs:
        print(f"  structured outputs: {counts_text(outputs)}")
    print(
        f"  elapsed {elapsed:.1f} s, last update {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(job.updated_at))}"
    )
    print("  " + describe(snapshot))
    if batches:
        states = Counter(row.state for row in batches)
        print(f"  message batches: {len(batches):,} (" + ", ".join(f"{n:,} {s}" for s, n in states.items()) + ")")
        for row in batches:
            if row.open:
                print(_batch_line(row))
