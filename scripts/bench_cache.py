"""What prompt caching saves: the issue's job and its variants, the tool beside the naive fan-out.

The job: ``--requests`` requests (240), each with one of ``--prefixes`` long system prompts
(4 of ~6,000 tokens, interleaved) and a question of its own, on claude-sonnet-4-5. Each variant
runs against a simulator of its own (in its own process, with real timing sped up ``--speed``
times), whose prompt cache behaves as the API documents (an entry readable once the response
writing it has begun):

- naive: the SDK's ``asyncio.gather`` + semaphore pattern, prompts marked with ``cache_control``
  as the caching docs show (or unmarked, as most users write them);
- orchestrator: ``orchestrator run`` (cache auto, the default), marked or unmarked, limits given
  on the command line or learned, at several concurrencies; ``--cache off`` as the uncached run.

Input-side cost is what the simulator billed (uncached input 1x, cache writes 1.25x, reads 0.1x)
against the ideal (each prefix written once, read by every other request sharing it, the rest
uncached). Wall time compares the cached and uncached runs on a server whose ITPM binds. Every
text is checked against the simulator's uninterrupted reply to the prompt as given.

    python scripts/bench_cache.py [--requests 240] [--prefixes 4] [--speed 4] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anthropic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.simulator.replies import count_input_tokens, input_segments, plan_reply
from scripts.benchlib import ROOT, simulator_stats, start_simulator, stopped_after

MODEL = "claude-sonnet-4-5"
REPLY = (20, 120)
WRITE, READ = 1.25, 0.1


def system_prompt(k: int, tokens: int) -> str:
    words = f"Policy {k}. Answer in the voice of desk {k}, citing the handbook's section and rule. "
    return words * max(1, tokens // 20)


def job_lines(requests: int, prefixes: int, tokens: int, marked: bool) -> list[dict[str, Any]]:
    lines = []
    for i in range(requests):
        system: Any = system_prompt(i % prefixes, tokens)
        if marked:
            system = [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}]
        params = {
            "model": MODEL,
            "max_tokens": 200,
            "system": system,
            "messages": [{"role": "user", "content": f"Question {i}: what does the handbook say about case {i}?"}],
        }
        lines.append({"custom_id": f"q{i}", "params": params})
    return lines


def ideal_cost(lines: list[dict[str, Any]]) -> float:
    """Input-side cost (in uncached input tokens) with each prefix written once and read after."""
    seen: set[str] = set()
    cost = 0.0
    for line in lines:
        params = line["params"]
        tokens = count_input_tokens(params)
        prefix = input_segments(params)[0].tokens  # the system block, with the request's overhead
        key = json.dumps(params["system"])
        cost += prefix * (WRITE if key not in seen else READ) + (tokens - prefix)
        seen.add(key)
    return cost


def billed_cost(stats: dict[str, Any]) -> float:
    written, read = stats["cache_creation_input_tokens_billed"], stats["cache_read_input_tokens_billed"]
    return float(stats["input_tokens_billed"] + WRITE * written + READ * read)


def expected(lines: list[dict[str, Any]]) -> dict[str, str]:
    return {line["custom_id"]: "".join(plan_reply(0, line["params"], *REPLY).tokens) for line in lines}


def simulator(speed: float, itpm: float | None) -> tuple[subprocess.Popen[str], str]:
    options = ["--speed", str(speed), "--reply-tokens", f"{REPLY[0]}:{REPLY[1]}"]
    if itpm is not None:
        options += ["--sim-itpm", str(itpm)]
    return start_simulator(*options)


def run_tool(url: str, lines: list[dict[str, Any]], concurrency: int, limits: bool, cache: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as folder:
        job = Path(folder) / "job.jsonl"
        job.write_text("".join(json.dumps(line) + "\n" for line in lines))
        argv = [sys.executable, "-m", "orchestrator", "run", str(job), "--base-url", url, "--quiet"]
        argv += ["--results", str(Path(folder) / "out"), "--concurrency", str(concurrency), "--cache", cache]
        if limits:
            argv += ["--rpm", "4000", "--itpm", "2000000", "--otpm", "400000"]
        subprocess.run(argv, check=True, cwd=ROOT, env={**os.environ, "ANTHROPIC_API_KEY": "bench"})
        texts = {}
        for raw in (Path(folder) / "out" / "results.jsonl").read_text().splitlines():
            line = json.loads(raw)
            message = line["result"]["message"]
            texts[line["custom_id"]] = "".join(b["text"] for b in message["content"] if b["type"] == "text")
        return texts


async def run_naive(url: str, lines: list[dict[str, Any]], concurrency: int) -> dict[str, str]:
    client = anthropic.AsyncAnthropic(base_url=url, api_key="bench")
    semaphore = asyncio.Semaphore(concurrency)

    async def one(line: dict[str, Any]) -> tuple[str, str]:
        async with semaphore:
            message = await client.messages.create(**line["params"])
        return line["custom_id"], "".join(block.text for block in message.content if block.type == "text")

    try:
        return dict(await asyncio.gather(*(one(line) for line in lines)))
    finally:
        await client.close()


def variant(
    name: str,
    lines: list[dict[str, Any]],
    *,
    speed: float,
    concurrency: int,
    naive: bool = False,
    limits: bool = True,
    cache: str = "auto",
    itpm: float | None = None,
) -> dict[str, Any]:
    process, url = simulator(speed, itpm)
    with stopped_after(process):
        started = time.perf_counter()
        if naive:
            texts = asyncio.run(run_naive(url, lines, concurrency))
        else:
            texts = run_tool(url, lines, concurrency, limits, cache)
        wall = time.perf_counter() - started
        stats = simulator_stats(url)
    unmarked = [{**line, "params": {**line["params"], "system": _text(line["params"]["system"])}} for line in lines]
    return {
        "variant": name,
        "wall": wall,
        "writes": stats["cache_creation_input_tokens_billed"],
        "reads": stats["cache_read_input_tokens_billed"],
        "ratio": billed_cost(stats) / ideal_cost(lines),
        "exact": texts == expected(unmarked),
        "requests": stats["requests"],
    }


def _text(system: Any) -> str:
    return system if isinstance(system, str) else "".join(block["text"] for block in system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--prefixes", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=6000, help="tokens of each system prompt")
    parser.add_argument("--speed", type=float, default=4.0, help="simulator time factor")
    parser.add_argument("--itpm", type=float, default=1_500_000, help="the ITPM of the ITPM-bound server")
    parser.add_argument("--quick", action="store_true", help="the issue's job and the ITPM pair only")
    args = parser.parse_args()
    n, k, tokens, speed = args.requests, args.prefixes, args.tokens, args.speed
    marked, unmarked = job_lines(n, k, tokens, True), job_lines(n, k, tokens, False)
    one_marked, one_unmarked = job_lines(n, 1, tokens, True), job_lines(n, 1, tokens, False)
    learned: dict[str, Any] = {"concurrency": 48, "limits": False}
    runs: list[tuple[str, list[dict[str, Any]], dict[str, Any]]] = [
        ("naive, 4 prefixes, marked, c=48", marked, {"naive": True, "concurrency": 48}),
        ("orchestrator, 4 prefixes, marked, limits given, c=48", marked, {"concurrency": 48}),
        ("orchestrator, 4 prefixes, unmarked, limits given, c=48", unmarked, {"concurrency": 48}),
    ]
    if not args.quick:
        runs += [
            ("naive, 4 prefixes, unmarked, c=48", unmarked, {"naive": True, "concurrency": 48}),
            ("naive, 1 prefix, marked, c=48", one_marked, {"naive": True, "concurrency": 48}),
            ("orchestrator, 4 prefixes, unmarked, limits learned, c=48", unmarked, learned),
            ("orchestrator, 1 prefix, marked, limits learned, c=48", one_marked, learned),
            ("orchestrator, 1 prefix, unmarked, limits given, c=48", one_unmarked, {"concurrency": 48}),
            ("orchestrator, 4 prefixes, unmarked, c=8", unmarked, {"concurrency": 8}),
            ("orchestrator, 4 prefixes, unmarked, c=256", unmarked, {"concurrency": 256}),
            ("orchestrator, 4 prefixes, marked, c=256", marked, {"concurrency": 256}),
        ]
    bound = {**learned, "itpm": args.itpm}
    runs += [
        (f"ITPM-bound ({args.itpm:,.0f}/min): orchestrator --cache off", unmarked, {**bound, "cache": "off"}),
        (f"ITPM-bound ({args.itpm:,.0f}/min): orchestrator (cache auto)", unmarked, bound),
    ]
    rows = []
    for name, lines, options in runs:
        row = variant(name, lines, speed=speed, **options)
        rows.append(row)
        print(
            f"{row['variant']:<62} {row['requests']:>5} {row['writes']:>9,} {row['reads']:>10,}"
            f" {row['ratio']:>6.2f}x {row['wall']:>7.1f} s  {'exact' if row['exact'] else 'DIFFER'}",
            flush=True,
        )
    off, auto = rows[-2], rows[-1]
    print(f"\nITPM-bound: cached {off['wall'] / auto['wall']:.1f}x faster than uncached")
    print(f"{n} requests, {k} prefixes of ~{tokens:,} tokens ({MODEL}), simulator speed {speed}")


if __name__ == "__main__":
    main()
