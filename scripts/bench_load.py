"""How long a big job file takes to load: from ``orchestrator run`` to its first request, now and before.

A JSONL job of ``--lines`` prompt lines (as ``bench_memory.py`` makes it) is written once; then
``orchestrator run`` of it is started in a fresh process, into a fresh results folder, against the
simulator (its own process), and timed from its start to the moment the simulator has seen its
first request (every line is read, checked and stored before that), with the CPU the process had
used by then. It runs on this tree and on the loader before issue 10's work (``--baseline``,
checked out in a temporary git worktree, removed afterwards), alternately, ``--repeat`` times.

    python scripts/bench_load.py [--lines 1000000] [--repeat 1] [--baseline 5aa5b83^]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchlib import ROOT, process_cpu, simulator_stats, start_simulator, stopped_after, write_prompt_lines

POLL = 0.02  # seconds between two looks at the simulator's count of requests


def first_request(tree: Path, job: Path, out: Path, url: str) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``orchestrator run`` from ``tree``, from its start to its first request."""
    seen = simulator_stats(url)["requests"]
    command = [sys.executable, "-m", "orchestrator", "run", str(job), "--base-url", url, "--quiet"]
    command += ["--results", str(out), "--concurrency", "4"]
    env = {**os.environ, "ANTHROPIC_API_KEY": "sk-bench", "PYTHONPATH": str(tree)}
    started = time.monotonic()
    runner = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with stopped_after(runner):
        while simulator_stats(url)["requests"] == seen:
            if runner.poll() is not None:
                raise SystemExit(f"orchestrator run (in {tree}) ended with {runner.returncode} before any request")
            time.sleep(POLL)
        wall, cpu = time.monotonic() - started, process_cpu(runner.pid)
    shutil.rmtree(out)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--baseline", default="5aa5b83^", help="the commit to compare with")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-load-"))
    baseline = workdir / "baseline"
    job = workdir / "job.jsonl"
    write_prompt_lines(job, args.lines)
    tiny = workdir / "tiny.jsonl"
    write_prompt_lines(tiny, 1)
    worktree = ["git", "worktree", "add", "--detach", "--quiet", str(baseline), args.baseline]
    subprocess.run(worktree, cwd=ROOT, check=True)
    simulator, url = start_simulator("--speed", "inf")
    trees = {f"before ({args.baseline})": baseline, "now": ROOT}
    times: dict[str, list[tuple[float, float]]] = {label: [] for label in trees}
    startup: dict[str, list[tuple[float, float]]] = {label: [] for label in trees}
    try:
        for turn in range(args.repeat):
            for label, tree in trees.items():
                times[label].append(first_request(tree, job, workdir / f"out-{turn}", url))
                startup[label].append(first_request(tree, tiny, workdir / f"tiny-{turn}", url))
    finally:
        simulator.terminate()
        simulator.wait()
        subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=ROOT, check=True)
        shutil.rmtree(workdir)

    print(f"{args.lines:,} prompt lines: from `orchestrator run` to its first request (best of {args.repeat});")
    print("the same for a job of 1 line (starting up: imports, database, client), and the difference (loading)")
    print(
        f"{'loader':<22}{'wall s':>8}{'CPU s':>8}{'x wall':>8}{'x CPU':>7}"
        f"   {'1 line: wall, CPU':>18}   loading: wall, CPU"
    )
    before = next(iter(trees))
    base_wall, base_cpu = min(times[before])
    base_load = base_wall - min(startup[before])[0], base_cpu - min(startup[before])[1]
    for label, runs in times.items():
        wall, cpu = min(runs)
        start_wall, start_cpu = min(startup[label])
        load_wall, load_cpu = wall - start_wall, cpu - start_cpu
        print(
            f"{label:<22}{wall:>8.2f}{cpu:>8.2f}{base_wall / wall:>8.2f}{base_cpu / cpu:>7.2f}"
            f"   {start_wall:>8.2f} {start_cpu:>8.2f}"
            f"   {load_wall:>6.2f} {load_cpu:>6.2f} ({base_load[0] / load_wall:.2f}x, {base_load[1] / load_cpu:.2f}x)"
        )


if __name__ == "__main__":
    main()
