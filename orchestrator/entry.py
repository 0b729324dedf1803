"""The command line's first code: a Ctrl-C from the first instant exits cleanly.

Until the command takes over signals (``cli.main``, just before its event loop starts), a SIGINT
(while Python imports the tool, say) prints one line and exits 130, with no ``KeyboardInterrupt``
traceback: nothing has been sent or written by then. Only the standard library is imported here,
and nothing from ``orchestrator`` before the handler is in place.
"""

from __future__ import annotations

import os
import signal
import sys

TYPE_CHECKING = False  # not typing's: every import before the handler is a moment a Ctrl-C can fall in
if TYPE_CHECKING:
    from types import FrameType
    from typing import NoReturn

INTERRUPTED = 130  # what a shell reports for a command ended by SIGINT (128 + 2)


def _interrupted_early(signum: int, frame: FrameType | None) -> None:
    os.write(sys.stderr.fileno(), b"\norchestrator: interrupted before it began: nothing was sent\n")
    os._exit(INTERRUPTED)


def main() -> NoReturn:
    signal.signal(signal.SIGINT, _interrupted_early)
    from orchestrator.crash import crash_point

    crash_point("start")
    from orchestrator.cli import main as run_command_line

    run_command_line()
