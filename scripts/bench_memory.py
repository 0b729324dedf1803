"""Does memory level off? A million queued requests, run for a few minutes, RSS sampled.

The simulator runs at full speed (multi-token deltas) in a process of its own; ``orchestrator
run`` loads a JSONL job of ``--requests`` prompt lines and runs it at ``--concurrency`` until
``--seconds`` have passed since its first request went out, then is stopped with SIGTERM (as
Ctrl-C would). Every ``--every`` seconds the orchestrator's RSS and the requests the simulator
has answered are printed: the curve should flatten once the pool is busy, whatever the size
of the job.

    python scripts/bench_memory.py [--requests 1000000] [--concurrency 64] [--seconds 300]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchlib import simulator_stats, start_simulator, stopped_after, write_prompt_lines

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def answered(url: str) -> int:
    return int(simulator_stats(url)["requests"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=300.0, help="run time after the first request")
    parser.add_argument("--every", type=float, default=15.0, help="seconds between samples")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    job = workdir / "job.jsonl"
    write_prompt_lines(job, args.requests)
    simulator, url = start_simulator("--speed", "inf")
    command = [sys.executable, "-m", "orchestrator", "run", str(job), "--base-url", url, "--quiet"]
    command += ["--results", str(workdir / "out"), "--concurrency", str(args.concurrency)]
    started = time.monotonic()
    runner = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "ANTHROPIC_API_KEY": "sk-bench"})
    try:
        with stopped_after(runner):
            while answered(url) == 0:
                time.sleep(0.2)
            first = time.monotonic()
            print(
                f"{args.requests:,} requests queued, concurrency {args.concurrency}; "
                f"first request out after {first - started:.1f} s (loading), RSS then {rss_mb(runner.pid):.0f} MB"
            )
            print(f"{'s after first request':>22}{'requests done':>15}{'RSS MB':>9}")
            while (elapsed := time.monotonic() - first) < args.seconds:
                print(f"{elapsed:>22.0f}{answered(url):>15,}{rss_mb(runner.pid):>9.1f}", flush=True)
                time.sleep(args.every)
            print(f"{time.monotonic() - first:>22.0f}{answered(url):>15,}{rss_mb(runner.pid):>9.1f}")
    finally:
        simulator.terminate()
        simulator.wait()


if __name__ == "__main__":
    main()
