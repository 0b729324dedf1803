"""Read a job's inputs into requests, as a stream: nothing holds a whole input in memory.

Every line (or prompt file) becomes a valid request or a ``Problem`` naming its file and line.
Missing ``custom_id``s get stable ones: ``<file stem>-<line>``, or the file stem for a prompt
file. Duplicates across the whole job are found by the store while loading.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import compress
from operator import not_
from typing import Any, Literal, cast, overload

from orchestrator.api.modelinfo import limit_problem
from orchestrator.errors import Problem
from orchestrator.jobs.bulk import jsonl_items, params_around, text_items
from orchestrator.jobs.lines import line_blocks
from orchestrator.jobs.params import CUSTOM_ID, field_problem
from orchestrator.jobs.spec import JobSpec, Source, stem_id
from orchestrator.jobs.tables import row_request, table_rows
from orchestrator.models import MESSAGE_PARAMS, Loaded, Prompts

SIMPLE_FIELDS = (MESSAGE_PARAMS - {"messages"}) | {"prompt", "custom_id"}


def _check_params(params: dict[str, Any]) -> str | None:
    """Why these params cannot be sent, or None."""
    for key, value in params.items():
        problem = field_problem(key, value)
        if problem is not None:
            return problem
    if "messages" not in params:
        return "'messages' must be a non-empty list"
    empty = _empty_text_block(params)
    if empty is not None:
        return empty
    refused = limit_problem(params)
    return None if refused is None else refused[1]


def _empty_text_block(params: dict[str, Any]) -> str | None:
    """The API refuses a text block that is empty or whitespace alone (in messages or the system)."""
    system = params.get("system")
    places: list[tuple[str, Any]] = [("system", system)] if isinstance(system, list) else []
    places += [
        (f"messages.{i}.content", m.get("content")) for i, m in enumerate(params["messages"]) if isinstance(m, dict)
    ]
    for where, blocks in places:
        for number, block in enumerate(blocks if isinstance(blocks, list) else []):
            text = block.get("text") if isinstance(block, dict) and block.get("type") == "text" else None
            if isinstance(text, str) and not text.strip():
                return f"{where}.{number}: a text block must hold non-whitespace text (the API refuses it)"
    return None


def _check_id(custom_id: Any) -> str | None:
    if not isinstance(custom_id, str) or not CUSTOM_ID.fullmatch(custom_id):
        return f"invalid custom_id {custom_id!r}: it must match ^[a-zA-Z0-9_-]{{1,64}}$"
    return None


def _from_json_line(obj: Any, defaults: dict[str, Any], generated_id: str) -> tuple[str, dict[str, Any]] | str:
    """(custom_id, params) of one JSONL line, or why it is invalid."""
    if not isinstance(obj, dict):
        return "a line must be a JSON object"
    custom_id = obj.get("custom_id", generated_id)
    if "params" in obj:
        extra = set(obj) - {"custom_id", "params"}
        if extra:
            return f"unknown field {sorted(extra)[0]!r} (a Batches line has only custom_id and params)"
        if not isinstance(obj["params"], dict):
            return "'params' must be an object"
        params = {**defaults, **obj["params"]}
    elif "prompt" in obj:
        unknown = set(obj) - SIMPLE_FIELDS
        if unknown:
            return f"unknown field {sorted(unknown)[0]!r}"
        prompt = obj["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            return "'prompt' must be a non-empty string"
        overrides = {k: v for k, v in obj.items() if k not in ("prompt", "custom_id")}
        params = {**defaults, **overrides, "messages": [{"role": "user", "content": prompt}]}
    elif "result" in obj and "custom_id" in obj:
        return "a results line (what a run writes), not a request: run the job file its results came from"
    else:
        return "missing prompt: a line needs 'prompt' (or 'params' in the Batches shape)"
    problem = _check_id(custom_id) or _check_params(params)
    return problem if problem else (custom_id, params)


def _table_requests(source: Source, defaults: dict[str, Any]) -> Iterator[Loaded | Problem]:
    """Every row of a table as a request through its template, or a Problem naming its row."""
    assert source.table is not None
    name, stem = str(source.path), stem_id(source.path)
    for item in table_rows(source.table):
        if isinstance(item, Problem):
            yield item
            continue
        number, row = item
        parsed = row_request(source.table, row, defaults, f"{stem}-{number}")
        problem = parsed if isinstance(parsed, str) else _check_id(parsed[0]) or _check_params(parsed[1])
        if problem is not None:
            yield Problem(name, number, problem)
        else:
            assert not isinstance(parsed, str)
            yield Loaded(parsed[0], parsed[1], name, number, row)


@overload
def read_requests(spec: JobSpec) -> Iterator[Loaded | Problem]: ...


@overload
def read_requests(spec: JobSpec, *, bulk: Literal[True]) -> Iterator[Loaded | Prompts | Problem]: ...


def read_requests(spec: JobSpec, *, bulk: bool = False) -> Iterator[Loaded | Prompts | Problem]:
    """Every request of the job in input order, or a Problem where a line is bad (or a file holds
    none); with ``bulk``, runs of plain prompt lines come as ``Prompts`` (checked a block at a time)."""
    for source in spec.sources:
        found = False
        for item in _read_source(source, spec.defaults, bulk):
            found = True
            yield item
        if not found:
            yield Problem(str(source.path), None, "empty: no request in it")


def _read_source(source: Source, defaults: dict[str, Any], bulk: bool) -> Iterator[Loaded | Prompts | Problem]:
    """The requests of one input (a UTF-8 byte order mark at its start is not part of it)."""
    name = str(source.path)
    stem = stem_id(source.path)
    if source.kind == "table":
        yield from _table_requests(source, defaults)
        return
    if source.kind == "file":
        try:
            prompt = source.path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            yield Problem(name, None, "not UTF-8 text")
            return
        if not prompt.strip():
            yield Problem(name, None, "empty prompt file")
            return
        params = {**defaults, "messages": [{"role": "user", "content": prompt}]}
        yield Loaded(stem, params, name, None)
        return
    yield from _read_lines(source, name, stem, defaults, bulk)


def _read_lines(
    source: Source, name: str, stem: str, defaults: dict[str, Any], bulk: bool
) -> Iterator[Loaded | Prompts | Problem]:
    """The lines of a text or JSONL input, a block at a time: with ``bulk``, the plain prompt lines
    of a block as ``Prompts`` (``jobs.bulk``), every other line one at a time."""
    defaults_valid = _check_params({**defaults, "messages": [{}]}) is None
    around = params_around(defaults) if bulk and (defaults_valid or source.kind == "lines") else None
    for first, lines in line_blocks(source.path):
        items = [""] * len(lines)  # "": read one line at a time
        if around is not None and None not in lines:
            texts = cast(list[str], lines)
            items = text_items(texts) if source.kind == "lines" else jsonl_items(texts)
        start = 0
        for i in compress(range(len(items)), map(not_, items)):
            if i > start:
                assert around is not None
                yield Prompts(name, stem, first + start, items[start:i], *around)
            yield from _line(source, name, stem, defaults, defaults_valid, first + i, lines[i])
            start = i + 1
        if start < len(items):
            assert around is not None
            yield Prompts(name, stem, first + start, items[start:], *around)


def _line(
    source: Source, name: str, stem: str, defaults: dict[str, Any], defaults_valid: bool, number: int, line: str | None
) -> Iterator[Loaded | Problem]:
    """The request of one line, if it is not blank, or why it is bad. A JSONL line of the usual
    shape, ``{"prompt": ...}`` with perhaps a ``custom_id``, is checked on a short path (the
    defaults were checked once) that accepts exactly what the full check does; anything else
    takes the full check."""
    if line is None:
        yield Problem(name, number, "not UTF-8 text")
        return
    if not line or line.isspace():
        return
    if source.kind == "lines":
        params = {**defaults, "messages": [{"role": "user", "content": line.rstrip("\r\n")}]}
        yield Loaded(f"{stem}-{number}", params, name, number)
        return
    try:
        obj = json.loads(line)
    except ValueError as exc:
        yield Problem(name, number, f"malformed JSON: {exc}")
        return
    if defaults_valid and type(obj) is dict and "prompt" in obj and len(obj) <= 2:
        prompt = obj["prompt"]
        custom_id = obj.get("custom_id", None) if len(obj) == 2 else f"{stem}-{number}"
        if (
            type(prompt) is str
            and prompt
            and not prompt.isspace()
            and type(custom_id) is str
            and CUSTOM_ID.fullmatch(custom_id)
        ):
            params = {**defaults, "messages": [{"role": "user", "content": prompt}]}
            yield Loaded(custom_id, params, name, number)
            return
    parsed = _from_json_line(obj, defaults, f"{stem}-{number}")
    if isinstance(parsed, str):
        yield Problem(name, number, parsed)
    else:
        yield Loaded(parsed[0], parsed[1], name, number)
