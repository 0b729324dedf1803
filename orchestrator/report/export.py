"""Exports of the store: ``results.jsonl`` in the Message Batches results shape, plus our fields;
or a CSV, one row per request in input order, its table row's columns joined with its result.

An export goes to a file (written beside it and moved over it once complete) or to an open text
stream (standard output, for ``--out -``). ``excel_safe`` quotes the CSV cells a spreadsheet would
run as a formula (see ``spreadsheet_safe``).
"""

from __future__ import annotations

import csv
import errno
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import aclosing, contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from orchestrator.errors import StorageError
from orchestrator.jobs.tables import cell_text
from orchestrator.models import State
from orchestrator.outputs import Output, message_output, schema_check
from orchestrator.pricing import BATCH, STANDARD, PriceTable
from orchestrator.store import Store

# What a file system answers when a file cannot grow: full, over quota, past the file size limit,
# read-only, failing.
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})

# The CSV export's own columns, after the input row's (an input column of the same name gets "input_").
RESULT_COLUMNS = (
    "custom_id",
    "result_type",
    "reply_text",
    "stop_reason",
    "error",
    "input_tokens",
    "output_tokens",
    "cost_usd",
)


# What a spreadsheet (Excel, LibreOffice, Google Sheets) takes for the start of a formula, as OWASP's
# "CSV injection" lists them; a plain number ("-3", "+1.5") is read as a number and left alone.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
PLAIN_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def spreadsheet_safe(cell: str) -> str:
    """``cell`` as a spreadsheet shows it but never runs it: prefixed with ``'`` if it could start a formula."""
    if cell.startswith(FORMULA_START) and not PLAIN_NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


Destination = Path | IO[str]  # a file, or an open text stream such as standard output


@contextmanager
def _replacing(out: Destination, store: Store, newline: str | None = None) -> Iterator[IO[str]]:
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


async def output_counts(
    store: Store, keeps: Callable[[dict[str, Any]], bool] = lambda row: True
) -> dict[str, Counter[str]]:
    """By model, how many finished requests (those ``keeps`` keeps) hold each output status; empty if no
    request has an output schema. Every reply is parsed and checked again: the store keeps replies, not
    verdicts."""
    counts: dict[str, Counter[str]] = {}
    if not await store.output_properties():
        return counts
    async with aclosing(store.results()) as rows:
        async for row in rows:
            if keeps(row) and (output := row_output(row)) is not None:
                counts.setdefault(row["model"], Counter())[output.status] += 1
    return counts


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
        with _replacing(out, store) as handle:
            async for row in rows:
                if row["state"] not in (State.SUCCEEDED, State.ERRORED):
                    unfinished += 1
                    continue
                handle.write(json.dumps(result_line(row), ensure_ascii=False) + "\n")
                written += 1
    return written, unfinished


def _csv_fields(row: dict[str, Any], prices: PriceTable) -> list[Any]:
    """The CSV export's own columns of one request: its result, tokens billed over every attempt, their cost."""
    result = row["result"] or {}
    state = row["state"]
    text = stop_reason = error = ""
    if state == State.SUCCEEDED:
        text = "".join(block.get("text", "") for block in result.get("content", []) if block.get("type") == "text")
        stop_reason = result.get("stop_reason") or ""
    elif state == State.ERRORED:
        detail = result.get("error", {})
        error = f"{detail.get('type')}: {detail.get('message')}"
    billed = row["billed"]
    batch = row["billed_batch"]
    cost = prices.total({(row["model"], STANDARD): billed.minus(batch), (row["model"], BATCH): batch})
    return [
        row["custom_id"],
        state,
        text,
        stop_reason,
        error,
        billed.input_tokens,
        billed.output_tokens,
        "" if cost is None else str(cost),
    ]


def _output_cells(row: dict[str, Any], properties: list[str]) -> list[Any]:
    """A request's ``output.<name>`` cells (nested values as JSON text) and its ``output_error``."""
    output = row_output(row)
    if output is None:
        return [""] * (len(properties) + 1)
    value = output.value if isinstance(output.value, dict) else {}
    return [cell_text(value.get(name)) or "" for name in properties] + [output.error or ""]


async def export_csv(
    store: Store, out: Destination, prices: PriceTable, *, excel_safe: bool = False
) -> tuple[int, int]:
    """Every request in input order as a CSV row (atomically): the input row's columns (table inputs),
    then ``RESULT_COLUMNS``; (rows written, of them unfinished). ``excel_safe``: every cell through
    ``spreadsheet_safe``."""
    columns = await store.input_columns()
    properties = await store.output_properties()
    outputs = [*(f"output.{name}" for name in properties), "output_error"] if properties else []
    header = [f"input_{name}" if name in RESULT_COLUMNS else name for name in columns] + outputs + list(RESULT_COLUMNS)
    written = unfinished = 0
    async with aclosing(store.results()) as rows:
        with _replacing(out, store, newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow([spreadsheet_safe(name) for name in header] if excel_safe else header)
            async for row in rows:
                values = row["input_row"] or {}
                cells = [cell_text(values.get(name)) or "" for name in columns]
                cells += _output_cells(row, properties) if properties else []
                cells += _csv_fields(row, prices)
                writer.writerow([spreadsheet_safe(str(cell)) for cell in cells] if excel_safe else cells)
                written += 1
                unfinished += row["state"] not in (State.SUCCEEDED, State.ERRORED)
    return written, unfinished
