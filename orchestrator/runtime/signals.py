"""Ctrl-C and SIGTERM for a running job: the first stops it the job's way, a second exits at once."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable

import anyio

log = logging.getLogger("orchestrator")


async def watch_signals(stopping: Callable[[], bool], stop: Callable[[], None], message: str) -> None:
    """On SIGINT/SIGTERM: note ``message`` (the ``orchestrator`` logger) and ``stop()``; if
    ``stopping()`` already, exit at once (SQLite keeps the database consistent)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if stopping():
                log.warning("\nStopped at once.")
                os._exit(130)
            log.warning(f"\n{message} (Ctrl-C again to exit at once).")
            stop()
