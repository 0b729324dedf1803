"""Request validation with the API's status codes and messages."""

from __future__ import annotations

from typing import Any

from orchestrator.modelinfo import accepts_prefill, model_version
from orchestrator.models import MESSAGE_PARAMS
from orchestrator.simulator.replies import block_text, prefill_of

MESSAGE_FIELDS = MESSAGE_PARAMS | {"stream"}
COUNT_FIELDS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking"})

PREFILL_REJECTED = (
    "This model does not support assistant message prefill. The conversation must end with a user message."
)
TRAILING_WHITESPACE = "final assistant content cannot end with trailing whitespace"


class RequestInvalid(Exception):
    def __init__(self, status: int, error_type: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message


def error_body(error_type: str, message: str, request_id: str | None) -> dict[str, Any]:
    """The API's error body."""
    return {"type": "error", "error": {"type": error_type, "message": message}, "request_id": request_id}


def _bad(message: str) -> RequestInvalid:
    return RequestInvalid(400, "invalid_request_error", message)


def _check_content(index: int, content: Any) -> None:
    where = f"messages.{index}.content"
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _bad(f"{where}: Input should be a valid string or a list of content blocks")
    for number, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _bad(f"{where}.{number}: Input should be a content block object with a type")
        if block["type"] == "text" and not isinstance(block.get("text"), str):
            raise _bad(f"{where}.{number}.text: Field required")


def validate(body: Any, *, count_only: bool = False) -> dict[str, Any]:
    """Return the body if the API would accept it, else raise RequestInvalid."""
    if not isinstance(body, dict):
        raise _bad("Request body must be a JSON object")
    allowed = COUNT_FIELDS if count_only else MESSAGE_FIELDS
    for name in body:
        if name not in allowed:
            raise _bad(f"{name}: Extra inputs are not permitted")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model: Field required")
    if not count_only:
        max_tokens = body.get("max_tokens")
        if max_tokens is None:
            raise _bad("max_tokens: Field required")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
            raise _bad("max_tokens: Input should be a valid integer")
        if max_tokens < 1:
            raise _bad("max_tokens: Input should be greater than or equal to 1")
        if "stream" in body and not isinstance(body["stream"], bool):
            raise _bad("stream: Input should be a valid boolean")
    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, int | float) or not 0 <= temperature <= 1):
        raise _bad("temperature: Input should be a number between 0 and 1")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise _bad("system: Input should be a valid string or a list of text blocks")
    messages = body.get("messages")
    if messages is None:
        raise _bad("messages: Field required")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages: at least one message is required")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"messages.{index}: Input should be a valid dictionary")
        if message.get("role") not in ("user", "assistant"):
            raise _bad(f"messages.{index}.role: Input should be 'user' or 'assistant'")
        if "content" not in message:
            raise _bad(f"messages.{index}.content: Field required")
        _check_content(index, message["content"])
        if not block_text(message["content"]) and not (isinstance(message["content"], list) and message["content"]):
            raise _bad(f"messages.{index}: all messages must have non-empty content")
    if model_version(model) is None:
        raise RequestInvalid(404, "not_found_error", f"model: {model}")
    prefill = prefill_of(body)
    if prefill is not None and not count_only:
        if not accepts_prefill(model):
            raise _bad(PREFILL_REJECTED)
        if prefill != prefill.rstrip():
            raise _bad(TRAILING_WHITESPACE)
    return body
