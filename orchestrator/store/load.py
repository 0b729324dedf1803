"""Loading a job's requests: validated, de-duplicated and reconciled with what is stored, in one transaction."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, nullcontext
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from orchestrator.crash import crash_point
from orchestrator.errors import MAX_PROBLEMS, JobFileError, Problem
from orchestrator.models import Loaded, Prompts, encode_params
from orchestrator.store.base import Base
from orchestrator.store.schema import transaction

LOAD_BATCH = 2000
BLOCKS_IN_FLIGHT = 2  # blocks of prompt lines handed to the database thread and not yet in
INSERT_INCOMING = "INSERT INTO incoming (custom_id, params, path, line, input_row) VALUES (?, ?, ?, ?, ?)"
INSERT_NEW = (
    "INSERT INTO requests (custom_id, params, source, input_row, queued_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (custom_id) DO NOTHING"
)
# The requests of a ``Prompts`` block (?1 its items as a JSON array, ?2 its first line, ?3 its
# stem, ?4 its path, ?5 and ?6 the params around a prompt): custom_id, params, path, line.
PROMPTS = """SELECT iif(q = 1, ?3 || '-' || (?2 + key), substr(value, 1, q - 1)) AS custom_id,
     ?5 || substr(value, q) || ?6 AS params, ?4 AS path, ?2 + key AS line
   FROM (SELECT key, value, instr(value, '"') AS q FROM json_each(?1))"""
# Into a fresh job: a block with a custom_id stored before fails as a whole (cheaper than an
# upsert's look-up of every row), then goes in again without the ones that collide.
INSERT_PROMPTS_NEW = f"""INSERT INTO requests (custom_id, params, source, queued_at)
   SELECT custom_id, params, path || ':' || line, ?7 FROM ({PROMPTS}) WHERE true"""
UNIQUE_FAILED = "SQLITE_CONSTRAINT_UNIQUE"
INSERT_PROMPTS_INCOMING = f"INSERT INTO incoming (custom_id, params, path, line) {PROMPTS}"
# Those of its requests that collided with a custom_id stored before them: custom_id, line, first source.
PROMPTS_COLLIDED = f"""SELECT p.custom_id, p.line, r.source FROM ({PROMPTS}) AS p
   JOIN requests r ON r.custom_id = p.custom_id WHERE r.source != p.path || ':' || p.line ORDER BY p.line"""
Row = tuple[str, str, str, int | None, str | None]  # custom_id, params, path, line, input_row
Progress = Callable[[int], None]


def loading_marker(db: Path) -> Path:
    """The file that says a fresh job's first load into ``db`` has not ended (and the file may be damaged)."""
    return db.with_name(db.name + ".loading")


def _source(path: str, line: int | None) -> str:
    return path if line is None else f"{path}:{line}"


def _duplicate(custom_id: str, path: str, line: int | None, first: str) -> Problem:
    # A prompt file's custom_id is its file stem: two files of the same name collide.
    hint = "" if line is not None else "; prompt files are named by their file stem: rename one"
    return Problem(path, line, f"duplicate custom_id {custom_id!r} (first at {first}{hint})")


class _Problems:
    """The problems found so far: the first ``MAX_PROBLEMS``, and how many more."""

    def __init__(self) -> None:
        self.found: list[Problem] = []
        self.more = 0

    def add(self, problem: Problem) -> None:
        if len(self.found) < MAX_PROBLEMS:
            self.found.append(problem)
        else:
            self.more += 1

    def raise_any(self) -> None:
        if self.found:
            self.found.sort(key=lambda p: (p.path, p.line or 0))
            raise JobFileError(self.found, self.more)


def _prompts_args(block: Prompts) -> tuple[str, int, str, str, str, str]:
    return json.dumps(block.items), block.first, block.stem, block.path, block.prefix, block.suffix


