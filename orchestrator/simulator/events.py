"""A reply as the API sends it (pure): the non-streamed content, and the stream's wire events.

The stream is built whole before it is sent: each event knows how many output tokens have been
generated once it is out, which is what pacing, rate limits and billing go by, and what a fault
cut at that event leaves billed.
"""

from __future__ import annotations

import json
import random
from json.encoder import encode_basestring_ascii as _quoted  # a JSON string, as json.dumps writes it
from typing import Any, NamedTuple

import jiter

from orchestrator.simulator.faults import Fault, FaultKind
from orchestrator.simulator.replies import PlannedBlock, ReplyPlan

UNKNOWN_EVENT = "sim_future_event"  # an event type no client knows
UNKNOWN_BLOCK = "sim_future_block"  # a content block type no client knows
UNKNOWN_DELTA = "sim_future_delta"  # a delta type no client knows


def sse(event: str, payload: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


PING = sse("ping", {"type": "ping"})
MESSAGE_STOP = sse("message_stop", {"type": "message_stop"})
ERROR_EVENT = sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})


class WireEvent(NamedTuple):
    data: bytes
    tokens: int  # output tokens generated once this event is out
    delta: bool = False  # a content_block_delta


def tool_input_of(block: PlannedBlock) -> Any:
    """A tool_use block's input: its JSON, or what the SDK parses of it when max_tokens cut it."""
    if block.complete:
        return json.loads(block.text)
    return jiter.from_json(block.text.encode(), partial_mode=True) if block.text else {}


def content_of(plan: ReplyPlan) -> list[dict[str, Any]]:
    """The content of the non-streamed message: what accumulating the stream gives."""
    content: list[dict[str, Any]] = []
    for block in plan.blocks:
        if block.kind == "text":
            content.append({"type": "text", "text": block.text})
        elif block.kind == "thinking":
            signature = block.signature if block.complete else ""
            content.append({"type": "thinking", "thinking": block.text, "signature": signature})
        else:
            content.append({"type": "tool_use", "id": block.ident, "name": block.name, "input": tool_input_of(block)})
    return content


def _start(index: int, block: PlannedBlock) -> bytes:
    started: dict[str, Any]
    if block.kind == "text":
        started = {"type": "text", "text": ""}
    elif block.kind == "thinking":
        started = {"type": "thinking", "thinking": "", "signature": ""}
    else:
        started = {"type": "tool_use", "id": block.ident, "name": block.name, "input": {}}
    return sse("content_block_start", {"type": "content_block_start", "index": index, "content_block": started})


_DELTA_FIELD = {"text": ("text_delta", "text"), "thinking": ("thinking_delta", "thinking")}


def _delta_head(index: int, kind: str, field: str) -> bytes:
    """A content_block_delta event up to its value: the part every delta of a block shares."""
    head = f'event: content_block_delta\ndata: {{"type":"content_block_delta","index":{index},'
    return f'{head}"delta":{{"type":"{kind}","{field}":'.encode()


def _delta(index: int, kind: str, field: str, value: str) -> bytes:
    return _delta_head(index, kind, field) + _quoted(value).encode() + b"}}\n\n"


def _stop(index: int) -> bytes:
    return sse("content_block_stop", {"type": "content_block_stop", "index": index})


def _groups(tokens: list[str], rng: random.Random, per_delta: tuple[int, int]) -> list[list[str]]:
    fewest, most = per_delta
    if fewest == most:
        return [tokens[start : start + most] for start in range(0, len(tokens), most)]
    groups: list[list[str]] = []
    start = 0
    while start < len(tokens):
        size = rng.randint(fewest, most)
        groups.append(tokens[start : start + size])
        start += size
    return groups


