"""Continued replies are the uninterrupted ones, to the token: kept text counted by the server, kept
reply durable across repeated stops, ``max_tokens`` never passed, billed estimates flagged."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.cli import run_command
from orchestrator.jobs.read import read_requests
from orchestrator.jobs.spec import load_spec
from orchestrator.results import result_line
from orchestrator.run.engine import Job
from orchestrator.runtime.progress import Quiet
from orchestrator.settings import JobSettings
from orchestrator.simulator import SimulatorConfig
from orchestrator.simulator.tokens import count_tokens
from orchestrator.store import open_store
from tests.conftest import INSTANT, Running
from tests.helpers import params_of, query, reply_of, run_in_process, write_jsonl

pytestmark = pytest.mark.anyio

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
REALISTIC = SimulatorConfig(timing=INSTANT)
SETTINGS = JobSettings(concurrency=8, checkpoint_interval=0.02, backoff_base=0.01, backoff_cap=0.02)


def text(message: dict[str, Any]) -> str:
    return "".join(block["text"] for block in message["content"] if block["type"] == "text")


async def test_a_request_stopped_again_and_again_keeps_every_part(simulate: Simulate, tmp_path: Path) -> None:
    """Stopped three times mid-stream, each time after its last checkpoint, then resumed: nothing
    kept is lost or repeated, and nothing received is paid for twice."""
    stops = 3
    job = write_jsonl(
        tmp_path / "job.jsonl",
        [{"prompt": f"s{i} <<sim-fault: stall after={2 + i} seconds=60 times={stops}>>"} for i in range(4)],
    )
    db = tmp_path / "job.sqlite"
    spec = load_spec(job, {})
    async with simulate(REALISTIC) as (sim, client, _):
        async with open_store(db) as store:
            await store.load(spec.name, {"argv": []}, spec.fingerprint(), read_requests(spec))
        for stop in range(stops):
            async with open_store(db) as store:
                running = Job(store, client, SETTINGS, Quiet())
                async with anyio.create_task_group() as group:
                    group.start_soon(partial(running.run, handle_signals=False))
                    # Wait until every stream has received all it gets before its stall (request i,
                    # row id i + 1, stalls after 2 + i deltas) and a checkpoint holds it, then stop.
                    # (The simulator's stall count alone can still include the last run's streams.)
                    await running.writer.until(
                        lambda w: (
                            len(w.live) == 4
                            and all(
                                live.acc.deltas >= 1 + live.request_id and not live.dirty for live in w.live.values()
                            )
                        )
                    )
                    running.stop()
            kept = query(db, "SELECT kept FROM requests")
            # The reply kept before this attempt was written with its start.
            assert all((row[0] is not None) == (stop > 0) for row in kept)
        async with open_store(db) as store:
            summary = await Job(store, client, SETTINGS, Quiet()).run(handle_signals=False)
            assert summary.complete
            lines = [result_line(row) async for row in store.results()]
            billed = await store.billed()
        expected = {cid: reply_of(sim, params) for cid, params in params_of(job).items()}
        server_billed = sim.stats.output_tokens_billed
    for line in lines:
        message = line["result"]["message"]
        assert text(message) == expected[line["custom_id"]]
        assert line["attempts"] == stops + 1
        assert line["recovery"]["breaks"] == stops
        assert line["recovery"]["kept_tokens"] == "counted"
        # The stopped attempts' output is our estimate: their text, counted by the server.
        assert line["billed_usage_estimated"] is True
        assert line["billed_usage"]["output_tokens"] == message["usage"]["output_tokens"]
        assert message["usage"]["output_tokens"] == count_tokens(text(message))
    assert billed.output_tokens == server_billed


def _cut_job(tmp_path: Path, count: int) -> Path:
    """Replies longer than max_tokens, each dropped after a few deltas (twice)."""
    return write_jsonl(
        tmp_path / "cut.jsonl",
        [
            {"prompt": f"cut {i} <<sim-fault: drop after={1 + i % 7} times=2>>", "max_tokens": 25 + i % 10}
            for i in range(count)
        ],
    )


async def test_a_continued_reply_cut_by_max_tokens_ends_at_the_same_token(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _cut_job(tmp_path, 40)
    config = SimulatorConfig(timing=INSTANT, reply_min=60, reply_max=120)
    async with simulate(config) as (sim, client, _):
        _, summary = await run_in_process(job, tmp_path / "job.sqlite", client, SETTINGS)
        params = params_of(job)
        expected = {cid: reply_of(sim, p) for cid, p in params.items()}
        server_billed = sim.stats.output_tokens_billed
    assert summary.complete
    async with open_store(tmp_path / "job.sqlite") as store:
        lines = [result_line(row) async for row in store.results()]
    partials = query(tmp_path / "job.sqlite", "SELECT json_extract(partial, '$.content[0].text') FROM attempts")
    # Some breaks kept a text ending in whitespace, which prefill trims and the continuation regenerates.
    assert any(row[0] and row[0] != row[0].rstrip() for row in partials)
    for line in lines:
        message = line["result"]["message"]
        max_tokens = params[line["custom_id"]]["max_tokens"]
        assert text(message) == expected[line["custom_id"]]
        assert (message["stop_reason"], message["usage"]["output_tokens"]) == ("max_tokens", max_tokens)
        assert line["recovery"]["breaks"] == 2
        # Nothing received is paid twice, but a trailing whitespace token that prefill trims is generated again.
        assert max_tokens <= line["billed_usage"]["output_tokens"] <= max_tokens + 2
    assert summary.billed.output_tokens == server_billed
    # The report says how many billed output tokens are estimates: those of the broken attempts.
    estimated = query(tmp_path / "job.sqlite", "SELECT SUM(output_tokens) FROM attempts WHERE output_estimated")
    assert estimated[0][0] > 0
    capsys.readouterr()
    assert await run_command(["report", str(tmp_path / "job.sqlite"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["billed_output_tokens_estimated"] == estimated[0][0]
    assert await run_command(["report", str(tmp_path / "job.sqlite")]) == 0
    assert f"billed output tokens: {estimated[0][0]:,} of {server_billed:,} are our estimate" in capsys.readouterr().out


async def test_without_count_tokens_a_continued_reply_stops_short_never_past(
    simulate: Simulate, tmp_path: Path
) -> None:
    job = _cut_job(tmp_path, 20)
    config = SimulatorConfig(timing=INSTANT, reply_min=60, reply_max=120, count_tokens_endpoint=False)
    async with simulate(config) as (sim, client, _):
        _, summary = await run_in_process(job, tmp_path / "job.sqlite", client, SETTINGS)
        params = params_of(job)
        expected = {cid: reply_of(sim, p) for cid, p in params.items()}
    assert summary.complete
    async with open_store(tmp_path / "job.sqlite") as store:
        lines = [result_line(row) async for row in store.results()]
    for line in lines:
        message = line["result"]["message"]
        max_tokens = params[line["custom_id"]]["max_tokens"]
        assert expected[line["custom_id"]].startswith(text(message))
        assert message["stop_reason"] == "max_tokens"
        assert count_tokens(text(message)) <= message["usage"]["output_tokens"] <= max_tokens
        assert line["recovery"]["kept_tokens"] == "upper_bound"
        assert line["billed_usage_estimated"] is True


async def test_a_json_reply_broken_mid_stream_ends_equal_to_the_uninterrupted_one(
    simulate: Simulate, tmp_path: Path
) -> None:
    """Structured outputs take no prefill: a broken JSON reply is restarted, and ends byte-equal to
    the reply that never broke (cut by max_tokens where the fault-free one is), valid for its schema."""
    schema = {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": ["a", "b"]},
            "words": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["label", "words"],
        "additionalProperties": False,
    }
    output_config = {"format": {"type": "json_schema", "schema": schema}}
    faults = ["drop after=2 times=2", "truncate after=1 times=1", "error_event after=3 times=2"]
    job = write_jsonl(
        tmp_path / "json.jsonl",
        [
            {
                "prompt": f"j{i} <<sim-fault: {faults[i % 3]}>>",
                "output_config": output_config,
                "max_tokens": 8 if i % 4 == 0 else 300,
            }
            for i in range(12)
        ],
    )
    async with simulate(REALISTIC) as (sim, client, _):
        _, summary = await run_in_process(job, tmp_path / "job.sqlite", client, SETTINGS)
        expected = {cid: reply_of(sim, p) for cid, p in params_of(job).items()}
        assert sim.stats.outcomes["invalid"] == 0  # no prefill was sent with a format
    assert summary.complete
    async with open_store(tmp_path / "job.sqlite") as store:
        lines = [result_line(row) async for row in store.results()]
    stops = set()
    for line in lines:
        message = line["result"]["message"]
        assert text(message) == expected[line["custom_id"]]
        assert line["attempts"] >= 2
        assert "recovery" not in line
        stops.add(message["stop_reason"])
        if message["stop_reason"] == "end_turn":
            assert json.loads(text(message))["label"] in ("a", "b")
    assert stops == {"end_turn", "max_tokens"}
