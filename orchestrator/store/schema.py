"""The schema: named migrations, applied in order and recorded once applied (append only)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiosqlite
import anyio

from orchestrator.store.legacy import options_of

Migration = Callable[[aiosqlite.Connection], Awaitable[None]]

# Append only: a migration, once released, is never edited or reordered. Its name is its
# function's name (without the leading underscore), recorded in the database once applied.
MIGRATIONS: list[Migration] = []


def migration(step: Migration) -> Migration:
    MIGRATIONS.append(step)
    return step


def migration_name(step: Migration) -> str:
    return getattr(step, "__name__", "").lstrip("_")


@asynccontextmanager
async def transaction(db: aiosqlite.Connection) -> AsyncIterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``; on any exception (cancellation included, or a failed
    ``COMMIT``) a shielded ``ROLLBACK``, unless SQLite has rolled back already (it does on a full disk)."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        yield
        await db.execute("COMMIT")
    except BaseException:
        with anyio.CancelScope(shield=True):
            if db.in_transaction:
                try:
                    await db.execute("ROLLBACK")
                except sqlite3.OperationalError:
                    # Cancelled while waiting for a COMMIT that SQLite's thread went on to run (a
                    # Ctrl-C at that instant): nothing is left to roll back.
                    if db.in_transaction:
                        raise
        raise


async def _execute_all(db: aiosqlite.Connection, script: str) -> None:
    """Run each statement of ``script`` inside the caller's transaction (executescript would commit)."""
    for statement in script.split(";"):
        if statement.strip():
            await db.execute(statement)


@migration
async def _0001_initial(db: aiosqlite.Connection) -> None:
    await _execute_all(
        db,
        """
        CREATE TABLE job (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            name TEXT NOT NULL,
            spec TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE TABLE requests (
            id INTEGER PRIMARY KEY,
            custom_id TEXT NOT NULL UNIQUE,
            params TEXT NOT NULL,
            source TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            result TEXT,
            queued_at REAL NOT NULL,
            started_at REAL,
            first_token_at REAL,
            finished_at REAL
        );
        CREATE INDEX requests_by_state ON requests (state, id);
        CREATE TABLE attempts (
            request_id INTEGER NOT NULL REFERENCES requests (id) ON DELETE CASCADE,
            number INTEGER NOT NULL,
            started_at REAL NOT NULL,
            first_token_at REAL,
            ended_at REAL,
            outcome TEXT,
            reason TEXT,
            status INTEGER,
            error TEXT,
            message_id TEXT,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cache_creation_input_tokens INTEGER NOT NULL DEFAULT 0,
            cache_read_input_tokens INTEGER NOT NULL DEFAULT 0,
            partial TEXT,
            checkpoint_at REAL,
            PRIMARY KEY (request_id, number)
        );
        """,
    )


@migration
async def _0002_request_recovery(db: aiosqlite.Connection) -> None:
    await db.execute("ALTER TABLE requests ADD COLUMN recovery TEXT")


@migration
async def _0003_attempt_cache_1h(db: aiosqlite.Connection) -> None:
    await db.execute("ALTER TABLE attempts ADD COLUMN cache_creation_1h_input_tokens INTEGER NOT NULL DEFAULT 0")


@migration
async def _0004_request_kept(db: aiosqlite.Connection) -> None:
    await db.execute("ALTER TABLE requests ADD COLUMN kept TEXT")


@migration
async def _0005_request_input_row(db: aiosqlite.Connection) -> None:
    await db.execute("ALTER TABLE requests ADD COLUMN input_row TEXT")  # a table row's columns (JSON object)


@migration
async def _0006_attempt_output_estimated(db: aiosqlite.Connection) -> None:
    await db.execute("ALTER TABLE attempts ADD COLUMN output_estimated INTEGER NOT NULL DEFAULT 0")


@migration
async def _0007_batches(db: aiosqlite.Connection) -> None:
    """Message batches: one row per batch from the moment it is intended (before its create is sent),
    and each batch attempt (the request's membership) tied to it."""
    await _execute_all(
        db,
        """
        CREATE TABLE batches (
            key INTEGER PRIMARY KEY,
            id TEXT UNIQUE,
            state TEXT NOT NULL,
            watermark TEXT,
            requests INTEGER NOT NULL,
            bytes INTEGER NOT NULL,
            intended_at REAL NOT NULL,
            created_at REAL,
            ended_at REAL,
            expires_at REAL,
            counts TEXT,
            error TEXT
        );
        ALTER TABLE attempts ADD COLUMN batch_key INTEGER REFERENCES batches (key);
        CREATE INDEX attempts_by_batch ON attempts (batch_key) WHERE batch_key IS NOT NULL
        """,
    )


@migration
async def _0008_job_endpoint(db: aiosqlite.Connection) -> None:
    await db.execute("ALTER TABLE job ADD COLUMN endpoint TEXT")  # where its last run ran: 'simulator' or a URL
    await db.execute("ALTER TABLE job ADD COLUMN simulated INTEGER NOT NULL DEFAULT 0")  # holds simulated results


@migration
async def _0009_attempt_sent_at(db: aiosqlite.Connection) -> None:
    # When the request went out, after the rate limiter admitted it (started_at is before).
    await db.execute("ALTER TABLE attempts ADD COLUMN sent_at REAL")


@migration
async def _0010_run_notes(db: aiosqlite.Connection) -> None:
    # What a run knows that no request row holds (its cap, the last rate-limit headers), for watchers.
    await db.execute("CREATE TABLE notes (key TEXT PRIMARY KEY, value TEXT NOT NULL, at REAL NOT NULL)")


@migration
async def _0011_job_options(db: aiosqlite.Connection) -> None:
    """A job's options stored as JSON (``spec["options"]``) instead of the command line that ran it."""
    async with db.execute("SELECT spec FROM job") as cursor:
        row = await cursor.fetchone()
    if row is None:
        return
    spec = json.loads(row[0])
    if "argv" in spec:
        spec["options"] = options_of(spec.pop("argv"))
        await db.execute("UPDATE job SET spec = ?", (json.dumps(spec),))


@migration
async def _0012_attempt_waits(db: aiosqlite.Connection) -> None:
    # What an attempt waited for before it was sent (models.Waits), in seconds: a free concurrency
    # slot, the rate limiter, a warm cached prefix (NULL: not recorded, or nothing was sent).
    for column in ("slot_wait", "rate_wait", "prefix_wait"):
        await db.execute(f"ALTER TABLE attempts ADD COLUMN {column} REAL")


async def pending_migrations(db: aiosqlite.Connection) -> list[str]:
    """The names of the migrations this database has not had (reads only)."""
    async with db.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'migrations'") as cursor:
        row = await cursor.fetchone()
    done: set[str] = set()
    if row is not None and row[0]:
        async with db.execute("SELECT name FROM migrations") as cursor:
            done = {row[0] async for row in cursor}
    return [migration_name(step) for step in MIGRATIONS if migration_name(step) not in done]


async def migrate(db: aiosqlite.Connection) -> list[str]:
    """Apply the migrations not yet applied, each in its own transaction; return their names."""
    await db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL)")
    async with db.execute("SELECT name FROM migrations") as cursor:
        done = {row[0] async for row in cursor}
    applied = []
    for step in MIGRATIONS:
        name = migration_name(step)
        if name in done:
            continue
        async with transaction(db):
            await step(db)
            await db.execute("INSERT INTO migrations VALUES (?, ?)", (name, time.time()))
        applied.append(name)
    return applied
