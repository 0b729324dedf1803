"""A test hook: with ``ORCHESTRATOR_CRASH_AT=<step>`` in its environment, a run kills itself
(SIGKILL, as ``kill -9`` would) when it reaches that step, so the tests can crash it at exact points;
with ``ORCHESTRATOR_INTERRUPT_AT=<step>``, it sends itself a SIGINT there (a Ctrl-C at that instant).

Starting: ``start`` (the first line of the command line, before any import of the tool),
``imported`` (the command line imported, its event loop not started), ``store`` (the job's
database open, nothing loaded).

Loading: ``loading`` (a fresh job's lines all stored, the load not committed). Batch mode:
``intended`` (an intent committed, its create not sent), ``created`` (a create answered, the
answer not yet recorded), ``recorded`` (a batch recorded, the next step not begun), ``polled`` (a
poll answered, not recorded), ``results`` (the first chunk of a batch's results committed).
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "ORCHESTRATOR_CRASH_AT"
INTERRUPT_ENV = "ORCHESTRATOR_INTERRUPT_AT"


def crash_point(step: str) -> None:
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
    if os.environ.get(INTERRUPT_ENV) == step:
        signal.raise_signal(signal.SIGINT)
