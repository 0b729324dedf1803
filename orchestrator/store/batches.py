"""Message batches in the store: each intended before its create is sent, its requests' attempts tied to it.

A batch's life: ``submitting`` (the intent: its requests are ``running`` with an open attempt
naming the batch, written before the create request leaves) -> ``in_progress`` / ``canceling``
(the server's id is known) -> ``ended`` -> ``collected`` (every result line applied), or
``refused`` (the create was refused: its attempts are ended). Results are applied idempotently:
a line whose attempt already has an outcome is skipped, so downloading them again after a crash
changes nothing. SQLite's failures to write come out as ``DatabaseBusy`` / ``StorageError``.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from orchestrator.models import BatchResult, Outcome, State
from orchestrator.store.base import Base, answered
from orchestrator.store.schema import transaction

SUBMITTING, ENDED, COLLECTED, REFUSED = "submitting", "ended", "collected", "refused"
CANCELING = "canceling"
OPEN = frozenset({SUBMITTING, "in_progress", CANCELING, ENDED})  # not yet collected nor refused
DEADLINE = "deadline"  # the notes' key of the job's deadline
FAILED_OUTCOMES = ("retryable", "broken")  # attempts that count against max_attempts


@dataclass(frozen=True)
class BatchRow:
    key: int
    id: str | None
    state: str
    watermark: str | None  # the newest batch on the server just before the create was sent
    requests: int
    intended_at: float
    created_at: float | None
    ended_at: float | None
    expires_at: float | None
    counts: dict[str, int] | None

    @property
    def open(self) -> bool:
        """Not yet collected nor refused: the job still has to do something about it."""
        return self.state in OPEN


def _row(row: Any) -> BatchRow:
    counts = None if row[9] is None else json.loads(row[9])
    return BatchRow(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], counts)


BATCH_COLUMNS = "key, id, state, watermark, requests, intended_at, created_at, ended_at, expires_at, counts"


class Batching(Base):
    @answered
    async def batches(self, *, open_only: bool = False) -> list[BatchRow]:
        """The job's batches, oldest first (only those not yet collected nor refused, if asked)."""
        where = f"WHERE state NOT IN ('{COLLECTED}', '{REFUSED}')" if open_only else ""  # i.e. OPEN
        async with self.db.execute(f"SELECT {BATCH_COLUMNS} FROM batches {where} ORDER BY key") as cursor:
            return [_row(row) async for row in cursor]

    @answered
    async def to_batch(self, after_id: int, limit: int, since: float) -> list[tuple[int, str, str]]:
        """(id, custom_id, params as stored JSON) of pending requests, in input order; not those whose
        batch was canceled since ``since`` (they wait for a later run)."""
        async with self.db.execute(
            """SELECT r.id, r.custom_id, r.params FROM requests r
               WHERE r.state = 'pending' AND r.id > ? AND NOT EXISTS (
                 SELECT 1 FROM attempts a WHERE a.request_id = r.id AND a.reason = 'canceled' AND a.ended_at >= ?)
               ORDER BY r.id LIMIT ?""",
            (after_id, since, limit),
        ) as cursor:
            return [(row[0], row[1], row[2]) async for row in cursor]

    @answered
    async def intend_batch(self, request_ids: list[int], size: int, watermark: str | None) -> BatchRow:
        """Record a batch about to be created: its requests running, each with an open attempt naming it."""
        now = time.time()
        db = self.db
        async with transaction(db):
            cursor = await db.execute(
                "INSERT INTO batches (state, watermark, requests, bytes, intended_at) VALUES (?, ?, ?, ?, ?)",
                (SUBMITTING, watermark, len(request_ids), size, now),
            )
            key = cursor.lastrowid
            assert key is not None
            await db.executemany(
                "UPDATE requests SET state = 'running', attempts = attempts + 1, started_at = COALESCE(started_at, ?) "
                "WHERE id = ?",
                [(now, request_id) for request_id in request_ids],
            )
            await db.executemany(
                "INSERT INTO attempts (request_id, number, started_at, batch_key) "
                "SELECT id, attempts, ?, ? FROM requests WHERE id = ?",
                [(now, key, request_id) for request_id in request_ids],
            )
        return BatchRow(key, None, SUBMITTING, watermark, len(request_ids), now, None, None, None, None)

    @answered
    async def batch_members(self, key: int) -> list[tuple[str, str]]:
        """(custom_id, params as stored JSON) of the requests a batch holds, in input order."""
        async with self.db.execute(
            "SELECT r.custom_id, r.params FROM attempts a JOIN requests r ON r.id = a.request_id "
            "WHERE a.batch_key = ? ORDER BY r.id",
            (key,),
        ) as cursor:
            return [(row[0], row[1]) async for row in cursor]

    @answered
    async def batch_seen(self, key: int, batch: dict[str, Any]) -> None:
        """What the server says of a batch (its create's answer or a poll): id, state, times, counts."""
        async with transaction(self.db):
            await self.db.execute(
                "UPDATE batches SET id = ?, state = CASE WHEN state = ? THEN state ELSE ? END, created_at = ?, "
                "ended_at = ?, expires_at = ?, counts = ? WHERE key = ?",
                (
                    batch["id"],
                    COLLECTED,
                    batch["processing_status"],
                    batch["created_at"],
                    batch["ended_at"],
                    batch["expires_at"],
                    json.dumps(batch["request_counts"]),
                    key,
                ),
            )

    @answered
    async def batch_refused(self, key: int, outcome: Outcome, reason: str, status: int | None, error: Any) -> None:
        """The create was refused: the attempts end; a permanent refusal makes the requests errored
        results, any other leaves them pending."""
        now = time.time()
        body = json.dumps(error)
        db = self.db
        async with transaction(db):
            await db.execute(
                "UPDATE batches SET state = ?, error = ? WHERE key = ?",
                (REFUSED, body, key),
            )
            if outcome is Outcome.PERMANENT:
                await db.execute(
                    "UPDATE requests SET state = 'errored', result = ?, finished_at = ? "
                    "WHERE id IN (SELECT request_id FROM attempts WHERE batch_key = ? AND outcome IS NULL)",
                    (body, now, key),
                )
            else:
                await db.execute(
                    "UPDATE requests SET state = 'pending' "
                    "WHERE id IN (SELECT request_id FROM attempts WHERE batch_key = ? AND outcome IS NULL)",
                    (key,),
                )
            await db.execute(
                "UPDATE attempts SET outcome = ?, reason = ?, status = ?, error = ?, ended_at = ? "
                "WHERE batch_key = ? AND outcome IS NULL",
                (outcome.value, reason, status, body, now, key),
            )

    @answered
    async def apply_results(self, key: int, results: list[BatchResult], max_attempts: int) -> Counter[str]:
        """Apply result lines of batch ``key`` in one transaction; the requests' new states, counted.

        A line whose attempt has already ended (applied before a crash) is skipped. A result worth
        another batch makes its request pending again, or an errored result once it has failed
        ``max_attempts`` times.
        """
        now = time.time()
        db = self.db
        states: Counter[str] = Counter()
        async with transaction(db):
            marks = ",".join("?" * len(results))
            async with db.execute(
                f"""SELECT r.custom_id, r.id, a.number,
                           (SELECT COUNT(*) FROM attempts f WHERE f.request_id = r.id
                            AND f.outcome IN {FAILED_OUTCOMES})
                    FROM attempts a JOIN requests r ON r.id = a.request_id
                    WHERE a.batch_key = ? AND a.outcome IS NULL AND r.custom_id IN ({marks})""",
                (key, *(result.custom_id for result in results)),
            ) as cursor:
                open_attempts = {row[0]: (row[1], row[2], row[3]) async for row in cursor}
            attempt_rows: list[tuple[Any, ...]] = []
            request_rows: list[tuple[Any, ...]] = []
            for result in results:
                found = open_attempts.pop(result.custom_id, None)
                if found is None:
                    continue  # applied already, or not a request of this batch
                request_id, number, failed = found
                usage = result.usage
                attempt_rows.append(
                    (
                        now,
                        result.outcome.value,
                        result.reason,
                        None if result.error is None else json.dumps(result.error),
                        result.message_id,
                        usage.input_tokens,
                        usage.output_tokens,
                        usage.cache_creation_input_tokens,
                        usage.cache_read_input_tokens,
                        usage.cache_creation_1h_input_tokens,
                        request_id,
                        number,
                    )
                )
                final = result.final
                if final is None and result.retry and failed + 1 >= max_attempts:
                    final = (State.ERRORED, result.error or {})
                if final is None:
                    request_rows.append((State.PENDING.value, None, None, request_id))
                else:
                    request_rows.append((final[0].value, json.dumps(final[1]), now, request_id))
                states[request_rows[-1][0]] += 1
            await db.executemany(
                """UPDATE attempts SET ended_at = ?, outcome = ?, reason = ?, error = ?, message_id = ?,
                     input_tokens = ?, output_tokens = ?, cache_creation_input_tokens = ?,
                     cache_read_input_tokens = ?, cache_creation_1h_input_tokens = ?
                   WHERE request_id = ? AND number = ?""",
                attempt_rows,
            )
            await db.executemany(
                "UPDATE requests SET state = ?, result = ?, finished_at = ? WHERE id = ?",
                request_rows,
            )
            await db.execute("UPDATE job SET updated_at = ?", (now,))
        return states

    @answered
    async def pending_retries(self) -> tuple[int, int]:
        """(pending requests, those of them a batch result sent back to be tried again)."""
        async with self.db.execute(
            f"""SELECT COUNT(*), COALESCE(SUM(EXISTS (SELECT 1 FROM attempts a WHERE a.request_id = r.id
                   AND a.batch_key IS NOT NULL AND a.outcome IN {FAILED_OUTCOMES})), 0)
                FROM requests r WHERE r.state = 'pending'"""
        ) as cursor:
            row = await cursor.fetchone()
        return (row[0], row[1]) if row is not None else (0, 0)

    @answered
    async def succeeded_by_way(self) -> dict[str, int]:
        """Succeeded requests by the way their reply came: ``batch`` or ``streamed``."""
        async with self.db.execute(
            "SELECT CASE WHEN batch_key IS NULL THEN 'streamed' ELSE 'batch' END, COUNT(*) FROM attempts "
            "WHERE outcome = 'succeeded' GROUP BY 1"
        ) as cursor:
            found = {row[0]: row[1] async for row in cursor}
        return {way: found.get(way, 0) for way in ("batch", "streamed")}

    @answered
    async def deadline(self) -> tuple[str, float] | None:
        """The job's deadline as given and as the Unix time it stood for when given, if it has one."""
        async with self.db.execute("SELECT value FROM notes WHERE key = ?", (DEADLINE,)) as cursor:
            row = await cursor.fetchone()
        if row is None:
            return None
        value = json.loads(row[0])
        return str(value["text"]), float(value["at"])

    @answered
    async def set_deadline(self, text: str, at: float) -> None:
        """Record the job's deadline (``text`` as given, ``at`` the Unix time it stands for), so that a
        resume keeps it."""
        async with transaction(self.db):
            await self.db.execute(
                "INSERT OR REPLACE INTO notes (key, value, at) VALUES (?, ?, ?)",
                (DEADLINE, json.dumps({"text": text, "at": at}), time.time()),
            )

    @answered
    async def drop_deadline(self) -> None:
        """Forget the job's deadline (a run without one: ``resume --mode stream``)."""
        async with transaction(self.db):
            await self.db.execute("DELETE FROM notes WHERE key = ?", (DEADLINE,))

    @answered
    async def request_sizes(self) -> tuple[float | None, float, float]:
        """For a pace: (mean output tokens of the replies so far, or None before 10; mean max_tokens
        and mean params bytes of the requests still to run)."""
        async with self.db.execute(
            "SELECT COUNT(*), AVG(output_tokens) FROM attempts WHERE outcome = 'succeeded'"
        ) as cursor:
            replies, output = await cursor.fetchone() or (0, None)
        async with self.db.execute(
            "SELECT AVG(json_extract(params, '$.max_tokens')), AVG(LENGTH(params)) FROM requests "
            "WHERE state IN ('pending', 'running')"
        ) as cursor:
            max_tokens, size = await cursor.fetchone() or (None, None)
        return (output if replies >= 10 else None), float(max_tokens or 0), float(size or 0)

    @answered
    async def batch_collected(self, key: int) -> None:
        """Every result line of the batch is applied; a request the results left out goes back to pending."""
        now = time.time()
        async with transaction(self.db):
            await self.db.execute(
                "UPDATE requests SET state = 'pending' "
                "WHERE id IN (SELECT request_id FROM attempts WHERE batch_key = ? AND outcome IS NULL)",
                (key,),
            )
            await self.db.execute(
                "UPDATE attempts SET outcome = ?, reason = 'missing_result', ended_at = ? "
                "WHERE batch_key = ? AND outcome IS NULL",
                (Outcome.INTERRUPTED.value, now, key),
            )
            await self.db.execute("UPDATE batches SET state = ? WHERE key = ?", (COLLECTED, key))
