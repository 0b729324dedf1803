"""A chaos run, for the test suite and ``scripts/bench_chaos.py``: the realistic simulator with every
fault on, a job's ``orchestrator run`` stopped again and again at seeded moments by every kind of
stop (SIGKILL, SIGINT, SIGTERM, a second SIGINT, a 401 that stops the job), then resumed until done.
The simulator runs in this process, so it outlives every client it serves.

What came out is checked against the simulator's pure functions: each request has exactly one
result, and its text is the uninterrupted reply, or a prefix of it that stopped at ``max_tokens``
(``short``); anything else, or more tokens than ``max_tokens``, is ``wrong``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

from orchestrator.simulator import FaultRates, Simulator, SimulatorConfig, Stats, Timing
from orchestrator.simulator.replies import plan_reply
from orchestrator.simulator.tokens import count_tokens

KEY = "sk-chaos"
STOPS = ("SIGKILL", "SIGINT", "SIGTERM", "SIGINT twice", "http 401")
FAULTS = FaultRates(
    overloaded=0.03,
    server_error=0.03,
    error_event=0.03,
    drop=0.05,
    truncate=0.03,
    no_stop=0.03,
    malformed=0.03,
    stall=0.01,
    stall_seconds=1.0,
)
MODELS = ("claude-haiku-4-5", "claude-haiku-4-5", "claude-haiku-4-5", "claude-sonnet-4-6")  # prefill; restart
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def chaos_config(seed: int) -> SimulatorConfig:
    """Several tokens a delta, odd events, every fault; fast but not instant, so stops land mid-stream."""
    return SimulatorConfig(
        seed=seed, reply_min=40, reply_max=260, timing=Timing(ttft=0.01, tokens_per_second=800), faults=FAULTS
    )


@dataclass
class Figures:
    requests: int = 0
    runs: int = 0
    stops: Counter[str] = field(default_factory=Counter)
    faults: dict[str, int] = field(default_factory=dict)  # injected by the simulator, by kind
    attempts_sent: int = 0  # requests the simulator received
    exact: int = 0  # the uninterrupted reply
    cut: int = 0  # of which the uninterrupted reply itself stops at max_tokens
    short: int = 0  # a prefix of it, stopped at max_tokens
    wrong: list[str] = field(default_factory=list)  # custom_ids
    billed_server: int = 0  # output tokens the simulator billed
    billed_recorded: int = 0  # output tokens the results say were billed
    estimated: int = 0  # results whose billed_usage is partly our estimate

    def row(self) -> str:
        return (
            f"{self.requests:>9,}{sum(self.faults.values()):>8,}{sum(self.stops.values()):>7}{self.exact:>7,}"
            f"{self.cut:>6,}{self.short:>7,}{len(self.wrong):>7}{self.billed_server:>12,}{self.billed_recorded:>12,}"
        )


HEADER = (
    f"{'requests':>9}{'faults':>8}{'stops':>7}{'exact':>7}{'cut':>6}{'short':>7}{'wrong':>7}"
    f"{'billed':>12}{'recorded':>12}"
)


def write_job(path: Path, count: int, rng: random.Random) -> dict[str, dict[str, Any]]:
    """A job of ``count`` requests, many of them cut by ``max_tokens``; custom_id -> params."""
    params = {}
    for i in range(count):
        body: dict[str, Any] = {
            "model": rng.choice(MODELS),
            "max_tokens": rng.randint(16, 200),
            "messages": [{"role": "user", "content": f"chaos request {i}: tell me a story"}],
        }
        if i % 8 == 7:
            body["tools"] = [WEATHER]
        params[f"c{i}"] = body
    path.write_text("".join(json.dumps({"custom_id": cid, "params": p}) + "\n" for cid, p in params.items()))
    return params


def argv(job: Path, out: Path, url: str, concurrency: int) -> list[str]:
    options = {
        "--base-url": url,
        "--results": out,
        "--concurrency": concurrency,
        "--checkpoint-interval": 0.02,
        "--read-timeout": 0.5,  # a stall is a broken stream after half a second
        "--max-attempts": 40,
        "--backoff-base": 0.01,
        "--backoff-cap": 0.05,
    }
    return [sys.executable, "-m", "orchestrator", "run", str(job), "--quiet", *map(str, sum(options.items(), ()))]


async def _until(sim: Simulator, process: Process, target: int) -> bool:
    """Wait until the simulator has received ``target`` requests (True) or the client exits (False)."""
    reached = False
    async with anyio.create_task_group() as group:

        async def watch() -> None:
            nonlocal reached
            await sim.until(lambda stats: stats.requests >= target)
            reached = True
            group.cancel_scope.cancel()

        async def exits() -> None:
            await process.wait()
            group.cancel_scope.cancel()

        group.start_soon(watch)
        group.start_soon(exits)
    return reached


async def _stop(sim: Simulator, process: Process, kind: str) -> None:
    """Stop the client the ``kind`` way and wait for it to exit."""
    config = sim.config
    if kind == "SIGKILL":
        process.kill()
    elif kind == "SIGINT twice":
        process.send_signal(signal.SIGINT)
        process.send_signal(signal.SIGINT)
    elif kind == "http 401":  # the key is refused from now on: the job stops itself (exit status 3)
        sim.config = replace(config, reject_api_keys=frozenset({KEY}))
    else:
        process.send_signal(signal.SIGINT if kind == "SIGINT" else signal.SIGTERM)
    try:
        await process.wait()
    finally:
        sim.config = config
    expected = {"SIGKILL": {-signal.SIGKILL}, "http 401": {3, 0}}.get(kind, {130, 0})
    assert process.returncode in expected, (kind, process.returncode)


async def chaos(
    sim: Simulator, url: str, workdir: Path, count: int, stops: int, seed: int, concurrency: int = 16
) -> Figures:
    """Run a job of ``count`` requests through ``stops`` stops, then to its end; check what came out."""
    rng = random.Random(seed)
    job = workdir / "chaos.jsonl"
    out = workdir / "out"
    params = write_job(job, count, rng)
    figures = Figures(requests=count)
    env = {**os.environ, "ANTHROPIC_API_KEY": KEY}
    command = argv(job, out, url, concurrency)
    kinds = [kind for _ in range(0, stops, len(STOPS)) for kind in rng.sample(STOPS, len(STOPS))][:stops]
    while True:
        process = await anyio.open_process(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        figures.runs += 1
        if sum(figures.stops.values()) < stops:
            kind = kinds[sum(figures.stops.values())]
            if await _until(sim, process, sim.stats.requests + rng.randint(2, max(3, count // stops))):
                await _stop(sim, process, kind)
                figures.stops[kind] += 1
                continue
        await process.wait()
        assert process.returncode == 0, process.returncode
        break
    stats: Stats = sim.stats
    figures.faults = {kind: n for kind, n in stats.faults_injected.items() if n}
    figures.attempts_sent = stats.requests
    figures.billed_server = stats.output_tokens_billed
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    ids = [line["custom_id"] for line in lines]
    assert sorted(ids) == sorted(params), "a request is missing or has more than one result"
    for line in lines:
        figures.billed_recorded += line["billed_usage"]["output_tokens"]
        figures.estimated += bool(line["billed_usage_estimated"])
        _judge(figures, sim.config, line, params[line["custom_id"]])
    return figures


def _judge(figures: Figures, config: SimulatorConfig, line: dict[str, Any], params: dict[str, Any]) -> None:
    plan = plan_reply(config.seed, params, config.reply_min, config.reply_max)
    expected = "".join(plan.tokens)
    if line["result"]["type"] != "succeeded":
        figures.wrong.append(line["custom_id"])
        return
    message = line["result"]["message"]
    text = "".join(block["text"] for block in message["content"] if block["type"] == "text")
    max_tokens = params["max_tokens"]
    within = count_tokens(text) <= max_tokens and message["usage"]["output_tokens"] <= max_tokens
    if text == expected and message["stop_reason"] == plan.stop_reason and within:
        figures.exact += 1
        figures.cut += plan.stop_reason == "max_tokens"
    elif expected.startswith(text) and message["stop_reason"] == "max_tokens" and within:
        figures.short += 1
    else:
        figures.wrong.append(line["custom_id"])
