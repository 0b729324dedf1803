"""Request validation with the API's status codes and messages."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from orchestrator.api.modelinfo import (
    MODELS,
    THINKING_TYPES,
    ModelLimits,
    ThinkingRefused,
    accepts_prefill,
    forces_tool,
    model_limits,
    refused_sampling,
    refused_thinking,
)
from orchestrator.models import MESSAGE_PARAMS
from orchestrator.simulator.format_checks import format_problem
from orchestrator.simulator.replies import block_text, count_input_tokens, prefill_of

MESSAGE_FIELDS = MESSAGE_PARAMS | {"stream"}
COUNT_FIELDS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "cache_control", "output_config"}
    | {"output_format"}
)

PREFILL_REJECTED = (
    "This model does not support assistant message prefill. The conversation must end with a user message."
)
TRAILING_WHITESPACE = "final assistant content cannot end with trailing whitespace"
THINKING_PREFILL = (
    "messages.{index}.content.0.type: Expected `thinking` or `redacted_thinking`, but found `text`. When `thinking` "
    "is enabled, a final `assistant` message must start with a thinking block (preceeding the lastmost set of "
    "`tool_use` and `tool_result` blocks). We recommend you include thinking blocks from previous turns. To avoid "
    "this requirement, disable `thinking`. Please consult our documentation at "
    "https://docs.claude.com/en/docs/build-with-claude/extended-thinking"
)
THINKING_BUDGET = "thinking.enabled.budget_tokens: Input should be greater than or equal to 1024"
THINKING_MAX_TOKENS = (
    "`max_tokens` must be greater than `thinking.budget_tokens`. Please consult our documentation at "
    "https://docs.claude.com/en/docs/build-with-claude/extended-thinking#max-tokens-and-context-window-size"
)
THINKING_FORCED_TOOL = "Thinking may not be enabled when tool_choice forces tool use."
MAX_BREAKPOINTS = 4
# The API's words for the model checks (its 404 for an unknown model, its 400s for the model's limits).
MAX_TOKENS_ABOVE = "max_tokens: {given} > {limit}, which is the maximum allowed number of output tokens for {model}"
PROMPT_TOO_LONG = "prompt is too long: {tokens} tokens > {limit} maximum"
BOTH_SAMPLING = "`temperature` and `top_p` cannot both be specified for this model. Please use only one."
SAMPLING_DEPRECATED = "`{name}` is deprecated for this model."
FORCED_TOOL_REFUSED = 'tool_choice: type "tool" and "any" are not supported for this model.'
# The API's words for a thinking type the model does not take: the 5.5 what's-new and migration pages
# give the first two; the next two are as the API answers them (the docs say only "400").
THINKING_TYPE_REFUSED = (
    '"thinking.type.{kind}" is not supported for this model. Use "thinking.type.adaptive" and '
    '"output_config.effort" to control thinking behavior.'
)
THINKING_DISABLED_BETWEEN_TOOLS = (
    '"thinking.type.disabled" is not supported for this model. Use "thinking.type.between_tools" for the lowest '
    'thinking setting, or "thinking.type.adaptive" and "output_config.effort" to control thinking behavior.'
)
ADAPTIVE_REFUSED = "adaptive thinking is not supported on this model"
BETWEEN_TOOLS_REFUSED = '"thinking.type.between_tools" is not supported for this model.'
# The docs give these 400s without their words (between_tools: effort high or below, no other field).
THINKING_EFFORT_REFUSED = (
    '"thinking.type.{kind}" is not supported at effort "{effort}" for this model. Use "thinking.type.adaptive" '
    'to run at "xhigh" or "max" effort.'
)
THINKING_FIELD_REFUSED = "thinking.between_tools.{field}: Extra inputs are not permitted"
EMPTY_TEXT_BLOCK = "{where}: text content blocks must be non-empty"
BLANK_TEXT_BLOCK = "{where}: text content blocks must contain non-whitespace text"
EMPTY_MESSAGE = (
    "messages.{index}: all messages must have non-empty content except for the optional final assistant message"
)
# What a model served beside the table (SimulatorConfig.extra_models) may do: the largest limits of any.
EXTRA_MODEL = ModelLimits(
    max(limits.context_window for limits in MODELS.values()),
    max(limits.max_output for limits in MODELS.values()),
    thinking=THINKING_TYPES,
)


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
    _check_text_blocks("messages", content)


def _check_text_blocks(where: str, blocks: list[Any]) -> None:
    """The API refuses an empty text block, and one of whitespace alone."""
    for block in blocks:
        if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
            if not block["text"]:
                raise _bad(EMPTY_TEXT_BLOCK.format(where=where))
            if not block["text"].strip():
                raise _bad(BLANK_TEXT_BLOCK.format(where=where))


def _model(model: str, extra_models: Collection[str]) -> ModelLimits:
    """The limits of a model the API serves; its 404 for any other id."""
    limits = model_limits(model)
    if limits is None and model in extra_models:
        return EXTRA_MODEL
    if limits is None:
        raise RequestInvalid(404, "not_found_error", f"model: {model}")
    return limits


def _check_limits(body: dict[str, Any], limits: ModelLimits, count_only: bool) -> None:
    """What the model's limits refuse: a larger max_tokens, sampling fields, a prompt past its context window."""
    if not count_only and body["max_tokens"] > limits.max_output:
        raise _bad(MAX_TOKENS_ABOVE.format(given=body["max_tokens"], limit=limits.max_output, model=body["model"]))
    sampling = refused_sampling(limits, body)
    if sampling is not None:
        name, together = sampling
        raise _bad(BOTH_SAMPLING if together else SAMPLING_DEPRECATED.format(name=name))
    if not count_only:
        tokens = count_input_tokens(body)
        if tokens > limits.context_window:
            raise _bad(PROMPT_TOO_LONG.format(tokens=tokens, limit=limits.context_window))


