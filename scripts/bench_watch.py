"""What ``run --watch`` costs the run: the same job with and without it, in the same run of this script.

The simulator runs in a process of its own, paced like the API (``--ttft``, ``--tps`` per stream,
1-5 tokens per delta). Each run is a fresh ``orchestrator run`` process; its wall time and CPU
(user + system, all its threads, from ``wait4``) are its own. Three cases, interleaved, each
``--rounds`` times:

- plain: ``orchestrator run JOB --quiet``;
- watch, unwatched: ``--watch PORT`` with nobody reading it (what the run's notes cost);
- watch, watched: ``--watch PORT`` with a page open the whole time, i.e. this script fetching
  ``status.json`` as often as the page does (``refresh_seconds``) and ``/charts`` every
  ``charts_refresh_seconds``, as the page's script does.

Then how long the watcher's reads take on the finished job (the numbers, and the charts, which
read every request): what paces them on large jobs.

    python scripts/bench_watch.py [--requests 3000] [--concurrency 200] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchlib import ROOT, start_simulator, write_prompt_lines


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def poll_like_the_page(url: str, stop: threading.Event, reads: list[float]) -> None:
    """Fetch status.json and the charts as the page's script does, until ``stop``."""
    charts_due = 0.0
    while not stop.is_set():
        wait = 1.0
        try:
            started = time.perf_counter()
            with urllib.request.urlopen(url + "status.json", timeout=10) as response:
                answer = json.load(response)
            reads.append(time.perf_counter() - started)
            wait = max(1.0, answer.get("refresh_seconds") or 1.0)
            if time.monotonic() >= charts_due:
                with urllib.request.urlopen(url + "charts", timeout=30) as response:
                    response.read()
                charts_due = time.monotonic() + max(2.0, answer.get("charts_refresh_seconds") or 5.0)
        except OSError:
            pass  # not up yet, or gone: the run starts or ends
        stop.wait(wait)


def run_once(job: Path, url: str, folder: Path, concurrency: int, watch: str) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, status reads) of one ``orchestrator run`` process."""
    results = folder / f"results-{time.monotonic_ns()}"
    argv = [sys.executable, "-m", "orchestrator", "run", str(job), "--base-url", url, "--results", str(results)]
    argv += ["--quiet", "--concurrency", str(concurrency)]
    port = free_port()
    if watch != "plain":
        argv += ["--watch", str(port)]
    stop, reads = threading.Event(), list[float]()
    poller = threading.Thread(target=poll_like_the_page, args=(f"http://127.0.0.1:{port}/", stop, reads))
    started = time.perf_counter()
    process = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, "ANTHROPIC_API_KEY": "sk-bench"})
    if watch == "watched":
        poller.start()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stop.set()
    if poller.is_alive():
        poller.join()
    if status != 0:
        raise SystemExit(f"the run failed ({status})")
    return wall, usage.ru_utime + usage.ru_stime, len(reads)


async def read_costs(db: Path) -> tuple[float, float]:
    """Seconds the watcher takes to read the numbers, and the charts, of the job in ``db`` (best of 3)."""
    from orchestrator.pricing import load_prices
    from orchestrator.watch import Watcher

    numbers, charts = [], []
    for _ in range(3):
        watcher = Watcher(db, load_prices(None), every=0.0)  # a fresh one: nothing read yet
        started = time.perf_counter()
        await watcher.status()
        numbers.append(time.perf_counter() - started)
        started = time.perf_counter()
        await watcher.charts()
        charts.append(time.perf_counter() - started)
    return min(numbers), min(charts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ttft", default="0.2")
    parser.add_argument("--tps", default="200")
    args = parser.parse_args()
    simulator, url = start_simulator("--ttft", args.ttft, "--tps", args.tps, "--tokens-per-delta", "1:5")
    cases = ("plain", "unwatched", "watched")
    found: dict[str, list[tuple[float, float, int]]] = {case: [] for case in cases}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            job = folder / "job.jsonl"
            write_prompt_lines(job, args.requests)
            for _ in range(args.rounds):
                for case in cases:
                    found[case].append(run_once(job, url, folder, args.concurrency, case))
            db = next(folder.glob("results-*/job.sqlite"))
            numbers, charts = anyio.run(read_costs, db)
    finally:
        simulator.terminate()
        simulator.wait()
    print(
        f"{args.requests:,} requests, concurrency {args.concurrency}, simulator paced at ttft {args.ttft} s, "
        f"{args.tps} tokens/s per stream; median of {args.rounds} rounds"
    )
    print(f"{'case':<34}{'wall s':>9}{'CPU s':>9}{'wall x':>9}{'CPU x':>9}{'status reads':>14}")
    base_wall = statistics.median(wall for wall, _, _ in found["plain"])
    base_cpu = statistics.median(cpu for _, cpu, _ in found["plain"])
    names = {"plain": "run", "unwatched": "run --watch, no page open", "watched": "run --watch, page open"}
    for case in cases:
        wall = statistics.median(w for w, _, _ in found[case])
        cpu = statistics.median(c for _, c, _ in found[case])
        reads = statistics.median(r for _, _, r in found[case])
        print(f"{names[case]:<34}{wall:>9.2f}{cpu:>9.2f}{wall / base_wall:>9.3f}{cpu / base_cpu:>9.3f}{reads:>14.0f}")
    print(f"watcher reads of the finished job: numbers {numbers * 1000:.1f} ms, charts {charts * 1000:.1f} ms")


if __name__ == "__main__":
    main()
