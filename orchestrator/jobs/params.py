"""What a request's fields must be (pure): the types of the Messages fields a job sets most.

Checked before anything is sent or written, wherever a field comes from: a spec's ``[defaults]``,
a command-line option, a line of a job file. Only the shape is checked here (the API has the last
word on values such as model names); fields not listed are passed through as given.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from orchestrator.errors import UserError
from orchestrator.jobs.output import output_config_problem, tools_problem
from orchestrator.models import MESSAGE_PARAMS

CUSTOM_ID = re.compile(r"[a-zA-Z0-9_-]{1,64}")  # the whole id (fullmatch: "$" would accept a final newline)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


FIELDS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "model": ("a non-empty string", lambda v: isinstance(v, str) and bool(v.strip())),
    "max_tokens": ("an integer at least 1", lambda v: _integer(v) and v >= 1),
    "messages": ("a non-empty list", lambda v: isinstance(v, list) and bool(v)),
    "system": ("a string or a list of text blocks", lambda v: isinstance(v, str | list)),
    "temperature": ("a number from 0 to 1", lambda v: _number(v) and 0 <= v <= 1),
    "top_p": ("a number from 0 to 1", lambda v: _number(v) and 0 <= v <= 1),
    "top_k": ("an integer at least 0", lambda v: _integer(v) and v >= 0),
    "stop_sequences": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v)),
    "metadata": ("a table (object)", lambda v: isinstance(v, dict)),
    "tools": ("a list", lambda v: isinstance(v, list)),
    "tool_choice": ("a table (object)", lambda v: isinstance(v, dict)),
    "thinking": ("a table (object)", lambda v: isinstance(v, dict)),
    "service_tier": ("a string", lambda v: isinstance(v, str)),
}


def value_problem(key: str, value: Any) -> str | None:
    """What is wrong with ``value`` for the known field ``key`` ("must be ..."), or None."""
    if key in ("output_config", "output_format"):  # a format's schema is checked as the API checks it
        return output_config_problem(value if key == "output_config" else {"format": value})
    if key == "tools":  # and so are strict tools' schemas
        return tools_problem(value)
    check = FIELDS.get(key)
    if check is not None and not check[1](value):
        return f"must be {check[0]}, not {value!r}"
    return None


def field_problem(key: str, value: Any) -> str | None:
    """Why ``key = value`` cannot be a request field, or None."""
    if key not in MESSAGE_PARAMS:
        return f"unknown request field {key!r}"
    problem = value_problem(key, value)
    return None if problem is None else f"{key!r} {problem}"


def check_options(given: Mapping[str, Any]) -> None:
    """Request defaults given as options (``--max-tokens`` ...) or API arguments; UserError naming the option."""
    for key, value in given.items():
        if key not in MESSAGE_PARAMS:
            raise UserError(f"unknown request field {key!r}")
        problem = value_problem(key, value)
        if problem is not None:
            raise UserError(f"--{key.replace('_', '-')} {problem}")
