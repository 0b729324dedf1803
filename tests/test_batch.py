"""Batch mode (``run --batch``) against the simulator's Message Batches API, with the real SDK.

In-process tests move the simulator's clock with the engine's own waits (a FakeClock), so a
batch of any length ends without sleeping; subprocess tests kill -9 the client at each step.
"""

from __future__ import annotations

import csv
import itertools
import json
import signal
import subprocess
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import anthropic
import anyio
import anyio.lowlevel
import pytest

from orchestrator.batch.calls import Caller
from orchestrator.batch.cancel import cancel_batches
from orchestrator.batch.engine import BatchJob
from orchestrator.batch.plan import ENVELOPE, Splitter, create_body, request_size
from orchestrator.cli import run_command
from orchestrator.crash import CRASH_ENV
from orchestrator.pricing import load_prices
from orchestrator.report.export import export_csv
from orchestrator.report.figures import Filters, job_report
from orchestrator.results import export_results
from orchestrator.runtime.progress import Quiet
from orchestrator.runtime.summary import Summary
from orchestrator.settings import JobSettings
from orchestrator.simulator import BatchSettings, Limits, SimulatorConfig
from tests.conftest import INSTANT, FakeClock, Running
from tests.helpers import expected_replies, loaded_store, query, run_in_process, text_of, write_jsonl
from tests.test_interrupt import ENV, cli, results

pytestmark = pytest.mark.anyio

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
Sleep = Callable[[float], Awaitable[None]]
PARAMS: Any = {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}


def prompts(count: int, prefix: str = "question") -> list[dict[str, Any]]:
    return [{"custom_id": f"{prefix}-{i}", "prompt": f"{prefix} number {i}"} for i in range(count)]


def batch_settings(**given: Any) -> JobSettings:
    return JobSettings(**{"mode": "batch", "poll_interval": 1.0, "backoff_base": 0.01, **given})


def simulated(clock: FakeClock) -> Sleep:
    """The engine's waits move the simulator's clock: a batch of any length ends at once."""

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await anyio.lowlevel.checkpoint()

    return sleep


async def run_batch(
    job: Path, db: Path, client: anthropic.AsyncAnthropic, settings: JobSettings, sleep: Sleep
) -> tuple[BatchJob, Summary]:
    async with loaded_store(job, db) as store:
        running = BatchJob(store, client, settings, Quiet(), load_prices(), sleep=sleep)
        summary = await running.run(handle_signals=False)
        await export_results(store, db.parent / "results.jsonl")
    return running, summary


async def test_a_batch_job_gives_the_streamed_texts_at_half_the_price(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(12))
    clock = FakeClock()
    config = SimulatorConfig(timing=INSTANT, batches=BatchSettings(seconds=60, seconds_max=600))
    async with simulate(config, clock=clock) as (sim, client, _):
        _, summary = await run_batch(
            job, tmp_path / "b" / "job.sqlite", client, batch_settings(batch_size=5), simulated(clock)
        )
        assert summary.complete
        created = sim.stats.batches.created
        _, streamed = await run_in_process(job, tmp_path / "s" / "job.sqlite", client, JobSettings())
        assert streamed.complete
        async with loaded_store(job, tmp_path / "s" / "job.sqlite") as store:
            await export_results(store, tmp_path / "s" / "results.jsonl")
        expected = expected_replies(sim, job)
    assert created == 3  # 12 requests, at most 5 a batch
    assert sim.stats.batches.results == Counter(succeeded=12)
    batch, stream = results(tmp_path / "b" / "results.jsonl"), results(tmp_path / "s" / "results.jsonl")
    assert list(batch) == list(stream) == list(expected)  # input order
    assert {cid: text_of(line) for cid, line in batch.items()} == expected
    for cid, line in batch.items():
        assert set(line) == set(stream[cid])
        assert line["billed_usage"] == stream[cid]["billed_usage"]
        assert line["attempts"] == 1
        assert line["result"]["message"]["usage"]["service_tier"] == "batch"
    db = tmp_path / "b" / "job.sqlite"
    assert query(db, "SELECT COUNT(*) FROM attempts WHERE batch_key IS NULL") == [(0,)]
    assert query(db, "SELECT COUNT(DISTINCT id), MIN(state), MAX(state) FROM batches") == [
        (3, "collected", "collected")
    ]
    ends = [key for (key,) in query(db, "SELECT key FROM batches ORDER BY ended_at")]
    assert ends != sorted(ends)  # the batches ended in another order than they were created
    prices = load_prices()
    costs = []
    per_request: list[dict[str, Decimal]] = []
    for path in (tmp_path / "b" / "job.sqlite", tmp_path / "s" / "job.sqlite"):
        async with loaded_store(job, path) as store:
            report = await job_report(store, path, prices, Filters())
            await export_csv(store, path.parent / "results.csv", prices)
        costs.append(report.total())
        with (path.parent / "results.csv").open() as handle:
            per_request.append({row["custom_id"]: Decimal(row["cost_usd"]) for row in csv.DictReader(handle)})
    assert {cid: cost * 2 for cid, cost in per_request[0].items()} == per_request[1]
    assert costs[0].billed.as_dict() == costs[1].billed.as_dict()
    assert costs[0].billed_cost is not None
    assert costs[0].billed_cost > 0
    assert costs[0].billed_cost * 2 == costs[1].billed_cost
    assert costs[0].wasted_cost == Decimal(0)


