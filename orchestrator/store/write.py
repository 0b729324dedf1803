"""The write path of a run: attempt starts, checkpoints and ends, request states and results."""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from orchestrator.models import (
    INTERRUPTED_REASON,
    AttemptEnded,
    AttemptStarted,
    Checkpoint,
    Outcome,
    Record,
    Released,
    Request,
)
from orchestrator.store.base import Base, storage_error
from orchestrator.store.schema import transaction

RUN_NOTES = "run"  # the key of the running job's notes
_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


class Writing(Base):
    async def reset_interrupted(self) -> int:
        """After a crash or a stop: running requests become pending, open attempts interrupted.

        Not a request in a message batch: its attempt stays open while the batch runs on the server.
        """
        async with transaction(self.db):
            await self.db.execute(
                "UPDATE attempts SET outcome = ?, reason = ?, ended_at = COALESCE(checkpoint_at, started_at) "
                "WHERE outcome IS NULL AND batch_key IS NULL",
                (Outcome.INTERRUPTED.value, INTERRUPTED_REASON),
            )
            cursor = await self.db.execute(
                "UPDATE requests SET state = 'pending' WHERE state = 'running' AND NOT EXISTS ("
                "SELECT 1 FROM attempts a WHERE a.request_id = requests.id AND a.outcome IS NULL)"
            )
        return cursor.rowcount

    async def retry_errored(self) -> int:
        """Errored requests become pending again, to start over (their attempts are kept); how many."""
        async with transaction(self.db):
            cursor = await self.db.execute(
                """UPDATE requests SET state = 'pending', result = NULL, recovery = NULL, kept = NULL,
                     first_token_at = NULL, finished_at = NULL
                   WHERE state = 'errored'"""
            )
        return cursor.rowcount

    async def set_endpoint(self, endpoint: str, simulated: bool) -> None:
        """Record where the job runs now, and whether it holds simulated results."""
        async with transaction(self.db):
            await self.db.execute("UPDATE job SET endpoint = ?, simulated = ?", (endpoint, int(simulated)))

    async def pending(self, after_id: int, limit: int) -> list[Request]:
        """Requests still to run, with what their reply kept and the checkpoint of an attempt cut short;
        not one a message batch may still end (its batch attempt open)."""
        async with self.db.execute(
            """SELECT r.id, r.custom_id, r.params, r.attempts, r.kept, a.partial, a.output_estimated
               FROM requests r
               LEFT JOIN attempts a ON a.request_id = r.id AND a.number = r.attempts AND a.outcome = 'interrupted'
               WHERE (r.state = 'pending' OR (r.state = 'running' AND NOT EXISTS (
                   SELECT 1 FROM attempts b
                   WHERE b.request_id = r.id AND b.outcome IS NULL AND b.batch_key IS NOT NULL)))
                 AND r.id > ? ORDER BY r.id LIMIT ?""",
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
                    interrupted_estimated=bool(row[6]),
                )
                async for row in cursor
            ]

    async def write(
        self, records: list[Record], checkpoints: list[Checkpoint], notes: dict[str, Any] | None = None
    ) -> None:
        """Apply attempt starts, checkpoints and ends in one transaction, with the run's latest
        ``notes`` (what watchers read: ``store.watch``) if given; raises ``DatabaseBusy`` when
        another process holds the database, ``StorageError`` when it cannot be written."""
        try:
            await self._write(records, checkpoints, notes)
        except sqlite3.OperationalError as exc:
            error = storage_error(exc, self.path)
            if error is None:
                raise
            raise error from exc

    async def _write(self, records: list[Record], checkpoints: list[Checkpoint], notes: dict[str, Any] | None) -> None:
        started = [r for r in records if isinstance(r, AttemptStarted)]
        ended = [r for r in records if isinstance(r, AttemptEnded)]
        db = self.db
        async with transaction(db):
            if started:
                await db.executemany(
                    "INSERT INTO attempts (request_id, number, started_at, sent_at, slot_wait, rate_wait, prefix_wait) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            r.request_id,
                            r.number,
                            r.at,
                            r.sent_at,
                            *((w.slot, w.rate_limit, w.prefix) if w else (None,) * 3),
                        )
                        for r in started
                        for w in (r.waits,)
                    ],
                )
                # The reply kept so far is durable before the attempt that continues it is sent.
                await db.executemany(
                    "UPDATE requests SET state = 'running', attempts = ?, started_at = COALESCE(started_at, ?), "
                    "kept = ? WHERE id = ?",
                    [(r.number, r.at, None if r.kept is None else json.dumps(r.kept), r.request_id) for r in started],
                )
                await db.executemany(
                    "UPDATE attempts SET output_tokens = ? WHERE request_id = ? AND number = ? AND output_estimated",
                    [(r.corrects[1], r.request_id, r.corrects[0]) for r in started if r.corrects is not None],
                )
            all_checkpoints = [*checkpoints, *(r.checkpoint for r in ended)]
            if all_checkpoints:
                await db.executemany(
                    """UPDATE attempts SET partial = ?, message_id = ?, input_tokens = ?, output_tokens = ?,
                         cache_creation_input_tokens = ?, cache_read_input_tokens = ?,
                         cache_creation_1h_input_tokens = ?, first_token_at = ?, checkpoint_at = ?,
                         output_estimated = ?
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
                    "UPDATE requests SET state = ?, kept = ? WHERE id = ?",
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
            now = time.time()
            released = [r for r in records if isinstance(r, Released)]
            if released:  # waiting to retry when the run stopped: no attempt of theirs is running
                await db.executemany(
                    "UPDATE requests SET state = 'pending' WHERE id = ? AND state = 'running'",
                    [(r.request_id,) for r in released],
                )
            if notes is not None:
                await db.execute("INSERT OR REPLACE INTO notes VALUES (?, ?, ?)", (RUN_NOTES, _encode(notes), now))
            await db.execute("UPDATE job SET updated_at = ?", (now,))


def _checkpoint_row(c: Checkpoint) -> tuple[Any, ...]:
    return (
        None if c.partial is None else _encode(c.partial),
        c.message_id,
        c.usage.input_tokens,
        c.usage.output_tokens,
        c.usage.cache_creation_input_tokens,
        c.usage.cache_read_input_tokens,
        c.usage.cache_creation_1h_input_tokens,
        c.first_token_at,
        c.at,
        c.output_estimated,
        c.request_id,
        c.number,
    )
