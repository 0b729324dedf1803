"""Storage faults: a database locked by another process, a full disk, a read-only job, a failed export."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

import orchestrator.store
from orchestrator.cli import run_command
from orchestrator.jobs.read import read_requests
from orchestrator.jobs.spec import load_spec
from orchestrator.options import RunOptions
from orchestrator.run.engine import Job
from orchestrator.runtime.progress import Quiet
from orchestrator.runtime.summary import Summary
from orchestrator.settings import JobSettings
from orchestrator.simulator import SimulatorConfig, Timing
from orchestrator.store import open_store
from tests.conftest import Running
from tests.helpers import query, read_results, write_jsonl

pytestmark = pytest.mark.anyio

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
FAST = ["--quiet", "--checkpoint-interval", "0.05"]
ENV = {**os.environ, "ANTHROPIC_API_KEY": "sk-test"}
# Streams that take a while (about 60 tokens at 300 tokens/s), so that the job is running when the fault strikes.
PACED = SimulatorConfig(timing=Timing(ttft=0.0, tokens_per_second=300), reply_min=40, reply_max=80)


def prompts(folder: Path, count: int) -> tuple[Path, Path, Path]:
    """A job of ``count`` prompts: (job file, results folder, database)."""
    job = write_jsonl(folder / "j.jsonl", [{"prompt": f"p{i}"} for i in range(count)])
    return job, folder / "out", folder / "out" / "job.sqlite"


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", *args]


CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
PR_CAPBSET_DROP = 24


def _respect_file_modes() -> None:
    """Root ignores file modes: drop the two capabilities that let it (from the bounding set, so
    that the command it runs next has them no more), as an ordinary user's process has them not."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


async def run_cli(
    *args: str, respect_modes: bool = False, file_size: int | None = None
) -> subprocess.CompletedProcess[str]:
    """The command line in a process of its own (bound by file modes even as root; with writes past
    ``file_size`` bytes failing as on a full disk), without blocking the simulator serving it."""

    def limit() -> None:
        if respect_modes and os.geteuid() == 0:
            _respect_file_modes()
        if file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    run = partial(subprocess.run, cli(*args), env=ENV, capture_output=True, text=True, check=False, preexec_fn=limit)
    return await anyio.to_thread.run_sync(run)


async def load(job: Path, db: Path, **options: Any) -> None:
    """Load a job file into a new database, as ``run`` would, with the options a resume runs it with."""
    spec = load_spec(job, {})
    stored = RunOptions(job=job, quiet=True, checkpoint_interval=0.05, **options).to_json()
    async with open_store(db) as store:
        await store.load(spec.name, {"options": stored}, spec.fingerprint(), read_requests(spec))


def one_result_each(out: Path, count: int) -> list[dict[str, Any]]:
    lines = read_results(out)
    assert sorted(line["custom_id"] for line in lines) == sorted(f"j-{i}" for i in range(1, count + 1))
    return lines


