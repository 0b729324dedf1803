"""The one store writer: batches every stream's records and checkpoints into one transaction.

Workers hand it attempt starts and ends through a bounded memory stream. It commits whatever
has arrived as soon as it arrives (so a finished request is durable at once), and every
``interval`` seconds it also checkpoints each in-flight attempt whose output grew. When
closed, it writes a last checkpoint of every attempt still in flight, marked interrupted.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from orchestrator.models import AttemptEnded, AttemptStarted, Outcome, Record, State, Usage
from orchestrator.run.attempt import LiveAttempt
from orchestrator.store import Store


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


class Writer:
    def __init__(self, store: Store, interval: float, buffer: int = 4096) -> None:
        self.store = store
        self.interval = interval
        self.live: dict[tuple[int, int], LiveAttempt] = {}
        self.tally = Tally()
        self._committed = anyio.Event()
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
        """Wait until ``predicate(self)`` holds after a commit (for tests and tools, not polling)."""
        while not predicate(self):
            await self._committed.wait()

    def live_output_tokens(self) -> int:
        return sum(live.acc.output_tokens for live in self.live.values())

    async def run(self) -> None:
        """Commit until closed. If the writer dies, its receive side closes with it, so a sender
        fails at once instead of waiting forever on a stream nobody reads."""
        async with self._receive:
            next_checkpoint = anyio.current_time() + self.interval
            closed = False
            while not closed:
                items: list[LiveAttempt | AttemptEnded] = []
                with anyio.move_on_after(max(0.0, next_checkpoint - anyio.current_time())):
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
                records = [self._record(item) for item in items]
                now = time.time()
                checkpoints = []
                if closed or anyio.current_time() >= next_checkpoint:
                    checkpoints = [live.checkpoint(now) for live in self.live.values() if live.dirty]
                    next_checkpoint = anyio.current_time() + self.interval
                if closed:
                    for live in self.live.values():
                        ended = live.ended(now, Outcome.INTERRUPTED, next_state=State.PENDING)
                        self._bill(live, ended.checkpoint.usage)
                        records.append(ended)
                    checkpoints = []
                    self.live.clear()
                if records or checkpoints:
                    with anyio.CancelScope(shield=True):
                        await self.store.write(records, checkpoints)
                    self._count(records, len(checkpoints))

    def _record(self, item: LiveAttempt | AttemptEnded) -> Record:
        if isinstance(item, LiveAttempt):
            self.live[item.key] = item
            return AttemptStarted(item.request_id, item.number, item.started_at, item.kept, item.corrects)
        live = self.live.pop((item.checkpoint.request_id, item.checkpoint.number), None)
        if live is not None:
            self._bill(live, item.checkpoint.usage)
        return item

    def _bill(self, live: LiveAttempt, usage: Usage) -> None:
        self.tally.billed_by_model.setdefault(live.model, Usage()).add(usage)

    def _count(self, records: list[Record], checkpoints: int) -> None:
        tally = self.tally
        tally.checkpoints += checkpoints
        self._committed.set()
        self._committed = anyio.Event()
        for record in records:
            if isinstance(record, AttemptEnded):
                tally.outcomes[record.outcome] += 1
                if record.final is not None:
                    tally.finished[record.final[0]] += 1
                elif record.outcome in (Outcome.BROKEN, Outcome.RETRYABLE):
                    tally.retries += 1
