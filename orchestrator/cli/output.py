"""What the commands print: a run's summary and a job's status."""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from decimal import Decimal

from orchestrator.library import BatchStatus, JobResult, JobStatus
from orchestrator.models import State
from orchestrator.outputs import counts_text
from orchestrator.pricing import money
from orchestrator.runtime.progress import Snapshot, describe
from orchestrator.when import deadline_line


def print_summary(result: JobResult) -> None:
    counts = result.counts
    billed = result.billed
    print(
        f"{counts[State.SUCCEEDED]:,} succeeded, {counts[State.ERRORED]:,} errored, "
        f"{counts[State.PENDING] + counts[State.RUNNING]:,} not done, in {result.elapsed:.1f} s; "
        f"billed {billed['input_tokens']:,} input and {billed['output_tokens']:,} output tokens over all attempts",
        file=sys.stderr,
    )
    went = _went(result.ways, result.cost, result.cost_streamed)
    if went is not None:
        print(went, file=sys.stderr)
    if result.deadline is not None:
        print(deadline_line(result.deadline, result.done_at, time.time()), file=sys.stderr)
    if result.pauses or result.cuts:
        print(
            f"rate limits: {result.pauses:,} pool-wide pauses after a 429, concurrency cut {result.cuts:,} times "
            "after overloads",
            file=sys.stderr,
        )
    if result.written is None:
        print(
            f"database: {result.db} (results.jsonl is written when the job is complete; "
            f"`orchestrator export {result.db}` writes what is done)",
            file=sys.stderr,
        )
    else:
        print(f"results: {result.results_file} ({result.written:,} lines); database: {result.db}", file=sys.stderr)


def _went(ways: dict[str, int] | None, cost: Decimal | None, streamed: Decimal | None) -> str | None:
    """What went which way, and the cost against streaming it all (a job with message batches)."""
    if not ways or not ways.get("batch"):
        return None
    line = f"went: {ways['batch']:,} by message batch, {ways.get('streamed', 0):,} streamed"
    if cost is not None and streamed:
        line += f"; cost {money(cost)} against {money(streamed)} streaming it all ({cost / streamed:.2f}x)"
    return line


def _batch_line(row: BatchStatus) -> str:
    expires = "" if row.expires_at is None else f", expires {_when(row.expires_at)}"
    return f"    {row.id or '(being created)'}: {row.state}, {row.requests:,} requests{expires}"


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def print_status(status: JobStatus, as_json: bool) -> None:
    if as_json:
        print(json.dumps(status.as_dict()))
        return
    counts = status.counts
    done = counts[State.SUCCEEDED] + counts[State.ERRORED]
    snapshot = Snapshot(
        done=done,
        total=sum(counts.values()),
        in_flight=counts[State.RUNNING],
        failed=counts[State.ERRORED],
        retries=0,
        output_tokens=status.billed["output_tokens"],
        elapsed=status.elapsed,
        done_this_run=done,
        cost=status.cost,
    )
    print(f"job {status.name}  ({status.db}, created {_when(status.created_at)})")
    if status.simulated:
        print("  SIMULATED: it holds replies of the built-in simulator, not of the API")
    print(f"  endpoint of the last run: {status.endpoint or 'not recorded'}")
    print("  " + ", ".join(f"{state}: {counts[state]:,}" for state in State))
    print(f"  billed: {status.billed['input_tokens']:,} input, {status.billed['output_tokens']:,} output tokens")
    if status.outputs:
        print(f"  structured outputs: {counts_text(Counter(status.outputs))}")
    print(f"  elapsed {status.elapsed:.1f} s, last update {_when(status.updated_at)}")
    went = _went(status.ways, status.cost, status.cost_streamed)
    if went is not None:
        print(f"  {went}")
    if status.deadline is not None:
        print(f"  {deadline_line(status.deadline, status.done_at, time.time())}")
    print("  " + describe(snapshot))
    if status.batches:
        states = Counter(row.state for row in status.batches)
        print(
            f"  message batches: {len(status.batches):,} (" + ", ".join(f"{n:,} {s}" for s, n in states.items()) + ")"
        )
        for row in status.batches:
            if row.open:
                print(_batch_line(row))
