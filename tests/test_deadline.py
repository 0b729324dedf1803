"""--deadline: batches while there is time, streaming for the rest, never a reply paid twice.

In process, with the real SDK; the simulator's batches run on a FakeClock that the engine's waits
move (streaming takes no time on it: the engine's waits first let a stream round end)."""

from __future__ import annotations

import csv
import io
import json
import re
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from subprocess import DEVNULL
from typing import Any

import anthropic
import anyio
import pytest

from orchestrator.batch.engine import BatchJob
from orchestrator.cli import run_command
from orchestrator.errors import UserError
from orchestrator.library import Job as StoredJob
from orchestrator.library import arun_job
from orchestrator.pricing import load_prices, money
from orchestrator.results import export_results
from orchestrator.run.engine import Job
from orchestrator.runtime.progress import Quiet
from orchestrator.runtime.summary import Summary
from orchestrator.settings import JobSettings
from orchestrator.simulator import BatchSettings, SimulatorConfig, Stats, Timing
from orchestrator.store import Store
from orchestrator.store.batches import CANCELING
from orchestrator.watch import Watcher
from tests.conftest import INSTANT, FakeClock, Running
from tests.helpers import expected_replies, loaded_store, query, text_of, write_jsonl
from tests.test_batch import batch_settings, prompts
from tests.test_interrupt import ENV, cli, results

pytestmark = pytest.mark.anyio

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
COUNT = 40


async def deadline_run(
    job: Path,
    db: Path,
    client: anthropic.AsyncAnthropic,
    clock: FakeClock,
    said: list[str],
    sleeps: list[tuple[float, bool]] | None = None,
    **settings: Any,
) -> tuple[BatchJob, Summary]:
    """``sleeps``: the engine's waits, each with whether a batch of the job was canceling meanwhile."""
    async with loaded_store(job, db) as store:
        holder: list[BatchJob] = []

        async def sleep(seconds: float) -> None:
            await holder[0].streamer.idle.wait()  # streaming takes no time on the batches' clock
            if sleeps is not None:
                sleeps.append((seconds, any(row.state == CANCELING for row in await store.batches(open_only=True))))
            clock.advance(seconds)

        running = BatchJob(
            store,
            client,
            batch_settings(**settings),
            Quiet(),
            load_prices(),
            sleep=sleep,
            clock=clock,
            say=said.append,
            stream=streaming(client),
        )
        holder.append(running)
        summary = await running.run(handle_signals=False)
        await export_results(store, db.parent / "results.jsonl")
    return running, summary


def streaming(client: anthropic.AsyncAnthropic) -> Callable[[Store, JobSettings], Job]:
    """The streaming engine, as ``job.run`` hands it to batch mode."""
    return lambda store, settings: Job(store, client, settings, Quiet(), load_prices())


def ways(db: Path) -> dict[str, int]:
    """Succeeded requests by the way they went."""
    rows = query(
        db,
        "SELECT CASE WHEN batch_key IS NULL THEN 'streamed' ELSE 'batch' END, COUNT(*) FROM attempts "
        "WHERE outcome = 'succeeded' GROUP BY 1",
    )
    return dict(rows)


def paid_once(sim_stats: dict[str, Any], db: Path) -> None:
    """Every output token billed (batches and streams) is in a reply kept."""
    kept = query(db, "SELECT SUM(output_tokens) FROM attempts WHERE outcome = 'succeeded'")[0][0]
    billed = sim_stats["batches"]["tokens_billed"].get("output_tokens", 0) + sim_stats["output_tokens_billed"]
    assert billed == kept


async def test_a_generous_deadline_goes_all_to_batches(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(COUNT))
    db = tmp_path / "out" / "job.sqlite"
    clock = FakeClock(start=1_800_000_000.0)
    config = SimulatorConfig(timing=INSTANT, batches=BatchSettings(seconds=30, seconds_max=300))
    said: list[str] = []
    async with simulate(config, clock=clock) as (sim, client, _):
        running, summary = await deadline_run(job, db, client, clock, said, deadline="2h")
        expected = expected_replies(sim, job)
        stats = sim.stats.as_dict()
    assert summary.complete
    assert running.deadline == 1_800_000_000.0 + 7200
    assert clock() <= running.deadline
    assert ways(db) == {"batch": COUNT}
    assert sim.stats.batches.created >= 4  # spread over several batches
    assert sim.stats.batches.canceled == 0
    assert {cid: text_of(line) for cid, line in results(db.parent / "results.jsonl").items()} == expected
    paid_once(stats, db)
    assert said == []  # quiet


