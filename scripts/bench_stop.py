"""How long a stop (Ctrl-C) takes on a big job, against the full export it used to do, in the same run.

A job of ``--results`` finished requests (stored as a run would store them, replies of about 200
tokens) and 4 more whose streams stall: ``orchestrator resume`` runs it against the simulator,
and once the 4 streams are in flight it gets a SIGINT. Measured: from the signal to the exit
(the stop: last checkpoints, summary), and ``orchestrator export`` of the same database (what
every stop used to add).

    python scripts/bench_stop.py [--results 100000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

from orchestrator.jobs.read import read_requests
from orchestrator.jobs.spec import load_spec
from orchestrator.models import AttemptEnded, AttemptStarted, Checkpoint, Outcome, Record, State, Usage
from orchestrator.simulator import Simulator, SimulatorConfig, Timing, serve
from orchestrator.store import open_store

BATCH = 2000
STALLED = 4
WORDS = [
    "the",
    "rate",
    "limit",
    "of",
    "a",
    "stream",
    "is",
    "a",
    "bucket",
    "that",
    "refills",
    "while",
    "the",
    "reply",
    "goes",
    "on",
]


def message(i: int) -> dict[str, object]:
    text = " ".join(WORDS[(i + k) % len(WORDS)] for k in range(200))
    return {
        "id": f"msg_{i:08d}",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 12, "output_tokens": 200},
    }


async def build(folder: Path, finished: int, url: str) -> Path:
    job = folder / "job.jsonl"
    with job.open("w") as handle:
        for i in range(finished):
            handle.write(json.dumps({"prompt": f"request {i}"}) + "\n")
        for i in range(STALLED):
            handle.write(json.dumps({"prompt": f"stall {i} <<sim-fault: stall after=3 seconds=600 times=1>>"}) + "\n")
    db = folder / "out" / "job.sqlite"
    spec = load_spec(job, {})
    argv = ["run", str(job), "--results", str(db.parent), "--base-url", url, "--quiet"]
    async with open_store(db) as store:
        await store.load(spec.name, {"argv": argv}, spec.fingerprint(), read_requests(spec))
        now = time.time()
        for start in range(1, finished + 1, BATCH):
            records: list[Record] = []
            for request_id in range(start, min(finished + 1, start + BATCH)):
                records.append(AttemptStarted(request_id, 1, now, sent_at=now))
                checkpoint = Checkpoint(request_id, 1, None, f"msg_{request_id:08d}", Usage(12, 200), now, now)
                final = (State.SUCCEEDED, message(request_id))
                records.append(AttemptEnded(checkpoint, Outcome.SUCCEEDED, None, None, None, final))
            await store.write(records, [])
    return db


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--results", type=int, default=100_000)
    args = parser.parse_args()
    simulator = Simulator(SimulatorConfig(timing=Timing(speed=math.inf)))
    with tempfile.TemporaryDirectory() as tmp:
        async with serve(simulator) as url:
            db = await build(Path(tmp), args.results, url)
            env = {**os.environ, "ANTHROPIC_API_KEY": "sk-bench"}
            command = [sys.executable, "-m", "orchestrator"]
            process = await anyio.open_process([*command, "resume", str(db)], env=env, stderr=subprocess.DEVNULL)
            await simulator.until(lambda stats: stats.stalls_now == STALLED)
            signalled = time.perf_counter()
            process.send_signal(signal.SIGINT)
            await process.wait()
            stop = time.perf_counter() - signalled
            assert process.returncode == 130, process.returncode
        started = time.perf_counter()
        exported = await anyio.run_process([*command, "export", str(db)], env=env)
        export = time.perf_counter() - started
        lines = sum(1 for _ in (db.parent / "results.jsonl").open())
        assert lines == args.results, (lines, exported.stderr)
    print(f"{args.results:,} finished results, {STALLED} streams in flight")
    print("| what | seconds |")
    print("|---|---|")
    print(f"| stop (SIGINT to exit) | {stop:.2f} |")
    print(f"| full export (what every stop added before) | {export:.2f} |")
    print(f"ratio stop / export: {stop / export:.2f}")


if __name__ == "__main__":
    anyio.run(main)
