"""A job's output schema (structured outputs): read from a file or a spec's inline table, checked
against what the API takes before anything is sent, and set as every request's
``output_config.format``.

The schema comes from a spec's ``[output] schema = "schema.json"`` (a path relative to the spec)
or ``[output.schema]`` (an inline table), from ``--output-schema FILE``, or from a request's own
``output_config`` in a job file; each is checked with ``api/schema.py``, and a problem names the
file, the place in the schema and what the API says, with what to do.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.api.schema import schema_problems
from orchestrator.errors import JobFileError, Problem

FIX = "fix the schema (structured outputs take a subset of JSON Schema: see docs/structured-outputs.md)"
HINTS = (
    ("'additionalProperties' must be", 'add "additionalProperties": false to this object'),
    ("not supported", "remove it (say it in the description instead: the API does not enforce it)"),
)


def _hint(message: str) -> str:
    return next((hint for found, hint in HINTS if found in message), FIX)


def schema_text_problems(schema: Any, what: str) -> list[str]:
    """What the API would refuse in ``schema``, as messages naming ``what``, the place in it and what to do."""
    if not isinstance(schema, dict):
        return [f"{what} must be a JSON object (a JSON schema), not {type(schema).__name__}"]
    return [f"{what} at {where}: {message}; {_hint(message)}" for where, message in schema_problems(schema)]


def read_schema(path: Path, named: str) -> dict[str, Any]:
    """The JSON schema in the file ``path`` (``named`` as the user wrote it), checked; JobFileError if
    it cannot be read or the API would refuse it."""
    try:
        schema = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise JobFileError([Problem(named, None, "output schema: no such file")]) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise JobFileError([Problem(named, None, f"output schema is not a JSON file: {exc}")]) from None
    problems = schema_text_problems(schema, "output schema")
    if problems:
        raise JobFileError([Problem(named, None, message) for message in problems])
    return schema  # type: ignore[no-any-return]


def with_format(defaults: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` with ``schema`` as the requests' output format (other ``output_config`` fields kept)."""
    config = defaults.get("output_config")
    config = dict(config) if isinstance(config, dict) else {}
    config["format"] = {"type": "json_schema", "schema": schema}
    return {**defaults, "output_config": config}


def output_config_problem(value: Any) -> str | None:
    """What is wrong with a request's ``output_config`` (its format's schema above all), or None."""
    if not isinstance(value, dict):
        return f"must be a table (object), not {value!r}"
    return _checked("output_config", value, _config_problem)


def tools_problem(value: Any) -> str | None:
    """What the API would refuse in the schema of a request's ``strict`` tools, or None."""
    if not isinstance(value, list):
        return "must be a list"
    return _checked("tools", value, _tools_problem)


def _checked(kind: str, value: Any, check: Callable[[str], str | None]) -> str | None:
    """``check`` of ``value`` as JSON text. A job's lines mostly share one value: the defaults' own
    object (the same one on every line) is checked once, and a line's own once per distinct text."""
    last = _last.get(kind)
    if last is not None and last[0] is value:
        return last[1]
    try:
        problem = check(json.dumps(value))
    except (TypeError, ValueError):
        problem = "must be JSON"
    _last[kind] = (value, problem)
    return problem


_last: dict[str, tuple[Any, str | None]] = {}  # by field: the last value checked, and its problem


@functools.lru_cache(maxsize=64)
def _tools_problem(text: str) -> str | None:
    for number, tool in enumerate(json.loads(text)):
        if isinstance(tool, dict) and tool.get("strict") is True:
            problems = schema_text_problems(tool.get("input_schema"), f"tools[{number}] (strict) input_schema")
            if problems:
                return problems[0]
    return None


@functools.lru_cache(maxsize=64)
def _config_problem(text: str) -> str | None:
    value = json.loads(text)
    fmt = value.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return 'format must be {"type": "json_schema", "schema": {...}}'
    problems = schema_text_problems(fmt.get("schema"), "format.schema")
    return problems[0] if problems else None
