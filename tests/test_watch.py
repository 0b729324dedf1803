"""The live view: a job running in another process, watched in Chromium, its numbers moving; ``run --watch``
in the same process; a finished job; no prompt or reply unless asked, never the API key."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from orchestrator.cli import run_command
from orchestrator.errors import UserError
from orchestrator.library import Job
from orchestrator.models import Usage
from orchestrator.pricing import load_prices
from orchestrator.simulator import BatchSettings, Limits, SimulatorConfig, Stats, Timing
from orchestrator.store import JobRow, open_reader
from orchestrator.watch import Watcher, serve_watch
from orchestrator.watch.figures import Rates, Reading, status
from orchestrator.watch.server import redact
from tests.conftest import Running
from tests.helpers import CHROMIUM, chromium_flags, write_jsonl

pytestmark = pytest.mark.anyio

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
SECRET = "sk-ant-api03-watch-SECRET-0123456789abcdef"
DONE = re.compile(r'id="done">([\d,]+) / ([\d,]+)<')


def prompts(path: Path, count: int) -> Path:
    return write_jsonl(path, [{"prompt": f"question {i} about lighthouses"} for i in range(count)])


def ok_at_least(count: int) -> Callable[[Stats], bool]:
    return lambda stats: stats.outcomes["ok"] >= count


async def render(url: str, profile: Path) -> str:
    """The page's DOM once its script has read status.json and the charts."""
    assert CHROMIUM is not None
    with anyio.fail_after(60):
        process = await anyio.run_process(
            [CHROMIUM, *chromium_flags(profile), "--virtual-time-budget=3000", "--dump-dom", url]
        )
    return process.stdout.decode()


def done_of(dom: str) -> tuple[int, int]:
    found = DONE.search(dom)
    assert found, dom[:2000]
    return int(found[1].replace(",", "")), int(found[2].replace(",", ""))


