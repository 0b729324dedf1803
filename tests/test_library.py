"""The Python API: run_job from plain code, arun_job inside a running loop, both resumable."""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import pytest

import orchestrator
from orchestrator.cli import run_command
from orchestrator.models import Usage
from orchestrator.pricing import load_prices
from orchestrator.simulator import SimulatorConfig, Timing
from tests.conftest import Running
from tests.helpers import query, read_results, reply_of, text_of

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
ROWS = [{"prompt": f"question {i}"} for i in range(8)] + [
    {
        "custom_id": "last",
        "params": {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "the end"}]},
    }
]


def test_run_job_from_sync_code_resumes_after_an_abort(tmp_path: Path) -> None:
    out = tmp_path / "out"
    fast = SimulatorConfig(timing=Timing(speed=math.inf))
    rejecting = SimulatorConfig(timing=Timing(speed=math.inf), reject_api_keys=frozenset({"sk-simulator"}))
    with pytest.raises(orchestrator.JobAborted, match=r"the job stopped: http_401 \(authentication_error"):
        orchestrator.run_job(iter(ROWS), simulate=rejecting, results=out)  # an iterator: streamed once
    assert query(out / "job.sqlite", "SELECT DISTINCT state FROM requests") == [("pending",)]
    done = orchestrator.run_job(iter(ROWS), simulate=fast, results=out)  # the same requests: the same job, resumed
    assert done.complete
    assert done.succeeded == 9
    assert done.errored == 0
    assert done.billed["output_tokens"] > 0
    assert done.cost == load_prices().cost("claude-haiku-4-5", Usage.from_dict(done.billed))
    results = done.results()
    assert isinstance(results, types.GeneratorType)
    lines = list(results)
    assert [line["custom_id"] for line in lines] == [f"input-{i}" for i in range(1, 9)] + ["last"]
    assert lines == read_results(out / "results.jsonl")
    again = orchestrator.run_job(ROWS, simulate=fast, results=out)  # nothing left to do
    assert again.succeeded == 9
    assert query(out / "job.sqlite", "SELECT COUNT(*) FROM attempts WHERE outcome = 'succeeded'") == [(9,)]


def test_bad_input_and_options_raise_the_cli_errors(tmp_path: Path) -> None:
    job = tmp_path / "bad.jsonl"
    job.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    with pytest.raises(orchestrator.JobFileError, match=f"{job}:2: 'prompt' must be a non-empty string"):
        orchestrator.run_job(job, simulate=True, results=str(tmp_path / "out"))
    with pytest.raises(TypeError, match="colour"):
        orchestrator.run_job(job, colour="red")  # type: ignore[call-arg]
    # Messages name the parameter as a Python caller writes it.
    with pytest.raises(orchestrator.UserError, match=r"^concurrency must be an integer at least 1, not 0$"):
        orchestrator.run_job(job, concurrency=0)
    with pytest.raises(orchestrator.UserError, match=r"^max_cost must be a number above 0"):
        orchestrator.run_job(job, max_cost=-1)
    with pytest.raises(orchestrator.UserError, match=r"^headroom must be a number above 0 and at most 1"):
        orchestrator.run_job(job, headroom=2.0)
    with pytest.raises(orchestrator.UserError, match=r"^max_tokens "):
        orchestrator.run_job(job, max_tokens=0)
    with pytest.raises(orchestrator.UserError, match=r"^batch_size is for batch mode only.*drop batch_size"):
        orchestrator.run_job(job, simulate=True, batch_size=10, results=tmp_path / "out")
    with pytest.raises(orchestrator.UserError, match="not JSON"):
        orchestrator.run_job([{"prompt": object()}], results=str(tmp_path / "x"))


@pytest.mark.anyio
async def test_arun_job_in_a_running_loop_resumes_after_an_interruption(simulate: Simulate, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = SimulatorConfig(reply_min=20, reply_max=60, timing=Timing(ttft=0.0, tokens_per_second=400))
    rows = [{"prompt": f"p{i}", "custom_id": f"r{i}"} for i in range(12)]
    with pytest.raises(orchestrator.UserError, match=r"use `await orchestrator\.arun_job"):
        orchestrator.run_job(rows)
    async with simulate(config) as (sim, _, url):

        async def start() -> orchestrator.JobResult:
            return await orchestrator.arun_job(rows, base_url=url, results=out, concurrency=3, checkpoint_interval=0.05)

        with anyio.CancelScope() as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(start)
                await sim.until(lambda stats: stats.outcomes["ok"] >= 3)
                scope.cancel()
        first = query(out / "job.sqlite", "SELECT COUNT(*) FROM requests WHERE state = 'succeeded'")[0][0]
        assert first < 12  # stopped partway (the server had finished 3; the client may not have all committed)
        sent = sim.stats.requests
        done = await start()
        assert done.succeeded == 12
        assert sim.stats.requests - sent <= 12 - first  # the succeeded ones were not sent again
        # The stored command line resumes it too (the CLI and the API share one path).
        assert await run_command(["resume", str(out / "job.sqlite"), "--quiet"]) == 0
    lines = list(done.results())
    assert [line["custom_id"] for line in lines] == [f"r{i}" for i in range(12)]
    for line, row in zip(lines, rows, strict=True):
        params = {
            "model": "claude-haiku-4-5",
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": row["prompt"]}],
        }
        assert text_of(line) == reply_of(sim, params)
