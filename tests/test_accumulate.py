"""Our SSE decoding and accumulation against the SDK's, on every real recorded stream."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.lib.streaming._messages import accumulate_event

from orchestrator.api.accumulate import Accumulator
from orchestrator.api.failures import BrokenStream, classify
from orchestrator.api.sse import SSEDecoder
from orchestrator.models import Outcome
from orchestrator.run.attempt import LiveAttempt, stream_attempt
from tests.conftest import REAL_STREAMS

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
    assert len(STREAMS) >= 9
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
    # One fixture ends without the blank line after message_stop; SSE drops that event, so the
    # runner treats the stream as broken and retries it. The message is the same either way.
    assert ours.done is body.endswith(b"\n\n")


@pytest.mark.parametrize("name", STREAMS)
async def test_the_runner_path_streams_each_fixture(name: str) -> None:
    meta, body = fixture(name)
    live = LiveAttempt(1, 1, 0.0)
    async with replaying(200, body, "text/event-stream") as client:
        if body.endswith(b"\n\n"):
            await stream_attempt(client, request_of(meta), live)
        else:
            with pytest.raises(BrokenStream):
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


def test_tool_input_is_only_parsed_at_the_end_of_its_block() -> None:
    _, body = fixture("sdk_tool_use_stream_sonnet4")
    ours = Accumulator()
    seen_partial = False
    for event in decode_all(body, [1 << 20]):
        ours.feed(event)
        if ours.started and any("partial_json" in b for b in ours.snapshot()["content"]):
            seen_partial = True
    assert seen_partial
    tool = next(b for b in ours.message()["content"] if b["type"] == "tool_use")
    assert isinstance(tool["input"], dict)
    assert "partial_json" not in tool


def test_sse_line_endings_comments_and_multiline_data() -> None:
    body = b': comment\r\nevent: a\r\ndata: {"x":\r\ndata: 1}\r\n\r\nevent:b\rdata:2\r\rdata: 3\n\nevent: c\ndata: 4'
    for size in range(1, len(body) + 1):
        decoder = SSEDecoder()
        events = []
        for start in range(0, len(body), size):
            events += decoder.feed(body[start : start + size])
        # "data: 3" has no event line and is dropped; "c" has no blank line after it and is dropped.
        assert events == [("a", b'{"x":\n1}'), ("b", b"2")], size


def test_events_before_message_start_are_refused() -> None:
    with pytest.raises(ValueError, match="before message_start"):
        Accumulator().feed({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 1}})


def test_unknown_events_and_deltas_are_ignored() -> None:
    acc = Accumulator()
    acc.feed({"type": "brand_new_event"})
    assert not acc.started
    acc.feed({"type": "message_start", "message": {"id": "m", "content": [], "usage": {"output_tokens": 1}}})
    acc.feed({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    acc.feed({"type": "content_block_delta", "index": 0, "delta": {"type": "future_delta", "x": 1}})
    acc.feed({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "hi"}})
    assert acc.snapshot()["content"] == [{"type": "text", "text": "hi"}]
    assert acc.output_tokens == 2  # one per delta until the server's count arrives


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
