"""Command-line parsing and wiring only; nothing imports this module."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence

import anyio

from orchestrator.simulator import FaultKind, FaultRates, Limits, Simulator, SimulatorConfig, Timing, serve


def _probability(text: str) -> tuple[str, float]:
    kind, sep, value = text.partition("=")
    known = [k.value for k in FaultKind]
    if not sep or kind not in known:
        raise argparse.ArgumentTypeError(f"expected KIND=P with KIND one of {', '.join(known)}")
    probability = float(value)
    if not 0 <= probability <= 1:
        raise argparse.ArgumentTypeError("a probability is between 0 and 1")
    return kind, probability


def _add_simulator_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("simulator")
    group.add_argument("--seed", type=int, default=0, help="seed of replies and faults (default 0)")
    group.add_argument(
        "--speed", type=float, default=1.0, help="time factor; 'inf' for no delays (default 1)"
    )
    group.add_argument("--ttft", type=float, default=0.5, help="seconds to first token (default 0.5)")
    group.add_argument(
        "--tps", type=float, default=60.0, help="output tokens per second per stream (default 60)"
    )
    group.add_argument("--reply-tokens", default="20:300", metavar="MIN:MAX", help="reply length range")
    group.add_argument("--tokens-per-delta", type=int, default=1)
    group.add_argument("--sim-rpm", type=float, help="requests per minute the simulator allows")
    group.add_argument("--sim-itpm", type=float, help="input tokens per minute the simulator allows")
    group.add_argument("--sim-otpm", type=float, help="output tokens per minute the simulator allows")
    group.add_argument(
        "--burst-seconds", type=float, default=1.0, help="bucket capacity in seconds of refill"
    )
    group.add_argument(
        "--spend-cap", action="store_true", help="answer every request with the spend-limit 429"
    )
    group.add_argument(
        "--fault",
        type=_probability,
        action="append",
        default=[],
        metavar="KIND=P",
        help=f"inject a fault with probability P; KIND: {', '.join(k.value for k in FaultKind)}",
    )
    group.add_argument("--stall-seconds", type=float, default=30.0)
    group.add_argument("--reject-key", action="append", default=[], help="an x-api-key to answer with 401")


def simulator_config(args: argparse.Namespace) -> SimulatorConfig:
    low, _, high = args.reply_tokens.partition(":")
    rates = dict(args.fault)
    return SimulatorConfig(
        seed=args.seed,
        reply_min=int(low),
        reply_max=int(high or low),
        tokens_per_delta=args.tokens_per_delta,
        timing=Timing(ttft=args.ttft, tokens_per_second=args.tps, speed=args.speed),
        limits=Limits(
            rpm=args.sim_rpm,
            itpm=args.sim_itpm,
            otpm=args.sim_otpm,
            burst_seconds=args.burst_seconds,
            spend_cap=args.spend_cap,
        ),
        faults=FaultRates(stall_seconds=args.stall_seconds, **rates),
        reject_api_keys=frozenset(args.reject_key),
    )


async def _simulate(args: argparse.Namespace) -> int:
    simulator = Simulator(simulator_config(args))
    async with serve(simulator, args.host, args.port) as url:
        print(f"simulator listening on {url}  (stats: {url}/_simulator/stats; Ctrl-C stops)", flush=True)
        await anyio.sleep_forever()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    simulate = commands.add_parser("simulate", help="run the Anthropic-compatible simulator")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8765)
    _add_simulator_options(simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "simulate":
        if math.isnan(args.speed) or args.speed <= 0:
            print("orchestrator: --speed must be positive (or inf)", file=sys.stderr)
            return 2
        try:
            return anyio.run(_simulate, args)
        except KeyboardInterrupt:
            return 130
    raise AssertionError(args.command)