async def test_a_deadline_between_moves_the_unfinished_batches_to_streaming_in_time(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(COUNT))
    db = tmp_path / "out" / "job.sqlite"
    clock = FakeClock(start=1_800_000_000.0)
    # Batches take 2 minutes to 2 hours; the job has 30 minutes.
    config = SimulatorConfig(timing=INSTANT, batches=BatchSettings(seconds=120, seconds_max=7200, cancel_seconds=5))
    said: list[str] = []
    sleeps: list[tuple[float, bool]] = []
    async with simulate(config, clock=clock) as (sim, client, _):
        running, summary = await deadline_run(job, db, client, clock, said, sleeps, deadline="30m")
        expected = expected_replies(sim, job)
        stats = sim.stats.as_dict()
    assert summary.complete
    assert running.deadline is not None
    assert clock() <= running.deadline
    went = ways(db)
    assert went["batch"] > 0
    assert went["streamed"] > 0
    assert went["batch"] + went["streamed"] == COUNT
    assert 0 < sim.stats.batches.canceled < sim.stats.batches.created  # part moved, the rest left to end
    # A cancel is looked at again soon (it ends in 5 s here), not at the poll's backoff (up to a minute).
    assert max(seconds for seconds, canceling in sleeps if canceling) <= 5
    assert {cid: text_of(line) for cid, line in results(db.parent / "results.jsonl").items()} == expected
    paid_once(stats, db)
    # A canceled batch's requests that it had finished are kept, not streamed as well.
    canceled = query(db, "SELECT COUNT(*) FROM attempts WHERE reason = 'canceled'")[0][0]
    assert canceled == went["streamed"]
    bar = running.snapshot()  # what the bar shows
    assert f", {went['streamed']:,} streamed, deadline " in bar.detail
    streamed_all = running.cost_streamed()
    assert bar.cost is not None
    assert streamed_all is not None
    assert bar.cost < streamed_all
    assert f"{money(streamed_all)} if all streamed" in bar.detail
    capsys.readouterr()
    assert await run_command(["status", str(db)]) == 0
    shown = capsys.readouterr().out
    assert f"went: {went['batch']:,} by message batch, {went['streamed']:,} streamed; cost $" in shown
    assert "streaming it all (0." in shown
    assert re.search(r"\n  deadline [-0-9]+ [:0-9]+: met, done \S+ before it\n", shown)
    assert await run_command(["report", str(db), "--format", "json"]) == 0
    [reported] = json.loads(capsys.readouterr().out)["jobs"]
    total = reported["total"]
    assert total["ways"] == went
    assert reported["deadline_met"] is True
    by_way = total["cost_by_way_usd"]
    assert 0 < by_way["batch"] < by_way["streamed"] * 2  # the batched half-price
    assert by_way["batch"] + by_way["streamed"] == pytest.approx(total["cost_usd"])
    assert total["cost_usd"] < total["cost_streamed_usd"]
    assert await run_command(["report", str(db)]) == 0
    text = capsys.readouterr().out
    assert f"  went: {went['batch']:,} by message batch ($" in text
    assert ": met, done " in text
    assert await run_command(["report", str(db), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert (rows[-1]["by_batch"], rows[-1]["streamed"]) == (str(went["batch"]), str(went["streamed"]))
    watched = json.loads(await Watcher(db, load_prices()).status())
    assert (watched["deadline"], watched["ways"]) == (running.deadline, went)


async def test_a_deadline_no_batch_can_meet_streams_everything_and_says_so(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(COUNT))
    db = tmp_path / "out" / "job.sqlite"
    clock = FakeClock(start=1_800_000_000.0)
    said: list[str] = []
    async with simulate(SimulatorConfig(timing=INSTANT), clock=clock) as (sim, client, _):
        # 40 requests of up to 1,024 tokens at 8 streams take longer than a minute (at a slow stream's pace).
        _, summary = await deadline_run(job, db, client, clock, said, deadline="60s")
        stats = sim.stats.as_dict()
    assert summary.complete
    assert ways(db) == {"streamed": COUNT}
    assert sim.stats.batches.created == 0
    [message] = said
    assert "The deadline cannot be met" in message
    assert "Streaming them all now (the fastest)" in message
    paid_once(stats, db)


async def test_a_resume_keeps_the_deadline_and_a_bad_one_is_refused(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(3))
    db = tmp_path / "out" / "job.sqlite"
    clock = FakeClock(start=1_800_000_000.0)
    async with simulate(SimulatorConfig(timing=INSTANT, batches=BatchSettings(seconds=10)), clock=clock) as (
        _,
        client,
        _,
    ):
        first, _ = await deadline_run(job, db, client, clock, [], deadline="8h")
        clock.advance(3600)
        again, _ = await deadline_run(job, db, client, clock, [], deadline="8h")
        other, _ = await deadline_run(job, db, client, clock, [], deadline="1h")
    assert first.deadline == again.deadline == 1_800_000_000.0 + 8 * 3600
    assert other.deadline is not None
    assert first.deadline - 7 * 3600 < other.deadline < first.deadline  # given anew: an hour from then
    bad = ["run", str(job), "--simulate", "--deadline", "tomorrow", "--results", str(tmp_path / "bad")]
    assert await run_command(bad) == 2
    assert not (tmp_path / "bad").exists()  # refused before anything was stored
    assert "is not a deadline" in capsys.readouterr().err
    passed = [*bad[:-1], str(tmp_path / "passed")]
    passed[passed.index("tomorrow")] = "2020-01-01T09:00"
    assert await run_command(passed) == 2
    assert not (tmp_path / "passed").exists()  # refused before anything was stored
    assert "--deadline: '2020-01-01T09:00' has passed already" in capsys.readouterr().err
    with pytest.raises(UserError, match=r"^deadline: '2020-01-01T09:00' has passed already"):  # Python: the keyword
        await arun_job(job, simulate=True, deadline="2020-01-01T09:00", results=tmp_path / "python")
    assert not (tmp_path / "python").exists()


async def test_the_dry_run_under_a_deadline_says_how_the_work_would_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(COUNT))
    # At 6 requests a minute streaming the 40 takes about 8.6 minutes (with the plan's safety share).
    dry = ["run", str(job), "--simulate", "--dry-run", "--rpm", "6", "--deadline"]
    split = re.compile(r"(\d+) to (\d+) message batches, (\d+) streamed at once")
    shown = {}
    for deadline in ("2h", "9m", "5m"):
        assert await run_command([*dry, deadline]) == 0
        shown[deadline] = capsys.readouterr().out
        assert "nothing was sent" in shown[deadline]
        assert f"streaming all {COUNT} requests takes about 8m" in shown[deadline]
    generous = split.search(shown["2h"])
    assert generous is not None
    assert generous.groups() == (str(COUNT), "10", "0")  # all to batches, spread over several
    between = split.search(shown["9m"])
    assert between is not None
    batched, _, streamed = map(int, between.groups())
    assert batched > 0
    assert streamed > 0
    assert batched + streamed == COUNT
    assert "it cannot be met: everything streams at once (the fastest)" in shown["5m"]
    assert not (tmp_path / "results").exists()
    assert await run_command([*dry, "2020-01-01T09:00"]) == 2
    assert "--deadline: '2020-01-01T09:00' has passed already" in capsys.readouterr().err
    assert await run_command([*dry, "2h", "--mode", "stream"]) == 2
    assert "and --mode stream asks for streaming alone: drop one of them" in capsys.readouterr().err


@pytest.mark.parametrize("moment", ["a cancel sent", "streaming"])
async def test_kill_9_in_a_deadline_run_pays_nothing_twice_and_loses_nothing(
    simulate: Simulate, tmp_path: Path, moment: str
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", [{**line, "max_tokens": 40} for line in prompts(20)])
    out = tmp_path / "out"
    db = out / "job.sqlite"
    # In real time, streams of under 2 s (the kill comes before a first token), batches of 200-300 s
    # (their requests ending one by one within): at the assumed pace (8 streams, 40 tokens each at a
    # slow stream's speed) and a cancel assumed to take 60 s, a 72 s deadline streams 16 at once and
    # sends 4 to batches, moved at once.
    timing = Timing(ttft=1.0, tokens_per_second=60)
    config = SimulatorConfig(timing=timing, batches=BatchSettings(seconds=200, seconds_max=300, cancel_seconds=0.5))
    argv = cli("run", str(job), "--deadline", "72s", "--poll-interval", "0.05", "--results", str(out))
    reached: dict[str, Callable[[Stats], bool]] = {
        "a cancel sent": lambda stats: stats.batches.canceled >= 1,
        "streaming": lambda stats: stats.requests >= 3,
    }
    async with simulate(config) as (sim, _, url):
        process = await anyio.open_process([*argv, "--base-url", url], env=ENV, stdout=DEVNULL, stderr=DEVNULL)
        with anyio.fail_after(30):
            await sim.until(reached[moment])
        process.kill()
        await process.wait()
        assert process.returncode == -signal.SIGKILL
        resumed = await anyio.run_process(cli("resume", str(db)), env=ENV, check=False)
        assert resumed.returncode == 0, resumed.stderr.decode()
        expected = expected_replies(sim, job)
        stats = sim.stats.as_dict()
    assert re.search(r"\ndeadline [-0-9]+ [:0-9]+: met, done \S+ before it\n", resumed.stderr.decode())
    assert {cid: text_of(line) for cid, line in results(out / "results.jsonl").items()} == expected
    paid_once(stats, db)  # what the kill cut off included
    assert query(db, "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM attempts WHERE outcome = 'succeeded'") == [
        (20, 20)
    ]
    assert sim.stats.batches.canceled >= 1
    assert query(db, "SELECT COUNT(*) FROM attempts WHERE reason = 'canceled'")[0][0] >= 1  # moved to streaming


async def test_the_python_api_says_how_a_deadline_run_went(tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", prompts(6))
    config = SimulatorConfig(timing=INSTANT, batches=BatchSettings(seconds=0))
    result = await arun_job(job, simulate=config, deadline="2h", poll_interval=0.01, results=tmp_path / "out")
    assert result.complete
    assert result.ways == {"batch": 6, "streamed": 0}
    assert result.cost is not None
    assert result.cost_streamed == result.cost * 2  # all at the batch price: half
    assert result.deadline is not None
    assert result.done_at is not None
    assert result.done_at < result.deadline <= result.done_at + 7200
    again = await StoredJob(result.db).aresume(mode="stream")  # streaming alone now: the deadline is dropped
    assert again.deadline is None
    assert (await StoredJob(result.db).astatus()).deadline is None