async def _read_batches(
    items: Iterable[Loaded | Prompts | Problem],
    problems: _Problems,
    insert: Callable[[list[Row]], Awaitable[None]],
    insert_prompts: Callable[[Prompts], Awaitable[None]],
    progress: Progress | None,
) -> None:
    """Read every item and hand the valid ones to ``insert`` in batches, and each block of prompt
    lines to ``insert_prompts``, in input order (the database thread takes them in the order
    given). A block is inserted while the next ones are read (one statement for a whole block: the
    database thread does not take the GIL from this one at every row, as single rows would).
    """
    rows: list[Row] = []
    read = 0
    async with anyio.create_task_group() as group:
        inserting: deque[anyio.Event] = deque()
        for item in items:
            if isinstance(item, Prompts):
                if rows:
                    await insert(rows)
                    rows = []
                while len(inserting) >= BLOCKS_IN_FLIGHT:
                    await inserting.popleft().wait()
                inserting.append(_start(group, insert_prompts, item))
                await anyio.lowlevel.checkpoint()  # to the database thread; the next block is read meanwhile
                read += len(item.items)
                if progress is not None:
                    progress(read)
                continue
            read += 1
            if isinstance(item, Problem):
                problems.add(item)
                continue
            row = None if item.row is None else json.dumps(item.row, separators=(",", ":"), default=str)
            rows.append((item.custom_id, encode_params(item.params), item.path, item.line, row))
            if len(rows) >= LOAD_BATCH:
                await insert(rows)
                rows = []
                if progress is not None:
                    progress(read)
        if rows:
            await insert(rows)
    if progress is not None:
        progress(read)


def _start(group: anyio.abc.TaskGroup, insert: Callable[[Prompts], Awaitable[None]], block: Prompts) -> anyio.Event:
    """Start inserting ``block`` in ``group``; the event is set when it is in."""
    done = anyio.Event()

    async def run() -> None:
        await insert(block)
        done.set()

    group.start_soon(run)
    return done


