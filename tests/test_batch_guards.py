"""Batch mode holds what streaming holds: the spend cap (at batch prices), and a busy, full or
read-only database (nothing received is lost, a clear stop, resumable). Real SDK, simulator on a
FakeClock that the engine's own waits move."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from pathlib import Path

import anyio.lowlevel
import pytest

import orchestrator.store
from orchestrator.batch.engine import BatchJob
from orchestrator.cli import run_command
from orchestrator.models import Usage
from orchestrator.pricing import BATCH, load_prices
from orchestrator.runtime.budget import worst_case
from orchestrator.runtime.progress import Quiet
from orchestrator.simulator import BatchSettings, SimulatorConfig
from tests.conftest import INSTANT, FakeClock, Running
from tests.helpers import loaded_store, params_of, query, write_jsonl
from tests.test_batch import batch_settings, prompts, simulated
from tests.test_deadline import streaming
from tests.test_interrupt import results

pytestmark = pytest.mark.anyio

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
Sleep = Callable[[float], Awaitable[None]]
CONFIG = SimulatorConfig(timing=INSTANT, batches=BatchSettings(seconds=30, seconds_max=90))


def billed_once(sim_stats: dict[str, int], db: Path) -> None:
    """Every output token the server billed is in a reply kept: none was paid twice."""
    kept = query(db, "SELECT SUM(output_tokens) FROM attempts WHERE outcome = 'succeeded'")[0][0]
    assert sim_stats["output_tokens"] == kept


async def test_the_spend_cap_holds_in_batch_mode_at_batch_prices(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(12))
    prices = load_prices()
    worsts = []
    for params in params_of(job).values():
        worst = worst_case(prices, params, BATCH)
        assert worst is not None
        assert worst * 2 == worst_case(prices, params)  # half the standard worst case
        worsts.append(worst)
    cap = sum(worsts[:5]) + worsts[5] / 2  # room for five requests' worst case
    out = tmp_path / "out"
    argv = ["run", str(job), "--batch", "--results", str(out), "--quiet", "--poll-interval", "0.01"]
    async with simulate(SimulatorConfig(timing=INSTANT, batches=BatchSettings(seconds=0))) as (sim, _, url):
        assert await run_command([*argv, "--base-url", url, "--max-cost", str(cap), "--batch-size", "3"]) == 3
        message = capsys.readouterr().err
        assert "the job stopped at its spend cap" in message
        assert "7 requests left" in message
        assert f"orchestrator resume {out / 'job.sqlite'} --max-cost USD" in message
        assert sum(sim.stats.batches.results.values()) == 5  # five submitted (3 + 2), none past the cap
        spent = load_prices().total({("claude-haiku-4-5", BATCH): _billed(out / "job.sqlite")})
        assert spent is not None
        assert spent <= Decimal(str(cap))
        # A higher cap goes on with the rest.
        assert await run_command(["resume", str(out / "job.sqlite"), "--max-cost", "1"]) == 0
    assert len(results(out / "results.jsonl")) == 12
    assert sum(sim.stats.batches.results.values()) == 12


def _billed(db: Path) -> Usage:
    [(inputs, outputs)] = query(db, "SELECT SUM(input_tokens), SUM(output_tokens) FROM attempts")
    return Usage(input_tokens=inputs, output_tokens=outputs)


async def test_a_database_that_fills_up_stops_a_batch_run_and_the_next_collects_the_rest(
    simulate: Simulate, tmp_path: Path
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(30))
    db = tmp_path / "out" / "job.sqlite"
    clock = FakeClock()
    async with simulate(CONFIG, clock=clock) as (sim, client, _):
        async with loaded_store(job, db) as store:
            move = simulated(clock)
            full = False

            async def fill_up_then_sleep(seconds: float) -> None:
                nonlocal full
                if not full:  # the batches are submitted: now no page more than the file has
                    pages = query(db, "PRAGMA page_count")[0][0]
                    await store.db.execute(f"PRAGMA max_page_count = {pages}")
                    full = True
                await move(seconds)

            running = BatchJob(store, client, batch_settings(batch_size=10), Quiet(), sleep=fill_up_then_sleep)
            summary = await running.run(handle_signals=False)
        assert summary.storage is not None
        assert "cannot be written" in str(summary.storage)
        assert not summary.complete
        assert query(db, "PRAGMA integrity_check") == [("ok",)]
        created = sim.stats.batches.created
        assert created == 3
        async with loaded_store(job, db) as store:
            again = await BatchJob(store, client, batch_settings(batch_size=10), Quiet(), sleep=move).run(
                handle_signals=False
            )
        assert again.complete
        assert sim.stats.batches.created == created  # collected from the server again, not submitted again
        billed_once(sim.stats.batches.tokens_billed, db)
    assert query(db, "SELECT COUNT(*) FROM requests WHERE state = 'succeeded'") == [(30,)]


async def test_a_locked_database_is_waited_out_in_batch_mode(
    simulate: Simulate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(orchestrator.store, "BUSY_TIMEOUT", 0.05)  # SQLite's own wait, before ours
    job = write_jsonl(tmp_path / "job.jsonl", prompts(20))
    db = tmp_path / "out" / "job.sqlite"
    clock = FakeClock()
    locker: sqlite3.Connection | None = None
    async with simulate(CONFIG, clock=clock) as (sim, client, _):
        async with loaded_store(job, db) as store:
            move = simulated(clock)
            sleeps: list[float] = []
            notes: list[str | None] = []

            async def lock_for_a_while(seconds: float) -> None:
                nonlocal locker
                sleeps.append(seconds)
                if len(sleeps) == 1:  # the batches are submitted: another process takes the write lock
                    locker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
                    locker.execute("BEGIN EXCLUSIVE")
                elif len(sleeps) == 6 and locker is not None:
                    notes.append(running.snapshot().note)
                    locker.execute("ROLLBACK")
                    locker.close()
                await move(seconds)
                await anyio.lowlevel.checkpoint()

            running = BatchJob(store, client, batch_settings(batch_size=8), Quiet(), sleep=lock_for_a_while)
            summary = await running.run(handle_signals=False)
        assert summary.complete
        assert summary.storage is None
        assert notes == ["database busy (locked by another process)"]
        assert sim.stats.batches.created == 3
        billed_once(sim.stats.batches.tokens_billed, db)
    assert query(db, "SELECT COUNT(*) FROM requests WHERE state = 'succeeded'") == [(20,)]


async def test_the_few_left_after_resubmissions_stream_when_that_is_sooner(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(30))
    db = tmp_path / "out" / "job.sqlite"
    clock = FakeClock()
    # A batch takes an hour or two; some results come back errored, worth another try.
    config = SimulatorConfig(timing=INSTANT, batches=BatchSettings(seconds=3600, seconds_max=7200, errored=0.2))
    async with simulate(config, clock=clock) as (sim, client, _):
        async with loaded_store(job, db) as store:
            move = simulated(clock)
            running = BatchJob(store, client, batch_settings(), Quiet(), sleep=move, stream=streaming(client))
            summary = await running.run(handle_signals=False)
        stats = sim.stats.as_dict()
    assert summary.complete
    assert sim.stats.batches.created == 1  # no second batch for the few left: they streamed
    errored = sim.stats.batches.results["errored"]
    assert 0 < errored <= 10
    assert stats["requests"] == errored
    streamed = query(db, "SELECT COUNT(*) FROM attempts WHERE batch_key IS NULL AND outcome = 'succeeded'")
    assert streamed == [(errored,)]
    kept = query(db, "SELECT SUM(output_tokens) FROM attempts WHERE outcome = 'succeeded'")[0][0]
    assert stats["batches"]["tokens_billed"]["output_tokens"] + stats["output_tokens_billed"] == kept
