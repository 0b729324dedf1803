"""Structured outputs in the simulator (pure): values drawn to fit a schema, and refusals.

- ``schema_value`` draws a value valid for a schema of the supported subset (objects with their
  required properties and some optional ones, ``$ref``, ``anyOf``/``allOf``, ``enum``/``const``,
  type lists, arrays of 0 to 3 items above ``minItems``, strings in the supported formats):
  the reply to a request with ``output_config.format``, and the input of a ``strict`` tool.
"""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

from orchestrator.api.schema import resolve

REFUSAL_CATEGORIES = (None, "cyber", "bio", "general_harms")
REFUSAL_EXPLANATION = "The request was declined under the usage policy."

_WORDS = ("kettle", "steel", "fast", "loud", "toaster", "even", "crumb", "tray", "price", "value", "great", "poor")


def _string(rng: random.Random, fmt: Any) -> str:
    if fmt == "date":
        return f"20{rng.randint(10, 29)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    if fmt == "time":
        return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}Z"
    if fmt == "date-time":
        return f"{_string(rng, 'date')}T{_string(rng, 'time')}"
    if fmt == "duration":
        return f"P{rng.randint(1, 30)}D"
    if fmt == "email":
        return f"{rng.choice(_WORDS)}{rng.randint(1, 99)}@example.com"
    if fmt == "hostname":
        return f"{rng.choice(_WORDS)}.example.com"
    if fmt == "uri":
        return f"https://{rng.choice(_WORDS)}.example.com/{rng.choice(_WORDS)}"
    if fmt == "uuid":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    if fmt == "ipv4":
        return ".".join(str(rng.randint(1, 254)) for _ in range(4))
    if fmt == "ipv6":
        return ":".join(f"{rng.randint(0, 0xFFFF):x}" for _ in range(8))
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 6))).capitalize()


def _merged(schemas: list[Any], root: Any) -> dict[str, Any]:
    """The ``allOf`` of object schemas as one: properties and required joined."""
    merged: dict[str, Any] = {"properties": {}, "required": []}
    for schema in schemas:
        while isinstance(schema, dict) and isinstance(schema.get("$ref"), str):
            schema = resolve(root, schema["$ref"]) or {}
        if not isinstance(schema, dict):
            continue
        for key, value in schema.items():
            if key == "properties":
                merged["properties"].update(value)
            elif key == "required":
                merged["required"] += value
            elif key != "allOf":
                merged[key] = value
    return merged


def schema_value(rng: random.Random, schema: Any, root: Any, depth: int = 0) -> Any:
    """A value that fits ``schema`` (the structured-outputs subset), drawn from ``rng``."""
    if not isinstance(schema, dict) or depth > 32:
        return None
    if isinstance(schema.get("$ref"), str):
        return schema_value(rng, resolve(root, schema["$ref"]), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    if isinstance(schema.get("anyOf"), list) and schema["anyOf"]:
        return schema_value(rng, rng.choice(schema["anyOf"]), root, depth + 1)
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        return schema_value(rng, _merged(schema["allOf"], root), root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = rng.choice(kind) if kind else None
    if kind == "object" or (kind is None and "properties" in schema):
        required = set(schema.get("required") or [])
        return {
            name: schema_value(rng, sub, root, depth + 1)
            for name, sub in (schema.get("properties") or {}).items()
            if name in required or rng.random() < 0.7
        }
    if kind == "array":
        low = int(schema.get("minItems", 0))
        high = int(schema.get("maxItems", low + 3))
        return [schema_value(rng, schema.get("items"), root, depth + 1) for _ in range(rng.randint(low, high))]
    if kind == "integer":
        return rng.randint(int(schema.get("minimum", 0)), int(schema.get("maximum", 100)))
    if kind == "number":
        return round(rng.uniform(float(schema.get("minimum", 0)), float(schema.get("maximum", 100))), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "string":
        return _string(rng, schema.get("format"))
    return None


def json_reply(rng: random.Random, schema: dict[str, Any]) -> str:
    """The reply's text: JSON of a value drawn for ``schema``, written as the model writes it."""
    return json.dumps(schema_value(rng, schema, schema), ensure_ascii=False)


def refusal_details(rng: random.Random) -> dict[str, Any]:
    """``stop_details`` of a refusal, as the API sends them."""
    category = rng.choice(REFUSAL_CATEGORIES)
    return {"type": "refusal", "category": category, "explanation": None if category is None else REFUSAL_EXPLANATION}


def request_format(body: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """Where a request's output format is (``output_config.format`` or the beta ``output_format``)
    and the format itself, if it has one."""
    config = body.get("output_config")
    if isinstance(config, dict) and config.get("format") is not None:
        return "output_config.format", config["format"]
    if body.get("output_format") is not None:
        return "output_format", body["output_format"]
    return "output_config.format", None


def format_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema the reply must fit (of a request the API accepted), or None."""
    fmt = request_format(body)[1]
    return None if fmt is None else fmt["schema"]
