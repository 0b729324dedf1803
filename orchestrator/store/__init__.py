"""The job database: the only package that speaks SQL.

One SQLite file per job, in WAL mode. The schema is built by named migrations (``schema``),
applied in order and recorded once applied. Everything about a job lives here: the job and its
settings, every request and its state, every attempt (why it ended, tokens, timings, the
checkpoint of its partial output) and every final message; files under ``results/`` are
exports of it.

    schema.py   migrations            load.py     job files -> requests (validated, de-duplicated)
    write.py    the run's write path  queries.py  everything read back (status, export, report)
    batches.py  message batches: intents, server states, results applied
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from orchestrator.store.batches import Batching, BatchRow
from orchestrator.store.load import Loading
from orchestrator.store.queries import JobRow, Queries
from orchestrator.store.schema import MIGRATIONS, migrate
from orchestrator.store.write import Writing

__all__ = ["MIGRATIONS", "BatchRow", "JobRow", "Store", "open_store"]


class Store(Loading, Writing, Batching, Queries):
    """One job's database: load, write and read it."""


@asynccontextmanager
async def open_store(path: Path, *, create: bool = True) -> AsyncIterator[Store]:
    if not create and not path.exists():
        raise FileNotFoundError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    async with aiosqlite.connect(path, isolation_level=None) as db:
        await db.execute("PRAGMA journal_mode = WAL")
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA foreign_keys = ON")
        store = Store(db, path)
        await migrate(db)
        yield store
