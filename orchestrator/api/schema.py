"""The structured-outputs subset of JSON Schema (pure): what the API refuses in a schema, and
whether a value fits one.

``schema_problems`` finds what the API answers 400 to in an ``output_config.format`` schema or a
``strict`` tool's ``input_schema`` (its messages, as the API words them, and where in the schema):
every object must say ``additionalProperties: false``; numbers take no bounds, strings no
lengths or patterns, arrays no ``maxItems`` and a ``minItems`` of 0 or 1 only; ``enum`` and
``const`` hold strings, numbers, booleans or null; ``$ref`` points inside the schema and never
back up its own path (no recursion); string formats are the supported ones. The simulator
refuses with it, and a job is checked with it before anything is sent.

``validate`` checks a value against a schema (that subset, and the bounds the API does not take,
for schemas that come back from elsewhere) and says where the first mismatch is, as a JSON path:
``$.items[2].price: expected integer, got string``. A small pure module rather than a JSON Schema
library: the subset is small, the messages need paths, and a dependency would have to earn its place.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import uuid
from collections.abc import Iterator
from typing import Any

FORMATS = frozenset({"date-time", "time", "date", "duration", "email", "hostname", "uri", "ipv4", "ipv6", "uuid"})
TYPES = frozenset({"object", "array", "string", "integer", "number", "boolean", "null"})
# Keywords any schema may carry (annotations, composition, references).
_COMMON = frozenset(
    {"type", "description", "title", "default", "examples", "$ref", "$defs", "definitions", "anyOf", "allOf"}
    | {"enum", "const", "$schema", "$id", "$comment"}
)
# Keywords the API refuses, by the type they belong to.
_UNSUPPORTED = {
    "object": (
        "patternProperties",
        "minProperties",
        "maxProperties",
        "propertyNames",
        "dependentRequired",
        "dependentSchemas",
        "unevaluatedProperties",
    ),
    "array": ("maxItems", "uniqueItems", "prefixItems", "contains", "minContains", "maxContains", "unevaluatedItems"),
    "string": ("minLength", "maxLength", "pattern", "contentEncoding", "contentMediaType"),
    "number": ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),
}
_UNSUPPORTED["integer"] = _UNSUPPORTED["number"]
# Request-wide limits of the compiled grammar (every strict tool and the output format together).
MAX_STRICT_TOOLS = 20
MAX_OPTIONAL = 24
MAX_UNIONS = 16


def _primitive(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _types(schema: dict[str, Any]) -> list[str]:
    kind = schema.get("type")
    if isinstance(kind, str):
        return [kind]
    return [k for k in kind if isinstance(k, str)] if isinstance(kind, list) else []


def resolve(root: Any, ref: str) -> Any:
    """The schema a local ``$ref`` (``#/$defs/Item``) points to, or None."""
    if not ref.startswith("#"):
        return None
    node = root
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _listing(keys: list[str]) -> str:
    if len(keys) == 1:
        return f"property '{keys[0]}' is"
    return f"properties {', '.join(keys)} are"


class _Checker:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.problems: list[tuple[str, str]] = []
        self.optional = 0
        self.unions = 0

    def add(self, where: str, message: str) -> None:
        self.problems.append((where, message))

    def check(self, schema: Any, where: str, refs: tuple[str, ...]) -> None:
        if not isinstance(schema, dict):
            self.add(where, "Invalid schema: a schema must be an object")
            return
        for key in ("$defs", "definitions"):
            if key in schema and not isinstance(schema[key], dict):
                self.add(f"{where}.{key}", f"Invalid schema: '{key}' must be an object")
        ref = schema.get("$ref")
        if ref is not None:
            if not isinstance(ref, str) or not ref.startswith("#"):
                self.add(where, f"External $ref is not supported, only references within the schema (got: {ref!r})")
            elif ref in refs:
                self.add(where, f"Recursive schemas are not supported ($ref {ref!r} refers to itself)")
            elif (target := resolve(self.root, ref)) is None:
                self.add(where, f"Invalid schema: $ref {ref!r} points to nothing")
            else:
                self.check(target, where, (*refs, ref))
        for literal in ("enum", "const"):
            if literal not in schema:
                continue
            values = schema[literal] if literal == "enum" else [schema[literal]]
            if literal == "enum" and (not isinstance(values, list) or not values):
                self.add(f"{where}.enum", "Invalid schema: 'enum' must be a non-empty list")
            elif not all(_primitive(v) for v in values):
                self.add(f"{where}.{literal}", f"'{literal}' values must be strings, numbers, booleans or null")
        for combinator in ("anyOf", "allOf"):
            if combinator not in schema:
                continue
            variants = schema[combinator]
            if not isinstance(variants, list) or not variants:
                self.add(f"{where}.{combinator}", f"Invalid schema: '{combinator}' must be a non-empty list")
                continue
            self.unions += combinator == "anyOf"
            for number, variant in enumerate(variants):
                self.check(variant, f"{where}.{combinator}[{number}]", refs)
        if "oneOf" in schema:
            self.add(where, "Invalid schema: 'oneOf' is not supported; use 'anyOf'")
        if "not" in schema or "if" in schema:
            self.add(where, f"Invalid schema: '{'not' if 'not' in schema else 'if'}' is not supported")
        kind = schema.get("type")
        if kind is not None and (not _types(schema) or any(k not in TYPES for k in _types(schema))):
            self.add(f"{where}.type", f"Invalid schema: unknown type {kind!r}")
            return
        kinds = _types(schema)
        if len(kinds) > 1:
            self.unions += 1
        for kind in kinds:
            self.check_type(schema, kind, where, refs)

    def check_type(self, schema: dict[str, Any], kind: str, where: str, refs: tuple[str, ...]) -> None:
        refused = [key for key in _UNSUPPORTED.get(kind, ()) if key in schema]
        if kind == "array" and "minItems" in schema and schema["minItems"] not in (0, 1):
            self.add(
                where,
                f"For 'array' type, 'minItems' values other than 0 or 1 are not supported "
                f"(got: {schema['minItems']!r})",
            )
        if refused:
            self.add(where, f"For '{kind}' type, {_listing(refused)} not supported")
        if kind == "string" and "format" in schema and schema["format"] not in FORMATS:
            self.add(
                where,
                f"For 'string' type, format {schema['format']!r} is not supported "
                f"(supported: {', '.join(sorted(FORMATS))})",
            )
        if kind == "array" and "items" in schema:
            self.check(schema["items"], f"{where}.items", refs)
        if kind != "object":
            return
        if schema.get("additionalProperties") is not False:
            self.add(where, "For 'object' type, 'additionalProperties' must be explicitly set to false")
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            self.add(f"{where}.properties", "Invalid schema: 'properties' must be an object")
            return
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(name, str) for name in required):
            self.add(f"{where}.required", "Invalid schema: 'required' must be a list of property names")
            required = []
        for name in required:
            if name not in properties:
                self.add(f"{where}.required", f"Invalid schema: required property {name!r} is not in 'properties'")
        self.optional += sum(1 for name in properties if name not in required)
        for name, sub in properties.items():
            self.check(sub, f"{where}.properties.{name}", refs)


