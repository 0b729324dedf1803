"""The one store writer: batches every stream's records and checkpoints into one transaction.

Workers hand it attempt starts and ends through a bounded memory stream. It commits whatever
has arrived as soon as it arrives (so a finished request is durable at once), and every
``interval`` seconds it also checkpoints each in-flight attempt whose output grew. When
closed, it writes a last checkpoint of every attempt still in flight, marked interrupted.

What cannot be written yet is held in memory, in order, and written with what comes next:
while another process holds the database (busy), the writer keeps receiving and tries again
every ``BUSY_RETRY`` seconds, and the job launches no new request until it has caught up. If
the database cannot be written at all (a full disk, a read-only file), ``on_failure`` stops the
job; once closed, the writer saves what still fits, one request at a time, finished replies
first, and ``unsaved`` lists the requests whose records could not be saved.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from orchestrator.errors import DatabaseBusy, StorageError
from orchestrator.models import AttemptEnded, AttemptStarted, Checkpoint, Outcome, Record, Released, State, Usage
from orchestrator.run.attempt import LiveAttempt
from orchestrator.store import Store

BUSY_RETRY = 0.5  # seconds between two tries of a busy database (SQLite itself waits 5 s first)


@dataclass
class Tally:
    """What the writer has committed during this run, for progress lines."""

    finished: Counter[State] = field(default_factory=Counter)
    outcomes: Counter[Outcome] = field(default_factory=Counter)
    billed_by_model: dict[str, Usage] = field(default_factory=dict)  # over ended attempts
    checkpoints: int = 0  # checkpoints of attempts in flight
    retries: int = 0  # attempts that failed and were tried again

    @property
    def billed(self) -> Usage:
        total = Usage()
        for usage in self.billed_by_model.values():
            total.add(usage)
        return total


def _request_of(record: Record) -> int:
    return record.checkpoint.request_id if isinstance(record, AttemptEnded) else record.request_id


class Writer:
    def __init__(
        self,
        store: Store,
        interval: float,
        buffer: int = 4096,
        on_failure: Callable[[StorageError], None] | None = None,
        notes: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.store = store
        self.notes = notes  # what the run tells watchers (``store.watch``), written with the batched commits
        self.held_notes: dict[str, Any] | None = None
        self._noted: dict[str, Any] | None = None
        self.interval = interval
        self.live: dict[tuple[int, int], LiveAttempt] = {}
        self.waiting: set[int] = set()  # requests between attempts (waiting to retry)
        self.tally = Tally()
        self.on_failure = on_failure
        self.failure: StorageError | None = None  # the database cannot be written
        self.busy_since: float | None = None  # the database has been busy since (anyio time)
        self.held: list[Record] = []  # received, not yet written (busy, or failed)
        self.held_checkpoints: dict[tuple[int, int], Checkpoint] = {}
        self.unsaved: list[int] = []  # once closed: requests whose received output could not be saved
        self._caught_up = anyio.Event()
        self._caught_up.set()
        self._changed = anyio.Event()  # set at each commit and each change of the database's state
        self._send: MemoryObjectSendStream[LiveAttempt | AttemptEnded]
        self._receive: MemoryObjectReceiveStream[LiveAttempt | AttemptEnded]
        self._send, self._receive = anyio.create_memory_object_stream[LiveAttempt | AttemptEnded](buffer)

    async def started(self, live: LiveAttempt) -> None:
        await self._send.send(live)

    async def ended(self, live: LiveAttempt, record: AttemptEnded) -> None:
        await self._send.send(record)

    def close(self) -> None:
        """No more records: ``run`` writes what is left, checkpoints the rest and returns."""
        self._send.close()

    async def until(self, predicate: Callable[[Writer], bool]) -> None:
        """Wait until ``predicate(self)`` holds after a commit or a change of the database's state
        (busy, failed): for tests and tools, not polling."""
        while not predicate(self):
            await self._changed.wait()

    async def caught_up(self) -> None:
        """Wait until nothing received is held back by a busy database (new requests wait here)."""
        await self._caught_up.wait()

    def note(self) -> str | None:
        """What holds the writer up, for the progress line."""
        if self.failure is not None:
            return f"database cannot be written, {len(self.held):,} records held"
        if self.busy_since is None:
            return None
        waited = anyio.current_time() - self.busy_since
        return f"database busy {waited:.0f} s (locked by another process), {len(self.held):,} records held"

    def live_output_tokens(self) -> int:
        return sum(live.acc.output_tokens for live in self.live.values())

    async def run(self) -> None:
        """Commit until closed. If the writer dies, its receive side closes with it, so a sender
        fails at once instead of waiting forever on a stream nobody reads."""
        try:
            async with self._receive:
                await self._run()
                while self.held and self.failure is None:  # closed while busy: keep trying
                    await anyio.sleep(BUSY_RETRY)
                    await self._flush()
                if self.failure is not None:
                    await self._save_what_fits()
        finally:
            # What was paid for and is lost: attempts' ends (their reply, or its partial output).
            ended = (record for record in self.held if isinstance(record, AttemptEnded))
            self.unsaved = list(dict.fromkeys(record.checkpoint.request_id for record in ended))

    async def _run(self) -> None:
        next_checkpoint = anyio.current_time() + self.interval
        retry_at = 0.0
        closed = False
        while not closed:
            items: list[LiveAttempt | AttemptEnded] = []
            waiting = self.busy_since is not None and self.failure is None  # to try a busy database again
            wake = min(next_checkpoint, retry_at) if waiting else next_checkpoint
            with anyio.move_on_after(max(0.0, wake - anyio.current_time())):
                try:
                    items.append(await self._receive.receive())
                except anyio.EndOfStream:
                    closed = True
            while not closed:
                try:
                    items.append(self._receive.receive_nowait())
                except anyio.WouldBlock:
                    break
                except anyio.EndOfStream:
                    closed = True
            self.held += [self._record(item) for item in items]
            now = time.time()
            if closed or anyio.current_time() >= next_checkpoint:
                for live in self.live.values():
                    if live.dirty:
                        self.held_checkpoints[live.key] = live.checkpoint(now)
                if self.notes is not None:  # written with this commit if they changed
                    self._take_notes(self.notes())
                next_checkpoint = anyio.current_time() + self.interval
            if closed:
                for live in self.live.values():
                    ended = live.ended(now, Outcome.INTERRUPTED, next_state=State.PENDING)
                    self._bill(live, ended.checkpoint.usage)
                    self.held.append(ended)
                self.held += [Released(request_id) for request_id in sorted(self.waiting)]
                self.held_checkpoints.clear()
                self.live.clear()
            due = self.busy_since is None or anyio.current_time() >= retry_at
            if self.failure is None and due and (self.held or self.held_checkpoints or self.held_notes):
                await self._flush()
                retry_at = anyio.current_time() + BUSY_RETRY

    async def _flush(self) -> None:
        """Write everything held, in one transaction; on a busy database hold it for the next try."""
        records, checkpoints, notes = self.held, list(self.held_checkpoints.values()), self.held_notes
        try:
            with anyio.CancelScope(shield=True):
                await self.store.write(records, checkpoints, notes)
        except DatabaseBusy:
            if self.busy_since is None:
                self.busy_since = anyio.current_time()
                self._caught_up = anyio.Event()
                self._signal()
            return
        except StorageError as exc:
            self.failure = exc
            self._caught_up.set()  # nothing will be launched: the job stops
            self._signal()
            if self.on_failure is not None:
                self.on_failure(exc)
            return
        self.held = []
        self.held_checkpoints = {}
        self.held_notes = None
        if self.busy_since is not None:
            self.busy_since = None
            self._caught_up.set()
        self._count(records, len(checkpoints))

    async def _save_what_fits(self) -> None:
        """After a failure: write each request's records in a transaction of its own, the requests
        with a final result first; keep holding what could not be written."""
        by_request: dict[int, list[Record]] = {}
        for record in self.held:
            by_request.setdefault(_request_of(record), []).append(record)
        finals = [rid for rid, records in by_request.items() if any(_is_final(r) for r in records)]
        order = finals + [rid for rid in by_request if rid not in set(finals)]
        kept: list[Record] = []
        for request_id in order:
            records = by_request[request_id]
            try:
                with anyio.CancelScope(shield=True):
                    await self.store.write(records, [])
            except StorageError:
                kept += records
                continue
            self._count(records, 0)
        self.held = kept

    def _take_notes(self, notes: dict[str, Any]) -> None:
        if notes != self._noted:
            self._noted = self.held_notes = notes

    def _record(self, item: LiveAttempt | AttemptEnded) -> Record:
        if isinstance(item, LiveAttempt):
            self.waiting.discard(item.request_id)
            self.live[item.key] = item
            return AttemptStarted(
                item.request_id,
                item.number,
                item.started_at,
                item.kept,
                item.corrects,
                sent_at=item.sent_at,
                waits=item.waits,
            )
        live = self.live.pop((item.checkpoint.request_id, item.checkpoint.number), None)
        if live is not None:
            self._bill(live, item.checkpoint.usage)
        if item.final is None and item.next_state is State.RUNNING:  # it waits to retry
            self.waiting.add(item.checkpoint.request_id)
        else:
            self.waiting.discard(item.checkpoint.request_id)
        return item

    def _signal(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def _bill(self, live: LiveAttempt, usage: Usage) -> None:
        self.tally.billed_by_model.setdefault(live.model, Usage()).add(usage)

    def _count(self, records: list[Record], checkpoints: int) -> None:
        """Tally what was just committed."""
        tally = self.tally
        tally.checkpoints += checkpoints
        self._signal()
        for record in records:
            if isinstance(record, AttemptEnded):
                tally.outcomes[record.outcome] += 1
                if record.final is not None:
                    tally.finished[record.final[0]] += 1
                elif record.outcome in (Outcome.BROKEN, Outcome.RETRYABLE):
                    tally.retries += 1


def _is_final(record: Record) -> bool:
    return isinstance(record, AttemptEnded) and record.final is not None
