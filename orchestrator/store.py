"""The job database: the only module that speaks SQL.

One SQLite file per job, in WAL mode. The schema is built by named migrations, applied in
order and recorded once applied. Everything about a job lives here: the job and its settings,
every request and its state, every attempt (why it ended, tokens, timings, the checkpoint of
its partial output) and every final message; files under ``results/`` are exports of it.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from orchestrator.errors import JobFileError, Problem
from orchestrator.jobfile import Loaded
from orchestrator.models import Outcome, Request, State, Usage

MAX_PROBLEMS = 20
LOAD_BATCH = 2000


async def _execute_all(db: aiosqlite.Connection, script: str) -> None:
    """Run each statement of ``script`` inside the caller's transaction (executescript would commit)."""
    for statement in script.split(";"):
        if statement.strip():
            await db.execute(statement)


async def _initial(db: aiosqlite.Connection) -> None:
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


async def _recovery(db: aiosqlite.Connection) -> None:
    await db.execute("ALTER TABLE requests ADD COLUMN recovery TEXT")


async def _cache_1h(db: aiosqlite.Connection) -> None:
    await db.execute("ALTER TABLE attempts ADD COLUMN cache_creation_1h_input_tokens INTEGER NOT NULL DEFAULT 0")


async def _kept(db: aiosqlite.Connection) -> None:
    await db.execute("ALTER TABLE requests ADD COLUMN kept TEXT")


# Append only: a migration, once released, is never edited or reordered.
MIGRATIONS: list[tuple[str, Callable[[aiosqlite.Connection], Awaitable[None]]]] = [
    ("0001_initial", _initial),
    ("0002_request_recovery", _recovery),
    ("0003_attempt_cache_1h", _cache_1h),
    ("0004_request_kept", _kept),
]


# -- what the writer hands the store -------------------------------------------------


@dataclass(frozen=True)
class AttemptStarted:
    request_id: int
    number: int
    at: float


@dataclass(frozen=True)
class Checkpoint:
    request_id: int
    number: int
    partial: dict[str, Any] | None  # the partial message so far
    message_id: str | None
    usage: Usage
    first_token_at: float | None
    at: float


@dataclass(frozen=True)
class AttemptEnded:
    """An attempt's end; with ``final`` set, the request's end too, in the same transaction."""

    checkpoint: Checkpoint
    outcome: Outcome
    reason: str | None
    status: int | None
    error: dict[str, Any] | None
    final: tuple[State, dict[str, Any]] | None  # (succeeded|errored, message or error body)
    next_state: State = State.RUNNING  # the request's state when not final
    recovery: dict[str, Any] | None = None  # how a broken reply was continued, if it was
    kept: dict[str, Any] | None = None  # what the reply keeps so far, when not final


Record = AttemptStarted | AttemptEnded


@dataclass(frozen=True)
class JobRow:
    name: str
    spec: dict[str, Any]
    fingerprint: str
    created_at: float
    updated_at: float


