"""Structured outputs at scale: a table extraction job (``jobs/example/review.schema.json`` on every
row, some rows with a ``max_tokens`` too small for their JSON) run twice against the simulator in a
process of its own: once fault-free (the baseline), once with drops, truncated bodies and in-band
error events on a share of the streams. Both runs have the same seeded refusals.

Printed: outputs valid / cut / refused / not JSON / invalid of each run; whether every reply text of
the faulty run equals the fault-free one (``exact``); and the CPU of parsing and validating the
outputs (``outputs.message_output`` over every result, the work ``export``/``status`` do per result)
next to the CPU of the run itself (the ``orchestrator run`` process), per result and as a ratio.

    python scripts/bench_structured.py [--rows 1000] [--fault 0.05] [--refusals 0.03] [--cut-every 12]
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.outputs import STATUSES, message_output, schema_check
from orchestrator.store.queries import read_results
from scripts.benchlib import ROOT, simulator_stats, start_simulator

SCHEMA = ROOT / "jobs" / "example" / "review.schema.json"
PRODUCTS = ("kettle", "toaster", "desk lamp", "blender", "kettle, steel", "fan")


def write_job(folder: Path, rows: int, cut_every: int) -> Path:
    """A table of ``rows`` reviews and a spec extracting the schema's fields from each."""
    with (folder / "reviews.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "product", "text", "max_tokens"])
        for i in range(rows):
            small = cut_every and i % cut_every == 0
            text = f"Review {i}: it works, mostly. Price was {i % 90 + 10} dollars."
            writer.writerow([f"r{i}", PRODUCTS[i % len(PRODUCTS)], text, 12 if small else ""])
    spec = folder / "extract.toml"
    spec.write_text(
        'name = "extract"\n[[tables]]\npath = "reviews.csv"\nid_column = "id"\nparam_columns = ["max_tokens"]\n'
        '[template]\nprompt = "Extract the fields of this review of {product}:\\n{text}"\n'
        f'[output]\nschema = "{SCHEMA}"\n[defaults]\nmodel = "claude-haiku-4-5"\nmax_tokens = 400\n'
        "[run]\nconcurrency = 64\n"
    )
    return spec


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(spec: Path, results: Path, simulator_options: list[str]) -> tuple[float, float, dict[str, Any]]:
    """One run against a simulator of its own: (CPU seconds of the run process, wall seconds, server stats)."""
    process, url = start_simulator("--speed", "inf", *simulator_options)
    try:
        before, started = children_cpu(), time.monotonic()
        command = [sys.executable, "-m", "orchestrator", "run", str(spec), "--base-url", url]
        subprocess.run([*command, "--results", str(results), "--quiet"], check=True, cwd=ROOT, env=_env())
        return children_cpu() - before, time.monotonic() - started, simulator_stats(url)
    finally:
        process.terminate()
        process.wait()


def _env() -> dict[str, str]:
    return {**os.environ, "ANTHROPIC_API_KEY": "sk-bench"}


def outputs(db: Path) -> tuple[dict[str, str], dict[str, int], float, int]:
    """Reply texts by custom_id, output counts, and the CPU seconds of parsing and validating every result."""
    rows = list(read_results(db))
    texts = {
        row["custom_id"]: "".join(
            b.get("text", "") for b in (row["result"] or {}).get("content", []) if b["type"] == "text"
        )
        for row in rows
    }
    counts = dict.fromkeys(STATUSES, 0)
    started = time.process_time()
    for row in rows:
        output = message_output(row["result"], schema_check(row["output_schema"]))
        counts[output.status] += 1
    return texts, counts, time.process_time() - started, len(rows)


def main(rows: int, fault: float, refusals: float, cut_every: int) -> None:
    common = ["--seed", "7", "--refusals", str(refusals)]
    faults = [f"--fault=drop={fault}", f"--fault=truncate={fault}", f"--fault=error_event={fault}"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec = write_job(folder, rows, cut_every)
        figures = {}
        for name, options in (("fault-free", common), ("faults", [*common, *faults])):
            cpu, wall, stats = run(spec, folder / name, options)
            texts, counts, check_cpu, results = outputs(folder / name / "job.sqlite")
            figures[name] = (cpu, wall, stats, texts, counts, check_cpu, results)
    header = f"{'run':<11}{'results':>8}{'attempts':>9}{'faults':>7}" + "".join(f"{s:>9}" for s in STATUSES)
    print(header)
    for name, (_, _, stats, _, counts, _, results) in figures.items():
        injected = sum(stats["faults_injected"].values())
        print(
            f"{name:<11}{results:>8,}{stats['requests']:>9,}{injected:>7,}"
            + "".join(f"{counts[s]:>9,}" for s in STATUSES)
        )
    base, faulty = figures["fault-free"][3], figures["faults"][3]
    exact = sum(base[cid] == faulty.get(cid) for cid in base)
    print(f"\nreply texts of the faulty run equal to the fault-free run's: {exact:,} of {len(base):,}")
    print(f"\n{'run':<11}{'run CPU s':>10}{'per result':>12}{'check CPU s':>12}{'per result':>12}{'check/run':>10}")
    for name, (cpu, _, _, _, _, check_cpu, results) in figures.items():
        print(
            f"{name:<11}{cpu:>10.2f}{cpu / results * 1e3:>10.2f}ms{check_cpu:>12.3f}"
            f"{check_cpu / results * 1e6:>10.1f}us{check_cpu / cpu:>10.1%}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--fault", type=float, default=0.05, help="probability of each of drop, truncate, error_event")
    parser.add_argument("--refusals", type=float, default=0.03)
    parser.add_argument("--cut-every", type=int, default=12, help="every Nth row gets max_tokens 12 (0: none)")
    args = parser.parse_args()
    main(args.rows, args.fault, args.refusals, args.cut_every)
