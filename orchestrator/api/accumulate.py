"""A light accumulator of stream events into the final message (pure, no I/O).

It takes the events as decoded JSON (dicts, see ``sse.py``) and builds the message as a plain
dict equal to the SDK's own accumulation (``accumulate_event``, dumped with
``model_dump(mode="json", exclude_none=True)``), while doing far less per event: no typed model
is built for an event, text pieces are appended to a list and joined once, and tool input JSON
is parsed when its block stops (or a snapshot is taken) instead of on every delta, with the
SDK's own partial parser, so a tool call cut by ``max_tokens`` gets the SDK's partial ``input``.

Like the SDK: a delta applies only to a block of its kind (text to text, ...), unknown delta
types are ignored, unknown blocks are kept as they came, a second ``message_start`` is ignored.
Unknown event types are ignored anywhere, as the API asks (the SDK fails on one before
``message_start``). Where the SDK's accumulation fails (an event before ``message_start``, a
delta or stop for a block never started, an event missing a field it needs, tool input that is
not JSON), ``feed`` raises ``MalformedStream`` (``EventOrderError`` for the order): the attempt
is broken, never the job. Token counts that are not integers are malformed too.
"""

from __future__ import annotations

from typing import Any

from jiter import from_json

from orchestrator.errors import EventOrderError, MalformedStream

# What a message_delta's usage may update (cumulative totals), as the SDK merges them.
_USAGE_OPTIONAL = (
    "input_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "server_tool_use",
    "output_tokens_details",
)
# The token counts the runner adds up: a stream giving anything but integers there is malformed.
_COUNTS = ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
_TOOL_BLOCKS = frozenset({"tool_use", "server_tool_use"})  # the SDK's TRACKS_TOOL_INPUT
_UNSET: Any = object()


