"""--deadline measured against the simulator's Message Batches API: a generous deadline, one no
batch can meet, and one in between. For each: wall time against the deadline, cost against
streaming it all (the same tokens at the standard price), the requests by the way they went, and
the output tokens billed (the simulator's stats, batches and streams) against those of the replies
kept (never more than once).

    python scripts/bench_deadline.py [--requests 120] [--kills 3]

``--kills K``: the client is killed (SIGKILL) K times in each scenario, at seeded moments, and
resumed each time until the job ends: the wall time counts from the first start to the last end,
and the output billed must still equal the output kept.
"""

from __future__ import annotations

import argparse
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.models import Usage
from orchestrator.pricing import BATCH, STANDARD, load_prices
from scripts.benchlib import ROOT, simulator_stats, start_simulator, stopped_after, write_prompt_lines

MODEL = "claude-haiku-4-5"
RPM = 120  # the simulator's limit, and the client's (the pace the plan streams at)
SCENARIOS = (  # name, the simulator's batch seconds, the deadline
    ("generous", "10:60", "30m"),
    ("no batch can meet it", "120:600", "90s"),
    ("in between", "30:600", "4m"),
)


def costs(db: Path) -> tuple[Decimal, Decimal, dict[str, int], int]:
    """(cost, cost had it all streamed, succeeded requests by way, output tokens of the replies kept)."""
    prices = load_prices()
    connection = sqlite3.connect(db)
    rows = connection.execute(
        "SELECT batch_key IS NOT NULL, outcome, SUM(input_tokens), SUM(output_tokens), COUNT(*) FROM attempts "
        "GROUP BY 1, 2"
    ).fetchall()
    connection.close()
    cost = streamed = Decimal(0)
    ways: dict[str, int] = {}
    kept = 0
    for in_batch, outcome, inputs, outputs, count in rows:
        usage = Usage(input_tokens=inputs or 0, output_tokens=outputs or 0)
        cost += prices.cost(MODEL, usage, BATCH if in_batch else STANDARD) or Decimal(0)
        streamed += prices.cost(MODEL, usage) or Decimal(0)
        if outcome == "succeeded":
            ways["batch" if in_batch else "streamed"] = count
            kept += outputs or 0
    return cost, streamed, ways, kept


ENV = {"ANTHROPIC_API_KEY": "sk-bench", "PATH": "/usr/bin:/bin"}
KILL_WITHIN = 20.0  # --kills: each kill comes 2 s to this many seconds after the client's start


def run_killed(run: list[str], resume: list[str], kills: int, within: float, seed: int) -> tuple[int, str, int]:
    """Run ``run``, SIGKILL it ``kills`` times at seeded moments within ``within`` seconds of each
    start (``resume`` starts it again), then let the last one end: (its exit status, its stderr,
    the kills made: fewer where the job ended first)."""
    rng = random.Random(seed)
    command = run
    for made in range(kills):
        process = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            process.wait(timeout=rng.uniform(2.0, within))
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
            process.wait()
        else:
            assert process.stderr is not None
            return process.returncode, process.stderr.read().decode(), made  # it ended before its kill
        command = resume
    done = subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, check=False)
    return done.returncode, done.stderr, kills


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--kills", type=int, default=0, help="SIGKILL the client this many times in each scenario")
    args = parser.parse_args()
    print(f"{args.requests} requests ({MODEL}, max_tokens 100), simulator at {RPM} RPM, concurrency 8")
    if args.kills:
        print(f"the client killed (SIGKILL) {args.kills} times in each scenario and resumed")
    print(
        f"{'deadline':<24}{'batches take':>13}{'wall s':>8}{'of deadline':>12}{'batch':>7}{'streamed':>9}"
        f"{'cost':>11}{'all-streamed':>13}{'ratio':>7}{'out billed':>11}{'out kept':>9}"
        + (f"{'kills':>7}" if args.kills else "")
    )
    for name, seconds, deadline in SCENARIOS:
        with tempfile.TemporaryDirectory() as folder:
            job = Path(folder) / "job.jsonl"
            write_prompt_lines(job, args.requests)
            process, url = start_simulator(
                "--seed", "1", "--batch-seconds", seconds, "--ttft", "0.2", "--tps", "200",
                "--reply-tokens", "20:80", "--sim-rpm", str(RPM),
            )  # fmt: skip
            with stopped_after(process):
                out = Path(folder) / "out"
                command = [
                    sys.executable, "-m", "orchestrator", "run", str(job), "--base-url", url, "--quiet",
                    "--results", str(out), "--model", MODEL, "--max-tokens", "100", "--rpm", str(RPM),
                    "--poll-interval", "1", "--deadline", deadline,
                ]  # fmt: skip
                resume = [sys.executable, "-m", "orchestrator", "resume", str(out / "job.sqlite"), "--quiet"]
                limit = {"30m": 1800, "90s": 90, "4m": 240}[deadline]
                started = time.monotonic()
                status, errors, killed = run_killed(command, resume, args.kills, KILL_WITHIN, seed=len(name))
                wall = time.monotonic() - started
                stats = simulator_stats(url)
            if status != 0:
                print(f"{name}: exit {status}: {errors.strip()[-400:]}")
                continue
            cost, all_streamed, ways, kept = costs(out / "job.sqlite")
            billed = stats["output_tokens_billed"] + stats["batches"]["tokens_billed"].get("output_tokens", 0)
            print(
                f"{name + ' (' + deadline + ')':<24}{seconds:>13}{wall:>8.1f}{wall / limit:>11.0%} "
                f"{ways.get('batch', 0):>7}{ways.get('streamed', 0):>9}{cost:>11.5f}{all_streamed:>13.5f}"
                f"{cost / all_streamed:>7.2f}{billed:>11,}{kept:>9,}" + (f"{killed:>7}" if args.kills else "")
            )


if __name__ == "__main__":
    main()