async def fetch(url: str, path: str, **headers: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url + path, headers=headers) as response:
        return response.status, await response.text()


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (CI installs it: apt-get install chromium)")
async def test_a_run_in_another_process_watched_in_chromium(simulate: Simulate, tmp_path: Path) -> None:
    job = prompts(tmp_path / "job.jsonl", 200)
    out = tmp_path / "out"
    db = out / "job.sqlite"
    # Paced streams (20 tokens/s, 20-40 tokens a reply): about two replies a second from 4 streams.
    config = SimulatorConfig(reply_min=20, reply_max=40, timing=Timing(ttft=0.05, tokens_per_second=20))
    env = {**os.environ, "ANTHROPIC_API_KEY": SECRET}  # the run's key: the watcher's process never has it
    async with simulate(config) as (sim, _, base_url):
        argv = ["run", str(job), "--base-url", base_url, "--results", str(out), "--quiet", "--concurrency", "4"]
        process = await anyio.open_process(
            [sys.executable, "-m", "orchestrator", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        try:
            with anyio.fail_after(30):
                await sim.until(ok_at_least(3))
            watcher = Watcher(db, load_prices(None), every=0.0)  # no least interval between reads
            async with serve_watch(watcher) as url:
                first = await render(url, tmp_path / "profile")
                done, total = done_of(first)
                assert total == 200
                assert 3 <= done < 200
                with anyio.fail_after(30):
                    await sim.until(ok_at_least(done + 5))
                second = await render(url, tmp_path / "profile")
                answer = json.loads((await fetch(url, "status.json"))[1])
                page = (await fetch(url, ""))[1]
                charts = (await fetch(url, "charts"))[1]
        finally:
            process.terminate()
            with anyio.fail_after(10):
                await process.wait()
    later, _ = done_of(second)
    assert later > done  # the numbers move
    assert second.count("<svg") >= 4  # the report's charts, drawn from the job so far
    assert "Requests finished over time" in second
    assert 'id="in-flight">' in second
    assert ">running<" in second
    assert answer["rate_limits"]["claude-haiku-4-5"]["requests"]["headroom"] is not None
    assert answer["rates"]["output_tokens_per_second"] > 0
    # Self-contained: nothing fetched from anywhere else.
    assert not re.search(r"(src|href)=|https?://(?!www\.w3\.org)", page)
    for text in (first, second, page, charts, json.dumps(answer), db.read_bytes().decode(errors="replace")):
        assert SECRET not in text
        assert "x-api-key" not in text.lower()
        assert "authorization" not in text.lower()
    assert "lighthouses" not in first + second + json.dumps(answer)  # no prompt unless asked


async def test_run_watch_serves_the_run_in_its_own_process(simulate: Simulate, tmp_path: Path) -> None:
    job = prompts(tmp_path / "job.jsonl", 30)
    with socket.socket() as probe:  # a free port (run --watch 0 would pick one, but say it only on stderr)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = SimulatorConfig(
        reply_min=10, reply_max=20, timing=Timing(ttft=0.05, tokens_per_second=100), limits=Limits(rpm=6000)
    )
    seen: dict[str, Any] = {}
    async with simulate(config) as (sim, _, base_url), anyio.create_task_group() as group:
        argv = ["run", str(job), "--base-url", base_url, "--results", str(tmp_path / "out"), "--quiet"]
        argv += ["--concurrency", "2", "--max-cost", "5", "--watch", str(port)]

        async def run() -> None:
            seen["exit"] = await run_command(argv)

        group.start_soon(run)
        with anyio.fail_after(30):
            await sim.until(ok_at_least(4))
        url = f"http://127.0.0.1:{port}/"
        status, body = await fetch(url, "status.json")
        seen["status"] = json.loads(body)
        seen["forbidden"] = (await fetch(url, "status.json", Host=f"rebound.example:{port}"))[0]
    assert seen["exit"] == 0
    assert status == 200
    answer = seen["status"]
    assert answer["total"] == 30
    assert answer["done"] >= 3
    assert answer["cap_usd"] == 5.0
    assert answer["cost_usd"] > 0
    assert answer["run"]["concurrency"] == 2
    assert seen["forbidden"] == 403  # bound to loopback, it answers loopback names only
    # The run's last notes: the rate-limit headers of its last response, read from the store.
    final = json.loads(await Watcher(tmp_path / "out" / "job.sqlite", load_prices(None)).status())
    requests = final["rate_limits"]["claude-haiku-4-5"]["requests"]
    assert requests["limit"] == 6000
    assert 0 < requests["headroom"] <= 1
    assert requests["reset"]


async def test_a_finished_job_with_errors_and_its_text_only_when_asked(simulate: Simulate, tmp_path: Path) -> None:
    lines: list[dict[str, Any]] = [{"prompt": f"tell me of harbours {i}"} for i in range(6)]
    lines.append({"prompt": "thinks too little", "thinking": {"type": "enabled", "budget_tokens": 10}})
    lines.append({"prompt": "overloaded once <<sim-fault: overloaded times=1>>"})
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    out = tmp_path / "out"
    async with simulate() as (_, _, base_url):
        argv = ["run", str(job), "--base-url", base_url, "--results", str(out), "--quiet"]
        assert await run_command(argv) == 0
    prices = load_prices(None)
    quiet = json.loads(await Watcher(out / "job.sqlite", prices).status())
    assert quiet["done"] == quiet["total"] == 8
    assert quiet["eta_seconds"] == 0
    assert quiet["failed"] == 1
    assert quiet["retries"] == 1
    kinds = {error["kind"]: error for error in quiet["errors"]}
    assert kinds["http_400"]["latest_type"] == "invalid_request_error"
    assert kinds["http_400"]["count"] == 1
    assert kinds["http_529"]["latest_type"] == "overloaded_error"
    assert kinds["http_529"]["latest_message"]
    assert quiet["replies"] == []
    assert "harbours" not in json.dumps(quiet)
    shown = json.loads(await Watcher(out / "job.sqlite", prices, show_text=True).status())
    assert [reply["prompt"] for reply in shown["replies"]][1:3] == ["tell me of harbours 5", "tell me of harbours 4"]
    assert all(reply["reply"] for reply in shown["replies"])
    async with open_reader(out / "job.sqlite") as store:  # one model: its tokens read without the requests
        by_tier = await store.billed_by_tier(None, None)
        assert await store.billed_by_tier_of("claude-haiku-4-5") == by_tier
    assert quiet["cost_usd"] == float(round(prices.total(by_tier) or Decimal(0), 6))
    missing = json.loads(await Watcher(tmp_path / "none.sqlite", prices).status())
    assert "no such job database" in missing["error"]


async def test_a_batch_job_shows_its_batches_and_their_states(simulate: Simulate, tmp_path: Path) -> None:
    lines: list[dict[str, Any]] = [{"prompt": f"question {i}"} for i in range(6)]
    job = write_jsonl(tmp_path / "job.jsonl", [*lines, {"prompt": "and you?", "model": "claude-sonnet-4-5"}])
    out = tmp_path / "out"
    config = SimulatorConfig(batches=BatchSettings(seconds=0))
    async with simulate(config) as (_, _, base_url):
        argv = ["run", str(job), "--batch", "--batch-size", "3", "--poll-interval", "0.05", "--base-url", base_url]
        assert await run_command([*argv, "--results", str(out), "--quiet", "--max-cost", "2"]) == 0
    prices = load_prices(None)
    answer = json.loads(await Watcher(out / "job.sqlite", prices).status())
    assert answer["batches"] == {"states": {"collected": 3}, "open": []}
    assert answer["cap_usd"] == 2.0  # a batch run notes its cap too
    assert answer["run"]["mode"] == "batch"
    assert answer["ways"] == {"batch": 7, "streamed": 0}
    assert answer["cost_streamed_usd"] == pytest.approx(answer["cost_usd"] * 2, rel=1e-3)  # batches: half
    assert answer["deadline"] is None
    async with Job(out / "job.sqlite").awatch(port=0) as url:  # the Python API serves the same view
        served = json.loads((await fetch(url, "status.json"))[1])
    assert (served["ways"], served["done"]) == (answer["ways"], 7)
    with pytest.raises(UserError, match="no such job database"):
        async with Job(tmp_path / "none.sqlite").awatch():
            pass
    async with open_reader(out / "job.sqlite") as store:  # two models: priced each at its batch price
        by_tier = await store.billed_by_tier(None, None)
    assert {model for model, _ in by_tier} == {"claude-haiku-4-5", "claude-sonnet-4-5"}
    assert answer["cost_usd"] == float(round(prices.total(by_tier) or Decimal(0), 6))
    assert answer["done"] == 7
    assert answer["rate_limits"] == {}


def reading(at: float, done: int, output_tokens: int) -> Reading:
    job = JobRow("job", {}, "", created_at=0.0, updated_at=at)
    counts = {"pending": 100 - done, "running": 0, "succeeded": done, "errored": 0}
    return Reading(at, job, counts, Usage(output_tokens=output_tokens), None, 0, [], [], None, first_start=0.0)


def test_rates_are_recent_once_readings_span_two_seconds_and_forget_what_is_a_minute_old() -> None:
    rates = Rates()
    rates.add(reading(1000.0, 10, 1000))
    assert rates.now() is None
    first = status(reading(1000.0, 10, 1000), rates)  # one reading: the average over the job's run
    assert first["rates"]["kind"] == "average"
    assert first["rates"]["requests_per_minute"] == 10 / 1000 * 60
    rates.add(reading(1001.0, 12, 1100))
    assert rates.now() is None  # one second apart: too little to say
    rates.add(reading(1010.0, 40, 4000))
    assert rates.now() == (300.0, 180.0, 10.0)
    later = status(reading(1010.0, 40, 4000), rates)
    assert later["rates"]["kind"] == "recent"
    assert later["eta_seconds"] == 60 / 180 * 60  # 60 left at 180 a minute
    rates.add(reading(1080.0, 40, 4000))  # nothing done for 70 s: the old readings are forgotten
    assert rates.now() == (0.0, 0.0, 70.0)
    assert status(reading(1080.0, 40, 4000), rates)["eta_seconds"] is None


def test_the_environment_s_key_and_token_are_blanked_wherever_they_turn_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", "token-0123456789")
    assert redact(f'{{"message": "bad key {SECRET}", "t": "token-0123456789"}}') == (
        '{"message": "bad key [redacted]", "t": "[redacted]"}'
    )
