"""Thousands of real-paced streams from one process, against the raw floor in the same run.

The simulator runs paced like the API (0.5 s to the first token, 60 tokens/s per stream, deltas
of several tokens) in a process of its own, a fresh one for each client. Each client runs in a
fresh process, so its CPU time is its own:

- floor: the same requests all started at once through the SDK's aiohttp transport
  (``anthropic.DefaultAioHttpClient``), the body's bytes read and nothing parsed or stored: what
  any Python client on this stack costs at the least;
- floor, run's GC: the same, under the garbage-collector settings the orchestrator runs with
  (``orchestrator.runtime.collector``), so that their gain is not counted as the orchestrator's own;
- orchestrator: ``orchestrator run`` on a JSONL job at ``--concurrency N``, with checkpoints
  (every 0.25 s) and automatic rate limits on (the simulator's headers allow far more than the
  job needs), every message stored, results exported.

Both clocks start with the SDK imported (about 1.3 CPU-s, paid once per process).
Reported: streams open at once (the simulator's ``peak_streams``), wall time, client CPU per
1,000 events (the events the floor counted: both read the same streams), and the ratios of the
orchestrator to the floor. Every result's text is checked against the simulator's reply.
The machine is shared: compare the ratios within one run, and repeat.

    python scripts/bench_scale.py [--requests 2000] [--concurrency 2000] [--tokens-per-delta 1:3]
                                  [--repeat 1] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchlib import cpu, process_cpu, prompt, simulator_stats, start_simulator, write_prompt_lines

ROOT = Path(__file__).resolve().parents[1]
MODEL = "claude-haiku-4-5"
MAX_TOKENS = 1024
REPLY_TOKENS = 200


def simulator_args(tokens_per_delta: str) -> list[str]:
    return [
        "--speed",
        "1",
        "--ttft",
        "0.5",
        "--tps",
        "60",
        "--tokens-per-delta",
        tokens_per_delta,
        "--reply-tokens",
        f"{REPLY_TOKENS}:{REPLY_TOKENS}",
    ]


async def floor(url: str, requests: int) -> dict[str, Any]:
    """Every request at once through the SDK's aiohttp transport; bytes read, events counted."""
    import anthropic
    import httpx2
    from anthropic.types import MessageParam

    http = anthropic.DefaultAioHttpClient(
        limits=httpx2.Limits(max_connections=requests + 8, max_keepalive_connections=requests),
        timeout=httpx2.Timeout(60.0, connect=10.0),
    )
    client = anthropic.AsyncAnthropic(base_url=url, api_key="sk-bench", max_retries=0, http_client=http)
    totals = {"bytes": 0, "events": 0}

    async def one(i: int) -> None:
        messages: list[MessageParam] = [{"role": "user", "content": prompt(i)}]
        async with client.messages.with_streaming_response.create(
            model=MODEL, max_tokens=MAX_TOKENS, messages=messages, stream=True
        ) as response:
            tail = b""
            async for chunk in response.http_response.aiter_bytes():
                totals["bytes"] += len(chunk)
                totals["events"] += (tail + chunk[:1]).count(b"\n\n") + chunk.count(b"\n\n")
                tail = chunk[-1:]

    started, cpu_before = time.monotonic(), cpu()
    await asyncio.gather(*(one(i) for i in range(requests)))
    result = {"wall": time.monotonic() - started, "cpu": cpu() - cpu_before, **totals}
    await client.close()
    return result


def orchestrator(url: str, requests: int, concurrency: int, profile: Path | None) -> dict[str, Any]:
    import anthropic  # noqa: F401  (imported before the clock starts, as the floor's is)
    import anyio

    from orchestrator.cli import run_command

    workdir = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    job = workdir / "job.jsonl"
    write_prompt_lines(job, requests, custom_ids=True)
    argv = ["run", str(job), "--base-url", url, "--results", str(workdir / "out"), "--quiet"]
    argv += ["--concurrency", str(concurrency), "--model", MODEL, "--max-tokens", str(MAX_TOKENS)]
    os.environ["ANTHROPIC_API_KEY"] = "sk-bench"
    profiler = cProfile.Profile() if profile else None
    started, cpu_before = time.monotonic(), cpu()
    if profiler:
        profiler.enable()
    status = anyio.run(run_command, argv)
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)  # type: ignore[arg-type]
    wall, used = time.monotonic() - started, cpu() - cpu_before
    assert status == 0, status
    texts = {}
    with (workdir / "out" / "results.jsonl").open() as handle:
        for line in handle:
            result = json.loads(line)
            if result["result"]["type"] == "succeeded":
                content = result["result"]["message"]["content"]
                texts[result["custom_id"]] = "".join(block.get("text", "") for block in content)
    return {"wall": wall, "cpu": used, "texts": texts}


def expected_texts(requests: int, tokens_per_delta: str) -> dict[str, str]:
    """What the simulator replies to each request (its replies are a pure function of the request)."""
    from orchestrator.simulator import Simulator, SimulatorConfig

    simulator = Simulator(SimulatorConfig(reply_min=REPLY_TOKENS, reply_max=REPLY_TOKENS))
    texts = {}
    for i in range(requests):
        body = {"model": MODEL, "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": prompt(i)}]}
        message = simulator.render_message(body)
        texts[f"r{i}"] = "".join(block.get("text", "") for block in message["content"])
    return texts