def schema_problems(schema: Any) -> list[tuple[str, str]]:
    """What the API refuses in this schema: (where, as a path from ``$``; the API's message)."""
    checker = _Checker(schema)
    checker.check(schema, "$", ())
    return checker.problems


def complexity(schemas: list[Any]) -> tuple[int, int]:
    """(optional properties, union-typed properties) over these schemas, as the API counts them
    against its request-wide limits."""
    optional = unions = 0
    for schema in schemas:
        checker = _Checker(schema)
        checker.check(schema, "$", ())
        optional += checker.optional
        unions += checker.unions
    return optional, unions


def complexity_problem(schemas: list[Any], strict_tools: int) -> str | None:
    """The API's message when a request's strict schemas together are past its limits, or None."""
    if strict_tools > MAX_STRICT_TOOLS:
        return f"Too many strict tools ({strict_tools}). The maximum number of strict tools is {MAX_STRICT_TOOLS}."
    optional, unions = complexity(schemas)
    if optional > MAX_OPTIONAL:
        return (
            f"Schemas contains too many optional parameters ({optional}), which would make grammar compilation "
            f"inefficient. Reduce the number of optional parameters in your tool schemas (limit: {MAX_OPTIONAL})."
        )
    if unions > MAX_UNIONS:
        return (
            f"Schemas contains too many parameters with union types ({unions}), which would make grammar "
            f"compilation inefficient. Reduce the number of union types in your schemas (limit: {MAX_UNIONS})."
        )
    return None


