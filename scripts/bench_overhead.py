"""What the orchestrator costs against the bare SDK pattern, in the same run, against the simulator.

The simulator runs in a process of its own, a fresh one for each of three cases:

- idealised: full speed, one token per delta: every event is a token, the case where the
  baseline's typed parsing of each event costs the most (what earlier figures were measured on);
- full speed, 1-5 tokens per delta, as the API streams them;
- paced like the API (0.5 s to the first token, 60 tokens/s per stream, 1-5 tokens per delta),
  ``--paced-requests`` at ``--paced-concurrency``.

Each client runs in a fresh process so that its CPU time and peak RSS are its own:

- baseline: the SDK's usual pattern, ``asyncio.gather`` over every request with a semaphore,
  ``messages.stream()`` and ``get_final_message()``, no store (and the SDK's own retries);
- orchestrator: ``orchestrator run`` on a JSONL job: load into SQLite, stream, checkpoint every
  0.25 s, store every message, export results.jsonl.

CPU is counted from just before the work to just after (imports excluded: the SDK's is about
1.3 CPU-s, which the orchestrator would otherwise pay inside its clock) and reported per
1M output tokens. A profile of the orchestrator shows where its CPU goes. Memory: the
orchestrator with 2,000 and with 100,000 queued requests (the latter stopped after as many
completions as the former) should peak at about the same RSS.

    python scripts/bench_overhead.py [--requests 2000] [--concurrency 64] [--big 100000]
                                     [--paced-requests 1000] [--paced-concurrency 500]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchlib import cpu, prompt, start_simulator, write_prompt_lines

ROOT = Path(__file__).resolve().parents[1]
MODEL = "claude-haiku-4-5"
MAX_TOKENS = 1024


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def baseline(url: str, requests: int, concurrency: int) -> dict[str, Any]:
    import anthropic

    client = anthropic.AsyncAnthropic(base_url=url, api_key="sk-bench")
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> int:
        async with semaphore:
            async with client.messages.stream(
                model=MODEL, max_tokens=MAX_TOKENS, messages=[{"role": "user", "content": prompt(i)}]
            ) as stream:
                message = await stream.get_final_message()
            return message.usage.output_tokens

    started, cpu_before = time.monotonic(), cpu()
    tokens = sum(await asyncio.gather(*(one(i) for i in range(requests))))
    return {"wall": time.monotonic() - started, "cpu": cpu() - cpu_before, "tokens": tokens, "requests": requests}


def orchestrator(
    url: str, requests: int, concurrency: int, stop_after: int | None, profile: Path | None
) -> dict[str, Any]:
    import anthropic  # noqa: F401  (imported before the clock starts, as the baseline's is)
    import anyio

    from orchestrator.cli import run_command

    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    job = workdir / "job.jsonl"
    write_prompt_lines(job, requests)
    argv = [
        "run",
        str(job),
        "--base-url",
        url,
        "--results",
        str(workdir / "out"),
        "--quiet",
        "--concurrency",
        str(concurrency),
        "--model",
        MODEL,
        "--max-tokens",
        str(MAX_TOKENS),
    ]
    os.environ["ANTHROPIC_API_KEY"] = "sk-bench"

    async def run() -> int:
        if stop_after is None:
            return await run_command(argv)
        return await _run_until(argv, stop_after)

    profiler = cProfile.Profile() if profile else None
    started, cpu_before = time.monotonic(), cpu()
    if profiler:
        profiler.enable()
    status = anyio.run(run)
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)  # type: ignore[arg-type]
    wall, used = time.monotonic() - started, cpu() - cpu_before
    assert status == 0, status
    import sqlite3

    connection = sqlite3.connect(workdir / "out" / "job.sqlite")
    done, tokens = connection.execute(
        "SELECT COUNT(*), COALESCE(SUM(json_extract(result, '$.usage.output_tokens')), 0) "
        "FROM requests WHERE state = 'succeeded'"
    ).fetchone()
    connection.close()
    return {"wall": wall, "cpu": used, "tokens": tokens, "requests": done}


async def _run_until(argv: list[str], stop_after: int) -> int:
    """Like ``orchestrator run``, but stop the job after ``stop_after`` requests have finished."""
    import anthropic

    from orchestrator.cli.parser import build_parser
    from orchestrator.jobs.read import read_requests
    from orchestrator.jobs.spec import load_spec
    from orchestrator.run.engine import Job
    from orchestrator.runtime.progress import Quiet
    from orchestrator.settings import JobSettings
    from orchestrator.store import open_store

    args = build_parser().parse_args(argv)
    spec = load_spec(Path(args.job), {"model": args.model, "max_tokens": args.max_tokens})
    async with open_store(Path(args.results) / "job.sqlite") as store:
        await store.load(spec.name, {"argv": argv}, spec.fingerprint(), read_requests(spec))
        async with anthropic.AsyncAnthropic(base_url=args.base_url, max_retries=0) as client:
            job = Job(store, client, JobSettings(concurrency=args.concurrency), Quiet())
            async with asyncio.TaskGroup() as group:
                group.create_task(job.run(handle_signals=False))
                await job.writer.until(lambda w: sum(w.tally.finished.values()) >= stop_after)
                job.stop()
    return 0


def role_main(args: argparse.Namespace) -> None:
    if args.role == "baseline":
        result = asyncio.run(baseline(args.url, args.requests, args.concurrency))
    else:
        result = orchestrator(args.url, args.requests, args.concurrency, args.stop_after, args.profile)
    result["rss_mb"] = peak_rss_mb()
    print(json.dumps(result))


def spawn(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.splitlines()[-1])  # type: ignore[no-any-return]


def profile_table(path: Path) -> list[tuple[str, float]]:
    """Own CPU time grouped by where the code lives."""
    stats = pstats.Stats(str(path))
    groups: dict[str, float] = defaultdict(float)
    for (filename, _, _), (_, _, own, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        name = filename.replace("\\", "/")
        for key, label in (
            ("/orchestrator/", "orchestrator (ours)"),
            ("/anthropic/", "anthropic SDK (event parsing, models)"),
            ("/pydantic", "pydantic (SDK models)"),
            ("/httpx2/", "httpx2"),
            ("/aiohttp/", "aiohttp (HTTP transport)"),
            ("/httpcore", "httpcore"),
            ("/h11/", "h11 (HTTP parsing)"),
            ("/aiosqlite/", "aiosqlite"),
            ("/asyncio/", "asyncio"),
            ("/anyio/", "anyio"),
            ("/json/", "json"),
            ("sqlite3", "sqlite3"),
        ):
            if key in name:
                groups[label] += own
                break
        else:
            groups["builtins (sqlite, sockets, ...)" if name.startswith("~") else "other"] += own
    total = sum(groups.values())
    return [(label, seconds / total) for label, seconds in sorted(groups.items(), key=lambda kv: -kv[1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--big", type=int, default=100_000, help="queued requests for the memory check")
    parser.add_argument("--paced-requests", type=int, default=1000)
    parser.add_argument("--paced-concurrency", type=int, default=500)
    parser.add_argument("--role", choices=["baseline", "orchestrator"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--stop-after", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        role_main(args)
        return

    cases = [
        ("idealised: full speed, 1 token per delta", ["--speed", "inf", "--tokens-per-delta", "1"], args.requests),
        ("full speed, 1-5 tokens per delta", ["--speed", "inf", "--tokens-per-delta", "1:5"], args.requests),
        (
            "paced: 0.5 s to first token, 60 tok/s per stream, 1-5 tokens per delta",
            ["--speed", "1", "--tokens-per-delta", "1:5"],
            args.paced_requests,
        ),
    ]
    print("simulator in its own process; each client in a fresh process\n")
    print(f"{'client':<14}{'req/s':>9}{'out tok/s':>12}{'CPU s':>8}{'CPU s / 1M out tok':>20}{'peak RSS MB':>13}")
    for number, (label, simulator_args, requests) in enumerate(cases):
        concurrency = args.paced_concurrency if number == 2 else args.concurrency
        simulator, url = start_simulator(*simulator_args)
        common = ["--url", url, "--requests", str(requests), "--concurrency", str(concurrency)]
        try:
            rows = {
                "baseline": spawn("--role", "baseline", *common),
                "orchestrator": spawn("--role", "orchestrator", *common),
            }
            if number == 1:
                with tempfile.TemporaryDirectory() as tmp:
                    profile = Path(tmp) / "profile.out"
                    spawn("--role", "orchestrator", *common, "--profile", str(profile))
                    breakdown = profile_table(profile)
                big = spawn(
                    "--role",
                    "orchestrator",
                    "--url",
                    url,
                    "--requests",
                    str(args.big),
                    "--concurrency",
                    str(concurrency),
                    "--stop-after",
                    str(requests),
                )
                ours_rss = rows["orchestrator"]["rss_mb"]
        finally:
            simulator.terminate()
            simulator.wait()
        print(f"{label}: {requests:,} requests, concurrency {concurrency}")
        per_million = {}
        for name, row in rows.items():
            per_million[name] = row["cpu"] / row["tokens"] * 1e6
            print(
                f"{name:<14}{row['requests'] / row['wall']:>9,.0f}{row['tokens'] / row['wall']:>12,.0f}"
                f"{row['cpu']:>8.2f}{per_million[name]:>20.2f}{row['rss_mb']:>13.0f}"
            )
        base, ours = rows["baseline"], rows["orchestrator"]
        speedup = (ours["requests"] / ours["wall"]) / (base["requests"] / base["wall"])
        print(
            f"  orchestrator / baseline: throughput {speedup:.2f}x, "
            f"CPU per 1M output tokens {per_million['orchestrator'] / per_million['baseline']:.2f}x\n",
            flush=True,
        )
    print("where the orchestrator's CPU goes (cProfile, own time; full speed, 1-5 tokens per delta):")
    for label, share in breakdown:
        if share >= 0.005:
            print(f"  {label:<42}{share:>6.0%}")
    print(
        f"\nmemory: {args.requests:,} queued -> {ours_rss:.0f} MB peak; {args.big:,} queued "
        f"(stopped after {big['requests']:,} done) -> {big['rss_mb']:.0f} MB peak"
    )


if __name__ == "__main__":
    main()
