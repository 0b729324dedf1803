"""Our SSE decoding and accumulation against the SDK's: on every real recorded stream, on the
simulator's streams (tool calls cut by max_tokens, thinking, odd and malformed events), event by
event, and on streams the SDK cannot take."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic._streaming import SSEDecoder as SDKDecoder
from anthropic.lib.streaming._messages import accumulate_event

from orchestrator.api.accumulate import Accumulator
from orchestrator.api.failures import classify
from orchestrator.api.sse import SSEDecoder
from orchestrator.errors import EventOrderError, MalformedStream
from orchestrator.models import Outcome
from orchestrator.run.attempt import LiveAttempt, stream_attempt
from orchestrator.simulator import SimulatorConfig
from tests.conftest import INSTANT, REAL_STREAMS, Running
from tests.helpers import TOOLS

pytestmark = pytest.mark.anyio

STREAMS = sorted(p.stem for p in REAL_STREAMS.glob("*.json") if not p.stem.startswith("error_"))
ERRORS = sorted(p.stem for p in REAL_STREAMS.glob("error_*.json"))


def fixture(name: str) -> tuple[dict[str, Any], bytes]:
    meta = json.loads((REAL_STREAMS / f"{name}.json").read_text())
    return meta, (REAL_STREAMS / f"{name}.sse").read_bytes()


def replaying(
    status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
) -> anthropic.AsyncAnthropic:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(status, content=body, headers={"content-type": content_type, **(headers or {})})

    http = httpx2.AsyncClient(transport=httpx2.MockTransport(handler))
    return anthropic.AsyncAnthropic(api_key="sk-test", max_retries=0, http_client=http)


def request_of(meta: dict[str, Any]) -> dict[str, Any]:
    recorded = meta.get("request") or {}
    return {
        "model": recorded.get("model", "claude-sonnet-4-20250514"),
        "max_tokens": recorded.get("max_tokens", 1024),
        "messages": recorded.get("messages", [{"role": "user", "content": "hi"}]),
    }


def test_all_fixtures_are_covered() -> None:
    assert len(STREAMS) == 9
    assert ERRORS == ["error_400_invalid_request", "error_401_on_stream_request"]


def decode_all(body: bytes, sizes: list[int]) -> list[dict[str, Any]]:
    """Decode ``body`` fed in chunks of the given sizes (cycled), keeping every non-ping event."""
    decoder = SSEDecoder()
    events: list[dict[str, Any]] = []
    position = 0
    turn = 0
    while position < len(body):
        size = sizes[turn % len(sizes)]
        events += [json.loads(data) for name, data in decoder.feed(body[position : position + size]) if name != "ping"]
        position += size
        turn += 1
    return events


async def sdk_accumulation(meta: dict[str, Any], body: bytes) -> dict[str, Any]:
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    async with replaying(200, body, "text/event-stream") as client:
        stream = await client.messages.create(**request_of(meta), stream=True)
        async for event in stream:
            snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    return snapshot.model_dump(mode="json", exclude_none=True)


@pytest.mark.parametrize("name", STREAMS)
@pytest.mark.parametrize("sizes", [[1 << 20], [1], [7, 13, 1, 64], [4096]])
async def test_decoding_and_accumulation_equal_the_sdk(name: str, sizes: list[int]) -> None:
    meta, body = fixture(name)
    ours = Accumulator()
    for event in decode_all(body, sizes):
        ours.feed(event)
    assert ours.message() == meta["expected"]
    assert ours.message() == await sdk_accumulation(meta, body)
    # One fixture ends without the blank line after message_stop: the SDK's decoder drops that
    # last event as ours does, and returns the whole message all the same; so is it complete.
    assert ours.done


@pytest.mark.parametrize("name", STREAMS)
async def test_the_runner_path_streams_each_fixture(name: str) -> None:
    meta, body = fixture(name)
    live = LiveAttempt(1, 1, 0.0)
    async with replaying(200, body, "text/event-stream") as client:
        await stream_attempt(client, request_of(meta), live)
    assert live.acc.message() == meta["expected"]
    assert live.first_token_at is not None
    assert live.acc.output_tokens == meta["expected"]["usage"]["output_tokens"]


@pytest.mark.parametrize("name", STREAMS)
def test_snapshots_along_the_way_hold_the_output_so_far(name: str) -> None:
    meta, body = fixture(name)
    ours = Accumulator()
    finals = [b.get("text", "") for b in meta["expected"]["content"]]
    for event in decode_all(body, [1 << 20]):
        ours.feed(event)
        if ours.started:
            partial = ours.snapshot()
            assert partial["id"] == meta["expected"]["id"]
            for got, final in zip(partial["content"], finals, strict=False):
                assert final.startswith(got.get("text", ""))


def sdk_steps(events: list[Any]) -> list[Any]:
    """The SDK's snapshot after each event (dumped as a result is), ending with the name of its
    exception if it raised one."""
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    steps: list[Any] = []
    for event in events:
        try:
            snapshot = accumulate_event(event=copy.deepcopy(event), current_snapshot=snapshot, json_bufs=json_bufs)
        except Exception as exc:
            return [*steps, type(exc).__name__]
        # (warnings=False: pydantic warns when it dumps an unknown block through the known ones)
        steps.append(snapshot.model_dump(mode="json", exclude_none=True, warnings=False))
    return steps


def our_steps(events: list[Any]) -> tuple[list[Any], Accumulator]:
    """Our snapshot after each event (a copy, as the writer stores it), ending with
    ``MalformedStream`` if the accumulator raised it."""
    acc = Accumulator()
    steps: list[Any] = []
    for event in events:
        try:
            acc.feed(event)
        except MalformedStream:
            return [*steps, "MalformedStream"], acc
        steps.append(json.loads(json.dumps(acc.snapshot())))
    return steps, acc


def assert_same_as_the_sdk(events: list[Any]) -> Accumulator:
    """Our snapshots equal the SDK's after every event, and we fail where it fails."""
    sdk, (ours, acc) = sdk_steps(events), our_steps(events)
    assert [isinstance(step, str) for step in ours] == [isinstance(step, str) for step in sdk]
    assert [step for step in ours if not isinstance(step, str)] == [step for step in sdk if not isinstance(step, str)]
    return acc


