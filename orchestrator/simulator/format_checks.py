"""The API's 400s for structured outputs (pure): a format or strict tool schema it refuses
(``api/schema.py``), the request-wide limits of strict schemas, citations with a format, and a
prefill with a format (JSON outputs take no assistant prefill)."""

from __future__ import annotations

from typing import Any

from orchestrator.api.schema import complexity_problem, schema_problems
from orchestrator.simulator.replies import prefill_of
from orchestrator.simulator.structured import request_format

CITATIONS_WITH_FORMAT = "Citations are not supported when using structured outputs (output_config.format)."
PREFILL_WITH_FORMAT = (
    "Prefilling the assistant message is not supported when using structured outputs (output_config.format). "
    "The conversation must end with a user message."
)
BOTH_FORMATS = (
    "Both output_format and output_config.format were provided. "
    "Please use only output_config.format (output_format is deprecated)."
)


def _has_citations(body: dict[str, Any]) -> bool:
    for message in body["messages"]:
        content = message["content"]
        for block in content if isinstance(content, list) else []:
            citations = block.get("citations")
            if isinstance(citations, dict) and citations.get("enabled"):
                return True
    return False


def format_problem(body: dict[str, Any]) -> str | None:
    """The 400 message the API answers to this request's output format or strict tools, or None."""
    config = body.get("output_config")
    if config is not None:
        if not isinstance(config, dict):
            return "output_config: Input should be a valid dictionary"
        for key in config:
            if key not in ("format", "effort"):
                return f"output_config.{key}: Extra inputs are not permitted"
    if isinstance(config, dict) and config.get("format") is not None and body.get("output_format") is not None:
        return BOTH_FORMATS
    where, fmt = request_format(body)
    schemas: list[Any] = []
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
            kind = fmt.get("type") if isinstance(fmt, dict) else fmt
            return (
                f"{where}: Input tag {kind!r} found using 'type' does not match any of the expected tags: 'json_schema'"
            )
        if not isinstance(fmt.get("schema"), dict):
            return f"{where}.schema: Field required"
        problems = schema_problems(fmt["schema"])
        if problems:
            return f"{where}.schema: {problems[0][1]}"
        schemas.append(fmt["schema"])
    strict = [(n, t) for n, t in enumerate(body.get("tools") or []) if isinstance(t, dict) and t.get("strict")]
    for number, tool in strict:
        problems = schema_problems(tool.get("input_schema"))
        if problems:
            return f"tools.{number}.custom: {problems[0][1]}"
        schemas.append(tool["input_schema"])
    if schemas and (problem := complexity_problem(schemas, len(strict))) is not None:
        return problem
    if fmt is None:
        return None
    if _has_citations(body):
        return CITATIONS_WITH_FORMAT
    if prefill_of(body) is not None:
        return PREFILL_WITH_FORMAT
    return None
