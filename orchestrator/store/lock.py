"""One runner per job: an OS lock on a file beside the job's database, held while a run lasts.

``flock`` on ``<database>.lock``, taken at once or refused, never waited for. The OS releases it
when the process ends, however it ends (kill -9 included), so a crash never leaves a job locked;
the file stays (removing it would race with a run taking it) and holds the pid of the last run.
A file of its own, not the database: closing another descriptor of the database would drop
SQLite's own locks. Only ``run``/``resume`` take it: ``status``, ``report`` and ``export`` read a
running job.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from orchestrator.errors import JobRunning, UserError


@asynccontextmanager
async def runner_lock(db: Path) -> AsyncIterator[None]:
    """Hold the job's runner lock while the block runs; ``JobRunning`` if another process holds it."""
    path = db.with_name(db.name + ".lock")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(
            f"{path}: cannot open the job's lock file ({exc.strerror}); a job runs in a folder it can write to. "
            "Nothing was sent."
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            by = f" (pid {holder})" if holder.isdigit() else ""
            raise JobRunning(
                f"{db} is being run by another orchestrator process{by}. Nothing was sent. "
                f"Let it finish (orchestrator status {db} shows how far it is), or stop it and resume."
            ) from None
        except OSError as exc:
            raise UserError(f"{path}: cannot lock the job ({exc.strerror}). Nothing was sent.") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
