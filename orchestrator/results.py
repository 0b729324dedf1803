"""``results.jsonl``: every finished request in input order, in the Message Batches results shape
plus our fields (billed usage, attempts, timing, a structured output), written atomically from the
store (or to an open text stream, such as standard output for ``--out -``)."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import aclosing, contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from orchestrator.errors import StorageError
from orchestrator.models import State
from orchestrator.outputs import Output, message_output, schema_check
from orchestrator.store import Store

# What a file system answers when a file cannot grow: full, over quota, past the file size limit,
# read-only, failing.
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})

Destination = Path | IO[str]  # a file, or an open text stream such as standard output


@contextmanager
def replacing(out: Destination, store: Store, newline: str | None = None) -> Iterator[IO[str]]:
    """A file written beside ``out`` and moved over it once complete (or ``out`` itself, an open
    stream). On any failure the partial file is removed, and a disk that is full (or read-only, or
    failing) is a ``StorageError`` saying so."""
    if not isinstance(out, Path):
        yield out
        out.flush()
        return
    partial = out.with_name(out.name + ".tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with partial.open("w", encoding="utf-8", newline=newline) as handle:
            yield handle
        os.replace(partial, out)
    except BaseException as exc:
        with suppress(OSError):
            partial.unlink(missing_ok=True)
        if not isinstance(exc, OSError) or exc.errno not in NO_ROOM:
            raise  # a path that cannot be written is the command line's to name
        raise StorageError(
            f"could not write {out}: {exc.strerror or exc}. The results are safe in {store.path}: free space "
            f"(or choose another --out), then run: orchestrator export {store.path}"
        ) from exc


def _iso(stamp: float | None) -> str | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, UTC).isoformat(timespec="milliseconds")


def as_sent(message: dict[str, Any]) -> dict[str, Any]:
    """A final message with the fields the API always sends, null or not: the stream accumulates
    as the SDK does (nulls dropped), but a message from the API has ``stop_sequence: null``."""
    if "stop_sequence" in message:
        return message
    shaped: dict[str, Any] = {}
    for key, value in message.items():
        shaped[key] = value
        if key == "stop_reason":
            shaped["stop_sequence"] = None
    shaped.setdefault("stop_sequence", None)
    return shaped


def result_line(row: dict[str, Any]) -> dict[str, Any]:
    """One results line: ``custom_id`` and ``result`` as the Batches API writes them, then ours."""
    if row["state"] == State.SUCCEEDED:
        result: dict[str, Any] = {"type": "succeeded", "message": as_sent(row["result"])}
    else:
        result = {"type": "errored", "error": row["result"]}
    timing = row["timing"]
    line = {
        "custom_id": row["custom_id"],
        "result": result,
        "billed_usage": row["billed"].as_dict(),
        "billed_usage_estimated": row["billed_estimated"],
        "attempts": row["attempts"],
        "timing": {key: _iso(value) for key, value in timing.items()},
    }
    if row["recovery"] is not None:
        line["recovery"] = row["recovery"]
    if (output := row_output(row)) is not None:
        line.update(output.fields())
    return line


def row_output(row: dict[str, Any]) -> Output | None:
    """What a finished request's reply holds for its output schema; None without one (or unfinished)."""
    if row["output_schema"] is None or row["state"] not in (State.SUCCEEDED, State.ERRORED):
        return None
    message = row["result"] if row["state"] == State.SUCCEEDED else None
    return message_output(message, schema_check(row["output_schema"]))


async def export_results(store: Store, out: Destination) -> tuple[int, int]:
    """Write every finished request, in input order, to ``out`` (atomically); (written, unfinished)."""
    written = unfinished = 0
    async with aclosing(store.results()) as rows:
        with replacing(out, store) as handle:
            async for row in rows:
                if row["state"] not in (State.SUCCEEDED, State.ERRORED):
                    unfinished += 1
                    continue
                handle.write(json.dumps(result_line(row), ensure_ascii=False) + "\n")
                written += 1
    return written, unfinished
