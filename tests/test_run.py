"""Running jobs end to end: the real SDK against the simulator, through the command line's code."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.cli import run_command
from orchestrator.jobs.read import read_requests
from orchestrator.jobs.spec import load_spec
from orchestrator.run.engine import Job
from orchestrator.runtime.progress import Quiet
from orchestrator.settings import JobSettings
from orchestrator.simulator import SimulatorConfig
from orchestrator.simulator.tokens import count_tokens
from orchestrator.store import open_store
from tests.conftest import INSTANT, Running
from tests.helpers import loaded_store, query, read_results, reply_of, text_of, until_checkpointed, write_jsonl

pytestmark = pytest.mark.anyio

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
FAST = ["--quiet", "--checkpoint-interval", "0.05"]


def job_inputs(tmp_path: Path) -> dict[str, tuple[Path, list[str]]]:
    """One job of each input kind, with the custom_ids it must produce in order."""
    batch = write_jsonl(
        tmp_path / "batch.jsonl",
        [
            {
                "custom_id": "b1",
                "params": {
                    "model": "claude-opus-5",
                    "max_tokens": 50,
                    "messages": [{"role": "user", "content": "one"}],
                },
            },
            {
                "custom_id": "b2",
                "params": {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 400,
                    "system": "terse",
                    "messages": [{"role": "user", "content": "two"}],
                },
            },
        ],
    )
    simple = write_jsonl(
        tmp_path / "simple.jsonl",
        [{"prompt": "alpha"}, {"prompt": "beta", "custom_id": "B", "max_tokens": 7}],
    )
    text = tmp_path / "lines.txt"
    text.write_text("first prompt\nsecond prompt\n\nthird prompt\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "x.md").write_text("essay x")
    (folder / "y.txt").write_text("essay y")
    spec = tmp_path / "job.toml"
    spec.write_text(
        'name = "spec"\ninputs = ["simple.jsonl", "folder/*.md"]\n'
        '[defaults]\nmodel = "claude-sonnet-5"\nmax_tokens = 64\n'
    )
    return {
        "batches": (batch, ["b1", "b2"]),
        "simple": (simple, ["simple-1", "B"]),
        "text": (text, ["lines-1", "lines-2", "lines-4"]),
        "folder": (folder, ["x", "y"]),
        "spec": (spec, ["simple-1", "B", "x"]),
    }


@pytest.mark.parametrize("kind", ["batches", "simple", "text", "folder", "spec"])
async def test_every_input_kind_runs_to_the_end(simulate: Simulate, tmp_path: Path, kind: str) -> None:
    job, ids = job_inputs(tmp_path)[kind]
    out = tmp_path / "out"
    async with simulate() as (sim, _, url):
        status = await run_command(["run", str(job), "--base-url", url, "--results", str(out), *FAST])
    assert status == 0
    lines = read_results(out / "results.jsonl")
    assert [line["custom_id"] for line in lines] == ids
    spec = load_spec(job, {})
    params = {item.custom_id: item.params for item in read_requests(spec)}  # type: ignore[union-attr]
    for line in lines:
        assert line["result"]["type"] == "succeeded"
        assert text_of(line) == reply_of(sim, params[line["custom_id"]])
        assert line["attempts"] == 1
        assert line["billed_usage"]["output_tokens"] == line["result"]["message"]["usage"]["output_tokens"]
        assert set(line["timing"]) == {"queued_at", "started_at", "first_token_at", "finished_at"}
        assert all(line["timing"].values())
    assert sim.stats.outcomes["ok"] == len(ids)


async def test_bad_input_is_reported_and_nothing_is_sent(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = tmp_path / "bad.jsonl"
    lines = [
        '{"prompt": "ok"}',
        '{"prompt": "dup", "custom_id": "d"}',
        '{"prompt": 3}',
        '{"custom_id": "d", "prompt": "x"}',
    ]
    job.write_text("\n".join(lines) + "\n")
    async with simulate() as (sim, _, url):
        status = await run_command(["run", str(job), "--base-url", url, "--results", str(tmp_path / "out"), *FAST])
    err = capsys.readouterr().err
    assert status == 2
    assert f"{job}:3: 'prompt' must be a non-empty string" in err
    assert f"{job}:4: duplicate custom_id 'd' (first at {job}:2)" in err
    assert "Nothing was sent" in err
    assert sim.stats.requests == 0
    assert not (tmp_path / "out").exists()  # no job was created


async def test_permanent_errors_are_results_and_the_job_goes_on(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"prompt": "fine"},
            {"prompt": "thinks too little", "thinking": {"type": "enabled", "budget_tokens": 10}},
            {"prompt": "unknown", "model": "gpt-4"},
            {"prompt": "also fine"},
        ],
    )
    out = tmp_path / "out"
    async with simulate() as (_, _, url):
        status = await run_command(["run", str(job), "--base-url", url, "--results", str(out), *FAST])
    assert status == 0
    lines = read_results(out / "results.jsonl")
    assert [line["result"]["type"] for line in lines] == ["succeeded", "errored", "errored", "succeeded"]
    assert lines[1]["result"]["error"]["error"]["type"] == "invalid_request_error"
    assert lines[2]["result"]["error"]["error"]["type"] == "not_found_error"
    assert [line["attempts"] for line in lines] == [1, 1, 1, 1]


async def test_authentication_error_stops_the_job_at_once(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_jsonl(tmp_path / "many.jsonl", [{"prompt": f"p{i}"} for i in range(200)])
    config = SimulatorConfig(timing=INSTANT, reject_api_keys=frozenset({"sk-test"}))
    db = tmp_path / "out" / "job.sqlite"
    async with simulate(config) as (sim, _, url):
        status = await run_command(
            [
                "run",
                str(job),
                "--base-url",
                url,
                "--results",
                str(tmp_path / "out"),
                "--concurrency",
                "4",
                *FAST,
            ]
        )
    err = capsys.readouterr().err
    assert status == 3
    assert "the job stopped: http_401 (authentication_error: invalid x-api-key)" in err
    assert f"orchestrator resume {db}" in err
    assert sim.stats.requests <= 4 + 4  # the first failures, not 200
    assert query(db, "SELECT COUNT(*) FROM requests WHERE state = 'pending'") == [(200,)]


@pytest.mark.parametrize("recover", ["auto", "restart"])
async def test_broken_streams_are_retried_and_their_partial_output_is_kept(
    simulate: Simulate, tmp_path: Path, recover: str
) -> None:
    faults = ["drop after=5", "truncate after=6", "error_event after=7", "overloaded", "server_error"]
    job = write_jsonl(
        tmp_path / "faults.jsonl",
        [{"prompt": f"p{i} <<sim-fault: {f} times=1>>"} for i, f in enumerate(faults)],
    )
    out = tmp_path / "out"
    async with simulate() as (sim, _, url):
        status = await run_command(
            ["run", str(job), "--base-url", url, "--results", str(out), "--recover", recover, *FAST]
        )
        params = {i.custom_id: i.params for i in read_requests(load_spec(job, {}))}  # type: ignore[union-attr]
        expected = {cid: reply_of(sim, p) for cid, p in params.items()}
    assert status == 0
    lines = read_results(out / "results.jsonl")
    assert all(line["attempts"] == 2 for line in lines)
    assert {line["custom_id"]: text_of(line) for line in lines} == expected
    rows = query(
        out / "job.sqlite",
        "SELECT r.custom_id, a.outcome, a.reason, a.partial, a.output_tokens FROM attempts a "
        "JOIN requests r ON r.id = a.request_id WHERE a.number = 1 ORDER BY r.id",
    )
    assert [(row[1], row[2]) for row in rows] == [
        ("broken", "connection"),
        ("broken", "no_message_stop"),
        ("broken", "in_band_overloaded_error"),
        ("retryable", "http_529"),
        ("retryable", "http_500"),
    ]
    delivered = []  # the text each broken stream delivered (several tokens a delta)
    for custom_id, _, _, partial, tokens in rows[:3]:
        text = json.loads(partial)["content"][0]["text"]
        assert expected[custom_id].startswith(text)
        assert tokens == count_tokens(text)  # the server's count_tokens of it: what the simulator billed
        delivered.append(text)
    billed = [line["billed_usage"]["output_tokens"] for line in lines]
    final = [line["result"]["message"]["usage"]["output_tokens"] for line in lines]
    assert [line["billed_usage_estimated"] for line in lines] == [True, True, True, False, False]
    if recover == "restart":  # what broken streams received is paid for twice
        assert [b - f for b, f in zip(billed, final, strict=True)] == [*map(count_tokens, delivered), 0, 0]
        assert all("recovery" not in line for line in lines)
    else:  # continued by prefill: nothing is paid twice (but a trailing whitespace token prefill trims)
        assert [b - f for b, f in zip(billed, final, strict=True)] == [
            count_tokens(text) - count_tokens(text.rstrip()) for text in delivered
        ] + [0, 0]
        assert [line.get("recovery") for line in lines] == [
            {
                "strategy": "prefill",
                "exact": True,
                "kept_output_tokens": count_tokens(text.rstrip()),
                "kept_tokens": "counted",
                "breaks": 1,
            }
            for text in delivered
        ] + [None, None]


async def test_retries_are_bounded(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "hopeless.jsonl", [{"prompt": "never <<sim-fault: overloaded>>"}, {"prompt": "fine"}])
    out = tmp_path / "out"
    async with simulate() as (sim, _, url):
        status = await run_command(
            ["run", str(job), "--base-url", url, "--results", str(out), "--max-attempts", "3", *FAST]
        )
    assert status == 0
    lines = read_results(out / "results.jsonl")
    assert lines[0]["result"] == {"type": "errored", "error": lines[0]["result"]["error"]}
    assert lines[0]["result"]["error"]["error"]["type"] == "overloaded_error"
    assert lines[0]["attempts"] == 3
    assert sim.stats.outcomes["overloaded"] == 3


async def test_stall_is_cut_by_the_read_timeout_and_retried(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "stall.jsonl", [{"prompt": "wait <<sim-fault: stall after=3 seconds=30 times=1>>"}])
    out = tmp_path / "out"
    async with simulate() as (_, _, url):
        status = await run_command(
            ["run", str(job), "--base-url", url, "--results", str(out), "--read-timeout", "0.3", *FAST]
        )
    assert status == 0
    assert read_results(out / "results.jsonl")[0]["attempts"] == 2
    assert query(out / "job.sqlite", "SELECT reason FROM attempts WHERE number = 1") == [("timeout",)]


async def make_job(tmp_path: Path, lines: list[dict[str, Any]]) -> tuple[Path, Path]:
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    db = tmp_path / "job.sqlite"
    spec = load_spec(job, {})
    async with open_store(db) as store:
        await store.load(spec.name, {"argv": []}, spec.fingerprint(), read_requests(spec))
    return job, db


async def test_checkpoints_reach_the_store_while_streaming_and_stop_saves_them(
    simulate: Simulate, tmp_path: Path
) -> None:
    lines = [{"prompt": f"s{i} <<sim-fault: stall after={3 + i} seconds=60 times=1>>"} for i in range(4)]
    job, db = await make_job(tmp_path, lines)
    settings = JobSettings(concurrency=8, checkpoint_interval=0.05)
    async with simulate() as (sim, client, _), open_store(db) as store:
        params = {i.custom_id: i.params for i in read_requests(load_spec(job, {}))}  # type: ignore[union-attr]
        running = Job(store, client, settings, Quiet())
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: running.run(handle_signals=False))
            await until_checkpointed(sim, running, 4)
            partial = query(
                db,
                "SELECT r.custom_id, a.partial, a.outcome FROM attempts a JOIN requests r ON r.id = a.request_id",
            )
            running.stop()
        summary_counts = await store.counts()
        assert summary_counts["pending"] == 4
        for custom_id, snapshot, outcome in partial:
            assert outcome is None  # still in flight when read
            text = json.loads(snapshot)["content"][0]["text"]
            assert reply_of(sim, params[custom_id]).startswith(text)
            assert text
        stopped = query(db, "SELECT outcome, reason, output_tokens, output_estimated FROM attempts ORDER BY request_id")
        # One name, as after a crash. In flight, output is estimated at one token a delta (a lower bound).
        assert stopped == [("interrupted", "job_stopped", 3 + i, 1) for i in range(4)]
        texts = {cid: json.loads(snapshot)["content"][0]["text"] for cid, snapshot, _ in partial}
        # Resume: the interrupted requests restart and finish; nothing is duplicated.
        summary = await Job(store, client, settings, Quiet()).run(handle_signals=False)
        assert summary.complete
        assert summary.counts["succeeded"] == 4
        results = [row async for row in store.results()]
    assert [row["attempts"] for row in results] == [2, 2, 2, 2]
    for row in results:
        text = "".join(b["text"] for b in row["result"]["content"])
        assert text == reply_of(sim, params[row["custom_id"]])
        # Continued from the checkpoint by prefill: no output token received before the stop is paid
        # again (but a trailing whitespace token prefill trims); the stopped attempt's output recounted.
        kept = texts[row["custom_id"]]
        paid_twice = count_tokens(kept) - count_tokens(kept.rstrip())
        assert row["billed"].output_tokens == row["result"]["usage"]["output_tokens"] + paid_twice
        assert row["billed_estimated"]
        assert row["recovery"] == {
            "strategy": "prefill",
            "exact": True,
            "kept_output_tokens": count_tokens(kept.rstrip()),
            "kept_tokens": "counted",
            "breaks": 1,
        }


async def test_changed_job_is_refused_unless_allowed(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    out = tmp_path / "out"
    argv = ["run", str(job), "--results", str(out), *FAST]
    async with simulate() as (sim, _, url):
        assert await run_command([*argv, "--base-url", url]) == 0
        assert await run_command([*argv, "--base-url", url]) == 0  # unchanged: nothing to do
        assert sim.stats.requests == 2
        write_jsonl(job, [{"prompt": "a"}, {"prompt": "b changed"}, {"prompt": "c"}])
        capsys.readouterr()
        assert await run_command([*argv, "--base-url", url]) == 2
        assert "has changed since the job" in capsys.readouterr().err
        assert sim.stats.requests == 2
        assert await run_command([*argv, "--base-url", url, "--allow-changed"]) == 0
        assert sim.stats.requests == 4
    lines = read_results(out / "results.jsonl")
    assert [line["custom_id"] for line in lines] == ["j-1", "j-2", "j-3"]


async def test_status_and_export(simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": f"p{i}"} for i in range(5)])
    out = tmp_path / "out"
    db = out / "job.sqlite"
    async with simulate() as (_, _, url):
        assert await run_command(["run", str(job), "--results", str(out), "--base-url", url, *FAST]) == 0
    written = (out / "results.jsonl").read_text()
    capsys.readouterr()
    assert await run_command(["status", str(db), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["counts"] == {"pending": 0, "running": 0, "succeeded": 5, "errored": 0}
    assert status["billed"]["output_tokens"] == sum(
        line["billed_usage"]["output_tokens"] for line in read_results(out / "results.jsonl")
    )
    assert await run_command(["status", str(db)]) == 0
    assert "succeeded: 5" in capsys.readouterr().out
    (out / "results.jsonl").unlink()
    assert await run_command(["export", str(db)]) == 0
    assert (out / "results.jsonl").read_text() == written
    assert await run_command(["export", str(db), "--out", str(tmp_path / "copy.jsonl")]) == 0
    assert (tmp_path / "copy.jsonl").read_text() == written
    assert await run_command(["status", str(tmp_path / "nope.sqlite")]) == 2


async def test_resume_without_the_job_file_keeps_the_spec_settings(simulate: Simulate, tmp_path: Path) -> None:
    write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"p{i} <<sim-fault: overloaded times=1>>"} for i in range(3)])
    spec = tmp_path / "job.toml"
    spec.write_text('inputs = ["p.jsonl"]\nresults = "out"\n[run]\nmax_attempts = 1\n')
    db = tmp_path / "out" / "job.sqlite"
    config = SimulatorConfig(timing=INSTANT, reject_api_keys=frozenset({"sk-test"}))
    async with simulate(config) as (sim, _, url):
        assert await run_command(["run", str(spec), "--base-url", url, *FAST]) == 3  # a bad key stops it
        assert query(db, "SELECT DISTINCT state FROM requests") == [("pending",)]
        (tmp_path / "p.jsonl").unlink()
        spec.unlink()
        sim.config = replace(sim.config, reject_api_keys=frozenset())
        assert await run_command(["resume", str(db), "--quiet"]) == 0
    # Each request's first real attempt gets a 529; with the spec's max_attempts = 1 that is final.
    assert query(db, "SELECT DISTINCT state FROM requests") == [("errored",)]
    per_request = "SELECT COUNT(*) FROM attempts WHERE reason = 'http_529' GROUP BY request_id"
    assert query(db, per_request) == [(1,), (1,), (1,)]


async def test_a_job_snapshot_before_its_run_began_counts_nothing(simulate: Simulate, tmp_path: Path) -> None:
    """A deadline run asks the streaming round for its snapshot at any time, before its run has read
    the store too: it must say nothing is done, not fail."""
    job = write_jsonl(tmp_path / "job.jsonl", [{"prompt": "hello"}])
    async with simulate() as (_, client, _), loaded_store(job, tmp_path / "job.sqlite") as store:
        snapshot = Job(store, client, JobSettings(), Quiet()).snapshot()
    assert (snapshot.done, snapshot.total, snapshot.in_flight, snapshot.failed) == (0, 0, 0, 0)