async def test_errored_and_expired_results_are_resubmitted_within_max_attempts(
    simulate: Simulate, tmp_path: Path
) -> None:
    lines = [
        *prompts(30),
        {"custom_id": "no-such-model", "prompt": "x", "model": "claude-nonexistent"},
        {"custom_id": "always-overloaded", "prompt": "x <<sim-fault: overloaded>>"},
    ]
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    db = tmp_path / "out" / "job.sqlite"
    clock = FakeClock()
    batches = BatchSettings(seconds=10, seconds_max=60, errored=0.2, expired=0.2)
    config = SimulatorConfig(timing=INSTANT, batches=batches)
    async with simulate(config, clock=clock) as (sim, client, _):
        # At one stream a minute (--rpm 1), streaming the few left is never sooner than another batch.
        settings = batch_settings(max_attempts=8, limits={"rpm": 1})
        _, summary = await run_batch(job, db, client, settings, simulated(clock))
        expected = expected_replies(sim, job)
    assert summary.complete
    found = results(tmp_path / "out" / "results.jsonl")
    for i in range(30):
        line = found[f"question-{i}"]
        assert text_of(line) == expected[f"question-{i}"]
    assert max(found[f"question-{i}"]["attempts"] for i in range(30)) > 1
    assert found["no-such-model"]["result"]["error"]["error"]["type"] == "not_found_error"
    assert found["no-such-model"]["attempts"] == 1
    assert found["always-overloaded"]["result"]["error"]["error"]["type"] == "overloaded_error"
    assert found["always-overloaded"]["attempts"] == 8
    # Every submission is one result on the server: no request was ever in two batches at once.
    submitted = sum(line["attempts"] for line in found.values())
    assert sum(sim.stats.batches.results.values()) == submitted
    assert sim.stats.batches.results["expired"] > 0
    reasons = dict(query(db, "SELECT reason, COUNT(*) FROM attempts WHERE outcome = 'retryable' GROUP BY 1"))
    assert set(reasons) == {"api_error", "overloaded_error", "expired"}
    assert query(db, "SELECT COUNT(*) FROM attempts WHERE outcome IS NULL") == [(0,)]


async def test_a_stop_detaches_and_the_next_run_finds_its_batches(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(10))
    db = tmp_path / "out" / "job.sqlite"
    clock = FakeClock()
    config = SimulatorConfig(timing=INSTANT, batches=BatchSettings(seconds=100))
    async with simulate(config, clock=clock) as (sim, client, _):
        async with loaded_store(job, db) as store, anyio.create_task_group() as group:
            running = BatchJob(store, client, batch_settings(batch_size=4, poll_interval=0.01), Quiet())
            summaries: list[Summary] = []

            async def run() -> None:
                summaries.append(await running.run(handle_signals=False))

            group.start_soon(run)
            with anyio.fail_after(10):
                await sim.until(lambda s: s.batches.created == 3)
            running.stop()
        [detached] = summaries
        assert detached.stopped
        assert detached.detached == 3
        assert detached.counts["running"] == 10
        clock.advance(100)
        _, summary = await run_batch(job, db, client, batch_settings(batch_size=4), simulated(clock))
        expected = expected_replies(sim, job)
    assert summary.complete
    assert sim.stats.batches.created == 3  # found again, not submitted again
    assert {cid: text_of(line) for cid, line in results(db.parent / "results.jsonl").items()} == expected


