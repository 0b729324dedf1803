"""Our accumulator against the SDK's, on every real recorded stream and on simulator streams."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx2
import pytest
from anthropic.lib.streaming._messages import accumulate_event

from orchestrator.accumulate import Accumulator
from orchestrator.models import Outcome
from orchestrator.retry import classify
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


@pytest.mark.parametrize("name", STREAMS)
async def test_accumulation_equals_the_sdk_on_real_streams(name: str) -> None:
    meta, body = fixture(name)
    ours = Accumulator()
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    async with replaying(200, body, "text/event-stream") as client:
        stream = await client.messages.create(**request_of(meta), stream=True)
        async for event in stream:
            ours.feed(event)
            snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    # One fixture ends without the blank line after message_stop; SSE drops that event, so the
    # runner would treat the stream as broken and retry it. The message is the same either way.
    assert ours.done is body.endswith(b"\n\n")
    assert ours.message() == meta["expected"]
    assert snapshot is not None
    assert ours.message() == snapshot.model_dump(mode="json", exclude_none=True)


@pytest.mark.parametrize("name", STREAMS)
async def test_snapshots_along_the_way_hold_the_text_so_far(name: str) -> None:
    meta, body = fixture(name)
    ours = Accumulator()
    async with replaying(200, body, "text/event-stream") as client:
        stream = await client.messages.create(**request_of(meta), stream=True)
        async for event in stream:
            ours.feed(event)
            if ours.started:
                partial = ours.snapshot()
                assert partial["id"] == meta["expected"]["id"]
                texts = [b.get("text", "") for b in partial["content"] if b["type"] == "text"]
                finals = [b["text"] for b in meta["expected"]["content"] if b["type"] == "text"]
                for got, final in zip(texts, finals, strict=False):
                    assert final.startswith(got)
    assert ours.output_tokens == meta["expected"]["usage"]["output_tokens"]


async def test_tool_input_is_only_parsed_at_the_end_of_its_block() -> None:
    meta, body = fixture("sdk_tool_use_stream_sonnet4")
    ours = Accumulator()
    async with replaying(200, body, "text/event-stream") as client:
        stream = await client.messages.create(**request_of(meta), stream=True)
        seen_partial = False
        async for event in stream:
            ours.feed(event)
            if ours.started and any("partial_json" in b for b in ours.snapshot()["content"]):
                seen_partial = True
    assert seen_partial
    tool = next(b for b in ours.message()["content"] if b["type"] == "tool_use")
    assert isinstance(tool["input"], dict)
    assert "partial_json" not in tool


@pytest.mark.parametrize(
    ("name", "outcome"),
    [("error_400_invalid_request", Outcome.PERMANENT), ("error_401_on_stream_request", Outcome.FATAL)],
)
async def test_real_error_responses_are_classified(name: str, outcome: Outcome) -> None:
    meta, body = fixture(name)
    headers = {k: v[0] for k, v in meta["response_headers"].items() if k.lower() in ("x-should-retry", "request-id")}
    async with replaying(meta["status"], body, "application/json", headers) as client:
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client.messages.create(**request_of(meta), stream=True)
    assert type(caught.value).__name__ == meta["expected"]["exception"]
    failure = classify(caught.value)
    assert failure is not None
    assert failure.outcome is outcome
    assert failure.error == meta["expected"]["body"]


def test_events_before_message_start_are_refused() -> None:
    class Stop:
        type = "message_delta"

    with pytest.raises(ValueError, match="before message_start"):
        Accumulator().feed(Stop())


def test_unknown_events_are_ignored() -> None:
    class Unknown:
        type = "brand_new_event"

    acc = Accumulator()
    acc.feed(Unknown())
    assert not acc.started
    assert not acc.done