def feed_all(events: list[Any]) -> Accumulator:
    acc = Accumulator()
    for event in events:
        acc.feed(event)
    return acc


@pytest.mark.parametrize("name", STREAMS)
def test_the_snapshot_after_every_event_is_the_sdks(name: str) -> None:
    _, body = fixture(name)
    assert_same_as_the_sdk(decode_all(body, [1 << 20]))


def test_tool_input_is_parsed_partially_as_the_sdk_does() -> None:
    meta, body = fixture("sdk_tool_use_stream_sonnet4")
    events = decode_all(body, [1 << 20])
    inputs = []
    ours = Accumulator()
    for event in events:
        ours.feed(event)
        inputs += [b["input"] for b in ours.snapshot()["content"] if b["type"] == "tool_use"]
    assert inputs[0] == {}  # as the block started, until a JSON value is whole
    assert inputs[-1] == meta["expected"]["content"][1]["input"] == {"location": "Paris"}
    # Cut by max_tokens inside a value: the SDK (jiter, partial mode) leaves the unfinished value out.
    tool_at = next(i for i, e in enumerate(events) if e["type"] == "content_block_start" and e["index"] == 1)
    end = [{"type": "content_block_stop", "index": 1}, *events[-1:]]
    assert end[-1]["type"] == "message_delta"  # the fixture's message_stop was dropped with its blank line
    for partial_json, expected in [
        ('{"location": "Par', {}),
        ('{"location": "Paris", "unit": "c', {"location": "Paris"}),
    ]:
        cut = delta(1, "input_json_delta", partial_json=partial_json)
        acc = assert_same_as_the_sdk([*events[: tool_at + 1], cut, *end])
        assert acc.done
        assert acc.message()["content"][1]["input"] == expected


START: dict[str, Any] = {
    "type": "message_start",
    "message": {"id": "m", "type": "message", "content": [], "usage": {"output_tokens": 1}},
}
TEXT: dict[str, Any] = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
TOOL: dict[str, Any] = {
    "type": "content_block_start",
    "index": 1,
    "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}},
}
STOP0, STOP1 = {"type": "content_block_stop", "index": 0}, {"type": "content_block_stop", "index": 1}
END: dict[str, Any] = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}


