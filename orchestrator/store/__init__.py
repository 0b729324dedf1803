"""The job database: the only package that speaks SQL.

One SQLite file per job, in WAL mode. The schema is built by named migrations (``schema``),
applied in order and recorded once applied. Everything about a job lives here: the job and its
settings, every request and its state, every attempt (why it ended, tokens, timings, the
checkpoint of its partial output) and every final message; files under ``results/`` are
exports of it.

    schema.py   migrations            load.py     job files -> requests (validated, de-duplicated)
    write.py    the run's write path  queries.py  everything read back (status, export, report)
    batches.py  message batches: intents, server states, results applied
    watch.py    what a watcher reads beside: the run's notes, failures by kind, latest replies
    lock.py     one runner per job (an OS lock beside the database)
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from orchestrator.errors import StorageError, UserError
from orchestrator.store.base import CANNOT_WRITE, storage_error
from orchestrator.store.batches import Batching, BatchRow
from orchestrator.store.load import Loading, loading_marker
from orchestrator.store.lock import runner_lock
from orchestrator.store.queries import JobRow, Queries
from orchestrator.store.schema import MIGRATIONS, migrate, pending_migrations
from orchestrator.store.watch import FailureKind, Watching
from orchestrator.store.write import Writing

__all__ = [
    "MIGRATIONS",
    "BatchRow",
    "FailureKind",
    "JobRow",
    "Store",
    "discard_interrupted_load",
    "loading_marker",
    "open_reader",
    "open_store",
    "remove_store",
    "runner_lock",
]


# A job database's files, the marker of an unfinished first load last (``discard_interrupted_load``).
_DATABASE_FILES = ("", "-wal", "-shm", ".loading")
BUSY_TIMEOUT = 5.0  # seconds SQLite waits for another process's write lock before it answers "busy"


class Store(Loading, Writing, Batching, Queries, Watching):
    """One job's database: load, write and read it."""


# SQLite's answers for a file that is not a database, or a damaged one (primary result codes).
DAMAGED = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})


def _damaged(exc: BaseException) -> bool:
    """Whether ``exc`` (or every exception of a group) says the database file is damaged or not one."""
    if isinstance(exc, BaseExceptionGroup):  # (split() would ask this of the group itself again)
        return all(_damaged(inner) for inner in exc.exceptions)
    return isinstance(exc, sqlite3.DatabaseError) and (exc.sqlite_errorcode & 0xFF) in DAMAGED


@asynccontextmanager
async def _answered(path: Path) -> AsyncIterator[None]:
    """SQLite's failures on ``path`` as ours: a file that is not a job database is a UserError
    naming it; one that cannot be written (busy, full, read-only) a StorageError."""
    try:
        yield
    except BaseException as exc:
        error = storage_error(exc, path)
        if error is not None:
            raise error from exc
        if not _damaged(exc):
            raise
        raise UserError(
            f"{path} is not a job database, or a damaged one ({_first_leaf(exc)}). Nothing was changed. "
            "Restore it from a copy, or run the job into a new database (--db or --results elsewhere)."
        ) from exc


@asynccontextmanager
async def open_store(path: Path, *, create: bool = True) -> AsyncIterator[Store]:
    """The job database at ``path`` to run a job in: created if missing, its schema brought up to
    date. A file that is not a job database is a UserError naming it; SQLite's failures to write
    it (busy, full, read-only) come out as ``StorageError``."""
    if not create and not path.exists():
        raise FileNotFoundError(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a job database: name its job.sqlite")
    path.parent.mkdir(parents=True, exist_ok=True)
    async with _answered(path), aiosqlite.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT) as db:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA foreign_keys = ON")
        store = Store(db, path)
        await migrate(db)
        yield store


@asynccontextmanager
async def open_reader(path: Path) -> AsyncIterator[Store]:
    """A job's database for reading only (status, report, export): opened read-only, so a
    read-only file, folder or file system does not stop it, and nothing is written to it, unless
    its schema is older than this version's (then it is brought up to date first, or we say why
    it cannot be)."""
    if not path.exists():
        raise FileNotFoundError(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder, not a job database: name its job.sqlite")
    if loading_marker(path).exists():
        raise UserError(
            f"{path}: its job's first load has not ended (it is loading now, or its loading was interrupted). "
            "Nothing was sent from it. Run the job file again to load it: orchestrator run JOB"
        )
    async with _answered(path), _read_only(path) as db:
        pending = await pending_migrations(db)
    if pending:
        try:
            async with open_store(path, create=False):
                pass
        except StorageError as exc:
            raise StorageError(
                f"{path} was written by an older version of orchestrator and its schema needs updating "
                f"({', '.join(pending)}), but it cannot be written ({exc.__cause__ or exc}). Copy the job's "
                "folder somewhere writable and run the command on the copy."
            ) from exc
    async with _answered(path), _read_only(path) as db:
        yield Store(db, path)


@asynccontextmanager
async def _read_only(path: Path) -> AsyncIterator[aiosqlite.Connection]:
    """A read-only connection. SQLite reads a WAL database read-only only where it can create the
    shared-memory file beside it; where it cannot (a read-only folder or file system), a database
    with no write-ahead log left (every job closed cleanly) is read as immutable."""
    uri = path.resolve().as_uri()
    async with aiosqlite.connect(f"{uri}?mode=ro", uri=True, isolation_level=None) as db:
        try:
            await db.execute("SELECT COUNT(*) FROM sqlite_master")
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF not in CANNOT_WRITE:
                raise
            refused: sqlite3.OperationalError | None = exc
        else:
            refused = None
            yield db
    if refused is None:
        return
    wal = path.with_name(path.name + "-wal")
    if wal.exists() and wal.stat().st_size > 0:
        raise StorageError(
            f"{path} cannot be read here: its last changes are still in {wal.name}, and SQLite cannot open "
            f"them in a read-only folder ({refused}). Copy the job's folder somewhere writable and run the "
            "command on the copy."
        )
    async with aiosqlite.connect(f"{uri}?mode=ro&immutable=1", uri=True, isolation_level=None) as db:
        yield db


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def remove_store(path: Path) -> None:
    """Remove a job database, its write-ahead files and its lock file (one that was just created and
    never held a job)."""
    for suffix in (*_DATABASE_FILES, ".lock"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def discard_interrupted_load(path: Path) -> bool:
    """With the job's runner lock held: remove a database whose first load never ended (killed
    midway, its file perhaps damaged; nothing was sent from it); whether there was one."""
    if not loading_marker(path).exists():
        return False
    for suffix in _DATABASE_FILES:  # the marker last
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    return True