def stream_events(
    plan: ReplyPlan,
    start: dict[str, Any],
    final_usage: dict[str, Any],
    rng: random.Random,
    per_delta: tuple[int, int],
    odd: bool,
    unknown: bool,
) -> list[WireEvent]:
    """Every event of the stream: ``start`` is message_start's message, ``final_usage`` message_delta's usage."""
    events = [WireEvent(sse("message_start", {"type": "message_start", "message": start}), 0)]
    tokens = 0
    for index, block in enumerate(plan.blocks):
        events.append(WireEvent(_start(index, block), tokens))
        if index == 0:
            events.append(WireEvent(PING, tokens))  # the API pings once the first block has started
        if block.kind == "tool_use":
            kind, field = "input_json_delta", "partial_json"
            events.append(WireEvent(_delta(index, kind, field, ""), tokens, delta=True))
        else:
            kind, field = _DELTA_FIELD[block.kind]
        head = _delta_head(index, kind, field)
        for group in _groups(block.tokens, rng, per_delta):
            tokens += len(group)
            events.append(WireEvent(head + _quoted("".join(group)).encode() + b"}}\n\n", tokens, True))
        if block.kind == "thinking" and block.complete:
            if odd and rng.random() < 0.5:  # an empty thinking delta before the signature, as seen from the API
                events.append(WireEvent(_delta(index, kind, field, ""), tokens, delta=True))
            events.append(WireEvent(_delta(index, "signature_delta", "signature", block.signature), tokens, True))
        events.append(WireEvent(_stop(index), tokens))
    delta: dict[str, Any] = {"stop_reason": plan.stop_reason, "stop_sequence": plan.stop_sequence}
    if plan.stop_details is not None:
        delta["stop_details"] = plan.stop_details
    message_delta = WireEvent(
        sse("message_delta", {"type": "message_delta", "delta": delta, "usage": final_usage}), tokens
    )
    # The API sends "one or more" message_delta events, their usage cumulative: now and then, two.
    events += [message_delta] * (2 if odd and rng.random() < 0.1 else 1)
    events.append(WireEvent(MESSAGE_STOP, tokens))
    extras: list[bytes] = []
    if odd:
        extras += [PING] * rng.randint(0, 2)
    if unknown and rng.random() < 0.1:
        extras.append(sse(UNKNOWN_EVENT, {"type": UNKNOWN_EVENT, "note": "clients must ignore unknown events"}))
    for data in extras:  # anywhere after message_start, mid-block too
        at = rng.randint(1, len(events) - 1)
        events.insert(at, WireEvent(data, events[at - 1].tokens))
    return events


def fault_position(fault: Fault, events: list[WireEvent]) -> int:
    """How many events go out before the fault strikes."""
    last = len(events) - 1  # at least message_stop is missing
    if fault.kind is FaultKind.NO_STOP:
        return last
    if fault.at is not None:
        return max(0, min(fault.at, last))
    if fault.after is None:  # anywhere after the first content delta (``at=E`` strikes earlier)
        first = next((p + 1 for p, event in enumerate(events) if event.delta), last)
        return first + min(int(fault.spot * (last - first + 1)), last - first)
    seen = 0
    for position, event in enumerate(events):
        if event.delta:
            if seen == fault.after:
                return position
            seen += 1
    return max(position for position, event in enumerate(events) if event.delta or position == 0) + 1


def _open_blocks(events: list[WireEvent]) -> list[int | None]:
    """For each position, the index of the block open there (between its start and its stop), if any."""
    opened: list[int | None] = []
    current: int | None = None
    for event in events:
        opened.append(current)
        if event.data.startswith(b"event: content_block_start"):
            current = json.loads(event.data.split(b"data: ", 1)[1])["index"]
        elif event.data.startswith(b"event: content_block_stop"):
            current = None
    return opened


def with_malformed(events: list[WireEvent], position: int, variant: str, blocks: int) -> list[WireEvent]:
    """The stream with one malformed event inserted at (or near) ``position``, after message_start."""
    position = max(1, position)
    if variant == "unknown_block":  # after the last block, so the indices of the others stay right
        position = max(p for p, event in enumerate(events) if event.data.startswith(b"event: content_block_stop")) + 1
        started = {"type": "content_block_start", "index": blocks, "content_block": {"type": UNKNOWN_BLOCK}}
        added = [sse("content_block_start", started), _stop(blocks)]
    elif variant == "unknown_delta":  # inside a block
        opened = _open_blocks(events)
        inside = [p for p, index in enumerate(opened) if index is not None]
        position = next((p for p in inside if p >= position), inside[-1])
        index = opened[position]
        added = [
            sse(
                "content_block_delta", {"type": "content_block_delta", "index": index, "delta": {"type": UNKNOWN_DELTA}}
            )
        ]
    elif variant == "orphan_delta":
        added = [_delta(blocks, "text_delta", "text", " orphan")]
    else:  # not_json
        added = [b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"te\n\n']
    tokens = events[position - 1].tokens
    return [*events[:position], *(WireEvent(data, tokens) for data in added), *events[position:]]
