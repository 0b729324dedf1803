"""Tables as job inputs: each row of a CSV, JSONL or Parquet file through one prompt template.

A spec names its tables and the template (see docs/jobs.md)::

    [[tables]]
    path = "reviews.csv"                    # .csv/.tsv, .jsonl/.ndjson, .parquet (or format = "...")
    id_column = "id"                        # optional: each row's custom_id (else <file stem>-<row>)
    param_columns = ["model", "max_tokens"] # optional: per-row request fields (an empty cell: the default)

    [template]
    prompt = "Summarise this review of {product}:\\n{text}"   # {column} placeholders, {{ }} literal braces
    system = "You are terse."                                # optional

Rows are read as a stream (a million-row table is never held in memory). A row is numbered as
a spreadsheet numbers it: the CSV header is row 1; a JSONL table's row is its line; a Parquet
row counts from 1. Placeholders are plain column names: the template is parsed with
``string.Formatter`` but never run through ``str.format`` (no attribute, index or format spec).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import string
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.errors import Problem
from orchestrator.jobs.lines import text_lines
from orchestrator.models import MESSAGE_PARAMS

FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
TABLE_KEYS = frozenset({"path", "format", "id_column", "param_columns"})
TEMPLATE_KEYS = frozenset({"prompt", "system"})
SNIFF_BYTES = 64 * 1024
DELIMITERS = ",;\t|"
# Request fields a row can set, by how a cell's text becomes a value; any other field is JSON text.
INT_PARAMS = frozenset({"max_tokens", "top_k"})
FLOAT_PARAMS = {"temperature": (0.0, 1.0), "top_p": (0.0, 1.0)}
STR_PARAMS = frozenset({"model", "system", "service_tier", "inference_geo", "speed"})

Part = tuple[str, str | None]  # literal text, then a column name (or None)


@dataclass(frozen=True)
class Template:
    prompt: str
    system: str | None
    prompt_parts: tuple[Part, ...]
    system_parts: tuple[Part, ...] | None

    @property
    def columns(self) -> list[str]:
        """Every column a placeholder names, in order of first use."""
        names = [name for _, name in (*self.prompt_parts, *(self.system_parts or ())) if name is not None]
        return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Table:
    path: Path
    format: str  # csv | jsonl | parquet
    template: Template
    id_column: str | None = None
    param_columns: tuple[str, ...] = ()

    def describe(self) -> str:
        """What shapes its requests besides its bytes (for the job's fingerprint)."""
        template = self.template
        return json.dumps([self.format, template.prompt, template.system, self.id_column, list(self.param_columns)])


def parse_parts(text: str) -> tuple[Part, ...]:
    """A template's literal text and placeholders; ValueError saying what is wrong."""
    parts: list[Part] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ValueError(f"{exc} (write {{{{ and }}}} for literal braces)") from None
    for literal, name, spec, conversion in parsed:
        if name is None:
            parts.append((literal, None))
            continue
        if not name or spec or conversion or any(ch in name for ch in ".[]"):
            shown = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise ValueError(
                f"placeholder {{{shown}}}: only plain column names are allowed, such as {{text}} "
                "(no attribute, index, conversion or format spec; {{ and }} for literal braces)"
            )
        parts.append((literal, name))
    return tuple(parts)


def template_of(table: Any) -> Template | list[str]:
    """The ``[template]`` table of a spec, or what is wrong with it."""
    if not isinstance(table, dict):
        return ["[template] must be a table with a 'prompt'"]
    problems = [
        f"[template] has unknown key {key!r} (known: prompt, system)" for key in table if key not in TEMPLATE_KEYS
    ]
    prompt, system = table.get("prompt"), table.get("system")
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append("[template] needs a 'prompt': a non-empty string")
    if system is not None and not isinstance(system, str):
        problems.append("[template] system must be a string")
    parts: dict[str, tuple[Part, ...]] = {}
    for key, text in (("prompt", prompt), ("system", system)):
        if isinstance(text, str):
            try:
                parts[key] = parse_parts(text)
            except ValueError as exc:
                problems.append(f"[template] {key}: {exc}")
    if problems:
        return problems
    assert isinstance(prompt, str)
    return Template(prompt, system, parts["prompt"], parts.get("system"))


def table_of(entry: Any, base: Path, template: Template) -> Table | list[str]:
    """One ``[[tables]]`` entry of a spec (paths relative to the spec's folder), or what is wrong with it."""
    if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
        return ["each [[tables]] entry needs a 'path' (a string)"]
    where = f"table {entry['path']!r}:"
    problems = [
        f"{where} unknown key {key!r} (known: {', '.join(sorted(TABLE_KEYS))})"
        for key in entry
        if key not in TABLE_KEYS
    ]
    path = base / entry["path"]
    kind = entry.get("format", FORMATS.get(path.suffix.lower()))
    if kind not in ("csv", "jsonl", "parquet"):
        problems.append(f"{where} unknown format: name a .csv, .tsv, .jsonl or .parquet file, or set format")
    if not path.is_file():
        problems.append(f"{where} no such file")
    id_column = entry.get("id_column")
    if id_column is not None and not isinstance(id_column, str):
        problems.append(f"{where} id_column must be a column name")
    columns = entry.get("param_columns", [])
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        problems.append(f"{where} param_columns must be a list of column names")
        columns = []
    for column in columns:
        if column not in MESSAGE_PARAMS - {"messages"}:
            problems.append(f"{where} param column {column!r} is not a request field (such as model, max_tokens)")
        elif column == "system" and template.system is not None:
            problems.append(f"{where} param column 'system' and [template] system both set the system prompt")
    if problems:
        return problems
    return Table(path, str(kind), template, id_column, tuple(columns))


# -- reading rows -------------------------------------------------------------------------

Row = tuple[int, dict[str, Any]]  # the row's number and its columns


@dataclass(frozen=True)
class Columns:
    """A table's columns, known before its rows (a CSV header, a Parquet schema)."""

    names: list[str]


def _csv_rows(path: Path) -> Iterator[Row | Problem | Columns]:
    csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))  # a prompt cell may hold a whole document
    name = str(path)
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            sample = handle.read(SNIFF_BYTES)
            handle.seek(0)
            dialect: type[csv.Dialect] | csv.Dialect = csv.excel_tab if path.suffix.lower() == ".tsv" else csv.excel
            with contextlib.suppress(csv.Error):  # one column, or too little to tell: the default dialect
                dialect = csv.Sniffer().sniff(sample, delimiters=DELIMITERS)
            # The sniffer misses doubled quotes in a field that also holds the delimiter ("a, ""b"""):
            # without an escape character, "" inside quotes is a quote, as RFC 4180 has it.
            reader = csv.reader(handle, dialect, doublequote=dialect.doublequote or dialect.escapechar is None)
            header = next(reader, None)
            if not header:
                yield Problem(name, None, "empty table: a CSV table needs a header row")
                return
            if len(set(header)) != len(header) or not all(header):
                yield Problem(name, 1, "the header row has an empty or repeated column name")
                return
            yield Columns(header)
            for number, fields in enumerate(reader, start=2):
                if not fields:
                    continue
                if len(fields) > len(header):
                    yield Problem(name, number, f"the row has {len(fields)} fields, the header {len(header)}")
                    continue
                yield number, dict(zip(header, fields, strict=False))
    except UnicodeDecodeError:
        yield Problem(name, None, "not UTF-8 text")
    except csv.Error as exc:
        yield Problem(name, None, f"not a readable CSV table: {exc}")


