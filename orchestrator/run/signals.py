"""Ctrl-C and SIGTERM for a running job: the first stops it the job's way, a second exits at once."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

import anyio


async def watch_signals(stopping: Callable[[], bool], stop: Callable[[], None], message: str) -> None:
    """On SIGINT/SIGTERM: print ``message`` and ``stop()``; if ``stopping()`` already, exit at once
    (SQLite keeps the database consistent)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if stopping():
                print("\nStopped at once.", file=sys.stderr, flush=True)
                os._exit(130)
            print(f"\n{message} (Ctrl-C again to exit at once).", file=sys.stderr, flush=True)
            stop()
