"""A batch's results: each line's meaning for its request (pure), and the download into the store.

The results file is streamed line by line (``with_streaming_response``: raw lines, decoded here,
never the whole file in memory; the SDK's own ``results()`` also streams, in 64-byte reads, but
builds a typed object per line) and applied in chunks, each in one transaction. A download cut
short is started again: lines already applied are skipped by the store.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import anthropic

from orchestrator.batch.calls import Caller
from orchestrator.models import BatchResult, Outcome, State, Usage
from orchestrator.store import Store

CHUNK = 500  # result lines per transaction
RETRIED_ERRORS = frozenset({"api_error", "overloaded_error"})  # an errored result worth another batch


def _error(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}


def interpret(line: dict[str, Any]) -> BatchResult:
    """What one results line means: a success, an error (worth another batch or not), or a cancel."""
    custom_id = line["custom_id"]
    result = line["result"]
    kind = result.get("type")
    if kind == "succeeded":
        message = result["message"]
        usage = Usage.from_dict(message["usage"])
        return BatchResult(custom_id, Outcome.SUCCEEDED, None, usage, message["id"], None, (State.SUCCEEDED, message))
    if kind == "errored":
        error = result.get("error") or _error("api_error", "errored without an error")
        error_type = str((error.get("error") or {}).get("type", "api_error"))
        if error_type in RETRIED_ERRORS:
            return BatchResult(custom_id, Outcome.RETRYABLE, error_type, Usage(), None, error, None, retry=True)
        return BatchResult(custom_id, Outcome.PERMANENT, error_type, Usage(), None, error, (State.ERRORED, error))
    if kind == "canceled":
        return BatchResult(custom_id, Outcome.INTERRUPTED, "canceled", Usage(), None, None, None)
    # expired (or a result type this client does not know): not processed, worth another batch
    reason = str(kind)
    error = _error(reason, f"the request's batch ended without processing it ({reason})")
    return BatchResult(custom_id, Outcome.RETRYABLE, reason, Usage(), None, error, None, retry=True)


async def collect(
    client: anthropic.AsyncAnthropic,
    caller: Caller,
    store: Store,
    key: int,
    batch_id: str,
    max_attempts: int,
    applied: Callable[[list[BatchResult], Counter[str]], None],
) -> None:
    """Stream the results of an ended batch into the store; ``applied`` hears of each chunk committed."""

    async def apply(chunk: list[BatchResult]) -> None:
        states = await store.apply_results(key, chunk, max_attempts)
        applied(chunk, states)

    async def download() -> None:
        async with client.messages.batches.with_streaming_response.results(batch_id) as response:
            chunk: list[BatchResult] = []
            async for line in response.iter_lines():
                if line.strip():
                    chunk.append(interpret(json.loads(line)))
                if len(chunk) >= CHUNK:
                    await apply(chunk)
                    chunk = []
            if chunk:
                await apply(chunk)

    await caller(download)
    await store.batch_collected(key)
