"""What a watcher reads of a job beside the other queries: the run's notes, retries, failed attempts
by kind with their latest message, the latest replies. Each is one short statement (a reader of a
WAL database never holds up the run's writes)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from orchestrator.models import Usage
from orchestrator.store.base import Base
from orchestrator.store.write import RUN_NOTES


@dataclass(frozen=True)
class FailureKind:
    """The attempts that ended one way (a reason such as ``http_429``, or an outcome), and the latest."""

    kind: str
    count: int
    latest_at: float | None
    latest_type: str | None  # the error type of the latest one (rate_limit_error, ...)
    latest_message: str | None


class Watching(Base):
    async def run_notes(self) -> tuple[dict[str, Any], float] | None:
        """The latest notes of the job's run (its cap, concurrency, last rate-limit headers) and when."""
        async with self.db.execute("SELECT value, at FROM notes WHERE key = ?", (RUN_NOTES,)) as cursor:
            row = await cursor.fetchone()
        return None if row is None else (json.loads(row[0]), row[1])

    async def request_models(self, after_id: int) -> list[tuple[int, str]]:
        """(id, model) of the requests after ``after_id``, in input order."""
        async with self.db.execute(
            "SELECT id, json_extract(params, '$.model') FROM requests WHERE id > ? ORDER BY id", (after_id,)
        ) as cursor:
            return [(row[0], row[1]) async for row in cursor]

    async def billed_by_tier_of(self, model: str) -> dict[tuple[str, str], Usage]:
        """``billed_by_tier`` of a job whose requests all name ``model``, without reading a request
        (whose params, a long prompt, can take most of the time)."""
        async with self.db.execute(
            """SELECT CASE WHEN batch_key IS NULL THEN 'standard' ELSE 'batch' END,
                      SUM(input_tokens), SUM(output_tokens), SUM(cache_creation_input_tokens),
                      SUM(cache_read_input_tokens), SUM(cache_creation_1h_input_tokens)
               FROM attempts GROUP BY 1"""
        ) as cursor:
            return {(model, row[0]): Usage(*row[1:]) async for row in cursor}

    async def retries(self) -> int:
        """Attempts beyond each request's first."""
        async with self.db.execute("SELECT COUNT(*) FROM attempts WHERE number > 1") as cursor:
            row = await cursor.fetchone()
        return 0 if row is None else int(row[0])

    async def failure_kinds(self) -> list[FailureKind]:
        """The attempts that did not succeed, by kind, most frequent first, each with its latest error."""
        # SQLite takes the bare columns of an aggregate query with MAX() from the row of the maximum.
        async with self.db.execute(
            """SELECT COALESCE(reason, outcome), COUNT(*), MAX(ended_at),
                      json_extract(error, '$.error.type'), json_extract(error, '$.error.message')
               FROM attempts WHERE outcome IS NOT NULL AND outcome != 'succeeded'
               GROUP BY 1 ORDER BY 2 DESC, 1"""
        ) as cursor:
            return [FailureKind(row[0], row[1], row[2], row[3], row[4]) async for row in cursor]

    async def latest_replies(self, limit: int) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """(custom_id, params, result) of the last ``limit`` succeeded requests in input order."""
        async with self.db.execute(
            "SELECT custom_id, params, result FROM requests WHERE state = 'succeeded' ORDER BY id DESC LIMIT ?",
            (limit,),
        ) as cursor:
            return [(row[0], json.loads(row[1]), json.loads(row[2])) async for row in cursor]