async def test_a_locked_database_is_waited_out_while_the_streams_go_on(
    simulate: Simulate, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(orchestrator.store, "BUSY_TIMEOUT", 0.1)  # SQLite's own wait, before ours
    count = 16
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": f"p{i}"} for i in range(count)])
    db = tmp_path / "out" / "job.sqlite"
    settings = JobSettings(concurrency=2, checkpoint_interval=0.05)
    await load(job, db)
    summary: list[Summary] = []
    async with simulate(PACED) as (sim, client, _), open_store(db) as store:
        running = Job(store, client, settings, Quiet())

        async def run() -> None:
            summary.append(await running.run(handle_signals=False))

        async with anyio.create_task_group() as group:
            group.start_soon(run)
            await sim.until(lambda stats: stats.outcomes["ok"] >= 2)
            locker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
            await anyio.to_thread.run_sync(locker.execute, "BEGIN EXCLUSIVE")  # another process's write lock
            await running.writer.until(lambda writer: writer.busy_since is not None)
            note = running.snapshot().note
            assert note is not None
            assert "database busy" in note
            saved = query(db, "SELECT COUNT(*) FROM requests WHERE state = 'succeeded'")[0][0]
            launched = sim.stats.requests
            # The streams in flight go on to their end; no new request starts while the writer is behind.
            await sim.until(lambda stats: stats.streams_now == 0 and stats.outcomes["ok"] > saved)
            # The replies received meanwhile are held in memory: none reached the database.
            assert query(db, "SELECT COUNT(*) FROM requests WHERE state = 'succeeded'") == [(saved,)]
            assert sim.stats.requests <= launched + 2 * settings.concurrency  # workers that had a request
            assert sim.stats.requests < count
            locker.execute("ROLLBACK")
            locker.close()
    (done,) = summary
    assert done.complete
    assert done.storage is None
    assert sim.stats.outcomes["ok"] == count  # every reply received once, none paid twice
    assert query(db, "SELECT COUNT(*) FROM requests WHERE state = 'succeeded'") == [(count,)]
    assert query(db, "SELECT COUNT(*) FROM attempts") == [(count,)]  # one attempt each


async def test_a_full_database_stops_the_job_cleanly_and_it_resumes(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    count = 12
    job, out, db = prompts(tmp_path, count)
    async with simulate(PACED) as (sim, client, url):
        await load(job, db, results=out, base_url=url)
        async with open_store(db) as store:
            # What a full disk gives SQLite: no page beyond those the file has now.
            await store.db.execute("PRAGMA max_page_count = " + str(query(db, "PRAGMA page_count")[0][0]))
            running = Job(store, client, JobSettings(concurrency=3, checkpoint_interval=0.05), Quiet())
            summary = await running.run(handle_signals=False)
        assert summary.storage is not None
        assert "full" in str(summary.storage)
        assert not summary.complete
        assert query(db, "PRAGMA integrity_check") == [("ok",)]
        received = sim.stats.outcomes["ok"]
        saved = query(db, "SELECT COUNT(*) FROM requests WHERE state = 'succeeded'")[0][0]
        assert received - saved <= len(summary.unsaved)  # every reply not saved is named
        capsys.readouterr()
        assert await run_command(["resume", str(db)]) == 0
        # Nothing saved is asked again: only the requests named as not saved are paid twice.
        assert count <= sim.stats.outcomes["ok"] <= count + len(summary.unsaved)
    one_result_each(out, count)


async def test_a_disk_that_fills_up_mid_run_exits_3_with_a_message_and_resumes(
    simulate: Simulate, tmp_path: Path
) -> None:
    count = 40
    job, out, db = prompts(tmp_path, count)
    async with simulate(PACED) as (_, _, url):
        await load(job, db, results=out, concurrency=4, base_url=url)
        size = db.stat().st_size
        # The disk fills up once the job has written about 100 kB more (its write-ahead log grows).
        full = await run_cli("resume", str(db), file_size=size + 100_000)
        assert full.returncode == 3, full.stderr
        message = full.stderr
        assert "cannot be written" in message
        assert f"orchestrator resume {db}" in message
        assert "Traceback" not in message
        assert query(db, "PRAGMA integrity_check") == [("ok",)]
        resumed = await run_cli("resume", str(db))
        assert resumed.returncode == 0, resumed.stderr
    one_result_each(out, count)


async def run_as_reader(*args: str) -> subprocess.CompletedProcess[str]:
    """The command line in a process that cannot write a read-only file or folder, root or not."""
    return await run_cli(*args, respect_modes=True)


async def _finished_job(simulate: Simulate, folder: Path, count: int = 4) -> Path:
    job = write_jsonl(folder / "j.jsonl", [{"prompt": f"p{i}"} for i in range(count)])
    out = folder / "job"
    async with simulate() as (_, _, url):
        assert await run_command(["run", str(job), "--results", str(out), "--base-url", url, *FAST]) == 0
    return out / "job.sqlite"


def _make_read_only(db: Path) -> None:
    db.chmod(0o444)
    db.parent.chmod(0o555)


async def test_a_read_only_job_can_be_read(simulate: Simulate, tmp_path: Path) -> None:
    db = await _finished_job(simulate, tmp_path)
    _make_read_only(db)
    before = db.read_bytes()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    status = await run_as_reader("status", str(db), "--json")
    assert status.returncode == 0, status.stderr
    assert '"succeeded": 4' in status.stdout
    report = await run_as_reader("report", str(db))
    assert report.returncode == 0, report.stderr
    assert "cost" in report.stdout
    exported = await run_as_reader("export", str(db), "--out", str(elsewhere / "results.jsonl"))
    assert exported.returncode == 0, exported.stderr
    assert (elsewhere / "results.jsonl").read_text() == (db.parent / "results.jsonl").read_text()
    assert db.read_bytes() == before
    assert not [p.name for p in db.parent.iterdir() if p.name.endswith(("-wal", "-shm", ".tmp"))]


async def test_an_old_read_only_job_says_what_it_needs(simulate: Simulate, tmp_path: Path) -> None:
    db = await _finished_job(simulate, tmp_path)
    with sqlite3.connect(db) as connection:  # as an older version left it: without the last migration
        connection.execute("DELETE FROM migrations WHERE name = '0009_attempt_sent_at'")
        connection.execute("ALTER TABLE attempts DROP COLUMN sent_at")
    _make_read_only(db)
    refused = await run_as_reader("status", str(db))
    assert refused.returncode == 3
    assert "older version" in refused.stderr
    assert "0009_attempt_sent_at" in refused.stderr
    assert "Copy the job's folder" in refused.stderr
    db.parent.chmod(0o755)
    db.chmod(0o644)
    assert await run_command(["status", str(db)]) == 0  # where it can be written, it is brought up to date
    assert query(db, "SELECT COUNT(*) FROM migrations WHERE name = '0009_attempt_sent_at'") == [(1,)]


async def test_a_failed_export_leaves_no_temporary_file(simulate: Simulate, tmp_path: Path) -> None:
    db = await _finished_job(simulate, tmp_path, count=30)
    out = tmp_path / "copy.jsonl"
    failed = await run_cli("export", str(db), "--out", str(out), file_size=2_000)  # the disk fills up at 2 kB
    assert failed.returncode == 3
    assert f"could not write {out}" in failed.stderr
    assert f"orchestrator export {db}" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert not out.exists()
    assert not out.with_name(out.name + ".tmp").exists()


async def test_a_stop_leaves_the_export_to_the_end_of_the_job(simulate: Simulate, tmp_path: Path) -> None:
    prompts = ["fine 1", "fine 2", *(f"stall {i} <<sim-fault: stall after=2 seconds=60 times=1>>" for i in range(2))]
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": prompt} for prompt in prompts])
    out = tmp_path / "out"
    db = out / "job.sqlite"
    async with simulate() as (sim, _, url):
        process = await anyio.open_process(
            cli("run", str(job), "--results", str(out), "--base-url", url, "--quiet"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=ENV,
        )
        await sim.until(lambda stats: stats.outcomes["ok"] >= 2 and stats.stalls_now == 2)
        process.send_signal(signal.SIGINT)
        await process.wait()
        assert process.stderr is not None
        message = (await process.stderr.receive()).decode()
    assert process.returncode == 130
    assert f"orchestrator export {db}" in message
    assert not (out / "results.jsonl").exists()  # a stop does not rewrite every result (it took 4.5 s at 73k)
    assert await run_command(["export", str(db)]) == 0
    assert [line["custom_id"] for line in read_results(out)] == ["j-1", "j-2"]