def _jsonl_rows(path: Path) -> Iterator[Row | Problem | Columns]:
    name = str(path)
    for item in text_lines(path):
        if isinstance(item, Problem):
            yield item
            continue
        number, line = item
        try:
            row = json.loads(line)
        except ValueError as exc:
            yield Problem(name, number, f"malformed JSON: {exc}")
            continue
        if not isinstance(row, dict):
            yield Problem(name, number, "a row of a JSONL table must be a JSON object")
            continue
        yield number, row


def _parquet_rows(path: Path) -> Iterator[Row | Problem | Columns]:
    name = str(path)
    try:
        import pyarrow.parquet as pq  # the optional extra "parquet"
    except ImportError:
        yield Problem(name, None, "reading Parquet needs pyarrow: pip install 'orchestrator[parquet]'")
        return
    try:
        table = pq.ParquetFile(path)
        yield Columns(list(table.schema_arrow.names))
        number = 0
        for batch in table.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield number, row
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        yield Problem(name, None, f"not a readable Parquet file: {exc}")


READERS = {"csv": _csv_rows, "jsonl": _jsonl_rows, "parquet": _parquet_rows}


def _missing_column(table: Table, columns: list[str]) -> str | None:
    """Why a table whose columns are known cannot fill the template, or None."""
    known = ", ".join(columns)
    for name in table.template.columns:
        if name not in columns:
            return f"the template's {{{name}}} names no column of this table (columns: {known})"
    if table.id_column is not None and table.id_column not in columns:
        return f"id_column {table.id_column!r} names no column of this table (columns: {known})"
    return None


