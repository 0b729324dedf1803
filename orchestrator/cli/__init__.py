"""The command line: parsing and printing only, over the Python API (``orchestrator.library``)."""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

import anyio

from orchestrator.cli import commands
from orchestrator.cli.parser import build_parser
from orchestrator.crash import crash_point
from orchestrator.entry import INTERRUPTED
from orchestrator.errors import OrchestratorError

HANDLERS = {
    "run": commands.run_job,
    "resume": commands.resume,
    "status": commands.status,
    "cancel": commands.cancel_job,
    "export": commands.export,
    "report": commands.report,
    "simulate": commands.simulate,
    "watch": commands.watch,
}
# What a path a user named can be wrong with: reported as "PATH: why", exit status 2.
PATH_ERRORS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ENAMETOOLONG})
SIGPIPE_EXIT = 128 + 13  # what a shell reports for a tool ended by SIGPIPE, as `status DB | head` may be


class _Stderr(logging.Handler):
    """The library's notes, printed as they are to the standard error of the moment."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr, flush=True)


def _print_notes() -> None:
    logger = logging.getLogger("orchestrator")
    if not any(isinstance(handler, _Stderr) for handler in logger.handlers):
        logger.addHandler(_Stderr())
        logger.setLevel(logging.INFO)
        logger.propagate = False  # printed once, here


async def run_command(argv: Sequence[str]) -> int:
    """Run one command line in the current event loop; return its exit status."""
    args = build_parser().parse_args(argv)
    _print_notes()
    try:
        return await HANDLERS[args.command](args)
    except OrchestratorError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return exc.exit_status
    except OSError as exc:
        if exc.filename is None or exc.errno not in PATH_ERRORS:
            raise
        print(f"orchestrator: {exc.filename}: {exc.strerror}. Check the path and its permissions.", file=sys.stderr)
        return 2


def _stdout_closed() -> bool:
    """Whether standard output is a pipe whose reader has gone (poll reports an error on it)."""
    poller = select.poll()
    poller.register(sys.stdout.fileno(), select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def main(argv: Sequence[str] | None = None) -> NoReturn:
    # From here a Ctrl-C is the event loop's (it cancels the command, whose cleanups run) or, while
    # a job runs, the job's own (run/signals.py); before, orchestrator.entry's.
    try:
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            crash_point("imported")
            status = anyio.run(run_command, list(sys.argv[1:] if argv is None else argv))
        except KeyboardInterrupt:
            print("\norchestrator: interrupted", file=sys.stderr)
            status = INTERRUPTED
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader of our output went away (`orchestrator status DB | head`): stop quietly.
        if not _stdout_closed():
            raise
        status = SIGPIPE_EXIT
    sys.stderr.flush()
    # Everything of ours is closed by now. Tearing down the SDK's module graph takes the
    # interpreter 0.7-1.7 s, which would delay every exit (Ctrl-C included): skip it.
    os._exit(status)