class Store:
    def __init__(self, db: aiosqlite.Connection, path: Path) -> None:
        self.db = db
        self.path = path

    # -- schema -------------------------------------------------------------------

    async def migrate(self) -> list[str]:
        """Apply the migrations not yet applied; return their names."""
        await self.db.execute("CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL)")
        async with self.db.execute("SELECT name FROM migrations") as cursor:
            done = {row[0] async for row in cursor}
        applied = []
        for name, step in MIGRATIONS:
            if name in done:
                continue
            await self.db.execute("BEGIN IMMEDIATE")
            await step(self.db)
            await self.db.execute("INSERT INTO migrations VALUES (?, ?)", (name, time.time()))
            await self.db.execute("COMMIT")
            applied.append(name)
        return applied

    # -- the job ------------------------------------------------------------------

    async def job(self) -> JobRow | None:
        async with self.db.execute("SELECT name, spec, fingerprint, created_at, updated_at FROM job") as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        return JobRow(row[0], json.loads(row[1]), row[2], row[3], row[4])

    async def load(
        self, name: str, spec: dict[str, Any], fingerprint: str, items: Iterable[Loaded | Problem]
    ) -> tuple[int, int]:
        """Load or reload the job's requests in one transaction; (added, changed) request counts.

        All-or-nothing: any bad line or duplicate custom_id raises JobFileError and leaves the
        database as it was. On a reload, unchanged requests keep their state and results,
        changed ones start again, and ones no longer in the input are removed.
        """
        now = time.time()
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute(
                "CREATE TEMP TABLE incoming (ord INTEGER PRIMARY KEY, custom_id TEXT, params TEXT, source TEXT)"
            )
            problems: list[Problem] = []
            more = 0
            batch: list[tuple[str, str, str]] = []
            for item in items:
                if isinstance(item, Problem):
                    if len(problems) < MAX_PROBLEMS:
                        problems.append(item)
                    else:
                        more += 1
                    continue
                source = item.path if item.line is None else f"{item.path}:{item.line}"
                batch.append((item.custom_id, json.dumps(item.params, separators=(",", ":")), source))
                if len(batch) >= LOAD_BATCH:
                    await db.executemany("INSERT INTO incoming (custom_id, params, source) VALUES (?, ?, ?)", batch)
                    batch.clear()
            if batch:
                await db.executemany("INSERT INTO incoming (custom_id, params, source) VALUES (?, ?, ?)", batch)
            await db.execute("CREATE INDEX temp.incoming_ids ON incoming (custom_id)")
            async with db.execute(
                """SELECT i.custom_id, i.source,
                          (SELECT f.source FROM incoming f WHERE f.custom_id = i.custom_id ORDER BY f.ord LIMIT 1)
                   FROM incoming i
                   WHERE EXISTS (SELECT 1 FROM incoming f WHERE f.custom_id = i.custom_id AND f.ord < i.ord)
                   ORDER BY i.ord"""
            ) as cursor:
                async for custom_id, source, first in cursor:
                    path, _, line = source.rpartition(":")
                    problem = Problem(path, int(line), f"duplicate custom_id {custom_id!r} (first at {first})")
                    if len(problems) < MAX_PROBLEMS:
                        problems.append(problem)
                    else:
                        more += 1
            if problems:
                problems.sort(key=lambda p: (p.path, p.line or 0))
                raise JobFileError(problems, more)
            async with db.execute(
                """SELECT COUNT(*) FROM incoming i JOIN requests r ON r.custom_id = i.custom_id
                   WHERE r.params != i.params"""
            ) as cursor:
                changed = (await cursor.fetchone() or (0,))[0]
            await db.execute("DELETE FROM requests WHERE custom_id NOT IN (SELECT custom_id FROM incoming)")
            await db.execute(
                """DELETE FROM attempts WHERE request_id IN (
                     SELECT r.id FROM requests r JOIN incoming i USING (custom_id) WHERE r.params != i.params)"""
            )
            await db.execute(
                """UPDATE requests SET params = i.params, source = i.source, state = 'pending', attempts = 0,
                     result = NULL, recovery = NULL, kept = NULL, started_at = NULL, first_token_at = NULL,
                     finished_at = NULL, queued_at = ?
                   FROM incoming i WHERE i.custom_id = requests.custom_id AND requests.params != i.params""",
                (now,),
            )
            cursor = await db.execute(
                """INSERT INTO requests (custom_id, params, source, queued_at)
                   SELECT custom_id, params, source, ? FROM incoming WHERE true
                   ON CONFLICT (custom_id) DO NOTHING""",
                (now,),
            )
            added = cursor.rowcount
            await db.execute(
                """INSERT INTO job VALUES (1, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE
                   SET name = excluded.name, spec = excluded.spec, fingerprint = excluded.fingerprint,
                       updated_at = excluded.updated_at""",
                (name, json.dumps(spec), fingerprint, now, now),
            )
            await db.execute("DROP TABLE temp.incoming")
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            await db.execute("DROP TABLE IF EXISTS temp.incoming")
            raise
        return added, changed

    async def recover(self) -> int:
        """After a crash or a stop: running requests become pending, open attempts interrupted."""
        await self.db.execute("BEGIN IMMEDIATE")
        await self.db.execute(
            "UPDATE attempts SET outcome = ?, reason = 'job_stopped', ended_at = COALESCE(checkpoint_at, started_at) "
            "WHERE outcome IS NULL",
            (Outcome.INTERRUPTED.value,),
        )
        cursor = await self.db.execute("UPDATE requests SET state = 'pending' WHERE state = 'running'")
        await self.db.execute("COMMIT")
        return cursor.rowcount

    # -- running --------------------------------------------------------------------

    async def pending(self, after_id: int, limit: int) -> list[Request]:
        """Requests still to run, with what their reply kept and the checkpoint of an attempt cut short."""
        async with self.db.execute(
            """SELECT r.id, r.custom_id, r.params, r.attempts, r.kept, a.partial, a.output_tokens
               FROM requests r
               LEFT JOIN attempts a ON a.request_id = r.id AND a.number = r.attempts AND a.outcome = 'interrupted'
               WHERE r.state IN ('pending', 'running') AND r.id > ? ORDER BY r.id LIMIT ?""",
            (after_id, limit),
        ) as cursor:
            return [
                Request(
                    id=row[0],
                    custom_id=row[1],
                    params=json.loads(row[2]),
                    attempts=row[3],
                    kept=None if row[4] is None else json.loads(row[4]),
                    interrupted=None if row[5] is None else json.loads(row[5]),
                    interrupted_tokens=row[6] or 0,
                )
                async for row in cursor
            ]

    async def write(self, records: list[Record], checkpoints: list[Checkpoint]) -> None:
        """Apply attempt starts, checkpoints and ends in one transaction."""
        started = [(r.request_id, r.number, r.at) for r in records if isinstance(r, AttemptStarted)]
        ended = [r for r in records if isinstance(r, AttemptEnded)]
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            if started:
                await db.executemany("INSERT INTO attempts (request_id, number, started_at) VALUES (?, ?, ?)", started)
                await db.executemany(
                    "UPDATE requests SET state = 'running', attempts = ?, started_at = COALESCE(started_at, ?) "
                    "WHERE id = ?",
                    [(number, at, request_id) for request_id, number, at in started],
                )
            all_checkpoints = [*checkpoints, *(r.checkpoint for r in ended)]
            if all_checkpoints:
                await db.executemany(
                    """UPDATE attempts SET partial = ?, message_id = ?, input_tokens = ?, output_tokens = ?,
                         cache_creation_input_tokens = ?, cache_read_input_tokens = ?,
                         cache_creation_1h_input_tokens = ?, first_token_at = ?, checkpoint_at = ?
                       WHERE request_id = ? AND number = ?""",
                    [_checkpoint_row(c) for c in all_checkpoints],
                )
            if ended:
                await db.executemany(
                    "UPDATE attempts SET ended_at = ?, outcome = ?, reason = ?, status = ?, error = ? "
                    "WHERE request_id = ? AND number = ?",
                    [
                        (
                            r.checkpoint.at,
                            r.outcome.value,
                            r.reason,
                            r.status,
                            None if r.error is None else json.dumps(r.error),
                            r.checkpoint.request_id,
                            r.checkpoint.number,
                        )
                        for r in ended
                    ],
                )
                # A request's final record is its last: apply the others' states first, so that a
                # retry and its success in one batch leave the request succeeded.
                await db.executemany(
                    "UPDATE requests SET state = ?, kept = COALESCE(?, kept) WHERE id = ?",
                    [
                        (r.next_state.value, None if r.kept is None else json.dumps(r.kept), r.checkpoint.request_id)
                        for r in ended
                        if r.final is None
                    ],
                )
                finals = [r for r in ended if r.final is not None]
                await db.executemany(
                    "UPDATE requests SET state = ?, result = ?, finished_at = ?, first_token_at = ?, recovery = ?, "
                    "kept = NULL WHERE id = ?",
                    [
                        (
                            r.final[0].value,
                            json.dumps(r.final[1]),
                            r.checkpoint.at,
                            r.checkpoint.first_token_at,
                            None if r.recovery is None else json.dumps(r.recovery),
                            r.checkpoint.request_id,
                        )
                        for r in finals
                        if r.final is not None
                    ],
                )
            await db.execute("UPDATE job SET updated_at = ?", (time.time(),))
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise

    # -- reading ------------------------------------------------------------------

    async def counts(self) -> dict[str, int]:
        async with self.db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state") as cursor:
            found = {row[0]: row[1] async for row in cursor}
        return {state.value: found.get(state.value, 0) for state in State}

    async def billed(self) -> Usage:
        """Tokens billed over every attempt of the job."""
        async with self.db.execute(
            "SELECT COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), "
            "COALESCE(SUM(cache_creation_input_tokens), 0), COALESCE(SUM(cache_read_input_tokens), 0), "
            "COALESCE(SUM(cache_creation_1h_input_tokens), 0) FROM attempts"
        ) as cursor:
            row = await cursor.fetchone()
        assert row is not None
        return Usage(*row)

    async def first_start(self) -> float | None:
        async with self.db.execute("SELECT MIN(started_at) FROM attempts") as cursor:
            row = await cursor.fetchone()
        return None if row is None else row[0]

    async def results(self) -> AsyncIterator[dict[str, Any]]:
        """Every request in input order, with its result, usage summed over attempts and timings."""
        async with self.db.execute(
            """SELECT r.custom_id, r.state, r.result, r.attempts, r.queued_at, r.started_at, r.first_token_at,
                      r.finished_at, COALESCE(SUM(a.input_tokens), 0), COALESCE(SUM(a.output_tokens), 0),
                      COALESCE(SUM(a.cache_creation_input_tokens), 0), COALESCE(SUM(a.cache_read_input_tokens), 0),
                      COALESCE(SUM(a.cache_creation_1h_input_tokens), 0), r.recovery
               FROM requests r LEFT JOIN attempts a ON a.request_id = r.id GROUP BY r.id ORDER BY r.id"""
        ) as cursor:
            async for row in cursor:
                yield {
                    "custom_id": row[0],
                    "state": row[1],
                    "result": None if row[2] is None else json.loads(row[2]),
                    "attempts": row[3],
                    "timing": {
                        "queued_at": row[4],
                        "started_at": row[5],
                        "first_token_at": row[6],
                        "finished_at": row[7],
                    },
                    "billed": Usage(*row[8:13]),
                    "recovery": None if row[13] is None else json.loads(row[13]),
                }

    # -- reports ------------------------------------------------------------------

    async def billed_by_model(self, since: float | None, until: float | None) -> dict[str, Usage]:
        """Tokens billed over the attempts started in [since, until), by requested model."""
        async with self.db.execute(
            """SELECT json_extract(r.params, '$.model'), SUM(a.input_tokens), SUM(a.output_tokens),
                      SUM(a.cache_creation_input_tokens), SUM(a.cache_read_input_tokens),
                      SUM(a.cache_creation_1h_input_tokens)
               FROM attempts a JOIN requests r ON r.id = a.request_id
               WHERE a.started_at >= COALESCE(?, a.started_at) AND a.started_at < COALESCE(?, a.started_at + 1)
               GROUP BY 1""",
            (since, until),
        ) as cursor:
            return {row[0]: Usage(*row[1:]) async for row in cursor}

    async def failed_attempts(self, since: float | None, until: float | None) -> list[tuple[str, str, int]]:
        """(model, reason, count) of the attempts that did not succeed, started in [since, until)."""
        async with self.db.execute(
            """SELECT json_extract(r.params, '$.model'), COALESCE(a.reason, a.outcome), COUNT(*)
               FROM attempts a JOIN requests r ON r.id = a.request_id
               WHERE a.outcome != 'succeeded'
                 AND a.started_at >= COALESCE(?, a.started_at) AND a.started_at < COALESCE(?, a.started_at + 1)
               GROUP BY 1, 2""",
            (since, until),
        ) as cursor:
            return [(row[0], row[1], row[2]) async for row in cursor]

    async def request_outcomes(self, since: float | None, until: float | None) -> AsyncIterator[dict[str, Any]]:
        """Each request (finished in [since, until) when a range is given): model, state, times, what
        its final message holds, its error, and the time to first token of its successful attempt."""
        async with self.db.execute(
            """SELECT json_extract(r.params, '$.model'), r.state, r.started_at, r.finished_at,
                      json_extract(r.result, '$.usage'), json_extract(r.result, '$.error.type'),
                      json_extract(r.result, '$.error.message'),
                      (SELECT a.first_token_at - a.started_at FROM attempts a
                       WHERE a.request_id = r.id AND a.outcome = 'succeeded')
               FROM requests r
               WHERE (? IS NULL AND ? IS NULL)
                  OR (r.finished_at >= COALESCE(?, r.finished_at) AND r.finished_at < COALESCE(?, r.finished_at + 1))
               ORDER BY r.id""",
            (since, until, since, until),
        ) as cursor:
            async for row in cursor:
                yield {
                    "model": row[0],
                    "state": row[1],
                    "started_at": row[2],
                    "finished_at": row[3],
                    "kept": None if row[4] is None else Usage.from_dict(json.loads(row[4])),
                    "error": None if row[5] is None else (row[5], row[6] or ""),
                    "ttft": row[7],
                }


def _checkpoint_row(c: Checkpoint) -> tuple[Any, ...]:
    return (
        None if c.partial is None else json.dumps(c.partial, separators=(",", ":")),
        c.message_id,
        c.usage.input_tokens,
        c.usage.output_tokens,
        c.usage.cache_creation_input_tokens,
        c.usage.cache_read_input_tokens,
        c.usage.cache_creation_1h_input_tokens,
        c.first_token_at,
        c.at,
        c.request_id,
        c.number,
    )


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
        await store.migrate()
        yield store
