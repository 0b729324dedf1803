"""The connection every part of the store shares, and what SQLite's failures to write mean."""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import aiosqlite

from orchestrator.errors import DatabaseBusy, StorageError

IN_CHUNK = 500  # values of one IN (...) list, well under SQLite's limit of bound parameters
BUSY = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})
# A full disk (SQLITE_FULL; some file systems answer a write with an I/O error instead), a
# read-only file, folder or file system, a file that cannot be opened.
CANNOT_WRITE = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN})


def storage_error(exc: BaseException, path: Path) -> StorageError | None:
    """What a failure of SQLite stands for: the database is busy (another process writes it) or
    cannot be written; None for anything else (a bug of ours, a damaged file)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return None
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    if code in BUSY:
        return DatabaseBusy(
            f"{path} is locked by another process ({exc}); orchestrator waited for it. "
            "Let the other process finish (another run of this job? a database tool with a transaction open?), "
            "then run the command again."
        )
    if code in CANNOT_WRITE:
        return StorageError(f"{path} cannot be written: {exc} (a full disk, or a read-only file or folder?)")
    return None


P = ParamSpec("P")
T = TypeVar("T")
B = TypeVar("B", bound="Base")


def answered(method: Callable[Concatenate[B, P], Awaitable[T]]) -> Callable[Concatenate[B, P], Coroutine[Any, Any, T]]:
    """A store method whose SQLite failures to write come out as ``DatabaseBusy`` / ``StorageError``."""

    @functools.wraps(method)
    async def call(self: B, /, *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(self, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            error = storage_error(exc, self.path)
            if error is None:
                raise
            raise error from exc

    return call


class Base:
    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self.db = db
        self.path = path

    async def rows_in(self, sql: str, values: Sequence[Any]) -> AsyncIterator[sqlite3.Row]:
        """The rows of ``sql``, whose ``{marks}`` stands for an IN list of ``values``, read a chunk
        of ``IN_CHUNK`` values at a time."""
        for start in range(0, len(values), IN_CHUNK):
            chunk = values[start : start + IN_CHUNK]
            async with self.db.execute(sql.format(marks=",".join("?" * len(chunk))), chunk) as cursor:
                async for row in cursor:
                    yield row
