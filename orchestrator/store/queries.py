"""What the store answers: the job, counts, usage, results in input order, and the report's figures."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.models import State, Usage
from orchestrator.store.base import Base


@dataclass(frozen=True)
class JobRow:
    name: str
    spec: dict[str, Any]
    fingerprint: str
    created_at: float
    updated_at: float
    endpoint: str | None = None  # where its last run ran: SIMULATOR or a base URL (None: not recorded yet)
    simulated: bool = False  # it holds results of the built-in simulator


class Queries(Base):
    async def job(self) -> JobRow | None:
        async with self.db.execute(
            "SELECT name, spec, fingerprint, created_at, updated_at, endpoint, simulated FROM job"
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        return JobRow(row[0], json.loads(row[1]), row[2], row[3], row[4], row[5], bool(row[6]))

    async def has_answers(self) -> bool:
        """Whether the job holds anything of an endpoint's: a result, or the output of an attempt."""
        async with self.db.execute(
            """SELECT EXISTS (SELECT 1 FROM requests WHERE state IN ('succeeded', 'errored'))
                   OR EXISTS (SELECT 1 FROM attempts WHERE message_id IS NOT NULL)"""
        ) as cursor:
            row = await cursor.fetchone()
        return bool(row and row[0])

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

    async def models(self) -> list[str]:
        """Every model the job's requests name."""
        async with self.db.execute("SELECT DISTINCT json_extract(params, '$.model') FROM requests") as cursor:
            return sorted([row[0] async for row in cursor])

    async def custom_ids(self, ids: list[int]) -> list[str]:
        """The custom_ids of these requests, in input order."""
        sql = "SELECT custom_id FROM requests WHERE id IN ({marks}) ORDER BY id"
        return [row[0] async for row in self.rows_in(sql, sorted(ids))]

    async def first_start(self) -> float | None:
        async with self.db.execute("SELECT MIN(started_at) FROM attempts") as cursor:
            row = await cursor.fetchone()
        return None if row is None else row[0]

    async def done_at(self) -> float | None:
        """When the job's last request finished, once every one has (None while any is pending or running)."""
        async with self.db.execute(
            "SELECT MAX(finished_at), COALESCE(SUM(state IN ('pending', 'running')), 0) FROM requests"
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None or row[1] else row[0]

    async def results(self) -> AsyncGenerator[dict[str, Any], None]:
        """Every request in input order, with its result, usage summed over attempts and timings."""
        async with self.db.execute(RESULTS_SQL) as cursor:
            async for row in cursor:
                yield _result_row(row)

    async def input_columns(self) -> list[str]:
        """The columns of the job's table rows, in order of first appearance (none for other inputs)."""
        columns: dict[str, None] = {}
        async with self.db.execute("SELECT input_row FROM requests WHERE input_row IS NOT NULL ORDER BY id") as cursor:
            async for (row,) in cursor:
                columns.update(dict.fromkeys(json.loads(row)))
        return list(columns)

    async def output_properties(self) -> list[str]:
        """The top-level properties of the requests' output schemas, in order of first appearance."""
        names: dict[str, None] = {}
        sql = f"SELECT DISTINCT {OUTPUT_SCHEMA} FROM requests r WHERE {OUTPUT_SCHEMA} IS NOT NULL ORDER BY r.id"
        async with self.db.execute(sql) as cursor:
            async for (schema,) in cursor:
                properties = json.loads(schema).get("properties")
                names.update(dict.fromkeys(properties if isinstance(properties, dict) else []))
        return list(names)

    async def billed_by_model(self, since: float | None, until: float | None) -> dict[str, Usage]:
        """Tokens billed over the attempts started in [since, until), by requested model."""
        billed: dict[str, Usage] = {}
        for (model, _), usage in (await self.billed_by_tier(since, until)).items():
            billed.setdefault(model, Usage()).add(usage)
        return billed

    async def billed_by_tier(self, since: float | None, until: float | None) -> dict[tuple[str, str], Usage]:
        """Tokens billed over the attempts started in [since, until), by (requested model, service tier):
        ``batch`` for the attempts of message batches, ``standard`` for streamed ones."""
        async with self.db.execute(
            """SELECT json_extract(r.params, '$.model'),
                      CASE WHEN a.batch_key IS NULL THEN 'standard' ELSE 'batch' END,
                      SUM(a.input_tokens), SUM(a.output_tokens),
                      SUM(a.cache_creation_input_tokens), SUM(a.cache_read_input_tokens),
                      SUM(a.cache_creation_1h_input_tokens)
               FROM attempts a JOIN requests r ON r.id = a.request_id
               WHERE a.started_at >= COALESCE(?, a.started_at) AND a.started_at < COALESCE(?, a.started_at + 1)
               GROUP BY 1, 2""",
            (since, until),
        ) as cursor:
            return {(row[0], row[1]): Usage(*row[2:]) async for row in cursor}

    async def cache_by_request(self) -> AsyncIterator[tuple[dict[str, Any], int, int, int]]:
        """(params, cache writes, of which 1-hour, cache reads) of each request that has attempts,
        summed over its attempts, in input order."""
        async with self.db.execute(
            """SELECT r.params, SUM(a.cache_creation_input_tokens), SUM(a.cache_creation_1h_input_tokens),
                      SUM(a.cache_read_input_tokens)
               FROM requests r JOIN attempts a ON a.request_id = r.id
               GROUP BY r.id ORDER BY r.id"""
        ) as cursor:
            async for row in cursor:
                yield json.loads(row[0]), row[1], row[2], row[3]

    async def estimated_output_by_model(self, since: float | None, until: float | None) -> dict[str, int]:
        """Output tokens of the attempts started in [since, until) that are our estimate (streams that
        broke before the server counted them), by requested model."""
        async with self.db.execute(
            """SELECT json_extract(r.params, '$.model'), SUM(a.output_tokens)
               FROM attempts a JOIN requests r ON r.id = a.request_id
               WHERE a.output_estimated
                 AND a.started_at >= COALESCE(?, a.started_at) AND a.started_at < COALESCE(?, a.started_at + 1)
               GROUP BY 1""",
            (since, until),
        ) as cursor:
            return {row[0]: row[1] async for row in cursor}

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
        its final message holds, its error; the time to first token and the latency of its
        successful attempt, counted from when it was sent; and how long its attempts waited before
        they were sent, by what for (a free concurrency slot, the rate limiter, a warm cached prefix:
        None for jobs from before they were recorded), and between them (the backoff after a failed
        attempt: from its end to the next one's start)."""
        async with self.db.execute(
            """SELECT json_extract(r.params, '$.model'), r.state, r.started_at, r.finished_at,
                      json_extract(r.result, '$.usage'), json_extract(r.result, '$.error.type'),
                      json_extract(r.result, '$.error.message'),
                      (SELECT a.first_token_at - COALESCE(a.sent_at, a.started_at) FROM attempts a
                       WHERE a.request_id = r.id AND a.outcome = 'succeeded'),
                      COALESCE(json_extract(r.result, '$.usage.service_tier'), 'standard'),
                      (SELECT a.ended_at - COALESCE(a.sent_at, a.started_at) FROM attempts a
                       WHERE a.request_id = r.id AND a.outcome = 'succeeded'),
                      (SELECT SUM(a.sent_at - a.started_at) FROM attempts a WHERE a.request_id = r.id),
                      (SELECT SUM(a.slot_wait) FROM attempts a WHERE a.request_id = r.id),
                      (SELECT SUM(a.rate_wait) FROM attempts a WHERE a.request_id = r.id),
                      (SELECT SUM(a.prefix_wait) FROM attempts a WHERE a.request_id = r.id),
                      (SELECT COALESCE(SUM(a.started_at - p.ended_at), 0) FROM attempts a
                       JOIN attempts p ON p.request_id = a.request_id AND p.number = a.number - 1
                       WHERE a.request_id = r.id AND p.outcome IN ('broken', 'retryable'))
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
                    "tier": row[8],  # how the final message was billed: standard, or batch
                    "latency": row[9],
                    "before_send": row[10],  # every wait before its attempts were sent, together
                    "slot_wait": row[11],
                    "rate_limit_wait": row[12],
                    "prefix_wait": row[13],
                    "backoff": row[14] if row[10] is not None else None,
                }


# The JSON schema of a request's output format (structured outputs), as JSON text; NULL without one.
OUTPUT_SCHEMA = (
    "COALESCE(json_extract(r.params, '$.output_config.format.schema'), "
    "json_extract(r.params, '$.output_format.schema'))"
)
# Every request in input order, with its usage summed over its attempts (and that of message batches apart).
RESULTS_SQL = f"""SELECT r.custom_id, r.state, r.result, r.attempts, r.queued_at, r.started_at, r.first_token_at,
      r.finished_at, COALESCE(SUM(a.input_tokens), 0), COALESCE(SUM(a.output_tokens), 0),
      COALESCE(SUM(a.cache_creation_input_tokens), 0), COALESCE(SUM(a.cache_read_input_tokens), 0),
      COALESCE(SUM(a.cache_creation_1h_input_tokens), 0), r.recovery,
      json_extract(r.params, '$.model'), r.input_row, COALESCE(MAX(a.output_estimated), 0),
      COALESCE(SUM(a.input_tokens * (a.batch_key IS NOT NULL)), 0),
      COALESCE(SUM(a.output_tokens * (a.batch_key IS NOT NULL)), 0),
      COALESCE(SUM(a.cache_creation_input_tokens * (a.batch_key IS NOT NULL)), 0),
      COALESCE(SUM(a.cache_read_input_tokens * (a.batch_key IS NOT NULL)), 0),
      COALESCE(SUM(a.cache_creation_1h_input_tokens * (a.batch_key IS NOT NULL)), 0),
      {OUTPUT_SCHEMA}
      FROM requests r LEFT JOIN attempts a ON a.request_id = r.id GROUP BY r.id ORDER BY r.id"""


def _result_row(row: Sequence[Any]) -> dict[str, Any]:
    return {
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
        "model": row[14],
        "input_row": None if row[15] is None else json.loads(row[15]),
        "billed_estimated": bool(row[16]),
        "billed_batch": Usage(*row[17:22]),  # of "billed": the tokens of message batch attempts
        "output_schema": row[22],  # the JSON schema the reply must fit, as JSON text (structured outputs)
    }


def read_results(path: Path) -> Iterator[dict[str, Any]]:
    """``Queries.results`` without an event loop (for the Python API's ``results()``): read-only, streamed."""
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        yield from (_result_row(row) for row in connection.execute(RESULTS_SQL))
    finally:
        connection.close()
