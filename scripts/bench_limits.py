"""How close to the account's limits a job runs, and what recovering broken streams saves.

Throughput: for RPM, ITPM and OTPM binding in turn, the simulator enforces that one limit (in a
process of its own, with real timing, deltas of 1-5 tokens), and each client runs in a process of
its own. Two kinds of streams: fast ones (0.1 s to the first token, 400 tokens/s) and streams
paced like the API (0.5 s to the first token, 60 tokens/s), which need more of them open at once
to reach a limit (``--paced-concurrency``):

- orchestrator: ``orchestrator run`` with no limit given (automatic mode: it learns the limits
  from the ``anthropic-ratelimit-*`` headers);
- naive: the SDK's ``asyncio.gather`` + semaphore pattern with the SDK's own retries (which do
  honour ``retry-after``).

After a warm-up, the rate of the binding quantity is read from the simulator's own counts over
the measuring window, with the share of requests refused with a 429.

Recovery: with 10% of streams dropped at a random point, the same job with ``--recover auto``
(prefill, on a model that accepts it) and ``--recover restart``; regenerated output tokens are
those billed beyond the uninterrupted replies, and every recovered text is checked against the
uninterrupted reply (and against ``max_tokens``, with a third run where 100 cuts most replies,
and a fourth against a server that does not answer ``count_tokens``: kept texts bounded by
their bytes, so replies stop short of ``max_tokens``).
The output tokens the results record as billed (partly estimated for broken streams) are set
against what the simulator billed.

    python scripts/bench_limits.py [--warmup 5] [--duration 30] [--concurrency 32] [--paced-concurrency 128]
                                   [--recovery-requests 1000] [--only-recovery] [--quick]

``--quick``: 8 s of warm-up, 12 s of measure and 300 recovery requests (about 5 minutes instead of 9):
a check that everything runs, its rates noisier (a paced stream lasts up to 5.5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchlib import simulator_stats, start_simulator

ROOT = Path(__file__).resolve().parents[1]
MODEL = "claude-haiku-4-5"
TOKENS_PER_DELTA = ["--tokens-per-delta", "1:5"]
# stream kind -> (simulator options, label)
STREAMS = {
    "fast": (["--speed", "1", "--ttft", "0.1", "--tps", "400", *TOKENS_PER_DELTA], "0.1 s to first token, 400 tok/s"),
    "paced": (["--speed", "1", "--ttft", "0.5", "--tps", "60", *TOKENS_PER_DELTA], "0.5 s to first token, 60 tok/s"),
}

# limit name -> (simulator option, per-minute limit, prompt padding in characters, stats key, unit)
SCENARIOS = {
    "RPM": ("--sim-rpm", 600.0, 0, "ok", "requests"),
    "ITPM": ("--sim-itpm", 60_000.0, 600, "input_tokens_billed", "input tokens"),
    "OTPM": ("--sim-otpm", 30_000.0, 0, "output_tokens_billed", "output tokens"),
}


def prompt(i: int, padding: int) -> str:
    return f"Request {i}: tell me about rate limits. " + "Context. " * (padding // 9)


def write_job(path: Path, count: int, padding: int) -> Path:
    with path.open("w") as handle:
        for i in range(count):
            handle.write(json.dumps({"prompt": prompt(i, padding)}) + "\n")
    return path


async def naive(url: str, count: int, padding: int, concurrency: int) -> None:
    import anthropic

    client = anthropic.AsyncAnthropic(base_url=url, api_key="sk-bench")  # the SDK's own retries
    semaphore = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with semaphore:
            try:
                async with client.messages.stream(
                    model=MODEL, max_tokens=1024, messages=[{"role": "user", "content": prompt(i, padding)}]
                ) as stream:
                    await stream.get_final_message()
            except anthropic.APIError:
                pass  # given up after the SDK's retries

    await asyncio.gather(*(one(i) for i in range(count)))


def run_argv(job: Path, url: str, results: Path, concurrency: int, *extra: str) -> list[str]:
    """``python`` arguments of an ``orchestrator run`` of ``job`` against the simulator at ``url``."""
    return [
        "-m",
        "orchestrator",
        "run",
        str(job),
        "--base-url",
        url,
        "--results",
        str(results),
        "--quiet",
        "--concurrency",
        str(concurrency),
        "--model",
        MODEL,
        "--max-attempts",
        "10",
        *extra,
    ]


def client_process(
    kind: str, url: str, count: int, padding: int, concurrency: int, workdir: Path
) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ANTHROPIC_API_KEY": "sk-bench"}
    if kind == "naive":
        args = [
            __file__,
            "--naive",
            url,
            "--count",
            str(count),
            "--padding",
            str(padding),
            "--concurrency",
            str(concurrency),
        ]
    else:
        job = write_job(workdir / f"job-{kind}.jsonl", count, padding)
        args = run_argv(job, url, workdir / kind, concurrency)
    return subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def measure(
    limit_name: str, streams: str, kind: str, warmup: float, duration: float, concurrency: int
) -> dict[str, float]:
    option, per_minute, padding, key, _ = SCENARIOS[limit_name]
    simulator, url = start_simulator(option, str(per_minute), *STREAMS[streams][0])
    count = 3000  # more than the window can take, whatever the binding limit
    try:
        with tempfile.TemporaryDirectory() as tmp:
            client = client_process(kind, url, count, padding, concurrency, Path(tmp))
            try:
                time.sleep(warmup)
                before, started = simulator_stats(url), time.monotonic()
                time.sleep(duration)
                after, ended = simulator_stats(url), time.monotonic()
            finally:
                client.send_signal(signal.SIGKILL)
                client.wait()
    finally:
        simulator.terminate()
        simulator.wait()

    def delta(name: str) -> float:
        if name == "ok":
            return float(after["outcomes"].get("ok", 0) - before["outcomes"].get("ok", 0))
        return float(after[name] - before[name])

    minutes = (ended - started) / 60
    requests = delta("requests")
    return {
        "rate": delta(key) / minutes,
        "share": delta(key) / minutes / per_minute,
        "refused": delta("rate_limited") / requests if requests else 0.0,
        "requests": requests,
    }


def recovery(strategy: str, count: int, concurrency: int, max_tokens: int, *simulator_options: str) -> dict[str, int]:
    """Billed output tokens beyond the uninterrupted replies, what the results recorded of them, texts
    that stop short of the uninterrupted replies at ``max_tokens`` (and by how many tokens), and texts
    that differ from them otherwise or hold more than ``max_tokens``."""
    from orchestrator.jobs.read import read_requests
    from orchestrator.jobs.spec import load_spec
    from orchestrator.models import Loaded
    from orchestrator.simulator.replies import plan_reply
    from orchestrator.simulator.tokens import count_tokens

    simulator, url = start_simulator("--speed", "inf", "--fault", "drop=0.1", *simulator_options)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            job = write_job(Path(tmp) / "job.jsonl", count, 0)
            env = {**os.environ, "ANTHROPIC_API_KEY": "sk-bench"}
            extra = ("--recover", strategy, "--max-tokens", str(max_tokens))
            subprocess.run(
                [sys.executable, *run_argv(job, url, Path(tmp) / "out", concurrency, *extra)],
                cwd=ROOT,
                env=env,
                check=True,
            )
            billed = simulator_stats(url)
            lines = [json.loads(line) for line in Path(f"{tmp}/out/results.jsonl").read_text().splitlines()]
            expected: dict[str, list[str]] = {}
            for item in read_requests(load_spec(job, {"model": MODEL, "max_tokens": max_tokens})):
                assert isinstance(item, Loaded)
                expected[item.custom_id] = plan_reply(0, item.params, 20, 300).tokens
    finally:
        simulator.terminate()
        simulator.wait()
    texts = {line["custom_id"]: "".join(b["text"] for b in line["result"]["message"]["content"]) for line in lines}
    full = {cid: "".join(tokens) for cid, tokens in expected.items()}
    short = [cid for cid, text in texts.items() if text != full[cid] and full[cid].startswith(text)]
    return {
        "drops": billed["faults_injected"].get("drop", 0),
        "billed": billed["output_tokens_billed"],
        "recorded": sum(line["billed_usage"]["output_tokens"] for line in lines),
        "estimated": sum(1 for line in lines if line["billed_usage_estimated"]),
        "regenerated": billed["output_tokens_billed"] - sum(len(tokens) for tokens in expected.values()),
        "recovered": sum(1 for line in lines if "recovery" in line),
        "cut": sum(1 for line in lines if line["result"]["message"]["stop_reason"] == "max_tokens"),
        "short": len(short),
        "tokens_short": sum(len(expected[cid]) - count_tokens(texts[cid]) for cid in short),
        "wrong": sum(1 for cid, text in texts.items() if not full[cid].startswith(text)),
        "past": sum(1 for text in texts.values() if count_tokens(text) > max_tokens),
        "results": len(lines),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=32, help="with fast streams, and for recovery")
    parser.add_argument("--paced-concurrency", type=int, default=128, help="with streams paced like the API")
    parser.add_argument("--quick", action="store_true", help="8 s warm-up, 12 s measure, 300 recovery requests")
    parser.add_argument("--recovery-requests", type=int, default=1000)
    parser.add_argument("--only-recovery", action="store_true", help="skip the throughput part")
    parser.add_argument("--naive", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--padding", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive:
        asyncio.run(naive(args.naive, args.count, args.padding, args.concurrency))
        return
    if args.quick:
        args.warmup, args.duration, args.recovery_requests = 8.0, 12.0, 300

    if not args.only_recovery:
        print(
            f"sustained rate over {args.duration:.0f} s after {args.warmup:.0f} s of warm-up; simulator: 1 s buckets, "
            "1-5 tokens a delta\n"
        )
        print(
            f"{'streams':<8}{'binding':<8}{'limit /min':>12}{'client':>14}{'achieved /min':>15}{'of limit':>10}"
            f"{'429s':>8}"
        )
        for streams, (_, label) in STREAMS.items():
            concurrency = args.concurrency if streams == "fast" else args.paced_concurrency
            print(f"{streams}: {label}, concurrency {concurrency}")
            for name, (_, per_minute, _, _, unit) in SCENARIOS.items():
                for kind in ("orchestrator", "naive"):
                    row = measure(name, streams, kind, args.warmup, args.duration, concurrency)
                    print(
                        f"{streams:<8}{name:<8}{per_minute:>12,.0f}{kind:>14}{row['rate']:>15,.0f}{row['share']:>10.1%}"
                        f"{row['refused']:>8.1%}   ({unit})",
                        flush=True,
                    )

    print(
        f"\nrecovery: {args.recovery_requests:,} requests to {MODEL}, 10% of streams dropped at a random point, "
        "several tokens a delta; billed: the simulator's count, recorded: the results' billed_usage"
    )
    print(
        f"{'strategy':<10}{'max_tokens':>11}{'drops':>7}{'recovered':>10}{'cut':>6}{'billed':>9}{'recorded':>10}"
        f"{'estimated':>10}{'regenerated':>12}{'short':>7}{'tok short':>10}{'wrong':>7}{'past':>6}"
    )
    regenerated = {}
    runs = [("auto", 1024, ()), ("restart", 1024, ()), ("auto", 100, ()), ("auto", 100, ("--no-count-tokens",))]
    for strategy, max_tokens, options in runs:
        result = recovery(strategy, args.recovery_requests, args.concurrency, max_tokens, *options)
        regenerated[strategy, max_tokens] = result["regenerated"]
        print(
            f"{strategy:<10}{max_tokens:>11,}{result['drops']:>7}{result['recovered']:>10}{result['cut']:>6}"
            f"{result['billed']:>9,}{result['recorded']:>10,}{result['estimated']:>10}{result['regenerated']:>12,}"
            f"{result['short']:>7}{result['tokens_short']:>10}{result['wrong']:>7}{result['past']:>6}"
            f"{'   (server without count_tokens)' if options else ''}"
        )
    restart = regenerated["restart", 1024]
    ratio = regenerated["auto", 1024] / restart if restart else 0.0
    print(f"auto regenerates {ratio:.1%} of the output tokens that restart regenerates")


if __name__ == "__main__":
    main()