def delta(index: int, kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": index, "delta": {"type": kind, **fields}}


@pytest.mark.parametrize(
    ("events", "error"),
    [
        pytest.param([delta(0, "text_delta", text="x")], EventOrderError, id="delta"),
        pytest.param([{"type": "message_stop"}], EventOrderError, id="message_stop"),
        pytest.param([END], EventOrderError, id="message_delta"),
        pytest.param([TEXT], EventOrderError, id="block start"),
        pytest.param([STOP0], EventOrderError, id="block stop"),
        pytest.param(["not an object"], MalformedStream, id="not an object"),
        pytest.param([{**START, "message": "no"}], MalformedStream, id="message not an object"),
    ],
)
def test_events_before_message_start_are_refused(events: list[Any], error: type[Exception]) -> None:
    assert isinstance(sdk_steps(events)[-1], str)  # the SDK raises too
    with pytest.raises(error):
        feed_all(events)


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([START, delta(0, "text_delta", text="x")], id="delta before its block start"),
        pytest.param([START, TEXT, delta(3, "text_delta", text="x")], id="delta for an unknown index"),
        pytest.param([START, TEXT, STOP0, STOP1], id="stop for an unknown index"),
        pytest.param([START, TEXT, TOOL, delta(1, "input_json_delta", partial_json='{"a": }'), STOP1], id="bad JSON"),
        pytest.param([START, TEXT, delta(0, "text_delta")], id="text_delta without text"),
        pytest.param([START, TEXT, STOP0, {"type": "message_delta", "delta": {}}], id="message_delta without usage"),
        pytest.param([START, {"type": "content_block_start", "index": 0}], id="block start without a block"),
        pytest.param([START, {"type": "content_block_delta", "index": 0}], id="delta without a delta"),
    ],
)
def test_streams_the_sdk_fails_on_are_malformed(events: list[Any]) -> None:
    sdk = sdk_steps(events)
    assert isinstance(sdk[-1], str)  # the SDK raises too
    with pytest.raises(MalformedStream):
        feed_all(events)
    # Every snapshot before is the SDK's (bad tool JSON fails at its block's stop, not at the delta).
    assert our_steps(events)[0][: len(sdk) - 1] == sdk[:-1]


@pytest.mark.parametrize(
    "events",
    [
        pytest.param(
            [START, TEXT, delta(0, "future_delta", x=1), delta(0, "text_delta", text="hi")], id="unknown delta"
        ),
        pytest.param([START, {"type": "future_event", "x": [1]}, TEXT, STOP0, END], id="unknown event"),
        pytest.param(
            [START, {"type": "content_block_start", "index": 0, "content_block": {"type": "x", "v": 1}}],
            id="unknown block",
        ),
        pytest.param(
            [START, TEXT, TOOL, delta(0, "input_json_delta", partial_json="{"), delta(1, "text_delta", text="x")],
            id="deltas of another block kind",
        ),
        pytest.param(
            [START, TEXT, delta(0, "thinking_delta", thinking="t"), delta(0, "signature_delta", signature="s")],
            id="thinking deltas on text",
        ),
        pytest.param([START, TEXT, STOP0, delta(0, "text_delta", text="late"), STOP0], id="delta after its stop"),
        pytest.param([START, TEXT, {**START, "message": {**START["message"], "id": "other"}}], id="second start"),
        pytest.param([START, TOOL, delta(0, "input_json_delta", partial_json="")], id="empty JSON"),
        pytest.param([START, TEXT, STOP0, {**END, "usage": {}}], id="message_delta without output_tokens"),
        pytest.param(
            [
                {**START, "message": {**START["message"], "content": [{"type": "text", "text": "a"}]}},
                TEXT,
                delta(1, "text_delta", text="b"),
            ],
            id="content in message_start",
        ),
    ],
)
def test_odd_streams_the_sdk_accepts_give_its_message(events: list[Any]) -> None:
    assert not isinstance(sdk_steps(events)[-1], str)
    assert_same_as_the_sdk(events)


def test_unknown_events_are_ignored_even_before_message_start() -> None:
    # The API says to ignore unknown event types; the SDK fails on one before message_start.
    acc = feed_all([{"type": "brand_new_event"}, START, TEXT, delta(0, "text_delta", text="hi"), STOP0, END])
    assert acc.done
    assert acc.message()["content"] == [{"type": "text", "text": "hi"}]