def _check_tools(body: dict[str, Any], limits: ModelLimits) -> None:
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _bad("tools: Input should be a valid list")
    names = []
    for number, tool in enumerate(tools or []):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _bad(f"tools.{number}.name: Field required")
        if tool.get("type", "custom") == "custom" and not isinstance(tool.get("input_schema"), dict):
            raise _bad(f"tools.{number}.custom.input_schema: Field required")
        names.append(tool["name"])
    choice = body.get("tool_choice")
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise _bad("tool_choice: Input tag does not match any of the expected tags: 'auto', 'any', 'tool', 'none'")
    if not limits.forced_tools and forces_tool(body):
        raise _bad(FORCED_TOOL_REFUSED)
    if choice["type"] == "tool" and choice.get("name") not in names:
        raise _bad(f"tool_choice: tool {choice.get('name')!r} not found in tools")


def _thinking_refused(refused: ThinkingRefused, limits: ModelLimits) -> str:
    """The API's 400 message for a thinking the model refuses."""
    if refused.field is not None:
        return THINKING_FIELD_REFUSED.format(field=refused.field)
    if refused.effort is not None:
        return THINKING_EFFORT_REFUSED.format(kind=refused.kind, effort=refused.effort)
    if refused.kind == "adaptive":
        return ADAPTIVE_REFUSED
    if refused.kind == "between_tools":
        return BETWEEN_TOOLS_REFUSED
    if refused.kind == "disabled" and "between_tools" in limits.thinking:
        return THINKING_DISABLED_BETWEEN_TOOLS
    return THINKING_TYPE_REFUSED.format(kind=refused.kind)


def _check_thinking(body: dict[str, Any], limits: ModelLimits, count_only: bool) -> bool:
    """Whether extended thinking (a budget) is enabled (and valid)."""
    thinking = body.get("thinking")
    if thinking is None:
        return False
    if not isinstance(thinking, dict) or thinking.get("type") not in THINKING_TYPES:
        expected = ", ".join(repr(kind) for kind in THINKING_TYPES)
        raise _bad(f"thinking: Input tag does not match any of the expected tags: {expected}")
    refused = refused_thinking(limits, body)
    if refused is not None:
        raise _bad(_thinking_refused(refused, limits))
    if thinking["type"] != "enabled":
        return False
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool):
        raise _bad("thinking.enabled.budget_tokens: Field required")
    if budget < 1024:
        raise _bad(THINKING_BUDGET)
    if not count_only and budget >= body["max_tokens"]:
        raise _bad(THINKING_MAX_TOKENS)
    if (body.get("tool_choice") or {}).get("type") in ("any", "tool"):
        raise _bad(THINKING_FORCED_TOOL)
    return True


