"""Structured outputs of results (pure): the schema a request asked for, and what its reply holds.

A request with ``output_config.format`` (or the older ``output_format``) of type ``json_schema``
asks for a reply that is JSON valid for the schema. Its result then carries ``output``: the
parsed JSON when it fits the schema, else null with ``output_error`` saying why, one of the
``STATUSES``: cut by ``max_tokens`` (truncated JSON), refused (``stop_reason: refusal``), not JSON,
or failing the schema at a path.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.api.schema import validate

VALID, CUT, REFUSED, NOT_JSON, INVALID, ERRORED = "valid", "cut", "refused", "not_json", "invalid", "errored"
STATUSES = (VALID, CUT, REFUSED, NOT_JSON, INVALID, ERRORED)
CUT_REASONS = frozenset({"max_tokens", "model_context_window_exceeded"})

# Checks a parsed value: None if it fits, else where and why it does not.
Check = Callable[[Any], str | None]


def output_format(params: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a request's reply must fit, or None."""
    config = params.get("output_config")
    found = config.get("format") if isinstance(config, dict) else None
    found = found or params.get("output_format")
    if isinstance(found, dict) and found.get("type") == "json_schema" and isinstance(found.get("schema"), dict):
        return found["schema"]  # type: ignore[no-any-return]
    return None


@functools.lru_cache(maxsize=64)
def schema_check(schema_json: str) -> Check:
    """The check of values against a schema given as JSON text (results carry it as text: parsed once)."""
    schema = json.loads(schema_json)
    return lambda value: validate(value, schema)


@dataclass(frozen=True)
class Output:
    status: str  # one of STATUSES
    value: Any = None  # the parsed JSON, when valid
    error: str | None = None  # why there is no value

    def fields(self) -> dict[str, Any]:
        """The result line's fields: ``output``, and ``output_error`` when it is null."""
        if self.status == VALID:
            return {"output": self.value}
        return {"output": None, "output_error": self.error}


def reply_text(message: dict[str, Any]) -> str:
    return "".join(block.get("text", "") for block in message.get("content", []) if block.get("type") == "text")


def message_output(message: dict[str, Any] | None, check: Check) -> Output:
    """What a final message holds for a structured-output request (None: the request errored)."""
    if message is None:
        return Output(ERRORED, error="no reply: the request errored")
    stop = message.get("stop_reason")
    if stop == "refusal":
        details = message.get("stop_details") or {}
        category = details.get("category")
        why = f" ({category})" if category else ""
        explanation = f": {details['explanation']}" if details.get("explanation") else ""
        return Output(REFUSED, error=f"refused{why}{explanation}")
    if stop in CUT_REASONS:
        return Output(CUT, error=f"cut by {stop}: the JSON is incomplete; raise max_tokens")
    text = reply_text(message)
    try:
        value = json.loads(text)
    except ValueError as exc:
        return Output(NOT_JSON, error=f"not JSON ({exc}), stop_reason {stop}")
    problem = check(value)
    if problem is not None:
        return Output(INVALID, error=f"fails the schema at {problem}")
    return Output(VALID, value=value)


_WORDS = {VALID: "valid", CUT: "cut by max_tokens", REFUSED: "refused", NOT_JSON: "not JSON", INVALID: "invalid"}


def counts_text(counts: dict[str, int]) -> str:
    """``980 valid, 12 cut by max_tokens, 5 refused, 3 invalid`` (errored requests left out)."""
    return ", ".join(f"{counts.get(status, 0):,} {words}" for status, words in _WORDS.items() if counts.get(status))


# -- pydantic models (the Python API): never imported here; a model class is used as given ----------


def is_model(value: Any) -> bool:
    """Whether ``value`` is a pydantic model class (told by its methods: pydantic is not imported)."""
    return isinstance(value, type) and callable(getattr(value, "model_validate", None))


def model_schema(model: Any) -> dict[str, Any]:
    """The JSON schema the API takes for a pydantic model: the SDK's own ``transform_schema`` (every
    object closed, constraints the API refuses moved into descriptions, which the model still checks)."""
    from anthropic import transform_schema  # the SDK, a dependency already, brings pydantic with it

    return transform_schema(model)


def _loc_path(loc: Any) -> str:
    path = "$"
    for part in loc if isinstance(loc, tuple | list) else ():
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def model_check(model: Any) -> Check:
    """A check of parsed values by a pydantic model's own validation: where its first error is."""

    def check(value: Any) -> str | None:
        try:
            model.model_validate(value)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            errors = exc.errors() if callable(getattr(exc, "errors", None)) else []  # type: ignore[attr-defined]
            if not errors:
                return f"$: {exc}"
            return f"{_loc_path(errors[0].get('loc'))}: {errors[0].get('msg')}"
        return None

    return check
