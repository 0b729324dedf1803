"""Rough edges a user meets: a fast --help, status's cost, results as the API sends them, the bar in
80 columns, retry-after as a date, the backoff within the time budget."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from pathlib import Path

import pytest

from orchestrator.api.failures import classify, retry_after
from orchestrator.cli import run_command
from orchestrator.pricing import money
from orchestrator.runtime.backoff import Backoff, Retries
from orchestrator.runtime.progress import Bar, Snapshot
from tests.conftest import Running
from tests.helpers import query, read_results, write_jsonl
from tests.test_retry import status_error

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
pytestmark = pytest.mark.anyio
FAST = ["--quiet", "--checkpoint-interval", "0.05"]


def prompts(folder: Path, count: int) -> tuple[Path, Path, Path]:
    """A job of ``count`` prompts: (job file, results folder, database)."""
    job = write_jsonl(folder / "j.jsonl", [{"prompt": f"p{i}"} for i in range(count)])
    return job, folder / "out", folder / "out" / "job.sqlite"


def test_the_command_line_does_not_import_the_sdk_until_a_request_is_sent() -> None:
    code = (
        "import sys\n"
        "from orchestrator.cli import run_command\n"
        "from orchestrator.cli.parser import build_parser\n"
        "build_parser().parse_args(['run', 'job.jsonl', '--simulate'])\n"
        "print(sorted(m for m in ('anthropic', 'httpx2', 'aiohttp') if m in sys.modules))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


async def test_status_shows_the_cost_as_the_report_does(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job, out, db = prompts(tmp_path, 3)
    async with simulate() as (_, _, url):
        assert await run_command(["run", str(job), "--results", str(out), "--base-url", url, *FAST]) == 0
    capsys.readouterr()
    assert await run_command(["report", str(db), "--format", "json"]) == 0
    reported = json.loads(capsys.readouterr().out)["jobs"][0]["total"]["cost_usd"]
    assert reported > 0
    assert await run_command(["status", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cost_usd"] == reported
    assert await run_command(["status", str(db)]) == 0
    assert f"cost {money(Decimal(str(reported)))}" in capsys.readouterr().out
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"as_of": "2026-01-01", "models": {}}))
    assert await run_command(["status", str(db), "--json", "--prices", str(prices)]) == 0
    assert json.loads(capsys.readouterr().out)["cost_usd"] == reported  # overrides add, never remove


async def test_results_keep_stop_sequence_as_the_api_sends_it(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(
        tmp_path / "j.jsonl",
        [{"prompt": "plain"}, {"prompt": "stopped", "stop_sequences": ["e"], "max_tokens": 300}],
    )
    out = tmp_path / "out"
    async with simulate() as (_, _, url):
        assert await run_command(["run", str(job), "--results", str(out), "--base-url", url, *FAST]) == 0
    plain, stopped = (line["result"]["message"] for line in read_results(out))
    assert plain["stop_reason"] in ("end_turn", "max_tokens")
    assert "stop_sequence" in plain
    assert plain["stop_sequence"] is None
    assert list(plain)[list(plain).index("stop_reason") + 1] == "stop_sequence"  # where the API puts it
    assert stopped["stop_reason"] == "stop_sequence"
    assert stopped["stop_sequence"] == "e"


def test_the_bar_keeps_eta_and_cost_in_80_columns() -> None:
    stream = io.StringIO()
    bar = Bar(100_000, 0, stream, ncols=80)
    snapshot = Snapshot(
        done=12_345,
        total=100_000,
        in_flight=64,
        failed=12,
        retries=3,
        output_tokens=10_000_000,
        elapsed=600,
        done_this_run=12_345,
        cost=Decimal("12.3456"),
    )
    bar.update(snapshot)
    bar.close()
    last = stream.getvalue().rstrip("\n").split("\r")[-1]
    assert len(last) <= 80
    assert "ETA 1h11m" in last
    assert "$12.3456" in last
    assert "12345/100000" in last


def test_retry_after_as_an_http_date_is_honoured() -> None:
    now = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=42), usegmt=True)
    assert retry_after({"retry-after": later}, now=now.timestamp) == 42.0
    past = format_datetime(now - timedelta(seconds=5), usegmt=True)
    assert retry_after({"retry-after": past}, now=now.timestamp) == 0.0
    assert retry_after({"retry-after": "not a date"}) is None
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    failure = classify(status_error(429, "rate_limit_error", headers={"retry-after": in_a_minute}))
    assert failure is not None
    assert failure.retry_after is not None
    assert 50 < failure.retry_after <= 60


def test_the_stop_rule_owns_attempts_and_time_together() -> None:
    retries = Retries(Backoff(base=100.0, cap=100.0), max_attempts=5, max_seconds=10.0)
    rng = random.Random(0)
    waits = [retries.next_wait(1, 0.0, 9.0, None, rng) for _ in range(50)]
    assert all(w is not None and 0 <= w <= 1.0 for w in waits)  # never past the budget
    assert retries.next_wait(1, 0.0, 10.0, None, rng) is None  # the budget is spent
    assert retries.next_wait(5, 0.0, 1.0, None, rng) is None  # out of attempts
    assert retries.next_wait(1, 0.0, 1.0, 30.0, rng) is None  # the server asks for longer than is left
    honoured = retries.next_wait(1, 0.0, 1.0, 3.0, rng)
    assert honoured is not None
    assert 3.0 <= honoured <= 9.0


async def test_the_backoff_never_sleeps_past_the_time_budget(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": "never <<sim-fault: server_error>>"}])
    out = tmp_path / "out"
    budget = ["--backoff-base", "1000", "--backoff-cap", "1000", "--retry-max-seconds", "0.3"]
    async with simulate() as (sim, _, url):
        # Uncapped, the first backoff would sleep up to 1,000 s (the test's timeout would fail it).
        status = await run_command(["run", str(job), "--results", str(out), "--base-url", url, *budget, *FAST])
    assert status == 0
    (line,) = read_results(out)
    assert line["result"]["type"] == "errored"
    assert line["attempts"] == 2  # one retry, right at the end of the budget
    assert sim.stats.outcomes["server_error"] == 2


async def test_time_to_first_token_counts_from_the_send_and_the_limiter_wait_is_apart(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job, out, db = prompts(tmp_path, 8)
    async with simulate() as (_, _, url):
        # 600 requests a minute: a burst of a few, then one every 0.1 s: most wait for the limiter.
        argv = ["run", str(job), "--results", str(out), "--base-url", url, "--rpm", "600", *FAST]
        assert await run_command(argv) == 0
    sent = query(db, "SELECT started_at, sent_at, first_token_at, ended_at FROM attempts")
    assert len(sent) == 8
    assert all(started <= sent_at <= first <= ended for started, sent_at, first, ended in sent)
    waits = sorted(sent_at - started for started, sent_at, _, _ in sent)
    capsys.readouterr()
    assert await run_command(["report", str(db), "--format", "json"]) == 0
    latency = json.loads(capsys.readouterr().out)["total"]["latency_seconds"]
    assert latency["rate_limit_wait"]["p99"] == pytest.approx(waits[-1], abs=0.05)
    assert latency["rate_limit_wait"]["p99"] > latency["time_to_first_token"]["p99"]  # the queue is not the server's
    assert latency["slot_wait"]["p99"] == 0  # eight streams for eight requests: none waited for a slot
    firsts = sorted(first - sent_at for _, sent_at, first, _ in sent)
    assert latency["time_to_first_token"]["p99"] == pytest.approx(firsts[-1])
