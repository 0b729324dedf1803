"""Loading a job's requests: validated, de-duplicated and reconciled with what is stored, in one transaction."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import anyio

from orchestrator.errors import MAX_PROBLEMS, JobFileError, Problem
from orchestrator.jobs.read import Loaded
from orchestrator.store.base import Base
from orchestrator.store.schema import transaction

LOAD_BATCH = 2000
INSERT_INCOMING = "INSERT INTO incoming (custom_id, params, path, line, input_row) VALUES (?, ?, ?, ?, ?)"


class Loading(Base):
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
        try:
            async with transaction(db):
                await db.execute(
                    "CREATE TEMP TABLE incoming (ord INTEGER PRIMARY KEY, custom_id TEXT, params TEXT, path TEXT,"
                    " line INTEGER, input_row TEXT,"
                    " source TEXT GENERATED ALWAYS AS (path || COALESCE(':' || line, '')))"
                )
                problems: list[Problem] = []
                more = 0
                batch: list[tuple[str, str, str, int | None, str | None]] = []
                for item in items:
                    if isinstance(item, Problem):
                        if len(problems) < MAX_PROBLEMS:
                            problems.append(item)
                        else:
                            more += 1
                        continue
                    row = None if item.row is None else json.dumps(item.row, separators=(",", ":"), default=str)
                    params = json.dumps(item.params, separators=(",", ":"))
                    batch.append((item.custom_id, params, item.path, item.line, row))
                    if len(batch) >= LOAD_BATCH:
                        await db.executemany(INSERT_INCOMING, batch)
                        batch.clear()
                if batch:
                    await db.executemany(INSERT_INCOMING, batch)
                await db.execute("CREATE INDEX temp.incoming_ids ON incoming (custom_id)")
                async with db.execute(
                    """SELECT i.custom_id, i.path, i.line,
                              (SELECT f.source FROM incoming f WHERE f.custom_id = i.custom_id ORDER BY f.ord LIMIT 1)
                       FROM incoming i
                       WHERE EXISTS (SELECT 1 FROM incoming f WHERE f.custom_id = i.custom_id AND f.ord < i.ord)
                       ORDER BY i.ord"""
                ) as cursor:
                    async for custom_id, path, line, first in cursor:
                        # A prompt file's custom_id is its file stem: two files of the same name collide.
                        hint = "" if line is not None else "; prompt files are named by their file stem: rename one"
                        problem = Problem(path, line, f"duplicate custom_id {custom_id!r} (first at {first}{hint})")
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
                await db.execute(
                    """INSERT INTO job (id, name, spec, fingerprint, created_at, updated_at) VALUES (1, ?, ?, ?, ?, ?)
                       ON CONFLICT (id) DO UPDATE
                       SET name = excluded.name, spec = excluded.spec, fingerprint = excluded.fingerprint,
                           updated_at = excluded.updated_at""",
                    (name, json.dumps(spec), fingerprint, now, now),
                )
                await db.execute("DROP TABLE temp.incoming")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await db.execute("DROP TABLE IF EXISTS temp.incoming")
            raise
        return added, changed