def test_a_message_is_complete_without_message_stop_when_every_block_stopped_with_a_stop_reason() -> None:
    text = delta(0, "text_delta", text="hi")
    assert feed_all([START, TEXT, text, STOP0, END]).done
    assert feed_all([START, END]).done  # an empty reply
    assert not feed_all([START, TEXT, text, STOP0]).done  # no message_delta
    assert not feed_all([START, TEXT, text, END]).done  # a block never stopped
    assert not feed_all([START, TEXT, text, STOP0, {**END, "delta": {"stop_reason": None}}]).done
    assert not feed_all([START, TEXT, text, STOP0, END, TOOL]).done  # a block started after it
    assert feed_all([START, TEXT, text, {"type": "message_stop"}]).done  # message_stop says it is whole
    uncounted = feed_all([START, TEXT, text, STOP0, {**END, "usage": {}}])
    assert uncounted.done
    assert not uncounted.counted  # a message_delta without output_tokens gave no count


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,"delta":{"type":"te\n\n',
            id="not JSON",
        ),
        pytest.param(b"event: content_block_delta\ndata: \xff\xfe\n\n", id="data not UTF-8"),
        pytest.param(b"event: \xffcontent_block_delta\ndata: {}\n\n", id="name not UTF-8"),
        pytest.param(b'event: message_delta\ndata: {"type":"message_delta",\ndata: "delta":{}}\n\n', id="no usage"),
    ],
)
async def test_undecodable_data_is_a_malformed_stream(body: bytes) -> None:
    _, real = fixture("text_stream_opus3")
    cut = real.index(b"event: content_block_delta")
    live = LiveAttempt(1, 1, 0.0)
    async with replaying(200, real[:cut] + body + real[cut:], "text/event-stream") as client:
        with pytest.raises(MalformedStream) as caught:
            await stream_attempt(client, request_of({}), live)
        with pytest.raises(Exception):  # noqa: B017, PT011 -- the SDK fails on it too (JSON, UTF-8 or key errors)
            async with client.messages.stream(**request_of({})) as stream:
                await stream.get_final_message()
    failure = classify(caught.value)
    assert failure is not None
    assert (failure.outcome, failure.reason) == (Outcome.BROKEN, "malformed_stream")
    assert live.acc.snapshot()["content"] == [{"type": "text", "text": ""}]  # what came before it is kept


def sdk_reads(body: bytes, size: int) -> list[tuple[str, str]]:
    """The events the SDK's stream goes on to read from ``body`` (``AsyncStream.__stream__``)."""
    read = []
    for sse in SDKDecoder().iter_bytes(iter([body[i : i + size] for i in range(0, len(body), size)])):
        if sse.event is None or sse.event == "ping" or (not sse.data and sse.event != "error"):
            continue
        read.append((sse.event, sse.data))
    return read


def our_reads(body: bytes, size: int) -> list[tuple[str, str]]:
    decoder = SSEDecoder()
    read = []
    for start in range(0, len(body), size):
        for name, data in decoder.feed(body[start : start + size]):
            if name != "ping" and (data or name == "error"):
                read.append((name, data.decode()))
    return read


ODD_BODIES = [
    b': comment\r\nevent: a\r\ndata: {"x":\r\ndata: 1}\r\n\r\nevent:b\rdata:2\r\rdata: 3\n\nevent: c\ndata: 4',
    b"event: a\ndata\ndata: x\n\nevent\ndata: y\n\nevent: a\nevent\ndata: z\n\nevent: error\n\nevent: e\ndata:\n\n",
    b"event: a\nid: 3\nretry: 5\nfoo: bar\ndata:  two spaces\n\n\n\nevent: ping\ndata: {}\n\nevent: b\ndata: last\n",
]


@pytest.mark.parametrize("size", [1, 3, 64, 1 << 20])
def test_our_sse_decoder_reads_what_the_sdks_reads(size: int) -> None:
    for body in [fixture(name)[1] for name in STREAMS] + ODD_BODIES:
        assert our_reads(body, size) == sdk_reads(body, size)


Simulate = Callable[..., AbstractAsyncContextManager[Running]]


