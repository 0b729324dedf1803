"""The simulator against the real SDK: replies, usage, faults, limits, prefill, validation."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import datetime
from typing import Any

import anthropic
import anyio
import httpx2
import pytest

from orchestrator.simulator import FaultRates, Limits, SimulatorConfig, Timing
from orchestrator.simulator.validation import PREFILL_REJECTED, TRAILING_WHITESPACE
from tests.conftest import INSTANT, REAL_STREAMS, FakeClock, Running
from tests.helpers import raises_as_the_sdk_does

pytestmark = pytest.mark.anyio

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
HAIKU = "claude-haiku-4-5"
# Like the API: several tokens per delta, extra pings, now and then an unknown event.
REALISTIC = SimulatorConfig(timing=INSTANT, tokens_per_delta=(1, 5))


@pytest.fixture
def simulate(simulate: Simulate) -> Simulate:
    """The simulator streams like the API here unless a test gives its own config."""
    return lambda config=None, clock=None, **options: simulate(config or REALISTIC, clock, **options)


def request(text: str = "Tell me a story", model: str = HAIKU, max_tokens: int = 1000) -> dict[str, Any]:
    return {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]}


def text_of(message: Any) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


async def partial_text(client: anthropic.AsyncAnthropic, body: dict[str, Any], fault: str) -> str:
    """Stream raw events and keep the text received before the stream breaks."""
    pieces: list[str] = []

    async def consume() -> None:
        stream = await client.messages.create(**body, stream=True, extra_headers={"x-sim-fault": fault})
        async for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                pieces.append(event.delta.text)

    with raises_as_the_sdk_does(httpx2.RemoteProtocolError):
        await consume()
    return "".join(pieces)


async def test_stream_equals_non_stream_and_usage_is_consistent(simulate: Simulate) -> None:
    async with simulate() as (sim, client, _):
        body = request()
        async with client.messages.stream(**body) as stream:
            streamed = await stream.get_final_message()
        plain = await client.messages.create(**body)
        counted = await client.messages.count_tokens(model=body["model"], messages=body["messages"])
    assert text_of(streamed) == text_of(plain) != ""
    assert streamed.stop_reason == plain.stop_reason == "end_turn"
    assert streamed.usage.output_tokens == plain.usage.output_tokens > 0
    assert streamed.usage.input_tokens == plain.usage.input_tokens == counted.input_tokens > 0
    assert streamed.usage.cache_read_input_tokens == 0
    assert streamed.id != plain.id
    assert sim.stats.output_tokens_billed == 2 * streamed.usage.output_tokens
    assert sim.stats.input_tokens_billed == 2 * counted.input_tokens


async def test_stats_count_every_event_sent(simulate: Simulate) -> None:
    async with simulate() as (sim, client, _):
        body = bytearray()
        for i in range(3):
            async with client.messages.with_streaming_response.create(
                **request(f"count my events {i}"), stream=True
            ) as response:
                async for chunk in response.http_response.aiter_bytes():
                    body += chunk
    assert sim.stats.events_sent == body.count(b"\n\n") > 3 * 6  # start, block start/stop, deltas, stop


async def test_replies_are_deterministic_and_vary_in_length(simulate: Simulate) -> None:
    async with simulate() as (_, client, _):
        first = [await client.messages.create(**request(f"prompt {i}")) for i in range(8)]
        again = [await client.messages.create(**request(f"prompt {i}")) for i in range(8)]
    assert [text_of(m) for m in first] == [text_of(m) for m in again]
    assert len({m.usage.output_tokens for m in first}) > 4
    async with simulate(replace(REALISTIC, seed=7)) as (_, client, _):
        other_seed = await client.messages.create(**request("prompt 0"))
    assert text_of(other_seed) != text_of(first[0])


async def test_max_tokens_cuts_the_reply(simulate: Simulate) -> None:
    async with simulate() as (_, client, _):
        full = await client.messages.create(**request())
        async with client.messages.stream(**request(max_tokens=5)) as stream:
            cut = await stream.get_final_message()
    assert cut.stop_reason == "max_tokens"
    assert cut.usage.output_tokens == 5
    assert text_of(full).startswith(text_of(cut))


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("drop after=3", httpx2.RemoteProtocolError),
        ("overloaded", anthropic.OverloadedError),
        ("server_error", anthropic.InternalServerError),
    ],
)
async def test_faults_raise_what_the_sdk_raises(simulate: Simulate, fault: str, expected: type[Exception]) -> None:
    async with simulate() as (sim, client, _):
        with raises_as_the_sdk_does(expected):
            async with client.messages.stream(**request(), extra_headers={"x-sim-fault": fault}) as stream:
                await stream.get_final_message()
    assert sim.stats.faults_injected[fault.split()[0]] == 1


async def test_in_band_error_is_a_status_error_with_status_200(simulate: Simulate) -> None:
    async with simulate() as (_, client, _):
        with pytest.raises(anthropic.APIStatusError) as caught:
            async with client.messages.stream(**request(), extra_headers={"x-sim-fault": "error_event after=4"}) as s:
                await s.get_final_message()
    assert caught.value.status_code == 200
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }


async def test_clean_end_without_message_stop_gives_no_stop_reason(simulate: Simulate) -> None:
    async with simulate() as (_, client, _):
        full = await client.messages.create(**request())
        async with client.messages.stream(**request(), extra_headers={"x-sim-fault": "truncate after=4"}) as stream:
            broken = await stream.get_final_message()
    assert broken.stop_reason is None
    assert text_of(full).startswith(text_of(broken))
    assert len(text_of(broken)) < len(text_of(full))


async def test_stall_surfaces_as_read_timeout(simulate: Simulate) -> None:
    async with simulate(timeout=httpx2.Timeout(5.0, read=0.2)) as (sim, client, _):
        with raises_as_the_sdk_does(httpx2.ReadTimeout):
            async with client.messages.stream(
                **request(), extra_headers={"x-sim-fault": "stall after=2 seconds=30"}
            ) as stream:
                await stream.get_final_message()
        assert sim.stats.faults_injected["stall"] == 1


async def test_fault_directive_in_the_prompt_and_times(simulate: Simulate) -> None:
    body = request("Hello <<sim-fault: overloaded times=2>>")
    async with simulate() as (_, client, _):
        for _ in range(2):
            with pytest.raises(anthropic.OverloadedError):
                await client.messages.create(**body)
        recovered = await client.messages.create(**body)
    assert recovered.stop_reason == "end_turn"


async def test_random_faults_are_reproducible_and_retries_can_succeed(simulate: Simulate) -> None:
    config = replace(REALISTIC, faults=FaultRates(overloaded=0.5))

    async def outcomes(cfg: SimulatorConfig) -> list[bool]:
        results = []
        async with simulate(cfg) as (_, client, _):
            for i in range(30):
                try:
                    await client.messages.create(**request(f"p{i}"))
                    results.append(True)
                except anthropic.OverloadedError:
                    results.append(False)
        return results

    first, second = await outcomes(config), await outcomes(config)
    assert first == second
    assert 5 < first.count(False) < 25
    assert await outcomes(replace(config, seed=3)) != first
    async with simulate(config) as (_, client, _):
        for i in range(30):
            for _attempt in range(20):
                try:
                    await client.messages.create(**request(f"p{i}"))
                    break
                except anthropic.OverloadedError:
                    continue
            else:
                pytest.fail("a retried request never got through")


async def test_rate_limit_headers_are_present_and_sane(simulate: Simulate) -> None:
    clock = FakeClock()
    config = SimulatorConfig(timing=INSTANT, limits=Limits(rpm=600, itpm=600_000, otpm=120_000, burst_seconds=10))
    async with simulate(config, clock=clock) as (_, client, _):
        raw = await client.messages.with_raw_response.create(**request())
        second = await client.messages.with_raw_response.create(**request())
    headers = raw.headers
    assert headers["request-id"].startswith("req_")
    assert headers["anthropic-ratelimit-requests-limit"] == "600"
    assert headers["anthropic-ratelimit-requests-remaining"] == "99"  # burst of 10 s at 10/s, one taken
    assert int(second.headers["anthropic-ratelimit-requests-remaining"]) == 98
    assert headers["anthropic-ratelimit-input-tokens-limit"] == "600000"
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == "100000"  # 99,9xx to the nearest thousand
    assert headers["anthropic-ratelimit-output-tokens-limit"] == "120000"
    assert headers["anthropic-ratelimit-tokens-limit"] == "720000"
    for name in ("requests", "input-tokens", "output-tokens", "tokens"):
        reset = datetime.fromisoformat(headers[f"anthropic-ratelimit-{name}-reset"].replace("Z", "+00:00"))
        assert reset.tzinfo is not None


async def test_exceeding_rpm_gets_429_with_retry_after(simulate: Simulate) -> None:
    clock = FakeClock()
    config = SimulatorConfig(timing=INSTANT, limits=Limits(rpm=60, burst_seconds=3))
    async with simulate(config, clock=clock) as (sim, client, _):
        for _ in range(3):
            await client.messages.create(**request())
        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.messages.create(**request())
        assert caught.value.response.headers["retry-after"] == "1"
        assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        clock.advance(1.0)
        await client.messages.create(**request())
    assert sim.stats.rate_limited == 1


async def test_output_tokens_limit_refuses_until_refilled(simulate: Simulate) -> None:
    clock = FakeClock()
    config = SimulatorConfig(timing=INSTANT, reply_min=100, reply_max=100, limits=Limits(otpm=600, burst_seconds=10))
    async with simulate(config, clock=clock) as (_, client, _):
        await client.messages.create(**request())  # 100 tokens from a bucket of 100
        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.messages.create(**request())
        assert int(caught.value.response.headers["retry-after"]) >= 1
        clock.advance(10.0)
        await client.messages.create(**request())


async def test_input_tokens_limit(simulate: Simulate) -> None:
    clock = FakeClock()
    config = SimulatorConfig(timing=INSTANT, limits=Limits(itpm=6000, burst_seconds=10))  # bucket of 1000
    big = request("x" * 3000)  # about 760 input tokens
    async with simulate(config, clock=clock) as (_, client, _):
        await client.messages.create(**big)
        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.messages.create(**big)
        assert "input tokens per minute" in caught.value.message


async def test_spend_cap_has_error_code_and_no_retry_after(simulate: Simulate) -> None:
    async with simulate(SimulatorConfig(timing=INSTANT, limits=Limits(spend_cap=True))) as (_, client, _):
        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.messages.create(**request())
    assert "retry-after" not in caught.value.response.headers
    assert caught.value.body["error"]["details"]["error_code"] == "enforced_spend_limit_reached"  # type: ignore[index]


@pytest.mark.parametrize("model", ["claude-haiku-4-5", "claude-sonnet-4-5-20250929", "claude-opus-4-5"])
async def test_prefill_resumes_a_broken_reply_byte_for_byte(simulate: Simulate, model: str) -> None:
    async with simulate() as (_, client, _):
        full = text_of(await client.messages.create(**request(model=model)))
        for after in (0, 1, 7, 25):
            partial = await partial_text(client, request(model=model), f"drop after={after}")
            prefill = partial.rstrip()
            body = request(model=model)
            if prefill:
                body["messages"].append({"role": "assistant", "content": prefill})
            async with client.messages.stream(**body) as stream:
                continued = await stream.get_final_message()
            assert prefill + text_of(continued) == full
            assert continued.stop_reason == "end_turn"


async def test_prefill_token_accounting_and_max_tokens(simulate: Simulate) -> None:
    async with simulate() as (_, client, _):
        full = await client.messages.create(**request())
        partial = await partial_text(client, request(), "drop after=3")
        body = request(max_tokens=3)
        body["messages"].append({"role": "assistant", "content": partial.rstrip()})
        cut = await client.messages.create(**body)
    assert cut.stop_reason == "max_tokens"
    assert cut.usage.output_tokens == 3
    assert text_of(full).startswith(partial.rstrip() + text_of(cut))


@pytest.mark.parametrize(
    "model",
    ["claude-sonnet-4-6", "claude-opus-4-6", "claude-opus-5", "claude-sonnet-5", "claude-opus-5-5", "claude-haiku-5-5"],
)
async def test_new_models_reject_prefill(simulate: Simulate, model: str) -> None:
    body = request(model=model)
    body["messages"].append({"role": "assistant", "content": "Once upon"})
    async with simulate() as (_, client, _):
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.create(**body)
        with pytest.raises(anthropic.BadRequestError) as counted:  # count_tokens checks it too
            await client.messages.count_tokens(model=model, messages=body["messages"])
    assert caught.value.body["error"]["message"] == PREFILL_REJECTED  # type: ignore[index]
    assert counted.value.body["error"]["message"] == PREFILL_REJECTED  # type: ignore[index]


async def test_prefill_with_trailing_whitespace_is_rejected(simulate: Simulate) -> None:
    body = request()
    body["messages"].append({"role": "assistant", "content": "Once upon "})
    async with simulate() as (_, client, _):
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.create(**body)
    assert caught.value.body["error"]["message"] == TRAILING_WHITESPACE  # type: ignore[index]


BAD_BODIES: list[tuple[Any, str]] = [
    ({"max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}, "model: Field required"),
    ({"model": HAIKU, "messages": [{"role": "user", "content": "x"}]}, "max_tokens: Field required"),
    (
        {"model": HAIKU, "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]},
        "max_tokens: Input should",
    ),
    (
        {"model": HAIKU, "max_tokens": "9", "messages": [{"role": "user", "content": "x"}]},
        "max_tokens: Input should",
    ),
    ({"model": HAIKU, "max_tokens": 10}, "messages: Field required"),
    (
        {**request(max_tokens=2000), "thinking": {"type": "enabled", "budget_tokens": 1000}},
        "greater than or equal to 1024",
    ),
    (
        {**request(max_tokens=2000), "thinking": {"type": "enabled", "budget_tokens": 2000}},
        "`max_tokens` must be greater",
    ),
    (
        {
            **request(max_tokens=3000),
            "thinking": {"type": "enabled", "budget_tokens": 2000},
            "tool_choice": {"type": "any"},
        },
        "Thinking may not be enabled when tool_choice forces tool use",
    ),
    (
        {
            "model": HAIKU,
            "max_tokens": 3000,
            "thinking": {"type": "enabled", "budget_tokens": 2000},
            "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "Once"}],
        },
        "must start with a thinking block",
    ),
    ({**request(), "tools": [{"name": "t"}]}, "input_schema: Field required"),
    (
        {**request(), "tools": [{"name": "t", "input_schema": {}}], "tool_choice": {"type": "tool", "name": "u"}},
        "not found",
    ),
    ({**request(), "stop_sequences": [" "]}, "non-whitespace"),
    ({**request(), "system": [{"type": "text", "text": "s", "cache_control": {"type": "forever"}}]}, "cache_control"),
    (
        {**request(), "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}] * 5},
        "A maximum of 4 blocks with cache_control may be provided. Found 5.",
    ),
    (
        {
            **request(),
            "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "q", "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
                }
            ],
        },
        "messages.0.content.0.cache_control.ttl: a ttl='1h' cache_control block must not come after a ttl='5m'",
    ),
    (
        {
            **request(),
            "cache_control": {"type": "ephemeral"},
            "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}] * 4,
        },
        "A maximum of 4 blocks with cache_control may be provided. Found 5.",
    ),
    ({"model": HAIKU, "max_tokens": 10, "messages": []}, "messages: at least one"),
    ({"model": HAIKU, "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
    (
        {"model": HAIKU, "max_tokens": 10, "messages": [{"role": "user"}]},
        "messages.0.content: Field required",
    ),
    ({"model": HAIKU, "max_tokens": 10, "messages": [{"role": "user", "content": ""}]}, "non-empty content"),
    ({"model": HAIKU, "max_tokens": 10, "messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    (
        {"model": HAIKU, "max_tokens": 10, "messages": [{"role": "user", "content": [{"text": "x"}]}]},
        "content.0",
    ),
    (
        {"model": HAIKU, "max_tokens": 10, "messages": ["hi"]},
        "messages.0: Input should be a valid dictionary",
    ),
    (
        {"model": HAIKU, "max_tokens": 10, "messages": [{"role": "user", "content": "x"}], "foo": 1},
        "foo: Extra",
    ),
    (
        {"model": HAIKU, "max_tokens": 10, "temperature": 3, "messages": [{"role": "user", "content": "x"}]},
        "temp",
    ),
    ([1, 2, 3], "must be a JSON object"),
    ("not json at all", "not valid JSON"),
]


@pytest.mark.parametrize(("body", "message"), BAD_BODIES)
async def test_bad_requests_get_the_api_400(simulate: Simulate, body: Any, message: str) -> None:
    async with simulate() as (sim, client, url), httpx2.AsyncClient(base_url=url) as http:
        content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        response = await http.post("/v1/messages", content=content, headers={"content-type": "application/json"})
        assert response.status_code == 400
        payload = response.json()
        assert payload["type"] == "error"
        assert payload["error"]["type"] == "invalid_request_error"
        assert message in payload["error"]["message"]
        assert payload["request_id"] == response.headers["request-id"]
        assert response.headers["x-should-retry"] == "false"
        ok = await client.messages.create(**request())  # the server still serves
        assert ok.stop_reason == "end_turn"
        assert sim.stats.outcomes["invalid"] == 1


async def test_unknown_model_is_404_and_bad_key_is_401(simulate: Simulate) -> None:
    config = SimulatorConfig(timing=INSTANT, reject_api_keys=frozenset({"sk-test"}))
    async with simulate() as (_, client, _):
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.create(**request(model="gpt-4"))
    async with simulate(config) as (_, client, _):
        with pytest.raises(anthropic.AuthenticationError) as caught:
            async with client.messages.stream(**request()) as stream:
                await stream.get_final_message()
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


KNOWN_EVENTS = {
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
    "ping",
    "error",
}


def sse_events(raw: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in raw.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def key_shape(value: Any) -> Any:
    """The nested key sets of a JSON value (dicts only), to compare shapes, not values."""
    if isinstance(value, dict):
        return {key: key_shape(item) for key, item in value.items()}
    return None


async def test_wire_shape_matches_a_real_recorded_stream(simulate: Simulate) -> None:
    plain = replace(REALISTIC, odd_events=False, unknown_events=False)
    async with simulate(plain) as (_, _client, url), httpx2.AsyncClient(base_url=url) as http:
        response = await http.post("/v1/messages", json={**request(max_tokens=15), "stream": True})
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    ours = sse_events(response.text)
    assert {name for name, _ in ours} <= KNOWN_EVENTS
    assert [name for name, _ in ours][:3] == ["message_start", "content_block_start", "ping"]
    assert [name for name, _ in ours][-3:] == ["content_block_stop", "message_delta", "message_stop"]
    for name, data in ours:
        assert data["type"] == name
    real = sse_events((REAL_STREAMS / "server_tool_search_stream_sonnet46.sse").read_text())
    real_shapes = {name: key_shape(data) for name, data in real if name != "content_block_delta"}
    real_shapes["content_block_delta"] = key_shape(real[3][1])
    for name, data in ours:
        shape = key_shape(data)
        expected = real_shapes[name]
        if name == "message_start":
            del expected["message"]["usage"]["inference_geo"]
        if name == "message_delta":
            del expected["usage"]["server_tool_use"], expected["context_management"]
        if name == "content_block_start":
            expected = key_shape(real[1][1])
        assert shape == expected, name


async def test_stats_endpoint(simulate: Simulate) -> None:
    async with simulate() as (_, client, url), httpx2.AsyncClient(base_url=url) as http:
        for i in range(3):
            await client.messages.create(**request(f"p{i}"))
        stats = (await http.get("/_simulator/stats")).json()
    assert stats["requests"] == 3
    assert stats["outcomes"] == {"ok": 3}
    assert stats["output_tokens_billed"] > 0


async def test_timing_paces_the_stream(simulate: Simulate) -> None:
    # 20 tokens at 1,000 tokens/s after a 50 ms first token: the stream cannot finish before 65 ms.
    config = SimulatorConfig(reply_min=20, reply_max=20, timing=Timing(ttft=0.05, tokens_per_second=1000))
    async with simulate(config) as (_, client, _):
        start = anyio.current_time()
        message = await client.messages.create(**request())
        elapsed = anyio.current_time() - start
    assert message.usage.output_tokens == 20
    assert elapsed >= 0.065


async def test_peak_concurrent_streams_is_counted(simulate: Simulate) -> None:
    config = SimulatorConfig(reply_min=5, reply_max=5, timing=Timing(ttft=0.5, tokens_per_second=1000))
    async with simulate(config) as (sim, client, _), anyio.create_task_group() as group:
        for i in range(10):
            group.start_soon(_stream_one, client, f"p{i}")
    assert sim.stats.peak_streams == 10
    assert sim.stats.streams_now == 0


async def _stream_one(client: anthropic.AsyncAnthropic, text: str) -> None:
    async with client.messages.stream(**request(text)) as stream:
        await stream.get_final_message()
