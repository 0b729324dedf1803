"""A job meets every odd stream (the simulator's realistic deltas): malformed events, a stream
without message_stop, tool calls cut inside their JSON, thinking, breaks inside tool and thinking
blocks. Each attempt ends as the SDK would have it, and the job goes on to the right results."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
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
from orchestrator.store import open_store
from tests.conftest import INSTANT, Running
from tests.helpers import TOOLS, params_of, query, read_results, until_checkpointed, write_jsonl

pytestmark = pytest.mark.anyio

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
REALISTIC = SimulatorConfig(timing=INSTANT, tokens_per_delta=(1, 5))
FORCED = {"tools": TOOLS, "tool_choice": {"type": "any"}}
THINKING = {"thinking": {"type": "enabled", "budget_tokens": 1024}, "max_tokens": 1400}
UNKNOWN_BLOCK = {"type": "sim_future_block"}

# custom_id -> (line, attempts, the first attempt's outcome and reason when it broke)
CASES: dict[str, tuple[dict[str, Any], int, tuple[str, str] | None]] = {
    "no_stop": ({"prompt": "a <<sim-fault: no_stop>>"}, 1, None),
    "not_json": ({"prompt": "b <<sim-fault: malformed variant=not_json times=1>>"}, 2, ("broken", "malformed_stream")),
    "orphan": (
        {"prompt": "c <<sim-fault: malformed variant=orphan_delta times=1>>"},
        2,
        ("broken", "malformed_stream"),
    ),
    "unknown_block": ({"prompt": "d <<sim-fault: malformed variant=unknown_block>>"}, 1, None),
    "unknown_delta": ({"prompt": "e <<sim-fault: malformed variant=unknown_delta>>"}, 1, None),
    "tool_cut": ({"prompt": "f", **FORCED, "max_tokens": 20}, 1, None),
    "tool_no_stop": ({"prompt": "g <<sim-fault: no_stop>>", **FORCED, "max_tokens": 9}, 1, None),
    "tool_drop": ({"prompt": "h <<sim-fault: drop times=1>>", **FORCED}, 2, ("broken", "connection")),
    "tool_orphan": (
        {"prompt": "i <<sim-fault: malformed variant=orphan_delta times=1>>", **FORCED},
        2,
        ("broken", "malformed_stream"),
    ),
    "thinking_truncate": (
        {"prompt": "j <<sim-fault: truncate times=1>>", **THINKING},
        2,
        ("broken", "no_message_stop"),
    ),
    "thinking_no_stop": ({"prompt": "k <<sim-fault: no_stop>>", **THINKING}, 1, None),
}


async def test_no_single_stream_stops_the_job(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "odd.jsonl", [{"custom_id": cid, **line} for cid, (line, _, _) in CASES.items()])
    out = tmp_path / "out"
    async with simulate(REALISTIC) as (sim, _, url):
        status = await run_command(["run", str(job), "--base-url", url, "--results", str(out), "--quiet"])
        expected = {cid: sim.render_message(params) for cid, params in params_of(job).items()}
    assert status == 0
    lines = {line["custom_id"]: line for line in read_results(out)}
    assert list(lines) == list(CASES)
    for custom_id, (_, attempts, first) in CASES.items():
        line, want = lines[custom_id], expected[custom_id]
        assert line["result"]["type"] == "succeeded", custom_id
        message = line["result"]["message"]
        content = [*want["content"], UNKNOWN_BLOCK] if custom_id == "unknown_block" else want["content"]
        assert message["content"] == content, custom_id
        assert message["stop_reason"] == want["stop_reason"], custom_id
        assert line["attempts"] == attempts, custom_id
        if attempts == 1:  # billed once, and it holds every token billed
            assert line["billed_usage"]["output_tokens"] == message["usage"]["output_tokens"], custom_id
        rows = query(
            out / "job.sqlite",
            "SELECT a.outcome, a.reason FROM attempts a JOIN requests r ON r.id = a.request_id "
            "WHERE r.custom_id = ? ORDER BY a.number",
            custom_id,
        )
        assert rows[-1] == ("succeeded", None), custom_id
        if first is not None:
            assert rows[0] == first, custom_id
    # The tool call cut by max_tokens inside its JSON has the SDK's partial input: the values
    # whole by then, the unfinished one left out.
    cut = lines["tool_cut"]["result"]["message"]
    assert cut["stop_reason"] == "max_tokens"
    assert list(cut["content"][0]["input"]) == ["location"]
    assert lines["tool_no_stop"]["result"]["message"]["content"][0]["input"] == {}
    assert sim.stats.requests == sum(attempts for _, attempts, _ in CASES.values())


async def test_a_tool_call_checkpointed_inside_its_json_resumes(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(
        tmp_path / "tool.jsonl", [{"prompt": "t <<sim-fault: stall after=3 seconds=60 times=1>>", **FORCED}]
    )
    db = tmp_path / "job.sqlite"
    settings = JobSettings(checkpoint_interval=0.05)
    async with simulate(REALISTIC) as (sim, client, _):
        (params,) = params_of(job).values()
        expected = sim.render_message(params)
        async with open_store(db) as store:
            spec = load_spec(job, {})
            await store.load(spec.name, {"argv": []}, spec.fingerprint(), read_requests(spec))
            running = Job(store, client, settings, Quiet())
            async with anyio.create_task_group() as group:
                group.start_soon(lambda: running.run(handle_signals=False))
                await until_checkpointed(sim, running, 1)
                running.stop()
            ((partial,),) = query(db, "SELECT partial FROM attempts")
            (block,) = json.loads(partial)["content"]
            assert block["type"] == "tool_use"
            assert isinstance(block["input"], dict)  # the SDK's partial parse of the JSON so far
            assert "partial_json" not in block
            summary = await Job(store, client, settings, Quiet()).run(handle_signals=False)
            assert summary.complete
            results = [row async for row in store.results()]
    assert [row["result"]["content"] for row in results] == [expected["content"]]
    assert [row["attempts"] for row in results] == [2]
