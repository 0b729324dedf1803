"""--deadline measured against the simulator's Message Batches API: a generous deadline, one no
batch can meet, and one in between. For each: wall time against the deadline, cost against
streaming it all (the same tokens at the standard price), the requests by the way they went, and
the output tokens billed (the simulator's stats, batches and streams) against those of the replies
kept (never more than once).

    python scripts/bench_deadline.py [--requests 120]
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=120)
    args = parser.parse_args()
    print(f"{args.requests} requests ({MODEL}, max_tokens 100), simulator at {RPM} RPM, concurrency 8")
    print(
        f"{'deadline':<24}{'batches take':>13}{'wall s':>8}{'of deadline':>12}{'batch':>7}{'streamed':>9}"
        f"{'cost':>11}{'all-streamed':>13}{'ratio':>7}{'out billed':>11}{'out kept':>9}"
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
                started = time.monotonic()
                done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False,
                                      env={"ANTHROPIC_API_KEY": "sk-bench", "PATH": "/usr/bin:/bin"})  # fmt: skip
                wall = time.monotonic() - started
                stats = simulator_stats(url)
            if done.returncode != 0:
                print(f"{name}: exit {done.returncode}: {done.stderr.strip()[-400:]}")
                continue
            cost, all_streamed, ways, kept = costs(out / "job.sqlite")
            billed = stats["output_tokens_billed"] + stats["batches"]["tokens_billed"].get("output_tokens", 0)
            limit = {"30m": 1800, "90s": 90, "4m": 240}[deadline]
            print(
                f"{name + ' (' + deadline + ')':<24}{seconds:>13}{wall:>8.1f}{wall / limit:>11.0%} "
                f"{ways.get('batch', 0):>7}{ways.get('streamed', 0):>9}{cost:>11.5f}{all_streamed:>13.5f}"
                f"{cost / all_streamed:>7.2f}{billed:>11,}{kept:>9,}"
            )


if __name__ == "__main__":
    main()
