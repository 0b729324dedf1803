"""Limits, pauses, overloads and recovery end to end: the real SDK against the simulator."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import pytest

from orchestrator.cli import run_command
from orchestrator.client import http_client
from orchestrator.run.engine import Job
from orchestrator.run.limits import Permit
from orchestrator.runtime.progress import Quiet
from orchestrator.settings import JobSettings
from orchestrator.simulator import FaultRates, Limits, SimulatorConfig, Timing
from orchestrator.simulator.replies import full_reply
from orchestrator.simulator.tokens import count_tokens
from tests.conftest import INSTANT, Running
from tests.helpers import (
    expected_replies,
    loaded_store,
    query,
    read_results,
    run_in_process,
    text_of,
    write_jsonl,
)

pytestmark = pytest.mark.anyio

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
FAST = ["--quiet", "--checkpoint-interval", "0.05"]


async def run(job: Path, out: Path, url: str, *extra: str) -> int:
    return await run_command(["run", str(job), "--base-url", url, "--results", str(out), *FAST, *extra])


async def test_spend_cap_stops_the_job(simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": f"p{i}"} for i in range(50)])
    config = SimulatorConfig(timing=INSTANT, limits=Limits(spend_cap=True))
    async with simulate(config) as (sim, _, url):
        status = await run(job, tmp_path / "out", url, "--concurrency", "4")
    assert status == 3
    assert "the job stopped: spend_cap" in capsys.readouterr().err
    assert sim.stats.requests <= 8


async def test_multiple_breaks_are_continued_exactly(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": "story <<sim-fault: drop times=3>>"}, {"prompt": "plain"}])
    out = tmp_path / "out"
    async with simulate() as (sim, _, url):
        assert await run(job, out, url) == 0
        expected = expected_replies(sim, job)
    lines = read_results(out)
    assert [text_of(line) for line in lines] == list(expected.values())
    assert lines[0]["attempts"] == 4
    assert lines[0]["recovery"]["breaks"] == 3
    assert lines[0]["recovery"]["exact"] is True
    assert lines[0]["billed_usage"]["output_tokens"] == lines[0]["result"]["message"]["usage"]["output_tokens"]


async def test_a_break_after_whitespace_is_trimmed_and_carried_over(simulate: Simulate, tmp_path: Path) -> None:
    # Find a prompt whose reply has a paragraph break right where the prompt cuts the stream.
    def reply(prompt: str) -> list[str]:
        body = {"model": "claude-haiku-4-5", "max_tokens": 1024, "messages": [{"role": "user", "content": prompt}]}
        return full_reply(0, body, 20, 300)

    found = (
        (prompt, tokens, after)
        for n in range(1000)
        for after in range(2, 40)
        if (tokens := reply(prompt := f"q{n} <<sim-fault: drop after={after} times=1>>"))[after - 1 : after] == ["\n\n"]
    )
    prompt, tokens, after = next(found)
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": prompt}])
    out = tmp_path / "out"
    async with simulate(SimulatorConfig(timing=INSTANT, tokens_per_delta=(1, 1))) as (sim, _, url):  # cut at a token
        assert await run(job, out, url) == 0
        expected = expected_replies(sim, job)
    line = read_results(out)[0]
    assert text_of(line) == expected["j-1"]
    # What is prefilled is counted (the trimmed "\n\n" is generated again by the continuation) ...
    assert line["recovery"]["kept_output_tokens"] == after - 1
    # ... so a reply that reaches max_tokens ends at the same token as the uninterrupted one.
    assert line["result"]["message"]["usage"]["output_tokens"] == len(tokens)
    assert line["billed_usage"]["output_tokens"] == len(tokens) + 1  # the newlines, generated twice


async def test_a_break_near_max_tokens_stops_where_the_uninterrupted_reply_would(
    simulate: Simulate, tmp_path: Path
) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": "long <<sim-fault: drop after=8 times=1>>", "max_tokens": 12}])
    out = tmp_path / "out"
    config = SimulatorConfig(timing=INSTANT, reply_min=100, reply_max=100)
    async with simulate(config) as (sim, _, url):
        assert await run(job, out, url) == 0
        expected = expected_replies(sim, job)
    line = read_results(out)[0]
    assert text_of(line) == expected["j-1"]
    assert line["result"]["message"]["stop_reason"] == "max_tokens"
    assert line["result"]["message"]["usage"]["output_tokens"] == 12


async def test_models_that_reject_prefill_restart_in_auto_and_continue_on_request(
    simulate: Simulate, tmp_path: Path
) -> None:
    lines = [{"prompt": "essay <<sim-fault: drop after=10 times=1>>", "model": "claude-opus-5"}]
    job = write_jsonl(tmp_path / "j.jsonl", lines)
    async with simulate() as (sim, _, url):
        assert await run(job, tmp_path / "auto", url) == 0
        expected = expected_replies(sim, job)
        assert sim.stats.outcomes.get("invalid", 0) == 0  # never sent a prefill the model rejects
    async with simulate() as (sim, _, url):  # a fresh simulator: the fault hits the first attempt again
        assert await run(job, tmp_path / "cont", url, "--recover", "continue") == 0
        assert sim.stats.outcomes.get("invalid", 0) == 0
    restarted = read_results(tmp_path / "auto")[0]
    assert text_of(restarted) == expected["j-1"]
    assert "recovery" not in restarted
    broken = query(tmp_path / "auto" / "job.sqlite", "SELECT partial FROM attempts WHERE number = 1")[0][0]
    paid_twice = count_tokens(json.loads(broken)["content"][0]["text"])  # what the broken stream delivered
    assert restarted["billed_usage_estimated"] is True
    assert restarted["billed_usage"]["output_tokens"] == restarted["result"]["message"]["usage"]["output_tokens"] + (
        paid_twice
    )
    continued = read_results(tmp_path / "cont")[0]
    assert continued["recovery"] == {
        "strategy": "continue",
        "exact": False,
        "kept_output_tokens": paid_twice,
        "kept_tokens": "counted",
        "breaks": 1,
    }
    assert text_of(continued).startswith(expected["j-1"][:20])


async def test_configured_limits_are_kept_without_429s(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": f"p{i}"} for i in range(30)])
    config = SimulatorConfig(timing=INSTANT, limits=Limits(rpm=1200, burst_seconds=1))
    async with simulate(config) as (sim, _, url):
        assert await run(job, tmp_path / "out", url, "--rpm", "1200", "--concurrency", "16") == 0
    assert sim.stats.rate_limited == 0
    assert sim.stats.outcomes["ok"] == 30


async def test_limits_are_learned_from_headers(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": f"p{i}"} for i in range(40)])
    config = SimulatorConfig(timing=INSTANT, limits=Limits(rpm=1200, burst_seconds=1))
    async with simulate(config) as (sim, _, url):
        assert await run(job, tmp_path / "out", url, "--concurrency", "8") == 0
    assert sim.stats.outcomes["ok"] == 40
    assert sim.stats.rate_limited == 0  # the first request probes; the rest wait for its headers


# A top tier's headers (60,000 RPM, 10M ITPM, 2M OTPM) against streams held open by a long time to
# the first token. Both clocks stand still: no bucket refills, so whatever runs at once was let in by
# what the first response's headers said.
TOP_TIER = Limits(rpm=60_000, itpm=10_000_000, otpm=2_000_000)
MODEL = "claude-haiku-4-5"


async def open_at_once(simulate: Simulate, tmp_path: Path, streams: int, requests_left: int | None = None) -> Job:
    """300 requests at ``--concurrency 300`` in automatic mode until ``streams`` are open, then a stop;
    the server has ``requests_left`` requests in its bucket (None: a full bucket)."""
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": f"p{i}"} for i in range(300)])
    settings = JobSettings(concurrency=300)
    config = SimulatorConfig(timing=Timing(ttft=600.0), limits=TOP_TIER)
    async with (
        simulate(config, clock=lambda: 0.0, http_client=http_client(settings)) as (sim, client, _),
        loaded_store(job, tmp_path / "job.sqlite") as store,
    ):
        bucket = sim.limits.buckets["requests"]
        if requests_left is not None and bucket is not None:
            bucket.level = requests_left
        running = Job(store, client, settings, Quiet(), limiter_clock=lambda: 0.0)
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: running.run(handle_signals=False))
            await sim.until(lambda stats: stats.streams_now == streams)
            assert running.limiter.state.in_flight == streams  # the client let in no more than that
            assert sim.stats.rate_limited == 0
            running.stop()
    return running


async def test_generous_headers_open_the_gate_to_the_whole_concurrency(simulate: Simulate, tmp_path: Path) -> None:
    # The probe goes alone; its headers let the other 299 go at once (the output bucket holds half
    # a second of 2M OTPM: a stream's whole expected output would have let in 63).
    await open_at_once(simulate, tmp_path, 300)


async def test_headers_that_say_little_remains_hold_the_gate(simulate: Simulate, tmp_path: Path) -> None:
    running = await open_at_once(simulate, tmp_path, 5, requests_left=5)  # the probe, then 4
    state = running.limiter.state
    assert state.models[MODEL].buckets["requests"].level < 1
    assert not isinstance(state.admit(MODEL, 10, 1024, 0.0), Permit)  # the gate holds


async def test_a_429_pauses_the_pool_instead_of_a_herd_of_retries(simulate: Simulate, tmp_path: Path) -> None:
    # The client believes it may send 6,000 a minute; the server allows 600 (10/s, a bucket of 10).
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": f"p{i}"} for i in range(25)])
    config = SimulatorConfig(timing=INSTANT, limits=Limits(rpm=600, burst_seconds=1))
    settings = JobSettings(concurrency=16, limits={"rpm": 6000}, backoff_base=0.01)
    async with simulate(config) as (sim, client, _):
        job_run, summary = await run_in_process(job, tmp_path / "job.sqlite", client, settings)
    assert summary.complete
    assert summary.counts["succeeded"] == 25
    assert job_run.limiter.state.pauses >= 1
    # Each cool-down lets the bucket refill; without it, 16 workers would hammer the server.
    assert sim.stats.rate_limited < 25


async def test_overload_lowers_concurrency(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": f"p{i}"} for i in range(40)])
    config = SimulatorConfig(timing=INSTANT, faults=FaultRates(overloaded=0.3, error_event=0.1))
    settings = JobSettings(concurrency=10, backoff_base=0.001, max_attempts=20)
    async with simulate(config) as (sim, client, _):
        with anyio.fail_after(30):
            job_run, summary = await run_in_process(job, tmp_path / "job.sqlite", client, settings)
    assert summary.counts["succeeded"] == 40
    assert job_run.limiter.state.cuts >= 1
    assert sim.stats.faults_injected["overloaded"] > 0


async def test_retries_are_bounded_in_time_too(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": "never <<sim-fault: overloaded>>"}])
    out = tmp_path / "out"
    async with simulate() as (sim, _, url):
        assert await run(job, out, url, "--retry-max-seconds", "0", "--max-attempts", "50") == 0
    line = read_results(out)[0]
    assert line["result"]["type"] == "errored"
    assert line["attempts"] == 1
    assert sim.stats.outcomes["overloaded"] == 1
