"""Canceling a job's batches in flight: what they finished is kept, the rest stays pending."""

from __future__ import annotations

from functools import partial

import anthropic

from orchestrator.batch.calls import Caller
from orchestrator.batch.submit import describe, find_created
from orchestrator.models import Outcome
from orchestrator.store import Store
from orchestrator.store.batches import ENDED, SUBMITTING


async def cancel_batches(client: anthropic.AsyncAnthropic, caller: Caller, store: Store) -> list[str]:
    """Ask the server to cancel every batch of the job still in progress; the ids asked.

    An intent whose create may have gone through is reconciled first (the batch found is canceled;
    none found: its requests go back to pending). The results, canceled ones included, are
    collected by the next run of the job."""
    rows = await store.batches(open_only=True)
    known = {row.id for row in await store.batches() if row.id is not None}
    canceled = []
    for row in rows:
        batch_id = row.id
        if row.state == SUBMITTING:
            found = await find_created(client, caller, row.watermark, row.requests, known, row.intended_at)
            if found is None:
                error = {"type": "error", "error": {"type": "canceled", "message": "canceled before it was created"}}
                await store.batch_refused(row.key, Outcome.INTERRUPTED, "canceled", None, error)
                continue
            await store.batch_seen(row.key, describe(found))
            batch_id = found.id
        elif row.state == ENDED:
            continue
        assert batch_id is not None
        batch = await caller(partial(client.messages.batches.cancel, batch_id))
        await store.batch_seen(row.key, describe(batch))
        canceled.append(batch_id)
    return canceled
