"""Exports of the store: ``results.jsonl`` in the Message Batches results shape, plus our fields."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orchestrator.models import State
from orchestrator.store import Store


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC).isoformat(timespec="milliseconds")


def result_line(row: dict[str, Any]) -> dict[str, Any]:
    """One results line: ``custom_id`` and ``result`` as the Batches API writes them, then ours."""
    if row["state"] == State.SUCCEEDED:
        result: dict[str, Any] = {"type": "succeeded", "message": row["result"]}
    else:
        result = {"type": "errored", "error": row["result"]}
    timing = row["timing"]
    line = {
        "custom_id": row["custom_id"],
        "result": result,
        "billed_usage": row["billed"].as_dict(),
        "attempts": row["attempts"],
        "timing": {key: _iso(value) for key, value in timing.items()},
    }
    if row["recovery"] is not None:
        line["recovery"] = row["recovery"]
    return line


async def export_results(store: Store, out: Path) -> tuple[int, int]:
    """Write every finished request, in input order, to ``out`` (atomically); (written, unfinished)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".tmp")
    written = unfinished = 0
    with partial.open("w") as handle:
        async for row in store.results():
            if row["state"] not in (State.SUCCEEDED, State.ERRORED):
                unfinished += 1
                continue
            handle.write(json.dumps(result_line(row), ensure_ascii=False) + "\n")
            written += 1
    os.replace(partial, out)
    return written, unfinished