async def test_cancel_keeps_what_was_done_and_the_rest_waits_for_a_later_run(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(8))
    db = tmp_path / "out" / "job.sqlite"
    clock = FakeClock()
    config = SimulatorConfig(timing=INSTANT, batches=BatchSettings(seconds=80, cancel_seconds=1))
    async with simulate(config, clock=clock) as (sim, client, url):
        async with loaded_store(job, db) as store:
            running = BatchJob(store, client, batch_settings(batch_size=4), Quiet())
            async with anyio.create_task_group() as group:
                group.start_soon(partial(running.run, handle_signals=False))
                with anyio.fail_after(10):
                    await sim.until(lambda s: s.batches.created == 2)
                running.stop()
            clock.advance(40)  # half of each batch is done
        assert await run_command(["status", str(db)]) == 0
        # The stop may have come between the second create's answer and its record: cancel reconciles it.
        assert "message batches: 2 (" in capsys.readouterr().out
        assert await run_command(["cancel", str(db), "--base-url", url]) == 0
        assert "canceling 2 message batches" in capsys.readouterr().err
        assert sim.stats.batches.canceled == 2
        clock.advance(1)
        _, after_cancel = await run_batch(job, db, client, batch_settings(batch_size=4), simulated(clock))
        assert after_cancel.counts == {"pending": 4, "running": 0, "succeeded": 4, "errored": 0}
        assert sim.stats.batches.created == 2  # canceled requests wait for a later run
        _, later = await run_batch(job, db, client, batch_settings(batch_size=4), simulated(clock))
        expected = expected_replies(sim, job)
    assert later.complete
    assert sim.stats.batches.results == Counter(succeeded=8, canceled=4)
    assert {cid: text_of(line) for cid, line in results(db.parent / "results.jsonl").items()} == expected
    reasons = query(db, "SELECT reason, COUNT(*) FROM attempts WHERE outcome = 'interrupted' GROUP BY 1")
    assert reasons == [("canceled", 4)]


async def test_cancel_reconciles_an_intent_first(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(3))
    db = tmp_path / "out" / "job.sqlite"
    async with simulate(SimulatorConfig(timing=INSTANT)) as (sim, client, _), loaded_store(job, db) as store:
        intent = await store.intend_batch([1, 2, 3], 100, None)  # a create that was never sent
        assert [row.state for row in await store.batches()] == ["submitting"]
        assert await cancel_batches(client, Caller(batch_settings()), store) == []
        assert [row.state for row in await store.batches()] == ["refused"]
        assert (await store.counts())["pending"] == 3
        assert intent.key == 1
    assert sim.stats.batches.created == 0


async def test_429_and_529_of_the_batch_endpoints_are_retried(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(9))
    db = tmp_path / "out" / "job.sqlite"
    clock = FakeClock()
    config = SimulatorConfig(timing=INSTANT, batches=BatchSettings(seconds=20, rate_limited=0.3, overloaded=0.2))
    async with simulate(config, clock=clock) as (sim, client, _):
        running, summary = await run_batch(job, db, client, batch_settings(batch_size=3), simulated(clock))
        expected = expected_replies(sim, job)
    assert summary.complete
    faults = sim.stats.batches.endpoint_faults
    assert faults["rate_limited"] > 0
    assert faults["overloaded"] > 0
    assert running.caller.retries == sum(faults.values())
    assert sim.stats.batches.created == 3
    assert sim.stats.batches.results == Counter(succeeded=9)
    assert {cid: text_of(line) for cid, line in results(db.parent / "results.jsonl").items()} == expected


async def test_the_spend_cap_stops_the_job_and_leaves_its_requests_pending(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(3))
    db = tmp_path / "out" / "job.sqlite"
    clock = FakeClock()
    async with simulate(SimulatorConfig(timing=INSTANT, limits=Limits(spend_cap=True)), clock=clock) as (
        sim,
        client,
        _,
    ):
        _, summary = await run_batch(job, db, client, batch_settings(), simulated(clock))
    assert summary.aborted is not None
    assert summary.aborted.reason == "spend_cap"
    assert summary.counts["pending"] == 3
    assert sim.stats.batches.created == 0
    assert query(db, "SELECT state FROM batches") == [("refused",)]
    assert query(db, "SELECT outcome, reason, COUNT(*) FROM attempts GROUP BY 1, 2") == [("fatal", "spend_cap", 3)]