def simulator_requests() -> list[tuple[dict[str, Any], str | None]]:
    """Text, forced and optional tool calls and thinking, cut by max_tokens anywhere, with faults."""
    bodies: list[dict[str, Any]] = []
    for max_tokens in (1, 4, 7, 11, 16, 24, 40, 300):
        base: dict[str, Any] = {"model": "claude-haiku-4-5", "max_tokens": max_tokens}
        bodies += [
            {**base, "messages": [{"role": "user", "content": f"text {max_tokens}"}]},
            {
                **base,
                "messages": [{"role": "user", "content": f"tool {max_tokens}"}],
                "tools": TOOLS,
                "tool_choice": {"type": "any"},
            },
            {**base, "messages": [{"role": "user", "content": f"auto {max_tokens}"}], "tools": TOOLS},
            {
                **base,
                "max_tokens": 1024 + max_tokens,
                "messages": [{"role": "user", "content": f"think {max_tokens}"}],
                "thinking": {"type": "enabled", "budget_tokens": 1024},
            },
        ]
    faults = [
        None,
        "no_stop",
        "malformed variant=orphan_delta",
        "malformed variant=unknown_block",
        "malformed variant=unknown_delta",
    ]
    return [(body, fault) for body in bodies for fault in faults]


async def test_the_simulators_streams_accumulate_as_the_sdks(simulate: Simulate) -> None:
    config = SimulatorConfig(timing=INSTANT, tokens_per_delta=(1, 5))
    seen: set[str] = set()
    async with simulate(config) as (_, client, _):
        for body, fault in simulator_requests():
            headers = {"x-sim-fault": fault} if fault else {}
            async with client.messages.with_streaming_response.create(
                **body, stream=True, extra_headers=headers
            ) as raw:
                wire = SSEDecoder().feed(await raw.http_response.aread())
            events = [json.loads(data) for name, data in wire if name != "ping"]
            acc = assert_same_as_the_sdk(events)
            if fault == "malformed variant=orphan_delta":  # both fail at the orphan delta
                assert sdk_steps(events)[-1] == "IndexError"
                continue
            assert acc.done
            message = acc.message()
            seen.update(f"{block['type']}:{message['stop_reason']}" for block in message["content"])
    # Tool calls cut inside their JSON by max_tokens were among them, thinking, and unknown blocks.
    assert {"tool_use:max_tokens", "tool_use:tool_use", "text:end_turn", "sim_future_block:end_turn"} <= seen
    assert any(kind.startswith("thinking:") for kind in seen)


def test_sse_line_endings_comments_and_multiline_data() -> None:
    body = b': comment\r\nevent: a\r\ndata: {"x":\r\ndata: 1}\r\n\r\nevent:b\rdata:2\r\rdata: 3\n\nevent: c\ndata: 4'
    for size in range(1, len(body) + 1):
        decoder = SSEDecoder()
        events = []
        for start in range(0, len(body), size):
            events += decoder.feed(body[start : start + size])
        # "data: 3" has no event line and is dropped; "c" has no blank line after it and is dropped.
        assert events == [("a", b'{"x":\n1}'), ("b", b"2")], size


def test_output_tokens_are_one_per_delta_until_the_servers_count_arrives() -> None:
    acc = feed_all([START, TEXT, delta(0, "future_delta", x=1), delta(0, "text_delta", text="hi")])
    assert acc.output_tokens == 2
    acc.feed(END)
    assert acc.output_tokens == 3


@pytest.mark.parametrize(
    ("name", "outcome"),
    [("error_400_invalid_request", Outcome.PERMANENT), ("error_401_on_stream_request", Outcome.FATAL)],
)
async def test_real_error_responses_are_classified(name: str, outcome: Outcome) -> None:
    meta, body = fixture(name)
    headers = {k: v[0] for k, v in meta["response_headers"].items() if k.lower() in ("x-should-retry", "request-id")}
    async with replaying(meta["status"], body, "application/json", headers) as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await stream_attempt(client, request_of(meta), LiveAttempt(1, 1, 0.0))
    assert type(caught.value).__name__ == meta["expected"]["exception"]
    failure = classify(caught.value)
    assert failure is not None
    assert failure.outcome is outcome
    assert failure.error == meta["expected"]["body"]
