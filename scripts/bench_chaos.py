"""The chaos run of ``tests/test_chaos.py``, bigger: every fault on, the client stopped again and again
by every kind of stop at seeded moments, then resumed until done; what came out, checked.

The simulator (several tokens a delta, odd events, 529, 500, in-band errors, drops, truncated
bodies, bodies without ``message_stop``, malformed events, stalls) runs in this process; each
``orchestrator run`` is a process of its own, stopped by SIGKILL, SIGINT, SIGTERM, two SIGINTs
or a 401 from the server. ``max_tokens`` is drawn from 16 to 200 against replies of 40 to 260
tokens, so most replies are cut by it. Results: ``exact`` (the uninterrupted reply, ``cut``
of them at ``max_tokens``), ``short`` (a prefix of it stopped at ``max_tokens``), ``wrong``
(anything else, or past ``max_tokens``). Billed: the output tokens the simulator billed;
recorded: what the results' ``billed_usage`` says (a stopped client cannot record what reached
it after its last checkpoint, nor what the server sent that it never read).

    python scripts/bench_chaos.py [--requests 1000] [--stops 20] [--seed 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.simulator import Simulator, serve
from tests.chaos import HEADER, chaos, chaos_config


async def main(requests: int, stops: int, seed: int) -> None:
    simulator = Simulator(chaos_config(seed))
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        async with serve(simulator) as url:
            figures = await chaos(simulator, url, Path(tmp), requests, stops, seed, concurrency=32)
    print(HEADER)
    print(figures.row())
    print(f"stops: {', '.join(f'{kind} {n}' for kind, n in sorted(figures.stops.items()))}; runs: {figures.runs}")
    print(f"faults: {', '.join(f'{kind} {n}' for kind, n in sorted(figures.faults.items()))}")
    print(
        f"requests the server received: {figures.attempts_sent:,}; results with estimated billing: "
        f"{figures.estimated:,}; count_tokens calls: {simulator.stats.count_tokens_calls:,}; "
        f"{time.monotonic() - started:.0f} s"
    )
    if figures.wrong:
        print(f"wrong: {figures.wrong[:20]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--stops", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    anyio.run(main, args.requests, args.stops, args.seed)