def role_main(args: argparse.Namespace) -> None:
    if args.role == "floor":
        result = asyncio.run(floor(args.url, args.requests))
    elif args.role == "floor-gc":
        from orchestrator.runtime.collector import fewer_collections

        with fewer_collections():
            result = asyncio.run(floor(args.url, args.requests))
    else:
        result = orchestrator(args.url, args.requests, args.concurrency, args.profile)
    print(json.dumps(result))


def measure(role: str, args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    """One client run in a fresh process against a fresh simulator, with the simulator's stats."""
    simulator, url = start_simulator(*simulator_args(args.tokens_per_delta))
    try:
        command = [sys.executable, __file__, "--role", role, "--url", url, "--requests", str(args.requests)]
        command += ["--concurrency", str(args.concurrency), *extra]
        server_cpu = process_cpu(simulator.pid)
        out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
        if out.returncode != 0:
            raise SystemExit(out.stderr)
        result: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
        result["stats"] = simulator_stats(url)
        result["server_cpu"] = process_cpu(simulator.pid) - server_cpu
    finally:
        simulator.terminate()
        simulator.wait()
    return result


def sustain(args: argparse.Namespace) -> None:
    """How many paced streams one process keeps up with: ``--waves`` pools of requests at each
    concurrency, against the time the server's pacing alone would take (each wave one stream's time)."""
    alone = 0.5 + REPLY_TOKENS / 60
    print(
        f"{args.waves} pools of {REPLY_TOKENS}-token requests at each concurrency; simulator paced (0.5 s to first "
        f"token, 60 tok/s, {args.tokens_per_delta} tokens per delta; one stream alone takes {alone:.2f} s)"
    )
    print(
        f"{'concurrency':>11}{'peak streams':>13}{'wall s':>8}{'paced s':>8}{'wall/paced':>11}{'CPU s':>7}"
        f"{'CPU/wall':>9}{'server CPU/wall':>16}{'events/s':>10}{'out tok/s':>10}"
    )
    for concurrency in (int(value) for value in args.sustain.split(",")):
        args.requests, args.concurrency = concurrency * args.waves, concurrency
        row = measure("orchestrator", args)
        stats, paced, wall = row["stats"], args.waves * alone, row["wall"]
        print(
            f"{concurrency:>11,}{stats['peak_streams']:>13,}{wall:>8.1f}{paced:>8.1f}{wall / paced:>11.2f}"
            f"{row['cpu']:>7.1f}{row['cpu'] / wall:>9.2f}{row['server_cpu'] / wall:>16.2f}"
            f"{stats['events_sent'] / wall:>10,.0f}"
            f"{stats['output_tokens_billed'] / wall:>10,.0f}"
        )
        sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=2000)
    parser.add_argument("--tokens-per-delta", default="1:3", help="the simulator's tokens per delta (default 1:3)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each client")
    parser.add_argument("--profile", type=Path, help="write a cProfile of the (last) orchestrator run here")
    parser.add_argument("--verbose", action="store_true", help="print the simulator's stats of each run")
    parser.add_argument(
        "--sustain",
        help="concurrencies (comma-separated) at which to run --waves full pools back to back, orchestrator only",
    )
    parser.add_argument("--waves", type=int, default=4, help="pools of requests per --sustain run (default 4)")
    parser.add_argument("--role", choices=["floor", "floor-gc", "orchestrator"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        role_main(args)
        return

    if args.sustain:
        sustain(args)
        return
    expected = expected_texts(args.requests, args.tokens_per_delta)
    ideal = 0.5 + REPLY_TOKENS / 60
    print(
        f"{args.requests:,} requests of {REPLY_TOKENS} tokens, orchestrator at --concurrency {args.concurrency:,}; "
        f"simulator paced (0.5 s to first token, 60 tok/s, {args.tokens_per_delta} tokens per delta; "
        f"one stream alone takes {ideal:.2f} s) in its own process"
    )
    print(
        f"{'run':<5}{'client':<19}{'peak streams':>13}{'wall s':>8}{'CPU s':>7}{'events':>9}{'CPU s/1k ev':>12}"
        f"{'wall/floor':>11}{'CPU/floor':>10}{'wall/floor-gc':>14}{'CPU/floor-gc':>13}{'texts exact':>12}"
    )
    for run in range(1, args.repeat + 1):
        base = measure("floor", args)
        same_gc = measure("floor-gc", args)
        extra = ["--profile", str(args.profile)] if args.profile and run == args.repeat else []
        ours = measure("orchestrator", args, *extra)
        if args.verbose:
            print({key: value for key, value in ours["stats"].items() if key != "batches"})
        events = base["events"]
        exact = sum(ours["texts"].get(key) == text for key, text in expected.items())
        for name, row in (("floor", base), ("floor, run's GC", same_gc), ("orchestrator", ours)):
            ratios = ""
            if name == "orchestrator":
                ratios = (
                    f"{row['wall'] / base['wall']:>11.2f}{row['cpu'] / base['cpu']:>10.2f}"
                    f"{row['wall'] / same_gc['wall']:>14.2f}{row['cpu'] / same_gc['cpu']:>13.2f}"
                    f"{f'{exact:,}/{len(expected):,}':>12}"
                )
            print(
                f"{run:<5}{name:<19}{row['stats']['peak_streams']:>13,}{row['wall']:>8.1f}{row['cpu']:>7.1f}"
                f"{events:>9,}{row['cpu'] / events * 1000:>12.3f}{ratios}"
            )
        sys.stdout.flush()


if __name__ == "__main__":
    main()