async def test_a_batch_deleted_on_the_server_leaves_its_requests_pending(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(4))
    db = tmp_path / "out" / "job.sqlite"
    clock = FakeClock()
    async with simulate(SimulatorConfig(timing=INSTANT, batches=BatchSettings(seconds=10)), clock=clock) as (
        sim,
        client,
        _,
    ):
        async with loaded_store(job, db) as store:
            running = BatchJob(store, client, batch_settings(batch_size=2), Quiet())
            async with anyio.create_task_group() as group:
                group.start_soon(partial(running.run, handle_signals=False))
                with anyio.fail_after(10):
                    await sim.until(lambda s: s.batches.created == 2)
                running.stop()
            [first, *_] = [row for row in await store.batches() if row.id is not None]
        assert first.id is not None
        await client.messages.batches.cancel(first.id)
        clock.advance(1)
        await client.messages.batches.delete(first.id)
        clock.advance(10)
        _, summary = await run_batch(job, db, client, batch_settings(batch_size=2), simulated(clock))
        expected = expected_replies(sim, job)
    assert summary.complete
    assert sim.stats.batches.created == 3  # the deleted batch's two requests went into a new one
    assert {cid: text_of(line) for cid, line in results(db.parent / "results.jsonl").items()} == expected
    assert query(db, "SELECT reason, COUNT(*) FROM attempts WHERE outcome = 'interrupted' GROUP BY 1") == [
        ("missing_result", 2)
    ]


async def test_an_intent_is_reconciled_even_when_its_watermark_batch_was_deleted(
    simulate: Simulate, tmp_path: Path
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(3))
    db = tmp_path / "out" / "job.sqlite"
    clock = FakeClock()
    async with simulate(SimulatorConfig(timing=INSTANT, batches=BatchSettings(seconds=5)), clock=clock) as (
        sim,
        client,
        _,
    ):
        other = await client.messages.batches.create(requests=[{"custom_id": "x", "params": PARAMS}])
        async with loaded_store(job, db) as store:
            await store.intend_batch([1, 2, 3], 100, other.id)
            members = await store.batch_members(1)
        # The intent's create reached the server, then the process died; then the watermark went.
        requests: Any = [{"custom_id": cid, "params": json.loads(params)} for cid, params in members]
        await client.messages.batches.create(requests=requests)
        clock.advance(5)
        await client.messages.batches.delete(other.id)
        _, summary = await run_batch(job, db, client, batch_settings(), simulated(clock))
        expected = expected_replies(sim, job)
    assert summary.complete
    assert sim.stats.batches.created == 2
    assert sim.stats.batches.results == Counter(succeeded=4)
    assert {cid: text_of(line) for cid, line in results(db.parent / "results.jsonl").items()} == expected


@pytest.mark.parametrize("step", ["intended", "created", "recorded", "polled", "results"])
async def test_kill_9_at_each_step_submits_nothing_twice_and_loses_nothing(
    simulate: Simulate, tmp_path: Path, step: str
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(10))
    out = tmp_path / "out"
    argv = cli("run", str(job), "--batch", "--batch-size", "4", "--poll-interval", "0.05", "--results", str(out))
    config = SimulatorConfig(timing=INSTANT, batches=BatchSettings(seconds=0))
    async with simulate(config) as (sim, _, url):
        crashed = await anyio.run_process(
            [*argv, "--base-url", url, "--quiet"], env={**ENV, CRASH_ENV: step}, check=False
        )
        assert crashed.returncode == -signal.SIGKILL
        final = await anyio.run_process([*argv, "--base-url", url, "--quiet"], env=ENV, check=False)
        assert final.returncode == 0, final.stderr.decode()
        expected = expected_replies(sim, job)
    assert sim.stats.batches.created == 3
    assert sim.stats.batches.results == Counter(succeeded=10)  # each request sent to the server once
    assert {cid: text_of(line) for cid, line in results(out / "results.jsonl").items()} == expected
    db = out / "job.sqlite"
    assert query(db, "SELECT outcome, COUNT(*) FROM attempts GROUP BY 1") == [("succeeded", 10)]
    assert query(db, "SELECT DISTINCT state FROM batches") == [("collected",)]


