"""Message Batches: every batch's state on the simulator's clock (pure: no I/O, no clock of its own).

A batch's requests finish one after another over its processing time (``BatchSettings.seconds``,
or a seeded draw of its own up to ``seconds_max``, its requests then in a seeded order at seeded
times), each by a callback that returns its ``result`` object; ``request_counts`` stay all in ``processing`` until the
whole batch ends, as the API reports them. Time only moves when a caller says so: every batch
endpoint calls ``settle(now, process)`` first, so no client can tell this from a batch that is
processed in the background. An ended batch keeps only its results file (shuffled, seeded).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from orchestrator.simulator.config import BatchSettings
from orchestrator.simulator.faults import FaultKind, ForcedFault
from orchestrator.simulator.validation import RequestInvalid

CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")
EXPIRY_SECONDS = 24 * 3600.0  # a batch expires 24 h after its creation
REQUEST_FIELDS = frozenset({"custom_id", "params"})

Process = Callable[[str, dict[str, Any]], dict[str, Any]]  # (custom_id, params) -> that request's ``result``


class Status(StrEnum):
    IN_PROGRESS = "in_progress"
    CANCELING = "canceling"
    ENDED = "ended"


@dataclass
class BatchStats:
    """What the batch endpoints did, for ``/_simulator/stats``."""

    created: int = 0
    ended: int = 0
    canceled: int = 0  # batches whose cancellation was initiated
    deleted: int = 0
    results: Counter[str] = field(default_factory=Counter)  # requests by result type, counted as batches end
    endpoint_faults: Counter[str] = field(default_factory=Counter)  # rate_limited (429), overloaded (529)
    tokens_billed: Counter[str] = field(default_factory=Counter)  # the usage of succeeded results, summed

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "ended": self.ended,
            "canceled": self.canceled,
            "deleted": self.deleted,
            "results": dict(self.results),
            "endpoint_faults": dict(self.endpoint_faults),
            "tokens_billed": dict(self.tokens_billed),
        }


@dataclass
class Batch:
    id: str
    created: float  # simulator clock
    custom_ids: list[str]  # in processing order; cleared once the batch has ended
    params: list[dict[str, Any] | None]  # each dropped once processed
    seconds: float  # processing time
    offsets: list[float] | None = None  # when each request finishes, from creation (sorted); None: evenly
    lines: list[bytes] = field(
        default_factory=list
    )  # results lines of the first len(lines) requests; shuffled at the end
    counts: Counter[str] = field(default_factory=Counter)  # results by type so far (reported once ended)
    cancel_initiated: float | None = None
    ended: float | None = None

    @property
    def expires(self) -> float:
        return self.created + EXPIRY_SECONDS

    @property
    def status(self) -> Status:
        if self.ended is not None:
            return Status.ENDED
        return Status.IN_PROGRESS if self.cancel_initiated is None else Status.CANCELING

    def due(self, index: int) -> float:
        """When request ``index`` finishes processing."""
        if self.offsets is not None:
            return self.created + self.offsets[index]
        return self.created + self.seconds * (index + 1) / len(self.custom_ids)

    def add_result(self, result: dict[str, Any]) -> None:
        custom_id = self.custom_ids[len(self.lines)]
        line = json.dumps({"custom_id": custom_id, "result": result}, separators=(",", ":")).encode() + b"\n"
        self.params[len(self.lines)] = None
        self.lines.append(line)
        self.counts[result["type"]] += 1


def _bad(message: str) -> RequestInvalid:
    return RequestInvalid(400, "invalid_request_error", message)


def parse_requests(body: Any, max_requests: int) -> tuple[list[str], list[dict[str, Any] | None]]:
    """The custom_ids and params of a create request, or the API's 400 for the whole batch.

    Each ``params`` object is only checked to be an object here: like the API, its contents are
    validated when the request is processed, and an invalid one becomes an ``errored`` result.
    """
    if not isinstance(body, dict):
        raise _bad("Request body must be a JSON object")
    for name in body:
        if name != "requests":
            raise _bad(f"{name}: Extra inputs are not permitted")
    requests = body.get("requests")
    if requests is None:
        raise _bad("requests: Field required")
    if not isinstance(requests, list):
        raise _bad("requests: Input should be a valid list")
    if not requests:
        raise _bad("requests: List should have at least 1 item after validation, not 0")
    if len(requests) > max_requests:
        raise _bad(f"requests: List should have at most {max_requests} items after validation, not {len(requests)}")
    custom_ids: list[str] = []
    params: list[dict[str, Any] | None] = []
    first_seen: dict[str, int] = {}
    for index, item in enumerate(requests):
        where = f"requests.{index}"
        if not isinstance(item, dict):
            raise _bad(f"{where}: Input should be a valid dictionary")
        for name in ("custom_id", "params"):
            if name not in item:
                raise _bad(f"{where}.{name}: Field required")
        for name in item:
            if name not in REQUEST_FIELDS:
                raise _bad(f"{where}.{name}: Extra inputs are not permitted")
        custom_id = item["custom_id"]
        if not isinstance(custom_id, str):
            raise _bad(f"{where}.custom_id: Input should be a valid string")
        if not CUSTOM_ID.fullmatch(custom_id):
            raise _bad(f"{where}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
        if custom_id in first_seen:
            raise _bad(
                f"{where}.custom_id: duplicate custom_id {custom_id!r} (also in requests.{first_seen[custom_id]}); "
                "each request in a batch needs a unique custom_id"
            )
        first_seen[custom_id] = index
        if not isinstance(item["params"], dict):
            raise _bad(f"{where}.params: Input should be a valid dictionary")
        custom_ids.append(custom_id)
        params.append(item["params"])
    return custom_ids, params


def draw_failure(
    settings: BatchSettings, seed: int, fingerprint: bytes, attempt: int, forced: ForcedFault | None
) -> str | None:
    """What befalls attempt ``attempt`` (1-based) of a conversation in a batch, if anything.

    ``"expired"``, or the error type of an ``errored`` result (``api_error``, ``overloaded_error``);
    drawn from the seeded rates, or forced by a prompt's ``<<sim-fault: overloaded|server_error>>``.
    """
    if forced is not None and (forced.times is None or attempt <= forced.times):
        if forced.kind is FaultKind.OVERLOADED:
            return "overloaded_error"
        if forced.kind is FaultKind.SERVER_ERROR:
            return "api_error"
    rng = random.Random(hashlib.sha256(b"batch:%d:%d:" % (seed, attempt) + fingerprint).digest())
    roll = rng.random()
    if roll < settings.expired:
        return "expired"
    if roll < settings.expired + settings.errored:
        return rng.choice(("api_error", "overloaded_error"))
    return None


class Batches:
    """Every batch the simulator holds, newest last, and the rules of their life."""

    def __init__(self, settings: BatchSettings, seed: int, wall_offset: float, stats: BatchStats) -> None:
        self.settings = settings
        self.stats = stats
        self._seed = seed
        self._wall_offset = wall_offset  # add to a clock time to get a Unix time
        self._batches: dict[str, Batch] = {}

    def create(self, batch_id: str, now: float, custom_ids: list[str], params: list[dict[str, Any] | None]) -> Batch:
        settings = self.settings
        if settings.seconds_max is None:
            batch = Batch(id=batch_id, created=now, custom_ids=custom_ids, params=params, seconds=settings.seconds)
        else:
            rng = random.Random(f"{self._seed}:{batch_id}:time")
            seconds = rng.uniform(settings.seconds, settings.seconds_max)
            order = list(range(len(custom_ids)))
            rng.shuffle(order)
            offsets = sorted(rng.uniform(0.0, seconds) for _ in order)
            batch = Batch(
                id=batch_id,
                created=now,
                custom_ids=[custom_ids[i] for i in order],
                params=[params[i] for i in order],
                seconds=seconds,
                offsets=offsets,
            )
        self._batches[batch_id] = batch
        self.stats.created += 1
        return batch

    def get(self, batch_id: str) -> Batch:
        batch = self._batches.get(batch_id)
        if batch is None:
            raise RequestInvalid(404, "not_found_error", f"message_batch_id: no Message Batch {batch_id!r}")
        return batch

    def cancel(self, batch_id: str, now: float) -> Batch:
        batch = self.get(batch_id)
        if batch.status is Status.ENDED:
            raise _bad(f"Message Batch {batch_id} has already ended and cannot be canceled")
        if batch.cancel_initiated is None:
            batch.cancel_initiated = now
            self.stats.canceled += 1
        return batch

    def delete(self, batch_id: str) -> None:
        batch = self.get(batch_id)
        if batch.status is not Status.ENDED:
            raise _bad(
                f"Message Batch {batch_id} is {batch.status.value} and cannot be deleted until it has ended: "
                "cancel it first"
            )
        del self._batches[batch_id]
        self.stats.deleted += 1

    def page(self, limit: int, after_id: str | None, before_id: str | None) -> tuple[list[Batch], bool]:
        """Up to ``limit`` batches, newest first, after (older than) or before (newer than) a batch; and has_more."""
        newest = list(reversed(self._batches.values()))
        ids = [batch.id for batch in newest]
        cursor = after_id if after_id is not None else before_id
        if cursor is not None and cursor not in ids:
            raise _bad(f"{'after_id' if after_id is not None else 'before_id'}: no Message Batch {cursor!r}")
        if after_id is not None:
            start = ids.index(after_id) + 1
            return newest[start : start + limit], start + limit < len(newest)
        if before_id is not None:
            end = ids.index(before_id)
            start = max(0, end - limit)
            return newest[start:end], start > 0
        return newest[:limit], limit < len(newest)

    def settle(self, now: float, process: Process, budget: int) -> bool:
        """Process requests due by ``now`` (at most ``budget`` of them) and end the batches whose time has come.

        Returns whether requests due by ``now`` remain: the caller settles again (after letting
        other work run), so a large batch does not hold the server for long.
        """
        for batch in self._batches.values():
            if batch.ended is not None:
                continue
            horizon = min(now, batch.expires) if batch.cancel_initiated is None else batch.cancel_initiated
            while len(batch.lines) < len(batch.custom_ids) and batch.due(len(batch.lines)) <= horizon:
                if budget == 0:
                    return True
                budget -= 1
                index = len(batch.lines)
                params = batch.params[index]
                assert params is not None
                result = process(batch.custom_ids[index], params)
                if result["type"] == "succeeded":
                    usage = result["message"]["usage"]
                    self.stats.tokens_billed.update({k: v for k, v in usage.items() if isinstance(v, int)})
                batch.add_result(result)
            if batch.cancel_initiated is not None:
                end = batch.cancel_initiated + self.settings.cancel_seconds
            else:
                end = min(batch.created + batch.seconds, batch.expires)
            if now >= end:
                self._end(batch, end)
        return False

    def _end(self, batch: Batch, at: float) -> None:
        rest = "canceled" if batch.cancel_initiated is not None else "expired"
        while len(batch.lines) < len(batch.custom_ids):
            batch.add_result({"type": rest})
        random.Random(f"{self._seed}:{batch.id}").shuffle(batch.lines)
        batch.custom_ids, batch.params, batch.offsets = [], [], None
        batch.ended = at
        self.stats.ended += 1
        self.stats.results.update(batch.counts)

    def _time(self, clock_time: float | None) -> str | None:
        """An RFC 3339 timestamp, as the API writes them (microseconds, Z)."""
        if clock_time is None:
            return None
        wall = datetime.fromtimestamp(clock_time + self._wall_offset, UTC)
        return wall.isoformat(timespec="microseconds").replace("+00:00", "Z")

    def describe(self, batch: Batch, base_url: str) -> dict[str, Any]:
        """The API's ``message_batch`` object."""
        ended = batch.ended is not None
        counts = {name: batch.counts[name] if ended else 0 for name in ("succeeded", "errored", "canceled", "expired")}
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": batch.status.value,
            "request_counts": {"processing": 0 if ended else len(batch.custom_ids), **counts},
            "ended_at": self._time(batch.ended),
            "created_at": self._time(batch.created),
            "expires_at": self._time(batch.expires),
            "cancel_initiated_at": self._time(batch.cancel_initiated),
            "archived_at": None,
            "results_url": f"{base_url}/v1/messages/batches/{batch.id}/results" if ended else None,
        }