def _check_stop_sequences(body: dict[str, Any]) -> None:
    sequences = body.get("stop_sequences")
    if sequences is None:
        return
    if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
        raise _bad("stop_sequences: Input should be a valid list of strings")
    if any(not s.strip() for s in sequences):
        raise _bad("stop_sequences: each stop sequence must contain non-whitespace")


TTL_ORDER = (
    "{where}.cache_control.ttl: a ttl='1h' cache_control block must not come after a ttl='5m' cache_control "
    "block. Note that blocks are processed in the following order: `tools`, `system`, `messages`."
)


def _marked_blocks(body: dict[str, Any]) -> list[tuple[str, Any]]:
    """The blocks carrying ``cache_control``, in the order the API processes them, with their paths."""
    marked = [(f"tools.{number}", tool) for number, tool in enumerate(body.get("tools") or [])]
    system = body.get("system")
    if isinstance(system, list):
        marked += [(f"system.{number}", block) for number, block in enumerate(system)]
    for index, message in enumerate(body["messages"]):
        if isinstance(message["content"], list):
            marked += [(f"messages.{index}.content.{n}", block) for n, block in enumerate(message["content"])]
    marked = [(where, block) for where, block in marked if isinstance(block, dict) and "cache_control" in block]
    if "cache_control" in body:  # automatic caching: on the last block
        marked.append(("", body))
    return marked


def _check_cache_control(body: dict[str, Any]) -> None:
    marked = _marked_blocks(body)
    short_seen = False
    for where, block in marked:
        control = block["cache_control"]
        if (
            not isinstance(control, dict)
            or control.get("type") != "ephemeral"
            or control.get("ttl", "5m") not in ("5m", "1h")
        ):
            raise _bad("cache_control: Input should be {'type': 'ephemeral'} with an optional ttl of '5m' or '1h'")
        if control.get("ttl") == "1h" and short_seen:
            raise _bad(TTL_ORDER.format(where=where).removeprefix("."))
        short_seen = short_seen or control.get("ttl", "5m") == "5m"
    if len(marked) > MAX_BREAKPOINTS:
        raise _bad(f"A maximum of {MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {len(marked)}.")


def validate(body: Any, *, count_only: bool = False, extra_models: Collection[str] = ()) -> dict[str, Any]:
    """Return the body if the API would accept it, else raise RequestInvalid. ``extra_models``: ids
    served beside ``modelinfo.MODELS`` (a model newer than the table)."""
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
    for name in ("temperature", "top_p"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1):
            raise _bad(f"{name}: Input should be a number between 0 and 1")
    top_k = body.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise _bad("top_k: Input should be greater than or equal to 0")
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise _bad("system: Input should be a valid string or a list of text blocks")
    if isinstance(system, list):
        _check_text_blocks("system", system)
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
        last = index == len(messages) - 1
        content = message["content"]
        if (
            not block_text(content)
            and not (isinstance(content, list) and content)
            and not (last and message["role"] == "assistant")
        ):
            raise _bad(EMPTY_MESSAGE.format(index=index))
    limits = _model(model, extra_models)
    _check_limits(body, limits, count_only)
    _check_tools(body, limits)
    thinking = _check_thinking(body, limits, count_only)
    _check_stop_sequences(body)
    _check_cache_control(body)
    prefill = prefill_of(body)
    if prefill is not None:
        if not accepts_prefill(model):
            raise _bad(PREFILL_REJECTED)
        last = messages[-1]["content"]
        if thinking and not (isinstance(last, list) and last[0].get("type") in ("thinking", "redacted_thinking")):
            raise _bad(THINKING_PREFILL.format(index=len(messages) - 1))
        if prefill != prefill.rstrip() and not count_only:
            raise _bad(TRAILING_WHITESPACE)
    if (problem := format_problem(body)) is not None:
        raise _bad(problem)
    return body
