"""Submitting a batch so that a crash at any moment never submits the same requests twice.

The API has no idempotency key for batches, so each create is preceded by two durable steps:

1. the *watermark*: the id of the newest batch on the server (``list(limit=1)``), just before;
2. the *intent*: the batch row (state ``submitting``, with the watermark) and an open attempt for
   each of its requests, committed in one transaction.

Then the create is sent, and its answer (the batch id) is committed before anything else
happens. If the process dies between the create and that commit, or the create fails in a way
that leaves open whether the server acted (a dropped connection, a 5xx other than 529), the
intent is *reconciled*: the batches newer than the watermark (``list(before_id=watermark)``)
that this job does not know and that hold exactly the intent's number of requests are its
candidates; the oldest is adopted as the intent's batch. None: the create never reached the
server, and the same requests (the same attempts) are sent again. This is exact unless another
client of the same workspace created a batch of the very same size within those few seconds;
the watermark (rather than a clock) keeps clock skew out of it.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import anthropic
from anthropic.types.messages import MessageBatch

from orchestrator.api.failures import Failure
from orchestrator.api.prefix import CachePlan, place
from orchestrator.batch.calls import Caller, CallFailed, Unsure
from orchestrator.batch.plan import create_body
from orchestrator.crash import crash_point
from orchestrator.store import BatchRow, Store

_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode  # as the store writes params

PAGE = 100  # batches per list page while reconciling
CLOCK_SKEW = 3600.0  # seconds our clock may be off the server's (only when the watermark batch is gone)
BATCHES_PATH = "/v1/messages/batches"
JSON_CONTENT: Any = {"headers": {"content-type": "application/json"}}


class Refused(Exception):
    """The server refused a create (it created nothing)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


def _stamp(moment: datetime | None) -> float | None:
    return None if moment is None else moment.timestamp()


def describe(batch: MessageBatch) -> dict[str, Any]:
    """What the store keeps of a batch the server describes."""
    return {
        "id": batch.id,
        "processing_status": batch.processing_status,
        "created_at": _stamp(batch.created_at),
        "ended_at": _stamp(batch.ended_at),
        "expires_at": _stamp(batch.expires_at),
        "request_counts": batch.request_counts.model_dump(),
    }


def size_of(batch: MessageBatch) -> int:
    return sum(batch.request_counts.model_dump().values())


async def watermark(client: anthropic.AsyncAnthropic, caller: Caller) -> str | None:
    """The id of the newest batch on the server, if any."""
    page = await caller(lambda: client.messages.batches.list(limit=1))
    return page.data[0].id if page.data else None


async def find_created(
    client: anthropic.AsyncAnthropic,
    caller: Caller,
    mark: str | None,
    requests: int,
    known: set[str],
    intended_at: float,
) -> MessageBatch | None:
    """The batch an intent's create made, if the server has it (see the module's notes). If the
    watermark batch is gone (deleted since), the batches created since an hour before the intent
    are searched instead."""
    try:
        return await _search(client, caller, mark, requests, known, None)
    except CallFailed as exc:
        if mark is None or exc.failure.status not in (400, 404):
            raise
    return await _search(client, caller, None, requests, known, intended_at - CLOCK_SKEW)


async def _search(
    client: anthropic.AsyncAnthropic,
    caller: Caller,
    mark: str | None,
    requests: int,
    known: set[str],
    since: float | None,
) -> MessageBatch | None:
    """The oldest batch newer than ``mark`` (and created after ``since``), unknown, of ``requests`` requests."""
    found: MessageBatch | None = None
    if mark is None:
        page = await caller(lambda: client.messages.batches.list(limit=PAGE))
    else:
        page = await caller(lambda: client.messages.batches.list(before_id=mark, limit=PAGE))
    while True:
        for batch in page.data:  # newest first: the last match is the oldest
            if since is not None and batch.created_at.timestamp() < since:
                return found
            if batch.id not in known and size_of(batch) == requests:
                found = batch
        if not page.has_more:
            return found
        page = await caller(page.get_next_page)


async def create(
    client: anthropic.AsyncAnthropic,
    caller: Caller,
    store: Store,
    row: BatchRow,
    *,
    reconcile: bool,
    plan: CachePlan | None = None,
) -> MessageBatch:
    """Create an intent's batch, or first (``reconcile``) adopt the one an earlier create made;
    record it before returning. Raises Refused if the server refused it (nothing was created: the
    caller records that), CallFailed if the server cannot be reached to find out (the intent stays)."""
    key, mark = row.key, row.watermark
    members = await store.batch_members(key)
    known = {row.id for row in await store.batches() if row.id is not None}
    count = len(members)
    batch = await find_created(client, caller, mark, count, known, row.intended_at) if reconcile else None
    if plan is not None:  # the params as stored, with the plan's cache breakpoints
        members = [(cid, _encode(place(json.loads(params), plan)[0])) for cid, params in members]
    body = create_body(members)
    del members
    unsure = 0

    async def send() -> MessageBatch:
        # The body as stored, byte for byte (what the splitter measured): as messages.batches.create
        # would send it, without decoding every request's params to encode them again.
        return await client.post(BATCHES_PATH, cast_to=MessageBatch, content=body, options=JSON_CONTENT)

    while batch is None:
        try:
            batch = await caller(send, repeatable=False)
        except CallFailed as exc:
            raise Refused(exc.failure) from None
        except Unsure as exc:
            batch = await find_created(client, caller, mark, count, known, row.intended_at)
            unsure += 1
            if batch is None:
                if unsure >= caller.settings.max_attempts:
                    raise CallFailed(exc.failure) from None  # the intent stays: the next run reconciles it
                await caller.pause(unsure, exc.failure)
        else:
            crash_point("created")
    await store.batch_seen(key, describe(batch))
    return batch
