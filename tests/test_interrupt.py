"""Stopping a real process: Ctrl-C (once and twice) and kill -9 at several points, then resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import Process

from orchestrator.cli import run_command
from orchestrator.crash import CRASH_ENV
from orchestrator.simulator import Simulator, SimulatorConfig, Stats, Timing
from tests.conftest import Running
from tests.helpers import expected_replies, query, read_results, text_of

pytestmark = pytest.mark.anyio

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
ENV = {**os.environ, "ANTHROPIC_API_KEY": "sk-test"}


def write_prompts(path: Path, prompts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return path


def ok_at_least(count: int, stats: Stats) -> bool:
    return stats.outcomes["ok"] >= count


def results(path: Path) -> dict[str, dict[str, Any]]:
    """custom_id -> results line, checking that no custom_id has two."""
    lines = read_results(path)
    by_id = {line["custom_id"]: line for line in lines}
    assert len(by_id) == len(lines), "a custom_id has more than one result"
    return by_id


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator", *args]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_ctrl_c_saves_in_flight_streams_and_resume_finishes(
    simulate: Simulate, tmp_path: Path, signum: signal.Signals
) -> None:
    job = write_prompts(
        tmp_path / "job.jsonl",
        [f"p{i} <<sim-fault: stall after={3 + i} seconds=60 times=1>>" for i in range(6)],
    )
    out = tmp_path / "out"
    db = out / "job.sqlite"
    errors = tmp_path / "stderr.txt"
    async with simulate() as (sim, _, url):
        with errors.open("w") as stderr:
            process = await anyio.open_process(
                cli("run", str(job), "--base-url", url, "--results", str(out), "--quiet"),
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=ENV,
            )
            with anyio.fail_after(30):
                await sim.until(lambda s: s.stalls_now == 6)
            process.send_signal(signum)
            with anyio.fail_after(5):  # the bound: exit within 5 s
                await process.wait()
        assert process.returncode == 130
        message = errors.read_text()
        assert f"Resume with: orchestrator resume {db}" in message
        attempts = query(db, "SELECT outcome, output_tokens, partial FROM attempts ORDER BY request_id")
        expected = expected_replies(sim, job)
        # The server had sent 3 + i deltas to stream i; the client may not have read the last of
        # them when the signal came (the exact checkpoint is tested in process, without a race).
        assert [a[0] for a in attempts] == ["interrupted"] * 6
        assert all(tokens <= 3 + i for i, (_, tokens, _) in enumerate(attempts))
        assert sum(tokens for _, tokens, _ in attempts) > 0
        for (_, _, partial), full in zip(attempts, expected.values(), strict=True):
            if partial is not None:
                assert full.startswith(json.loads(partial)["content"][0]["text"])
        assert query(db, "SELECT DISTINCT state FROM requests") == [("pending",)]

        resumed = await anyio.run_process(cli("resume", str(db), "--quiet"), env=ENV, check=False)
        assert resumed.returncode == 0, resumed.stderr.decode()
    lines = results(out / "results.jsonl")
    assert {cid: text_of(line) for cid, line in lines.items()} == expected
    assert all(line["attempts"] == 2 for line in lines.values())
    # What was checkpointed before the signal is continued by prefill, not paid for again (but for
    # a trailing whitespace token, which prefill trims and the continuation generates again).
    for line in lines.values():
        paid_twice = line["billed_usage"]["output_tokens"] - line["result"]["message"]["usage"]["output_tokens"]
        assert paid_twice in (0, 1)
    assert any(line.get("recovery", {}).get("strategy") == "prefill" for line in lines.values())


async def test_requests_waiting_to_retry_when_the_run_stops_are_pending_again(
    simulate: Simulate, tmp_path: Path
) -> None:
    job = write_prompts(tmp_path / "job.jsonl", [f"p{i} <<sim-fault: server_error times=1>>" for i in range(4)])
    out = tmp_path / "out"
    db = out / "job.sqlite"
    async with simulate() as (sim, _, url):
        # Each request's first attempt fails; the next waits up to 10 minutes (full jitter).
        argv = cli("run", str(job), "--base-url", url, "--results", str(out), "--quiet", "--backoff-base", "600")
        process = await anyio.open_process(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        with anyio.fail_after(30):
            await sim.until(lambda s: s.faults_injected["server_error"] == 4)
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(10):
            await process.wait()
        assert process.returncode == 130
        states = dict(query(db, "SELECT state, COUNT(*) FROM requests GROUP BY state"))
        assert "running" not in states  # status says what is so: nothing runs
        assert states.get("pending", 0) >= 1  # those waiting (a retry may have come and gone first)
        resumed = await anyio.run_process(cli("resume", str(db), "--quiet"), env=ENV, check=False)
        assert resumed.returncode == 0, resumed.stderr.decode()
        expected = expected_replies(sim, job)
    assert {cid: text_of(line) for cid, line in results(out / "results.jsonl").items()} == expected


async def test_second_ctrl_c_exits_at_once_and_the_database_stays_consistent(
    simulate: Simulate, tmp_path: Path
) -> None:
    job = write_prompts(
        tmp_path / "job.jsonl", [f"p{i} <<sim-fault: stall after=2 seconds=60 times=1>>" for i in range(4)]
    )
    out = tmp_path / "out"
    async with simulate() as (sim, _, url):
        process = await anyio.open_process(
            cli("run", str(job), "--base-url", url, "--results", str(out), "--quiet"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=ENV,
        )
        with anyio.fail_after(30):
            await sim.until(lambda s: s.stalls_now == 4)
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(5):
            await process.wait()
        assert process.returncode == 130
        assert query(out / "job.sqlite", "PRAGMA integrity_check") == [("ok",)]
        resumed = await anyio.run_process(cli("resume", str(out / "job.sqlite"), "--quiet"), env=ENV, check=False)
        assert resumed.returncode == 0, resumed.stderr.decode()
        expected = expected_replies(sim, job)
    assert {cid: text_of(line) for cid, line in results(out / "results.jsonl").items()} == expected


async def test_kill_9_at_several_points_loses_nothing_and_duplicates_nothing(
    simulate: Simulate, tmp_path: Path
) -> None:
    count = 60
    job = write_prompts(tmp_path / "job.jsonl", [f"prompt number {i}" for i in range(count)])
    out = tmp_path / "out"
    db = out / "job.sqlite"
    argv = cli(
        "run",
        str(job),
        "--results",
        str(out),
        "--quiet",
        "--concurrency",
        "4",
        "--checkpoint-interval",
        "0.02",
    )
    config = SimulatorConfig(timing=Timing(ttft=0.0, tokens_per_second=3000))
    kept: dict[str, tuple[str, int]] = {}  # custom_id -> (message id, attempts) once succeeded
    async with simulate(config) as (sim, _, url):
        for kill_after in (0, 1, 15, 30, 45):
            process = await anyio.open_process(
                [*argv, "--base-url", url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV
            )
            with anyio.fail_after(30):
                await sim.until(partial(ok_at_least, kill_after))
            process.kill()
            await process.wait()
            assert process.returncode == -signal.SIGKILL
            if not db.exists():
                continue
            assert query(db, "PRAGMA integrity_check") == [("ok",)]
            done = query(
                db,
                "SELECT custom_id, json_extract(result, '$.id'), attempts FROM requests WHERE state = 'succeeded'",
            )
            for custom_id, message_id, attempts in done:
                if custom_id in kept:  # a succeeded result is never redone or lost
                    assert kept[custom_id] == (message_id, attempts)
                kept[custom_id] = (message_id, attempts)
            assert len(done) >= len(kept)
        final = await anyio.run_process([*argv, "--base-url", url], env=ENV, check=False)
        assert final.returncode == 0, final.stderr.decode()
        expected = expected_replies(sim, job)
    lines = results(out / "results.jsonl")
    assert len(lines) == count
    assert {cid: text_of(line) for cid, line in lines.items()} == expected
    assert len(kept) > 0
    for custom_id, (message_id, attempts) in kept.items():
        assert lines[custom_id]["result"]["message"]["id"] == message_id
        assert lines[custom_id]["attempts"] == attempts
    succeeded_attempts = query(
        db, "SELECT request_id, COUNT(*) FROM attempts WHERE outcome = 'succeeded' GROUP BY request_id"
    )
    assert len(succeeded_attempts) == count
    assert all(n == 1 for _, n in succeeded_attempts)
    assert query(db, "SELECT COUNT(*) FROM attempts WHERE outcome IS NULL") == [(0,)]


async def run_until_stalled(sim: Simulator, argv: list[str]) -> Process:
    """``orchestrator ARGV`` in a process, once its first stream stalls (mid-run, its lock taken)."""
    process = await anyio.open_process(cli(*argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    with anyio.fail_after(30):
        await sim.until(lambda s: s.stalls_now == 1)
    return process


async def test_a_second_run_of_a_running_job_is_refused_at_once(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_prompts(tmp_path / "job.jsonl", ["slow <<sim-fault: stall after=2 seconds=2 times=1>>", "b", "c"])
    out = tmp_path / "out"
    db = out / "job.sqlite"
    async with simulate() as (sim, _, url):
        argv = ["run", str(job), "--base-url", url, "--results", str(out), "--quiet"]
        first = await run_until_stalled(sim, argv)
        # Hold the first run where it is (mid-stream, its lock taken) while the others try.
        first.send_signal(signal.SIGSTOP)
        try:
            second = await anyio.run_process(cli(*argv), env=ENV, check=False)
            capsys.readouterr()
            resumed = await run_command(["resume", str(db), "--quiet"])  # in this process: refused all the same
            refusal = capsys.readouterr().err
            status = await run_command(["status", str(db)])  # status reads a running job
        finally:
            first.send_signal(signal.SIGCONT)
        with anyio.fail_after(30):
            await first.wait()
        expected = expected_replies(sim, job)
    assert (second.returncode, resumed, status) == (2, 2, 0)
    for message in (second.stderr.decode(), refusal):
        assert f"{db} is being run by another orchestrator process (pid {first.pid}). Nothing was sent." in message
        assert "Traceback" not in message
    assert first.returncode == 0
    assert sim.stats.requests == 3  # one per request: the refused runs sent nothing, the first was undisturbed
    lines = results(out / "results.jsonl")
    assert {cid: text_of(line) for cid, line in lines.items()} == expected
    assert all(line["attempts"] == 1 for line in lines.values())


async def test_a_run_killed_with_sigkill_leaves_the_job_unlocked(simulate: Simulate, tmp_path: Path) -> None:
    job = write_prompts(tmp_path / "job.jsonl", ["held <<sim-fault: stall after=2 seconds=60 times=1>>", "b"])
    out = tmp_path / "out"
    async with simulate() as (sim, _, url):
        argv = ["run", str(job), "--base-url", url, "--results", str(out), "--quiet"]
        first = await run_until_stalled(sim, argv)
        first.kill()
        await first.wait()
        assert await run_command(argv) == 0
        expected = expected_replies(sim, job)
    assert {cid: text_of(line) for cid, line in results(out / "results.jsonl").items()} == expected


async def test_a_first_load_killed_midway_is_refused_by_status_and_loaded_again_by_run(
    simulate: Simulate, tmp_path: Path
) -> None:
    job = write_prompts(tmp_path / "job.jsonl", [f"prompt {i}" for i in range(40)])
    out = tmp_path / "out"
    db = out / "job.sqlite"
    marker = out / "job.sqlite.loading"
    async with simulate() as (sim, _, url):
        argv = cli("run", str(job), "--base-url", url, "--results", str(out), "--quiet")
        crashed = await anyio.run_process(argv, env={**ENV, CRASH_ENV: "loading"}, check=False)
        assert crashed.returncode == -signal.SIGKILL
        assert marker.exists()  # the file may be damaged: the marker says so
        status = await anyio.run_process(cli("status", str(db)), env=ENV, check=False)
        assert status.returncode == 2
        assert "first load has not ended" in status.stderr.decode()
        assert "Traceback" not in status.stderr.decode()
        rerun = await anyio.run_process(argv, env=ENV, check=False)
        assert rerun.returncode == 0, rerun.stderr.decode()
        assert "first load was interrupted" in rerun.stderr.decode()
        expected = expected_replies(sim, job)
    assert sim.stats.requests == 40  # nothing went out from the interrupted load
    assert not marker.exists()
    assert {cid: text_of(line) for cid, line in results(out / "results.jsonl").items()} == expected
