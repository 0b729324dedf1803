"""The command line: parsing and printing only, over the library (``orchestrator.job`` and friends)."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

import anyio

from orchestrator.cli import commands
from orchestrator.cli.parser import build_parser
from orchestrator.errors import OrchestratorError

HANDLERS = {
    "run": commands.run_job,
    "resume": commands.resume,
    "status": commands.status,
    "cancel": commands.cancel_job,
    "export": commands.export,
    "report": commands.report,
    "simulate": commands.simulate,
}


async def run_command(argv: Sequence[str]) -> int:
    """Run one command line in the current event loop; return its exit status."""
    args = build_parser().parse_args(argv)
    args.argv = list(argv)
    speed = getattr(args, "speed", 1.0)
    if math.isnan(speed) or speed <= 0:
        print("orchestrator: --speed must be positive (or inf)", file=sys.stderr)
        return 2
    try:
        return await HANDLERS[args.command](args)
    except OrchestratorError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return exc.exit_status


def main(argv: Sequence[str] | None = None) -> NoReturn:
    try:
        status = anyio.run(run_command, list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        status = 130
    # Everything of ours is closed by now. Tearing down the SDK's module graph takes the
    # interpreter 0.7-1.7 s, which would delay every exit (Ctrl-C included): skip it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
