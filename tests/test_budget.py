"""The spend cap: launches stop before the cost could pass it; a higher cap resumes the job."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from pathlib import Path

import pytest

from orchestrator.cli import run_command
from orchestrator.models import Usage
from orchestrator.pricing import load_prices
from orchestrator.runtime.budget import Budget, input_bound, worst_case
from orchestrator.runtime.progress import Snapshot, describe
from orchestrator.simulator import Simulator
from tests.conftest import Running
from tests.helpers import query, read_results, write_jsonl

pytestmark = pytest.mark.anyio

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
FAST = ["--quiet", "--checkpoint-interval", "0.05"]
HAIKU = "claude-haiku-4-5"


def billed_cost(sim: Simulator) -> Decimal:
    """What the simulator billed, at the shipped prices."""
    stats = sim.stats
    usage = Usage(input_tokens=stats.input_tokens_billed, output_tokens=stats.output_tokens_billed)
    cost = load_prices().cost(HAIKU, usage)
    assert cost is not None
    return cost


def test_admit_reserves_the_worst_case_and_refuses_past_the_cap() -> None:
    prices = load_prices()
    params = {"model": HAIKU, "max_tokens": 100, "messages": [{"role": "user", "content": "hello"}]}
    worst = worst_case(prices, params)
    assert worst == (input_bound(params) * 1 + 100 * 5) / Decimal(1_000_000)
    budget = Budget(cap=worst * 2, prices=prices)
    assert budget.admit(params) == worst
    assert budget.admit(params) == worst
    assert budget.admit(params) is None  # a third in flight could pass the cap
    budget.settle(worst, HAIKU, Usage(input_tokens=10, output_tokens=20))
    assert budget.admit(params) is None  # once refused, nothing more is launched
    assert budget.spent == Decimal(10 + 20 * 5) / 1_000_000
    cached = {**params, "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}]}
    cached_worst = worst_case(prices, cached)
    assert cached_worst is not None
    assert cached_worst == (input_bound(cached) * 2 + 100 * 5) / Decimal(1_000_000)  # cache writes, 1h price
    assert Budget().admit(params) == 0  # no cap


def test_the_bar_shows_spend_against_the_cap() -> None:
    snapshot = Snapshot(1, 2, 0, 0, 0, 0, 1.0, 1, cost=Decimal("0.0012"), cap=Decimal("0.5"))
    assert "cost $0.0012 of $0.5000 cap" in describe(snapshot)


async def test_a_cap_stops_the_job_partway_and_a_higher_cap_resumes_it(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": f"question {i}"} for i in range(20)])
    out = tmp_path / "out"
    db = out / "job.sqlite"
    argv = ["run", str(job), "--results", str(out), "--max-tokens", "100", "--concurrency", "3", *FAST]
    cap = Decimal("0.003")  # about five requests' worst case (100 output tokens at $5/M each)
    async with simulate() as (sim, _, url):
        assert await run_command([*argv, "--base-url", url, "--max-cost", str(cap)]) == 3
        err = capsys.readouterr().err
        done = query(db, "SELECT COUNT(*) FROM requests WHERE state = 'succeeded'")[0][0]
        assert 0 < done < 20
        assert sim.stats.requests == done  # nothing refused was sent
        spent = billed_cost(sim)
        assert spent <= cap
        assert f"the job stopped at its spend cap: spent ${spent:,.4f} of the $0.0030 cap" in err
        assert f"{20 - done:,} requests left" in err
        assert f"orchestrator resume {db} --max-cost USD" in err
        # The same cap again: what the reservations of the requests in flight held back may go on; never past it.
        assert await run_command(["resume", str(db), "--quiet"]) == 3
        assert billed_cost(sim) <= cap
        assert sim.stats.requests < 20
        assert await run_command(["resume", str(db), "--quiet", "--max-cost", "0.05"]) == 0
        assert billed_cost(sim) <= Decimal("0.05")
    lines = read_results(out)
    assert len(lines) == 20
    assert all(line["result"]["type"] == "succeeded" for line in lines)
    assert sim.stats.requests == 20  # each sent once


async def test_a_cap_with_an_unpriced_model_is_refused_up_front(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": "a"}, {"prompt": "b", "model": "claude-nameless-9"}])
    async with simulate() as (sim, _, url):
        argv = ["run", str(job), "--results", str(tmp_path / "out"), "--base-url", url, *FAST]
        assert await run_command([*argv, "--max-cost", "1"]) == 2
        assert "--max-cost needs a price for every model, and claude-nameless-9 has none" in capsys.readouterr().err
        assert sim.stats.requests == 0