async def test_ctrl_c_detaches_with_the_resume_command_and_resume_collects(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(6))
    out = tmp_path / "out"
    db = out / "job.sqlite"
    errors = tmp_path / "stderr.txt"
    clock = FakeClock()
    config = SimulatorConfig(timing=INSTANT, batches=BatchSettings(seconds=30))
    argv = cli("run", str(job), "--batch", "--batch-size", "3", "--poll-interval", "0.05", "--results", str(out))
    async with simulate(config, clock=clock) as (sim, _, url):
        with errors.open("w") as stderr:
            process = await anyio.open_process(
                [*argv, "--base-url", url, "--quiet"], stdout=subprocess.DEVNULL, stderr=stderr, env=ENV
            )
            with anyio.fail_after(30):
                await sim.until(lambda s: s.batches.created == 2)
            process.send_signal(signal.SIGINT)
            with anyio.fail_after(10):
                await process.wait()
        assert process.returncode == 130
        message = errors.read_text()
        assert "Detached: 2 message batches keep running on the server" in message
        assert f"orchestrator resume {db}" in message
        assert f"orchestrator cancel {db}" in message
        clock.advance(30)
        resumed = await anyio.run_process(cli("resume", str(db), "--quiet"), env=ENV, check=False)
        assert resumed.returncode == 0, resumed.stderr.decode()
        expected = expected_replies(sim, job)
    assert sim.stats.batches.created == 2
    assert {cid: text_of(line) for cid, line in results(out / "results.jsonl").items()} == expected


async def test_batch_options_are_refused_in_stream_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(2))
    assert await run_command(["run", str(job), "--simulate", "--batch-size", "5"]) == 2
    assert "--batch-size is for batch mode only" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


async def test_a_job_with_batches_in_flight_is_not_streamed(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(2))
    db = tmp_path / "out" / "job.sqlite"
    async with loaded_store(job, db) as store:
        await store.intend_batch([1], 100, None)
    async with simulate() as (sim, _, url):
        assert await run_command(["run", str(job), "--db", str(db), "--base-url", url]) == 2
    assert "1 message batches in flight" in capsys.readouterr().err
    assert sim.stats.requests == 0


async def test_dry_run_shows_both_prices_and_the_batches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(25))
    assert await run_command(["run", str(job), "--dry-run", "--simulate", "--batch", "--batch-size", "10"]) == 0
    out = capsys.readouterr().out
    assert "batch mode (--batch): 3 message batches" in out
    assert "(50% of the streamed price)" in out


def test_splitting_respects_both_limits() -> None:
    sizes = [request_size(f"r-{i}", json.dumps({"x": "y" * (i % 7) * 10})) for i in range(100)]
    for max_requests, max_bytes in ((7, 10_000), (100, 800), (100, 10_000)):
        splitter = Splitter(max_requests, max_bytes)
        batches: list[list[int]] = []
        for size in sizes:
            if splitter.add(size):
                batches.append([])
            batches[-1].append(size)
        assert splitter.batches == len(batches)
        assert sum(len(b) for b in batches) == len(sizes)
        for batch in batches:
            assert len(batch) <= max_requests
            assert ENVELOPE + sum(batch) + len(batch) - 1 <= max_bytes
        for first, second in itertools.pairwise(batches):  # each batch was full
            full = len(first) == max_requests or ENVELOPE + sum(first) + len(first) + second[0] > max_bytes
            assert full
    lone = Splitter(10, 100)
    assert lone.add(500)  # too large for any batch: alone (the API refuses it)
    assert lone.add(10)


def test_the_create_body_is_what_the_splitter_measured() -> None:
    params = [{"model": "m", "messages": [{"role": "user", "content": "héllo" * i}]} for i in range(5)]
    requests = [{"custom_id": f"a-{i}", "params": p} for i, p in enumerate(params)]
    stored = [(f"a-{i}", json.dumps(p, separators=(",", ":"))) for i, p in enumerate(params)]
    body = create_body(stored)
    assert json.loads(body) == {"requests": requests}
    splitter = Splitter(10)
    for custom_id, text in stored:
        splitter.add(request_size(custom_id, text))
    assert (splitter.batches, splitter.size) == (1, len(body))