def without_nulls(value: Any) -> Any:
    """``value`` with every null dropped from its objects, as the SDK's ``exclude_none`` dump does."""
    if isinstance(value, dict):
        return {key: without_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [without_nulls(item) for item in value]
    return value


def parse_tool_input(parts: list[str]) -> Any:
    """Tool input JSON received so far, parsed as the SDK parses it (jiter, partial mode: an
    unfinished value is left out). Raises ``ValueError`` if it is not (the start of) JSON."""
    return from_json("".join(parts).encode(), partial_mode=True)


def _checked_usage(usage: Any) -> dict[str, Any]:
    if type(usage) is not dict:
        raise MalformedStream(f"usage is not an object: {usage!r}")
    for key in _COUNTS:
        value = usage.get(key)
        if value is not None and type(value) is not int:
            raise MalformedStream(f"usage {key} is not an integer: {value!r}")
    breakdown = usage.get("cache_creation")
    if breakdown is not None and type(breakdown) is not dict:
        raise MalformedStream(f"usage cache_creation is not an object: {breakdown!r}")
    return usage


class _Block:
    __slots__ = ("citations", "data", "input", "json", "kind", "pieces", "signature", "stopped")

    def __init__(self, data: Any, stopped: bool = False) -> None:
        if type(data) is not dict:
            raise MalformedStream(f"content block is not an object: {data!r}")
        data = without_nulls(data)
        kind = data.get("type")
        if kind in ("text", "thinking") and type(data.get(kind, "")) is not str:
            raise MalformedStream(f"{kind} block with a {kind} that is not a string")
        if type(data.get("citations", [])) is not list:
            raise MalformedStream("content block with citations that are not a list")
        self.data: dict[str, Any] = data
        self.kind = kind
        self.pieces: list[str] = []  # text or thinking deltas
        self.json: list[str] = []  # input_json_delta parts
        self.input: Any = _UNSET  # the parsed JSON, once the block stopped
        self.signature: Any = _UNSET
        self.citations: list[Any] = []
        self.stopped = stopped

    def stop(self) -> None:
        self.stopped = True
        if self.json:
            self.input = self.parsed_input()

    def parsed_input(self) -> Any:
        try:
            return parse_tool_input(self.json)
        except ValueError as exc:
            raise MalformedStream(f"{self.kind} input is not JSON ({exc}): {''.join(self.json)[:200]!r}") from None

    def build(self) -> dict[str, Any]:
        data = dict(self.data)
        if self.pieces:
            data[self.kind] = data.get(self.kind, "") + "".join(self.pieces)
        if self.signature is not _UNSET:
            data["signature"] = self.signature
            if self.signature is None:
                del data["signature"]
        if self.citations:
            data["citations"] = [*data.get("citations", []), *self.citations]
        if self.json:
            value = self.input
            if value is _UNSET:  # still open: its JSON so far, as the SDK shows it
                try:
                    value = parse_tool_input(self.json)
                except ValueError:  # the stream fails when this block stops; keep what it started with
                    return data
            data["input"] = value
        return data


class Accumulator:
    """Feeds on one stream's events; ``message()`` is the final message, ``snapshot()`` the partial one."""

    __slots__ = ("_blocks", "_counted", "_ended", "_message", "_open", "_stopped", "deltas")

    def __init__(self) -> None:
        self._message: dict[str, Any] | None = None
        self._blocks: list[_Block] = []
        self._open = 0  # blocks started and not stopped
        self.deltas = 0  # content deltas received
        self._stopped = False  # message_stop received
        self._counted = False  # a message_delta has given the real output count
        self._ended = False  # the last message_delta gave a stop_reason

    def feed(self, event: Any) -> None:
        """Take one decoded event; raises ``MalformedStream`` where the SDK's accumulation fails."""
        kind = None
        try:
            kind = event.get("type")
            if kind == "content_block_delta":
                self.deltas += 1
                delta = event["delta"]
                block = self._blocks[event["index"]]
                delta_type = delta.get("type")
                if delta_type == "text_delta":
                    if block.kind == "text":
                        text = delta["text"]
                        if type(text) is not str:
                            raise MalformedStream(f"text_delta with a text that is not a string: {text!r}")
                        block.pieces.append(text)
                elif delta_type == "input_json_delta":
                    if block.kind in _TOOL_BLOCKS:
                        part = delta["partial_json"]
                        if type(part) is not str:
                            raise MalformedStream(f"input_json_delta with partial_json not a string: {part!r}")
                        block.json.append(part)
                        block.input = _UNSET
                elif delta_type == "thinking_delta":
                    if block.kind == "thinking":
                        thinking = delta["thinking"]
                        if type(thinking) is not str:
                            raise MalformedStream(f"thinking_delta with thinking not a string: {thinking!r}")
                        block.pieces.append(thinking)
                elif delta_type == "signature_delta":
                    if block.kind == "thinking":
                        block.signature = delta["signature"]
                elif delta_type == "citations_delta" and block.kind == "text":
                    block.citations.append(without_nulls(delta["citation"]))
            elif kind == "content_block_start":
                self._started(kind)
                self._blocks.append(_Block(event["content_block"]))
                self._open += 1
            elif kind == "content_block_stop":
                block = self._blocks[event["index"]]
                if not block.stopped:
                    self._open -= 1
                block.stop()
            elif kind == "message_start":
                if self._message is None:  # the SDK ignores a second one
                    self._start(event["message"])
            elif kind == "message_delta":
                self._apply_message_delta(event)
            elif kind == "message_stop":
                self._started(kind)
                for block in self._blocks:
                    if block.json and block.input is _UNSET:
                        block.input = block.parsed_input()  # a tool block never stopped: the SDK parsed it already
                self._stopped = True
        except IndexError:
            raise EventOrderError(f"{kind} for block {event.get('index')!r}, which never started") from None
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise MalformedStream(f"malformed {kind or 'event'} event ({type(exc).__name__}: {exc})") from None

    def _start(self, message: Any) -> None:
        if type(message) is not dict:
            raise MalformedStream(f"message_start with a message that is not an object: {message!r}")
        message = without_nulls(message)
        if "usage" in message:
            _checked_usage(message["usage"])
        content = message.get("content", [])
        if type(content) is not list:
            raise MalformedStream("message_start with content that is not a list")
        self._blocks = [_Block(block, stopped=True) for block in content]  # the SDK appends to them
        self._message = message

    def _apply_message_delta(self, event: dict[str, Any]) -> None:
        message = self._started("message_delta")
        delta = event["delta"]
        reported = _checked_usage(event["usage"])
        usage = message.setdefault("usage", {})
        for key in ("stop_reason", "stop_sequence", "stop_details"):
            value = delta.get(key)
            if value is None:
                message.pop(key, None)
            else:
                message[key] = without_nulls(value)
        self._ended = delta.get("stop_reason") is not None
        if delta.get("container") is not None:
            message["container"] = without_nulls(delta["container"])
        output_tokens = reported.get("output_tokens")
        if output_tokens is None:  # the SDK sets it to None too; we have no count from the server
            usage.pop("output_tokens", None)
        else:
            usage["output_tokens"] = output_tokens
        self._counted = output_tokens is not None
        for key in _USAGE_OPTIONAL:
            value = reported.get(key)
            if value is not None:
                usage[key] = without_nulls(value)

    def _started(self, kind: str) -> dict[str, Any]:
        if self._message is None:
            raise EventOrderError(f'unexpected event order: {kind} before "message_start"')
        return self._message

    @property
    def started(self) -> bool:
        return self._message is not None

    @property
    def done(self) -> bool:
        """The message is complete: ``message_stop`` came, or every block stopped and a
        ``message_delta`` gave the ``stop_reason`` (the SDK returns the same message either way)."""
        return self._stopped or (self._ended and self._open == 0)

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

    def content(self) -> list[dict[str, Any]]:
        return [block.build() for block in self._blocks]

    def snapshot(self) -> dict[str, Any]:
        """The message so far, as the SDK's snapshot has it (tool input parsed partially)."""
        return {**self._started("snapshot"), "content": self.content()}

    def message(self) -> dict[str, Any]:
        """The final message; valid once ``done``."""
        return self.snapshot()
