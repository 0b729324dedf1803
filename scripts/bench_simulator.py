"""How much load the simulator sustains on one core, against a static-body baseline in the same run.

The server under test runs in a process of its own (one core); this process drives it with a
light aiohttp client that counts SSE events without parsing JSON. Two kinds of load:

- full speed (``--speed inf``): streams back to back at a fixed concurrency; reported as
  events per second and events per server CPU-second;
- paced (real timing, 60 tokens/s per stream): many concurrent streams; reported as the share of
  the expected token rate the server kept up with, and its CPU use.

The baseline is an aiohttp server that writes a pre-rendered SSE body of the same size: the
floor of any Python server on this stack. Ratios, not absolute numbers, are what to compare.

    python scripts/bench_simulator.py [--duration 5] [--concurrency 64] [--paced 500,1000,2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parents[1]
REPLY_TOKENS = 200


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(args: list[str]) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    url = next(word for word in line.split() if word.startswith("http://"))
    return process, url


def simulator_server(speed: str) -> tuple[subprocess.Popen[str], str]:
    return start_server(
        [
            "-m",
            "orchestrator",
            "simulate",
            "--port",
            "0",
            "--speed",
            speed,
            "--reply-tokens",
            f"{REPLY_TOKENS}:{REPLY_TOKENS}",
            "--tokens-per-delta",
            "1",  # one token per delta, as the baseline's body
        ]
    )


def baseline_server(pace: bool) -> tuple[subprocess.Popen[str], str]:
    return start_server([str(Path(__file__)), "--serve-baseline", "--pace" if pace else "--no-pace"])


async def serve_baseline(pace: bool) -> None:
    """A static SSE body of REPLY_TOKENS deltas, written at once or paced like the simulator."""

    def event(name: str, data: dict[str, object]) -> bytes:
        return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()

    head = event("message_start", {"type": "message_start", "message": {"id": "msg_x", "content": []}})
    delta = event(
        "content_block_delta",
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " word"}},
    )
    tail = event("message_stop", {"type": "message_stop"})

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        if not pace:
            await response.write(head + delta * REPLY_TOKENS + tail)
        else:
            await asyncio.sleep(0.5)
            await response.write(head)
            start = time.monotonic()
            sent = 0
            while sent < REPLY_TOKENS:
                due = min(REPLY_TOKENS, int((time.monotonic() - start) * 60) + 1)
                await response.write(delta * (due - sent))
                sent = due
                await asyncio.sleep(max(0.02, (sent / 60) - (time.monotonic() - start)))
            await response.write(tail)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/v1/messages", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"baseline on http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


@dataclass
class Result:
    streams: int
    events: int
    deltas: int
    stream_seconds: float  # summed over streams
    seconds: float
    server_cpu: float


async def drive(url: str, concurrency: int, duration: float, pid: int) -> Result:
    body = {"model": "claude-haiku-4-5", "max_tokens": 4096, "stream": True}
    connector = aiohttp.TCPConnector(limit=0)
    deadline = time.monotonic() + duration
    totals = Result(0, 0, 0, 0.0, 0.0, 0.0)

    async def worker(session: aiohttp.ClientSession, number: int) -> None:
        serial = 0
        while time.monotonic() < deadline:
            serial += 1
            payload = {**body, "messages": [{"role": "user", "content": f"w{number} r{serial}"}]}
            began = time.monotonic()
            async with session.post(f"{url}/v1/messages", json=payload) as response:
                data = await response.read()
            totals.stream_seconds += time.monotonic() - began
            totals.streams += 1
            totals.events += data.count(b"\n\n")
            totals.deltas += data.count(b"event: content_block_delta")

    async with aiohttp.ClientSession(connector=connector) as session:
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        await asyncio.gather(*(worker(session, n) for n in range(concurrency)))
        totals.seconds = time.monotonic() - started
        totals.server_cpu = cpu_seconds(pid) - cpu_before
    return totals


def run(server: tuple[subprocess.Popen[str], str], concurrency: int, duration: float) -> Result:
    process, url = server
    try:
        return asyncio.run(drive(url, concurrency, duration, process.pid))
    finally:
        process.terminate()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--paced", default="500,1000,2000", help="concurrencies of the paced runs")
    parser.add_argument("--serve-baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--pace", action=argparse.BooleanOptionalAction, default=False, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_baseline:
        asyncio.run(serve_baseline(args.pace))
        return

    print(f"full speed, {args.concurrency} concurrent streams of {REPLY_TOKENS} tokens, {args.duration:.0f} s each")
    print(f"{'server':<12}{'streams/s':>12}{'events/s':>12}{'server CPU':>12}{'events/CPU-s':>14}")
    rows = {}
    for name, server in (("baseline", baseline_server(False)), ("simulator", simulator_server("inf"))):
        result = run(server, args.concurrency, args.duration)
        per_cpu = result.events / max(result.server_cpu, 1e-9)
        rows[name] = per_cpu
        print(
            f"{name:<12}{result.streams / result.seconds:>12,.0f}{result.events / result.seconds:>12,.0f}"
            f"{result.server_cpu / result.seconds:>11.0%}{per_cpu:>14,.0f}"
        )
    print(f"simulator / baseline events per CPU-second: {rows['simulator'] / rows['baseline']:.2f}")

    print(f"\npaced: 0.5 s to first token, 60 tokens/s per stream, {args.duration:.0f} s each")
    ideal = 0.5 + REPLY_TOKENS / 60
    print(f"{'server':<12}{'streams':>9}{'tokens/s':>12}{'mean stream s':>15}{'ideal s':>9}{'server CPU':>12}")
    for concurrency in (int(c) for c in args.paced.split(",")):
        for name, server in (("baseline", baseline_server(True)), ("simulator", simulator_server("1"))):
            result = run(server, concurrency, max(args.duration, 2 * ideal))
            print(
                f"{name:<12}{concurrency:>9}{result.deltas / result.seconds:>12,.0f}"
                f"{result.stream_seconds / result.streams:>15.2f}{ideal:>9.2f}"
                f"{result.server_cpu / result.seconds:>11.0%}"
            )


if __name__ == "__main__":
    main()
