"""Reports agree with what the simulator billed, to the token; formats; filters; HTML in Chromium."""

from __future__ import annotations

import csv
import io
import json
import struct
import zlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.cli import run_command
from orchestrator.errors import UserError
from orchestrator.models import Usage
from orchestrator.pricing import load_prices
from orchestrator.report.figures import percentile
from orchestrator.runtime.progress import describe
from orchestrator.settings import JobSettings
from orchestrator.simulator import FaultRates, SimulatorConfig, Timing
from orchestrator.simulator.replies import plan_reply
from tests.conftest import INSTANT, Running
from tests.helpers import (
    CHROMIUM,
    chromium_flags,
    params_of,
    read_results,
    reply_of,
    run_in_process,
    text_of,
    write_jsonl,
)

pytestmark = pytest.mark.anyio

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
HAIKU_IN, HAIKU_OUT = Decimal(1), Decimal(5)  # USD per million tokens, from the shipped prices


async def report(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    capsys.readouterr()
    assert await run_command(["report", *args]) == 0
    return capsys.readouterr().out


def mixed_job(path: Path, count: int = 30) -> Path:
    lines: list[dict[str, Any]] = [{"prompt": f"question {i}"} for i in range(count)]
    lines.append({"prompt": "thinks too little", "thinking": {"type": "enabled", "budget_tokens": 10}})
    return write_jsonl(path, lines)


async def test_report_agrees_with_what_the_simulator_billed(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = mixed_job(tmp_path / "mixed.jsonl")
    out = tmp_path / "out"
    config = SimulatorConfig(timing=INSTANT, faults=FaultRates(drop=0.2, overloaded=0.1, truncate=0.05))
    async with simulate(config) as (sim, _, url):
        argv = ["run", str(job), "--base-url", url, "--results", str(out), "--quiet", "--recover", "restart"]
        assert await run_command([*argv, "--max-attempts", "20"]) == 0
        billed = sim.stats
        params = params_of(job)
        replies = {cid: reply_of(sim, p) for cid, p in params.items()}
        lengths = {
            cid: len(plan_reply(0, p, sim.config.reply_min, sim.config.reply_max).tokens) for cid, p in params.items()
        }
    data = json.loads(await report(capsys, str(out / "job.sqlite"), "--format", "json"))
    total = data["total"]
    # Independently of the store: what the simulator counted as billed.
    assert total["billed_tokens"]["input_tokens"] == billed.input_tokens_billed
    assert total["billed_tokens"]["output_tokens"] == billed.output_tokens_billed
    expected_cost = (billed.input_tokens_billed * HAIKU_IN + billed.output_tokens_billed * HAIKU_OUT) / 1_000_000
    assert Decimal(str(total["cost_usd"])) == round(expected_cost, 6)
    lines = read_results(out)
    succeeded = [line for line in lines if line["result"]["type"] == "succeeded"]
    kept = sum(line["result"]["message"]["usage"]["output_tokens"] for line in succeeded)
    assert total["kept_tokens"]["output_tokens"] == kept
    assert kept == sum(lengths[line["custom_id"]] for line in succeeded)  # the replies' own lengths
    assert all(text_of(line) == replies[line["custom_id"]] for line in succeeded)
    assert total["wasted_tokens"]["output_tokens"] == billed.output_tokens_billed - kept > 0
    assert total["requests"] == {"succeeded": 30, "errored": 1, "unfinished": 0}
    reasons = total["failed_attempts_by_reason"]
    assert reasons.get("connection", 0) == billed.faults_injected.get("drop", 0)
    assert reasons.get("http_529", 0) == billed.faults_injected.get("overloaded", 0)
    assert reasons.get("no_message_stop", 0) == billed.faults_injected.get("truncate", 0)
    assert reasons["http_400"] == 1
    assert total["top_errors"][0]["type"] == "invalid_request_error"
    ttft = total["latency_seconds"]["time_to_first_token"]
    assert ttft["p50"] <= ttft["p90"] <= ttft["p99"]
    assert total["throughput"]["requests_per_minute"] > 0
    assert data["prices"]["as_of"] == "2026-11-09"
    assert data["jobs"][0]["models"]["claude-haiku-4-5"]["cost_usd"] == total["cost_usd"]

    rows = list(csv.DictReader(io.StringIO(await report(capsys, str(out), "--format", "csv"))))
    assert [row["model"] for row in rows] == ["claude-haiku-4-5", "(all models)"]
    assert int(rows[1]["output_tokens"]) == billed.output_tokens_billed
    assert float(rows[1]["cost_usd"]) == total["cost_usd"]
    text = await report(capsys, str(out))
    assert f"{billed.output_tokens_billed:,}" in text
    assert f"${total['cost_usd']:,.4f}" in text


async def test_several_jobs_a_folder_and_filters(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    async with simulate() as (_, _, url):
        for name, model in (("a", "claude-haiku-4-5"), ("b", "claude-opus-5")):
            job = write_jsonl(tmp_path / f"{name}.jsonl", [{"prompt": f"{name}{i}", "model": model} for i in range(4)])
            argv = ["run", str(job), "--base-url", url, "--results", str(results / name), "--quiet"]
            assert await run_command(argv) == 0
    both = json.loads(await report(capsys, str(results), "--format", "json"))
    assert [job["job"] for job in both["jobs"]] == ["a", "b"]
    assert both["total"]["requests"]["succeeded"] == 8
    only_opus = json.loads(await report(capsys, str(results), "--format", "json", "--model", "claude-opus-5"))
    assert only_opus["total"]["requests"]["succeeded"] == 4
    assert only_opus["jobs"][0]["models"] == {}
    future = json.loads(await report(capsys, str(results), "--format", "json", "--since", "2999-01-01"))
    assert future["total"]["requests"]["succeeded"] == 0
    assert future["total"]["billed_tokens"]["output_tokens"] == 0
    past = json.loads(await report(capsys, str(results), "--format", "json", "--until", "2000-01-01T00:00"))
    assert past["total"]["requests"]["succeeded"] == 0
    assert await run_command(["report", str(tmp_path / "empty")]) == 2


async def test_unknown_models_are_unpriced_until_given_a_price(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": "x", "model": "claude-prototype-9"}])
    # A model newer than the table of models (and of prices) that the server serves.
    async with simulate(SimulatorConfig(timing=INSTANT, extra_models=frozenset({"claude-prototype-9"}))) as (_, _, url):
        assert await run_command(["run", str(job), "--base-url", url, "--results", str(tmp_path / "o"), "--quiet"]) == 0
    data = json.loads(await report(capsys, str(tmp_path / "o"), "--format", "json"))
    assert data["total"]["cost_usd"] is None
    assert data["total"]["unpriced_models"] == ["claude-prototype-9"]
    assert "unpriced" in await report(capsys, str(tmp_path / "o"))
    prices = tmp_path / "prices.json"
    price = {"input": 2, "cache_write_5m": 2.5, "cache_write_1h": 4, "cache_read": 0.2, "output": 8}
    prices.write_text(json.dumps({"as_of": "2026-12-01", "models": {"claude-prototype-9": price}}))
    priced = json.loads(await report(capsys, str(tmp_path / "o"), "--format", "json", "--prices", str(prices)))
    billed = priced["total"]["billed_tokens"]
    assert priced["total"]["cost_usd"] == pytest.approx(
        (billed["input_tokens"] * 2 + billed["output_tokens"] * 8) / 1e6
    )
    assert "overridden by" in priced["prices"]["source"]


def test_prices_map_dated_ids_and_price_1h_cache_writes() -> None:
    prices = load_prices()
    assert prices.price("claude-haiku-4-5-20251001") == prices.price("claude-haiku-4-5")
    assert prices.price("claude-3-opus-20240229") is None
    usage = Usage(
        input_tokens=1_000_000,
        output_tokens=1_000_000,
        cache_creation_input_tokens=3_000_000,
        cache_read_input_tokens=1_000_000,
        cache_creation_1h_input_tokens=1_000_000,
    )
    # sonnet 5: input 2, output 10, 2M 5-minute writes at 2.50, 1M 1-hour writes at 4, reads 0.20
    assert prices.cost("claude-sonnet-5", usage) == Decimal("2") + 10 + 5 + 4 + Decimal("0.2")
    assert Usage.from_dict({"cache_creation_input_tokens": 7, "cache_creation": {"ephemeral_1h_input_tokens": 3}}) == (
        Usage(cache_creation_input_tokens=7, cache_creation_1h_input_tokens=3)
    )


def test_a_bad_prices_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "prices.json"
    bad.write_text('{"models": {"m": {"input": 1}}}')
    with pytest.raises(UserError, match="not a prices file"):
        load_prices(bad)
    with pytest.raises(UserError, match="cannot read prices"):
        load_prices(tmp_path / "missing.json")


def test_percentiles() -> None:
    assert percentile([], 50) is None
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 90), percentile(values, 99)) == (50.0, 90.0, 99.0)
    assert percentile([3.0], 99) == 3.0


async def test_progress_shows_the_cost_so_far(simulate: Simulate, tmp_path: Path) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": f"p{i}"} for i in range(5)])
    async with simulate() as (sim, client, _):
        running, summary = await run_in_process(job, tmp_path / "job.sqlite", client, JobSettings())
    assert summary.complete
    expected = (sim.stats.input_tokens_billed * HAIKU_IN + sim.stats.output_tokens_billed * HAIKU_OUT) / 1_000_000
    running.prices = load_prices()
    assert running.cost() == expected
    assert f"${expected:,.4f}" in describe(running.snapshot())


async def test_dry_run_sends_and_writes_nothing_and_counts_exactly(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": f"prompt {i}", "max_tokens": 100} for i in range(12)])
    out = tmp_path / "out"
    async with simulate() as (sim, _, url):
        capsys.readouterr()
        argv = ["run", str(job), "--base-url", url, "--results", str(out), "--rpm", "6", "--otpm", "600"]
        assert await run_command([*argv, "--dry-run"]) == 0
        text = capsys.readouterr().out
        assert sim.stats.requests == 0
        assert not out.exists()
        assert await run_command([*argv, "--quiet", "--rpm", "6000", "--otpm", "600000"]) == 0
        billed_input = sim.stats.input_tokens_billed
    assert f"{billed_input:,}" in text  # the exact count equals what the run was billed
    assert "(12 exact)" in text
    low = billed_input * HAIKU_IN / 1_000_000
    high = low + 12 * 100 * HAIKU_OUT / 1_000_000
    assert f"${low:,.4f}" in text
    assert f"${high:,.4f}" in text
    assert "at least 2.0 min (RPM binds), up to 2.0 min" in text  # 12 requests at 6/min; 1,200 tokens at 600/min


def read_png(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB(A) rows of an 8-bit PNG (what Chromium writes), unfiltered."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks, header = 8, b"", b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks += body
        position += 12 + length
    width, height, depth, color = struct.unpack(">IIBB", header[:10])
    assert depth == 8
    channels = {2: 3, 6: 4}[color]
    raw = zlib.decompress(chunks)
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up = previous[x]
            corner = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                guess = left + up - corner
                pa, pb, pc = abs(guess - left), abs(guess - up), abs(guess - corner)
                line[x] = (line[x] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, [row[i : i + 3] for row in rows for i in range(0, stride, channels)]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (CI installs it: apt-get install chromium)")
async def test_html_report_renders_in_a_real_browser(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = mixed_job(tmp_path / "mixed.jsonl", count=20)
    out = tmp_path / "out"
    config = SimulatorConfig(timing=Timing(ttft=0.0, tokens_per_second=20_000), faults=FaultRates(drop=0.2))
    async with simulate(config) as (_, _, url):
        assert await run_command(["run", str(job), "--base-url", url, "--results", str(out), "--quiet"]) == 0
    page = tmp_path / "report.html"
    await report(capsys, str(out), "--format", "html", "--out", str(page))
    html = page.read_text()
    assert "http://" not in html.replace("http://www.w3.org", "")  # nothing to fetch: self-contained
    assert "https://" not in html
    flags = chromium_flags(tmp_path / "profile")
    assert CHROMIUM is not None
    with anyio.fail_after(60):
        dom = (await anyio.run_process([CHROMIUM, *flags, "--dump-dom", page.as_uri()])).stdout.decode()
    assert dom.count("<svg") == 5  # requests and tokens over time, two latency histograms, cost by model
    assert "Usage and cost report" in dom
    assert "Cost by model" in dom
    assert "invalid_request_error" in dom
    shot = tmp_path / "report.png"
    with anyio.fail_after(60):
        await anyio.run_process([CHROMIUM, *flags, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()])
    width, height, pixels = read_png(shot)
    assert (width, height) == (1200, 1600)
    colours = {
        name: bytes.fromhex(code) for name, code in (("blue", "3b6fd8"), ("orange", "e07b39"), ("green", "3a9d5d"))
    }
    counts = {name: sum(1 for p in pixels if p == rgb) for name, rgb in colours.items()}
    assert all(count > 2000 for count in counts.values()), counts  # every chart drew its bars on screen
