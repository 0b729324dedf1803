"""The job database: the only package that speaks SQL.

One SQLite file per job, in WAL mode. The schema is built by named migrations (``schema``),
applied in order and recorded once applied. Everything about a job lives here: the job and its
settings, every request and its state, every attempt (why it ended, tokens, timings, the
checkpoint of its partial output) and every final message; files under ``results/`` are
exports of it.

    schema.py   migrations            load.py     job files -> requests (validated, de-duplicated)
    write.py    the run's write path  queries.py  everything read back (status, export, report)
    batches.py  message batches: intents, server states, results applied
    lock.py     one runner per job (an OS lock beside the database)
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from orchestrator.errors import UserError
from orchestrator.store.batches import Batching, BatchRow
from orchestrator.store.load import Loading
from orchestrator.store.lock import runner_lock
from orchestrator.store.queries import JobRow, Queries
from orchestrator.store.schema import MIGRATIONS, migrate
from orchestrator.store.write import Writing

__all__ = ["MIGRATIONS", "BatchRow", "JobRow", "Store", "open_store", "remove_store", "runner_lock"]


class Store(Loading, Writing, Batching, Queries):
    """One job's database: load, write and read it."""


# SQLite's answers for a file that is not a database, or a damaged one (primary result codes).
DAMAGED = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def _damaged(exc: BaseException) -> bool:
    """Whether ``exc`` (or every exception of a group) says the database file is damaged or not one."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(_damaged)[1] is None
    return isinstance(exc, sqlite3.DatabaseError) and (exc.sqlite_errorcode & 0xFF) in DAMAGED


@asynccontextmanager
async def open_store(path: Path, *, create: bool = True) -> AsyncIterator[Store]:
    """The job database at ``path``; a file that is not a job database is a UserError naming it."""
    if not create and not path.exists():
        raise FileNotFoundError(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a job database: name its job.sqlite")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        async with aiosqlite.connect(path, isolation_level=None) as db:
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await db.execute("PRAGMA foreign_keys = ON")
            store = Store(db, path)
            await migrate(db)
            yield store
    except BaseException as exc:
        if not _damaged(exc):
            raise
        raise UserError(
            f"{path} is not a job database, or a damaged one ({_first_leaf(exc)}). Nothing was changed. "
            "Restore it from a copy, or run the job into a new database (--db or --results elsewhere)."
        ) from exc


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def remove_store(path: Path) -> None:
    """Remove a job database, its write-ahead files and its lock file (one that was just created and
    never held a job)."""
    for name in (path.name, path.name + "-wal", path.name + "-shm", path.name + ".lock"):
        path.with_name(name).unlink(missing_ok=True)