def table_rows(table: Table) -> Iterator[Row | Problem]:
    """(row number, columns) of every row, in order, or a Problem; stops at a table-wide problem."""
    for item in READERS[table.format](table.path):
        if isinstance(item, Columns):
            problem = _missing_column(table, item.names)
            if problem is not None:
                yield Problem(str(table.path), 1 if table.format == "csv" else None, problem)
                return
            continue
        yield item


# -- a row as a request -------------------------------------------------------------------


def cell_text(value: Any) -> str | None:
    """A cell as template text; None when it holds no value (absent, null or empty)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if not math.isinf(value) else str(value)
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def _param(field: str, value: Any) -> Any:
    """A param column's cell as the request field's value; ValueError saying why it cannot be."""
    if field in STR_PARAMS:
        if not isinstance(value, str):
            raise ValueError("must be text")
        return value
    if field in INT_PARAMS:
        number = int(value) if isinstance(value, str) and value.strip().lstrip("-").isdigit() else value
        if not isinstance(number, int) or isinstance(number, bool):
            raise ValueError("must be an integer")
        return number
    if field in FLOAT_PARAMS:
        try:
            number = float(value) if isinstance(value, str | int) and not isinstance(value, bool) else value
        except ValueError:
            number = None
        low, high = FLOAT_PARAMS[field]
        if not isinstance(number, float) or not low <= number <= high:
            raise ValueError(f"must be a number from {low:g} to {high:g}")
        return number
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise ValueError("must be JSON text") from None
    return value


def _render(parts: tuple[Part, ...], row: Mapping[str, Any]) -> str:
    return "".join(literal + (cell_text(row.get(name)) or "" if name is not None else "") for literal, name in parts)


def row_request(
    table: Table, row: Mapping[str, Any], defaults: Mapping[str, Any], generated_id: str
) -> tuple[Any, dict[str, Any]] | str:
    """(custom_id, params) of one row, or what is wrong with it (the caller validates both)."""
    for name in table.template.columns:
        if cell_text(row.get(name)) is None:
            what = "no column" if name not in row else "no value in column"
            return f"{what} {name!r} (the template's {{{name}}})"
    custom_id: Any = generated_id
    if table.id_column is not None:
        custom_id = cell_text(row.get(table.id_column))
        if custom_id is None:
            return f"no value in id_column {table.id_column!r}"
    overrides = {}
    for column in table.param_columns:
        value = row.get(column)
        if cell_text(value) is None:
            continue
        try:
            overrides[column] = _param(column, value)
        except ValueError as exc:
            return f"column {column!r}: {column} {exc}, not {value!r}"
    params = {
        **defaults,
        **overrides,
        "messages": [{"role": "user", "content": _render(table.template.prompt_parts, row)}],
    }
    if table.template.system_parts is not None:
        params["system"] = _render(table.template.system_parts, row)
    return custom_id, params
