"""Prompt caching for the user: breakpoints placed on shared prefixes, one request warms each."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from orchestrator.api.prefix import Breakpoint, Planner, boundaries, place
from orchestrator.cli import run_command
from orchestrator.pricing import load_prices
from orchestrator.run.warmth import Warmth
from orchestrator.runtime.progress import describe
from orchestrator.settings import JobSettings
from orchestrator.simulator import BatchSettings, SimulatorConfig
from tests.conftest import INSTANT, FakeClock
from tests.helpers import query, reply_of, run_in_process, write_jsonl
from tests.test_batch import batch_settings, run_batch, simulated
from tests.test_run import Simulate

pytestmark = pytest.mark.anyio

SONNET = "claude-sonnet-4-5"  # caches prefixes of 1,024 tokens and more


def policy(k: int) -> str:
    return f"Policy {k}. " + "Answer with care and cite the rules. " * 300  # ~2,100 tokens


def interleaved(count: int, prefixes: int, marked: bool = False, fault_first: bool = False) -> list[dict[str, Any]]:
    lines = []
    for i in range(count):
        system: Any = policy(i % prefixes)
        if marked:
            system = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
        question = f"Question {i}?"
        if fault_first and i == 0:
            question += " <<sim-fault: overloaded times=1>>"
        lines.append(
            {
                "custom_id": f"q{i}",
                "params": {
                    "model": SONNET,
                    "max_tokens": 50,
                    "system": system,
                    "messages": [{"role": "user", "content": question}],
                },
            }
        )
    return lines


async def test_each_of_several_interleaved_prefixes_is_written_once_then_read(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = interleaved(48, prefixes=4)
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    async with simulate(SimulatorConfig(timing=INSTANT)) as (sim, client, _):
        _, summary = await run_in_process(job, tmp_path / "job.sqlite", client, JobSettings(concurrency=16))
        expected = {line["custom_id"]: reply_of(sim, line["params"]) for line in lines}
    assert summary.complete
    rows = attempts(tmp_path / "job.sqlite")
    assert len(rows) == 48
    writers = [cid for cid, written, _ in rows if written]
    assert len(writers) == 4  # one write per prefix
    assert all(read > 2000 for cid, _, read in rows if cid not in writers)
    assert sim.stats.cache_creation_input_tokens_billed == sum(written for _, written, _ in rows)
    stored = query(tmp_path / "job.sqlite", "SELECT params FROM requests WHERE custom_id = 'q0'")[0][0]
    assert json.loads(stored) == lines[0]["params"]  # the stored request keeps the user's params
    assert texts(tmp_path / "job.sqlite") == expected  # the replies of the prompts as given
    # The report, per prefix: its requests, its one write, the reads, what it saved.
    capsys.readouterr()
    assert await run_command(["report", str(tmp_path / "job.sqlite"), "--format", "json"]) == 0
    prefixes = json.loads(capsys.readouterr().out)["jobs"][0]["cache_prefixes"]
    assert [p["requests"] for p in prefixes] == [12] * 4
    assert sum(p["cache_write_tokens"] for p in prefixes) == sim.stats.cache_creation_input_tokens_billed
    assert sum(p["cache_read_tokens"] for p in prefixes) == sim.stats.cache_read_input_tokens_billed
    assert all(p["saved_usd"] > 0 and p["tokens"] > 2000 for p in prefixes)
    assert await run_command(["report", str(tmp_path / "job.sqlite")]) == 0
    text = capsys.readouterr().out
    assert "prompt cache by prefix" in text
    assert prefixes[0]["prefix"] in text


async def test_cache_off_sends_the_requests_as_they_are(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", interleaved(12, prefixes=2))
    async with simulate(SimulatorConfig(timing=INSTANT)) as (sim, client, _):
        _, summary = await run_in_process(job, tmp_path / "job.sqlite", client, JobSettings(concurrency=4, cache="off"))
    assert summary.complete
    assert sim.stats.cache_creation_input_tokens_billed == sim.stats.cache_read_input_tokens_billed == 0


async def test_a_leader_that_fails_before_its_response_begins_hands_the_lead_on(
    simulate: Simulate, tmp_path: Path
) -> None:
    lines = interleaved(16, prefixes=1, marked=True, fault_first=True)
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    async with simulate(SimulatorConfig(timing=INSTANT)) as (sim, client, _):
        _, summary = await run_in_process(
            job, tmp_path / "job.sqlite", client, JobSettings(concurrency=8, backoff_base=0.01)
        )
        expected = {line["custom_id"]: reply_of(sim, line["params"]) for line in lines}
    assert summary.complete
    assert sim.stats.faults_injected["overloaded"] == 1
    writes = [written for _, written, _ in attempts(tmp_path / "job.sqlite") if written]
    assert len(writes) == 1  # the 529 wrote nothing; the next request led
    assert texts(tmp_path / "job.sqlite") == expected


def attempts(db: Path) -> list[tuple[str, int, int]]:
    """(custom_id, cache writes, cache reads) of every attempt."""
    sql = (
        "SELECT custom_id, cache_creation_input_tokens, cache_read_input_tokens"
        " FROM attempts JOIN requests ON requests.id = attempts.request_id"
    )
    return [(str(c), int(w), int(r)) for c, w, r in query(db, sql)]


def texts(db: Path) -> dict[str, str]:
    rows = query(db, "SELECT custom_id, result FROM requests WHERE state = 'succeeded'")
    return {str(c): "".join(b["text"] for b in json.loads(r)["content"] if b["type"] == "text") for c, r in rows}


# -- the pure parts -------------------------------------------------------------------


def body(system: Any, question: str = "Q?", model: str = SONNET) -> dict[str, Any]:
    return {"model": model, "max_tokens": 10, "system": system, "messages": [{"role": "user", "content": question}]}


def test_the_planner_finds_the_prefixes_shared_by_two_requests_and_long_enough() -> None:
    planner = Planner()
    for i in range(6):
        planner.add(body(policy(i % 2), f"Q{i}"))
    planner.add(body(policy(9)))  # alone: not worth a breakpoint
    planner.add(body("Short and shared."))
    planner.add(body("Short and shared."))
    plan = planner.plan()
    assert sorted(plan.shared.values()) == [3, 3]
    sent, points = place(body(policy(0), "Q0"), plan)
    assert sent["system"] == [{"type": "text", "text": policy(0), "cache_control": {"type": "ephemeral"}}]
    assert sent["messages"] == [{"role": "user", "content": "Q0"}]
    assert len(points) == 1
    assert points[0].ttl == 300.0
    assert place(body(policy(9)), plan) == (body(policy(9)), [])


def test_placement_keeps_the_users_breakpoints_and_the_apis_limits() -> None:
    marked = {"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral"}}
    shared = {"type": "text", "text": policy(0)}
    params = {
        **body([marked, shared]),
        "messages": [{"role": "user", "content": [{"type": "text", "text": policy(1)}, {"type": "text", "text": "Q"}]}],
    }
    planner = Planner()
    planner.add(params)
    planner.add(
        {
            **params,
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": policy(1)}, {"type": "text", "text": "R"}]}
            ],
        }
    )
    original = repr(params)
    sent, _ = place(params, planner.plan(ttl="1h"))
    assert repr(params) == original  # the stored params are untouched
    assert sent["system"][0] == marked
    assert sent["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}  # 1h cannot follow a 5m
    assert "cache_control" not in sent["messages"][0]["content"][1]
    full = {**params, "system": [marked] * 4}
    assert place(full, planner.plan())[0] == full  # four of the user's own: no room
    automatic = {**body(policy(2)), "cache_control": {"type": "ephemeral"}}
    assert boundaries(automatic)[-1].ttl == "5m"  # the API's automatic breakpoint on the last block


def test_one_request_warms_a_prefix_while_the_others_wait_and_an_expired_one_warms_again() -> None:
    warmth = Warmth()
    a, b = Breakpoint(1, 2000, 300.0), Breakpoint(2, 2000, 300.0)
    leader = warmth.turn([a], now=0.0)
    assert leader.leads == (1,)
    assert warmth.turn([a], now=0.1).wait == 1  # shares a cold prefix being warmed: waits
    assert warmth.turn([b], now=0.1).leads == (2,)  # another prefix: not held back
    warmth.failed(leader.leads)  # the leader failed before its response began: the next one leads
    second = warmth.turn([a], now=0.2)
    assert second.leads == (1,)
    warmth.began([a], second.leads, started=0.2)
    assert warmth.turn([a], now=1.0) == warmth.turn([a], now=200.0)  # warm: everyone goes, no lead
    assert warmth.turn([a], now=200.0).leads == ()
    warmth.began([a], (), started=200.0)  # a read refreshes the entry
    assert warmth.turn([a], now=490.0).leads == ()
    again = warmth.turn([a], now=600.0)  # idle past its TTL: cold, warmed again, once
    assert again.leads == (1,)
    assert warmth.turn([a], now=600.1).wait == 1


async def test_a_batch_job_gets_1h_breakpoints_on_its_shared_prefixes(simulate: Simulate, tmp_path: Path) -> None:
    lines = interleaved(10, prefixes=2)
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    clock = FakeClock()
    config = SimulatorConfig(timing=INSTANT, batches=BatchSettings(seconds=10))
    async with simulate(config, clock=clock) as (sim, client, _):
        _, summary = await run_batch(job, tmp_path / "job.sqlite", client, batch_settings(), simulated(clock))
        expected = {line["custom_id"]: reply_of(sim, line["params"]) for line in lines}
    assert summary.complete
    rows = attempts(tmp_path / "job.sqlite")
    assert len([cid for cid, written, _ in rows if written]) == 2  # best effort: here one write per prefix
    assert sum(1 for _, _, read in rows if read) == 8
    written = query(tmp_path / "job.sqlite", "SELECT SUM(cache_creation_1h_input_tokens) FROM attempts")[0][0]
    assert written == sim.stats.batches.tokens_billed["cache_creation_input_tokens"] > 0  # the 1-hour TTL
    assert texts(tmp_path / "job.sqlite") == expected


async def test_the_dry_run_estimates_the_cost_with_caching_and_the_bar_shows_the_hit_rate(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_jsonl(tmp_path / "job.jsonl", interleaved(40, prefixes=4))
    async with simulate(SimulatorConfig(timing=INSTANT)) as (sim, client, url):
        capsys.readouterr()
        assert await run_command(["run", str(job), "--base-url", url, "--dry-run"]) == 0
        text = capsys.readouterr().out
        running, summary = await run_in_process(job, tmp_path / "job.sqlite", client, JobSettings(concurrency=8))
        stats = sim.stats
    assert summary.complete
    line = next(line for line in text.splitlines() if "prompt caching" in line)
    cached, uncached = (Decimal(word.strip("$;")) for word in line.split() if word.startswith("$"))
    price = load_prices().price(SONNET)
    assert price is not None
    billed = (
        stats.input_tokens_billed * price.input
        + stats.cache_creation_input_tokens_billed * price.cache_write_5m
        + stats.cache_read_input_tokens_billed * price.cache_read
    ) / 1_000_000
    assert abs(cached - billed) / billed < Decimal("0.05")  # the estimate is what the run paid
    assert uncached > 4 * cached
    assert "4 shared prefixes" in line
    hit = running.snapshot().cache_hit
    assert hit is not None
    assert hit > 0.85
    assert f"cache hit {hit:.0%}" in describe(running.snapshot())


def test_a_prefix_used_more_than_5_minutes_apart_gets_the_1h_ttl_and_ttls_keep_the_apis_order() -> None:
    planner = Planner()
    tools = [{"name": "lookup", "description": policy(7), "input_schema": {"type": "object"}}]
    planner.add({**body(policy(0), "first"), "tools": tools})
    planner.add({**body(policy(1), "often"), "tools": tools})
    planner.add({**body(policy(1), "often again"), "tools": tools})
    for i in range(600):  # ten minutes at one request a second
        planner.add(body(f"short {i}"))
    planner.add({**body(policy(0), "last"), "tools": tools})
    plan = planner.plan(requests_per_second=1.0)
    sent, points = place({**body(policy(0), "again"), "tools": tools}, plan)
    long = {"type": "ephemeral", "ttl": "1h"}
    assert sent["system"][0]["cache_control"] == long  # its uses are 603 s apart
    assert sent["tools"][0]["cache_control"] == long  # 5m would do, but no 1h may follow a 5m
    assert [point.ttl for point in points] == [3600.0, 3600.0]
    often, _ = place({**body(policy(1), "x"), "tools": tools}, plan)
    assert often["tools"][0]["cache_control"] == often["system"][0]["cache_control"] == {"type": "ephemeral"}
    users = {**body([{"type": "text", "text": policy(0), "cache_control": {"type": "ephemeral"}}]), "tools": tools}
    assert place(users, plan)[0]["tools"][0]["cache_control"] == {"type": "ephemeral"}  # before the user's 5m


async def test_a_later_run_warms_an_expired_prefix_again_once_and_reads_a_live_one(
    simulate: Simulate, tmp_path: Path
) -> None:
    clock = FakeClock()

    def job(name: str) -> Path:
        lines = interleaved(12, prefixes=2)
        for line in lines:
            line["params"]["messages"][0]["content"] += f" ({name})"
        return write_jsonl(tmp_path / f"{name}.jsonl", lines)

    async with simulate(SimulatorConfig(timing=INSTANT), clock=clock) as (sim, client, _):
        writes = []
        for name, idle in (("first", 0), ("expired", 301), ("live", 200)):
            clock.advance(idle)
            before = sim.stats.cache_creation_input_tokens_billed
            _, summary = await run_in_process(
                job(name), tmp_path / f"{name}.sqlite", client, JobSettings(concurrency=6)
            )
            assert summary.complete
            writes.append(sim.stats.cache_creation_input_tokens_billed - before)
            rows = attempts(tmp_path / f"{name}.sqlite")
            assert sum(1 for _, written, _ in rows if written) == (0 if name == "live" else 2)
    assert writes[0] == writes[1] > 0
    assert writes[2] == 0