# -- validating values ---------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _is(value: Any, kind: str) -> bool:
    name = _type_name(value)
    if kind == "number":
        return name in ("integer", "number")
    if kind == "integer" and name == "number":
        return float(value).is_integer()
    return name == kind


_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")
_DURATION = re.compile(r"P(?!$)(\d+Y)?(\d+M)?(\d+W)?(\d+D)?(T(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?)?")
_TIME = re.compile(r"\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def _format_ok(fmt: str, text: str) -> bool:
    try:
        if fmt == "date":
            return bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", text)) and bool(datetime.date.fromisoformat(text))
        if fmt == "date-time":
            date, sep, time = text.replace("t", "T").partition("T")
            return bool(sep) and _format_ok("date", date) and _format_ok("time", time)
        if fmt == "time":
            return bool(_TIME.fullmatch(text.replace("z", "Z"))) and bool(datetime.time.fromisoformat(text[:8]))
        if fmt == "ipv4":
            return isinstance(ipaddress.ip_address(text), ipaddress.IPv4Address)
        if fmt == "ipv6":
            return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
        if fmt == "uuid":
            return len(text) == 36 and bool(uuid.UUID(text))
    except ValueError:
        return False
    pattern = {"email": _EMAIL, "hostname": _HOSTNAME, "uri": _URI, "duration": _DURATION}.get(fmt)
    return pattern is None or bool(pattern.fullmatch(text))


def _key_path(where: str, name: str) -> str:
    return f"{where}.{name}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else f"{where}[{name!r}]"


def _errors(value: Any, schema: Any, root: Any, where: str, depth: int) -> Iterator[str]:
    """Every mismatch of ``value`` with ``schema`` (lazily: the caller takes the first)."""
    if schema is True or not isinstance(schema, dict):
        return
    if depth > 64:
        yield f"{where}: the schema nests too deep to check"
        return
    if "$ref" in schema:
        target = resolve(root, schema["$ref"]) if isinstance(schema["$ref"], str) else None
        if target is None:
            yield f"{where}: $ref {schema['$ref']!r} points to nothing"
        else:
            yield from _errors(value, target, root, where, depth + 1)
    if "const" in schema and not _equal(value, schema["const"]):
        yield f"{where}: expected {_show(schema['const'])}, got {_show(value)}"
    if isinstance(schema.get("enum"), list) and not any(_equal(value, v) for v in schema["enum"]):
        yield f"{where}: {_show(value)} is not one of {', '.join(_show(v) for v in schema['enum'])}"
    for variant in schema.get("allOf") or []:
        yield from _errors(value, variant, root, where, depth + 1)
    for combinator in ("anyOf", "oneOf"):
        variants = schema.get(combinator)
        if isinstance(variants, list) and variants:
            fits = [next(_errors(value, v, root, where, depth + 1), None) is None for v in variants]
            if combinator == "anyOf" and not any(fits):
                yield f"{where}: {_show(value)} fits none of the {len(variants)} alternatives (anyOf)"
            if combinator == "oneOf" and sum(fits) != 1:
                yield f"{where}: {_show(value)} fits {sum(fits)} of the alternatives, not exactly one (oneOf)"
    kinds = _types(schema)
    if kinds and not any(_is(value, kind) for kind in kinds):
        yield f"{where}: expected {' or '.join(kinds)}, got {_type_name(value)}"
        return
    if isinstance(value, dict):
        yield from _object_errors(value, schema, root, where, depth)
    elif isinstance(value, list):
        yield from _array_errors(value, schema, root, where, depth)
    elif isinstance(value, str):
        yield from _string_errors(value, schema, where)
    elif _type_name(value) in ("integer", "number"):
        yield from _number_errors(value, schema, where)


def _object_errors(value: dict[str, Any], schema: dict[str, Any], root: Any, where: str, depth: int) -> Iterator[str]:
    found = schema.get("properties")
    properties: dict[str, Any] = found if isinstance(found, dict) else {}
    for name in schema.get("required") or []:
        if name not in value:
            yield f"{_key_path(where, name)}: required property missing"
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            yield from _errors(item, properties[name], root, _key_path(where, name), depth + 1)
        elif extra is False:
            yield f"{_key_path(where, name)}: property not allowed (additionalProperties is false)"
        elif isinstance(extra, dict):
            yield from _errors(item, extra, root, _key_path(where, name), depth + 1)


def _array_errors(value: list[Any], schema: dict[str, Any], root: Any, where: str, depth: int) -> Iterator[str]:
    low, high = schema.get("minItems"), schema.get("maxItems")
    if isinstance(low, int) and len(value) < low:
        yield f"{where}: {len(value)} items, fewer than minItems {low}"
    if isinstance(high, int) and len(value) > high:
        yield f"{where}: {len(value)} items, more than maxItems {high}"
    if "items" in schema:
        for number, item in enumerate(value):
            yield from _errors(item, schema["items"], root, f"{where}[{number}]", depth + 1)


def _string_errors(value: str, schema: dict[str, Any], where: str) -> Iterator[str]:
    fmt = schema.get("format")
    if isinstance(fmt, str) and fmt in FORMATS and not _format_ok(fmt, value):
        yield f"{where}: {_show(value)} is not a valid {fmt}"
    low, high = schema.get("minLength"), schema.get("maxLength")
    if isinstance(low, int) and len(value) < low:
        yield f"{where}: shorter than minLength {low}"
    if isinstance(high, int) and len(value) > high:
        yield f"{where}: longer than maxLength {high}"
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        try:
            matched = re.search(pattern, value) is not None
        except re.error:
            matched = True  # a pattern Python cannot read is not the value's fault
        if not matched:
            yield f"{where}: {_show(value)} does not match pattern {pattern!r}"


def _number_errors(value: float, schema: dict[str, Any], where: str) -> Iterator[str]:
    for key, words in _BOUNDS.items():
        bound = schema.get(key)
        if not isinstance(bound, int | float) or isinstance(bound, bool):
            continue
        low = key.endswith("inimum")
        fails = (value < bound if low else value > bound) or (key.startswith("exclusive") and value == bound)
        if fails:
            yield f"{where}: {value!r} is {words} {bound!r}"


_BOUNDS = {
    "minimum": "below minimum",
    "maximum": "above maximum",
    "exclusiveMinimum": "not above exclusiveMinimum",
    "exclusiveMaximum": "not below exclusiveMaximum",
}


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: 1 equals 1.0, but true is not 1."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _show(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else '"' + value + '"'
    text = {"None": "null", "True": "true", "False": "false"}.get(text, text)
    return text if len(text) <= 60 else text[:57] + "..."


def validate(value: Any, schema: Any) -> str | None:
    """Where and how ``value`` first fails ``schema`` (``$.path: what``), or None if it fits."""
    return next(_errors(value, schema, schema, "$", 0), None)
