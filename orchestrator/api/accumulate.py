"""A light accumulator of stream events into the final message (pure, no I/O).

It takes the events as decoded JSON (dicts, see ``sse.py``) and builds the message as a plain
dict equal to the SDK's own accumulation (``get_final_message().model_dump(mode="json",
exclude_none=True)``), while doing far less per event: no typed model is built for an event,
text pieces are appended to a list and joined once, and tool input JSON is parsed once at the
end of its block instead of on every delta. Unknown event and delta types are ignored, as the
API asks.
"""

from __future__ import annotations

import json
from typing import Any

# What a message_delta's usage may update (cumulative totals), as the SDK merges them.
_USAGE_OPTIONAL = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "server_tool_use",
    "output_tokens_details",
)


def without_nulls(value: Any) -> Any:
    """``value`` with every null dropped from its objects, as the SDK's ``exclude_none`` dump does."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


class _Block:
    __slots__ = ("citations", "data", "json", "pieces", "signature")

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.pieces: list[str] = []  # text or thinking deltas
        self.json: list[str] = []  # input_json_delta parts
        self.signature: str | None = None
        self.citations: list[dict[str, Any]] = []

    def build(self, final: bool) -> dict[str, Any]:
        data = dict(self.data)
        if self.pieces:
            key = "thinking" if data.get("type") == "thinking" else "text"
            data[key] = data.get(key, "") + "".join(self.pieces)
        if self.signature is not None:
            data["signature"] = self.signature
        if self.citations:
            data["citations"] = [*data.get("citations", []), *self.citations]
        raw = "".join(self.json)
        if raw:
            if final:
                data["input"] = json.loads(raw)
            else:
                data["partial_json"] = raw
        return data


class Accumulator:
    """Feeds on one stream's events; ``message()`` is the final message, ``snapshot()`` the partial one."""

    __slots__ = ("_blocks", "_counted", "_message", "deltas", "done")

    def __init__(self) -> None:
        self._message: dict[str, Any] | None = None
        self._blocks: list[_Block] = []
        self.deltas = 0  # content deltas received
        self.done = False  # message_stop received
        self._counted = False  # a message_delta has given the real output count

    def feed(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "content_block_delta":
            self.deltas += 1
            delta = event["delta"]
            block = self._blocks[event["index"]]
            delta_type = delta.get("type")
            if delta_type == "text_delta":
                block.pieces.append(delta["text"])
            elif delta_type == "input_json_delta":
                block.json.append(delta["partial_json"])
            elif delta_type == "thinking_delta":
                block.pieces.append(delta["thinking"])
            elif delta_type == "signature_delta":
                block.signature = delta["signature"]
            elif delta_type == "citations_delta":
                block.citations.append(without_nulls(delta["citation"]))
        elif kind == "content_block_start":
            self._started()
            self._blocks.append(_Block(without_nulls(event["content_block"])))
        elif kind == "message_start":
            self._message = without_nulls(event["message"])
        elif kind == "message_delta":
            self._apply_message_delta(event)
        elif kind == "message_stop":
            self._started()
            self.done = True

    def _apply_message_delta(self, event: dict[str, Any]) -> None:
        message = self._started()
        delta = event.get("delta", {})
        for key in ("stop_reason", "stop_sequence", "stop_details"):
            value = delta.get(key)
            if value is None:
                message.pop(key, None)
            else:
                message[key] = without_nulls(value)
        if delta.get("container") is not None:
            message["container"] = without_nulls(delta["container"])
        usage = message.setdefault("usage", {})
        reported = event.get("usage", {})
        usage["output_tokens"] = reported.get("output_tokens", 0)
        self._counted = True
        for key in _USAGE_OPTIONAL:
            value = reported.get(key)
            if value is not None:
                usage[key] = without_nulls(value)

    def _started(self) -> dict[str, Any]:
        if self._message is None:
            raise ValueError("stream event before message_start")
        return self._message

    @property
    def started(self) -> bool:
        return self._message is not None

    @property
    def message_id(self) -> str | None:
        return None if self._message is None else self._message.get("id")

    @property
    def usage(self) -> dict[str, Any]:
        return {} if self._message is None else self._message.get("usage", {})

    @property
    def counted(self) -> bool:
        """Whether ``output_tokens`` is the server's count (a message_delta gave it)."""
        return self._counted

    @property
    def output_tokens(self) -> int:
        """Output tokens so far: the server's count once a message_delta gave it, else one per delta
        received (message_start's count is a placeholder)."""
        if self._counted:
            reported: int = self.usage.get("output_tokens") or 0
            return reported
        return self.deltas

    def content(self, final: bool = False) -> list[dict[str, Any]]:
        return [block.build(final) for block in self._blocks]

    def snapshot(self) -> dict[str, Any]:
        """The partial message so far (tool input still as ``partial_json``)."""
        return {**self._started(), "content": self.content(final=False)}

    def message(self) -> dict[str, Any]:
        """The final message; valid once ``done``."""
        return {**self._started(), "content": self.content(final=True)}