class Loading(Base):
    async def load(
        self,
        name: str,
        spec: dict[str, Any],
        fingerprint: str,
        items: Iterable[Loaded | Prompts | Problem],
        progress: Progress | None = None,
    ) -> tuple[int, int]:
        """Load or reload the job's requests in one transaction; (added, changed) request counts.

        All-or-nothing: any bad line or duplicate custom_id raises JobFileError and leaves the
        database as it was. On a reload, unchanged requests keep their state and results,
        changed ones start again, and ones no longer in the input are removed. ``progress`` is
        called with the number of items read so far, now and then.
        """
        now = time.time()
        db = self.db
        async with db.execute("SELECT EXISTS (SELECT 1 FROM job)") as cursor:
            fresh = not (await cursor.fetchone() or (0,))[0]
        async with self._journal_kept_in_memory() if fresh else nullcontext(), transaction(db):
            if fresh:
                added, changed = await self._load_new(items, now, progress), 0
            else:
                added, changed = await self._reload(items, now, progress)
            await db.execute(
                """INSERT INTO job (id, name, spec, fingerprint, created_at, updated_at) VALUES (1, ?, ?, ?, ?, ?)
                   ON CONFLICT (id) DO UPDATE
                   SET name = excluded.name, spec = excluded.spec, fingerprint = excluded.fingerprint,
                       updated_at = excluded.updated_at""",
                (name, json.dumps(spec), fingerprint, now, now),
            )
        return added, changed

    @asynccontextmanager
    async def _journal_kept_in_memory(self) -> AsyncIterator[None]:
        """A fresh job's first load with its rollback journal in memory, not written twice through
        the write-ahead log (a million lines load about 30% faster). A kill during it can leave the
        file damaged: the marker beside it (``loading_marker``) says so until the load has ended
        and is on disk, and the next run starts the job over (``job.py``)."""
        marker = loading_marker(self.path)
        marker.touch()
        await self.db.execute("PRAGMA journal_mode = MEMORY")
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await self.db.execute("PRAGMA journal_mode = WAL")
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    os.fsync(fd)  # the committed (or rolled back) load is on disk before the marker goes
                finally:
                    os.close(fd)
                marker.unlink()

    async def _load_new(
        self, items: Iterable[Loaded | Prompts | Problem], now: float, progress: Progress | None
    ) -> int:
        """Into a job with no requests yet: straight into ``requests`` (a copy through a table of
        incoming requests costs more than all the rest), duplicates found as they collide."""
        db = self.db
        problems = _Problems()
        added = 0

        async def insert(rows: list[Row]) -> None:
            nonlocal added
            cursor = await db.executemany(
                INSERT_NEW,
                ((custom_id, params, _source(path, line), row, now) for custom_id, params, path, line, row in rows),
            )
            added += cursor.rowcount
            if cursor.rowcount < len(rows):
                await self._duplicates(rows, problems)

        async def insert_prompts(block: Prompts) -> None:
            nonlocal added
            args = _prompts_args(block)
            try:
                cursor = await db.execute(INSERT_PROMPTS_NEW, (*args, now))
            except sqlite3.IntegrityError as exc:
                if exc.sqlite_errorname != UNIQUE_FAILED:
                    raise
                cursor = await db.execute(INSERT_PROMPTS_NEW + " ON CONFLICT (custom_id) DO NOTHING", (*args, now))
                async with db.execute(PROMPTS_COLLIDED, args) as collided:
                    async for custom_id, line, first in collided:
                        problems.add(_duplicate(custom_id, block.path, line, first))
            added += cursor.rowcount

        await _read_batches(items, problems, insert, insert_prompts, progress)
        crash_point("loading")
        problems.raise_any()
        return added

    async def _duplicates(self, rows: list[Row], problems: _Problems) -> None:
        """The rows of a batch that collided with a custom_id stored before them."""
        ids = sorted({row[0] for row in rows})
        first: dict[str, str] = {
            custom_id: source
            async for custom_id, source in self.rows_in(
                "SELECT custom_id, source FROM requests WHERE custom_id IN ({marks})", ids
            )
        }
        for custom_id, _, path, line, _ in rows:
            if first[custom_id] != _source(path, line):
                problems.add(_duplicate(custom_id, path, line, first[custom_id]))

    async def _reload(
        self, items: Iterable[Loaded | Prompts | Problem], now: float, progress: Progress | None
    ) -> tuple[int, int]:
        """Into a job loaded before: through a table of the incoming requests, reconciled with the stored ones."""
        db = self.db
        try:
            await db.execute(
                "CREATE TEMP TABLE incoming (ord INTEGER PRIMARY KEY, custom_id TEXT, params TEXT, path TEXT,"
                " line INTEGER, input_row TEXT,"
                " source TEXT GENERATED ALWAYS AS (path || COALESCE(':' || line, '')))"
            )
            problems = _Problems()

            async def insert(rows: list[Row]) -> None:
                await db.executemany(INSERT_INCOMING, rows)

            async def insert_prompts(block: Prompts) -> None:
                await db.execute(INSERT_PROMPTS_INCOMING, _prompts_args(block))

            await _read_batches(items, problems, insert, insert_prompts, progress)
            await db.execute("CREATE INDEX temp.incoming_ids ON incoming (custom_id)")
            async with db.execute(
                """SELECT i.custom_id, i.path, i.line,
                          (SELECT f.source FROM incoming f WHERE f.custom_id = i.custom_id ORDER BY f.ord LIMIT 1)
                   FROM incoming i
                   WHERE EXISTS (SELECT 1 FROM incoming f WHERE f.custom_id = i.custom_id AND f.ord < i.ord)
                   ORDER BY i.ord"""
            ) as cursor:
                async for custom_id, path, line, first in cursor:
                    problems.add(_duplicate(custom_id, path, line, first))
            problems.raise_any()
            async with db.execute(
                """SELECT COUNT(*) FROM incoming i JOIN requests r ON r.custom_id = i.custom_id
                   WHERE r.params != i.params"""
            ) as cursor:
                changed: int = (await cursor.fetchone() or (0,))[0]
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
            await db.execute(
                """UPDATE requests SET input_row = i.input_row FROM incoming i
                   WHERE i.custom_id = requests.custom_id AND requests.input_row IS NOT i.input_row"""
            )
            cursor = await db.execute(
                """INSERT INTO requests (custom_id, params, source, input_row, queued_at)
                   SELECT custom_id, params, source, input_row, ? FROM incoming WHERE true
                   ON CONFLICT (custom_id) DO NOTHING""",
                (now,),
            )
            added = cursor.rowcount
            await db.execute("DROP TABLE temp.incoming")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await db.execute("DROP TABLE IF EXISTS temp.incoming")
            raise
        return added, changed
