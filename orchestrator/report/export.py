"""The CSV export of the store: one row per request in input order, its table row's columns joined
with its result, tokens and cost (``results.jsonl`` is ``orchestrator/results.py``'s); the counts of
structured outputs by status.

It goes to a file (written beside it and moved over it once complete) or to an open text stream
(standard output, for ``--out -``). ``excel_safe`` quotes the CSV cells a spreadsheet would
run as a formula (see ``spreadsheet_safe``).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Callable
from contextlib import aclosing
from typing import Any

from orchestrator.jobs.tables import cell_text
from orchestrator.models import State
from orchestrator.pricing import BATCH, STANDARD, PriceTable
from orchestrator.results import Destination, replacing, row_output
from orchestrator.store import Store

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
        with replacing(out, store, newline="") as handle:
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
