"""The simulator streams like the API: multi-token deltas, usage, blocks, stop sequences, caching, odd events, faults.

Every test goes through the real SDK client; the expected replies come from the pure plan.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import anthropic
import anyio
import httpx2
import pytest

from orchestrator.simulator import Limits, SimulatorConfig, Timing
from orchestrator.simulator.events import UNKNOWN_EVENT
from orchestrator.simulator.replies import plan_reply
from orchestrator.simulator.validation import THINKING_BUDGET
from tests.conftest import FakeClock
from tests.helpers import raises_as_the_sdk_does
from tests.test_simulator import HAIKU, REALISTIC, Simulate, partial_text, request, sse_events, text_of

pytestmark = pytest.mark.anyio

ONE_TOKEN = replace(REALISTIC, tokens_per_delta=(1, 1))
WEATHER = {
    "name": "get_weather",
    "description": "The weather at a place",
    "input_schema": {
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "a city"},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 10},
        },
        "required": ["location", "unit", "days"],
    },
}


@pytest.fixture
def simulate(simulate: Simulate) -> Simulate:
    return lambda config=None, clock=None, **options: simulate(config or REALISTIC, clock, **options)


async def raw_events(url: str, body: dict[str, Any], fault: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    headers = {"x-sim-fault": fault} if fault else {}
    async with httpx2.AsyncClient(base_url=url) as http:
        response = await http.post("/v1/messages", json={**body, "stream": True}, headers=headers)
    return sse_events(response.text)


def content(message: Any) -> list[dict[str, Any]]:
    """A message's content as plain data, streamed (parsed blocks) or not alike."""
    return [block.model_dump(exclude_none=True) for block in message.content]


def planned(config: SimulatorConfig, body: dict[str, Any]) -> Any:
    return plan_reply(config.seed, body, config.reply_min, config.reply_max)


async def test_deltas_carry_several_tokens_and_usage_comes_only_at_start_and_end(simulate: Simulate) -> None:
    body = request("Tell me a long story")
    async with simulate() as (_, client, url):
        events = await raw_events(url, body)
        async with client.messages.stream(**body) as stream:
            final = await stream.get_final_message()
    async with simulate(ONE_TOKEN) as (_, client, _), client.messages.stream(**body) as stream:
        one_by_one = await stream.get_final_message()
    deltas = [data for name, data in events if name == "content_block_delta"]
    assert text_of(final) == text_of(one_by_one) == "".join(d["delta"]["text"] for d in deltas)
    assert final.usage.output_tokens == one_by_one.usage.output_tokens
    assert len(deltas) < final.usage.output_tokens / 2
    assert max(len(d["delta"]["text"].split()) for d in deltas) > 1
    with_usage = [(name, data) for name, data in events if "usage" in data or "usage" in data.get("message", {})]
    assert [name for name, _ in with_usage] == ["message_start", "message_delta"]
    assert with_usage[0][1]["message"]["usage"]["output_tokens"] == 1  # a placeholder, as the API sends
    assert with_usage[1][1]["usage"]["output_tokens"] == final.usage.output_tokens
    assert with_usage[1][1]["usage"]["input_tokens"] == final.usage.input_tokens


async def test_chunking_is_seeded_per_attempt(simulate: Simulate) -> None:
    body = request("Chunk me")
    async with simulate() as (_, _, url):
        first = [d["delta"]["text"] for n, d in await raw_events(url, body) if n == "content_block_delta"]
        second = [d["delta"]["text"] for n, d in await raw_events(url, body) if n == "content_block_delta"]
    assert "".join(first) == "".join(second)
    assert first != second
    async with simulate() as (_, _, url):
        again = [d["delta"]["text"] for n, d in await raw_events(url, body) if n == "content_block_delta"]
    assert again == first


async def test_count_tokens_of_a_broken_streams_text_is_what_it_was_billed(simulate: Simulate) -> None:
    """A client can learn how many output tokens a broken stream's text holds from count_tokens."""
    body = request("Count me")
    async with simulate() as (sim, client, _):
        base = (await client.messages.count_tokens(model=HAIKU, messages=body["messages"])).input_tokens
        one = await client.messages.create(**request("Count me", max_tokens=1))

        async def held(text: str) -> int:
            messages = [*body["messages"], {"role": "assistant", "content": text}]
            return (await client.messages.count_tokens(model=HAIKU, messages=messages)).input_tokens - base

        overhead = await held(text_of(one)) - 1  # calibrated by difference, as against the API
        for after in (1, 2, 5, 9):
            billed_before = sim.stats.output_tokens_billed
            partial = await partial_text(client, body, f"drop after={after}")
            billed = sim.stats.output_tokens_billed - billed_before
            assert billed >= after
            assert await held(partial) - overhead == billed
        assert sim.stats.count_tokens_calls == 6


async def test_forced_tool_use_streams_json_the_sdk_parses(simulate: Simulate) -> None:
    body = {**request("Weather in Paris?"), "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "get_weather"}}
    async with simulate() as (sim, client, url):
        events = await raw_events(url, body)
        async with client.messages.stream(**body) as stream:
            streamed = await stream.get_final_message()
        plain = await client.messages.create(**body)
    plan = planned(sim.config, body)
    expected = json.loads(plan.blocks[0].text)
    assert [b.type for b in streamed.content] == ["tool_use"]
    block = streamed.content[0]
    assert block.type == "tool_use"
    assert block.name == "get_weather"
    assert block.input == expected
    assert block.id.startswith("toolu_")
    assert set(expected) == {"location", "unit", "days"}
    assert streamed.stop_reason == plain.stop_reason == "tool_use"
    assert content(streamed) == content(plain)
    assert streamed.usage.output_tokens == plain.usage.output_tokens == plan.output_tokens
    chunks = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta"]
    assert chunks[0] == ""
    assert "".join(chunks) == plan.blocks[0].text
    assert any(not chunk.endswith(('"', ",", "{", "}", ":", " ")) for chunk in chunks[1:-1])  # cut mid-key or mid-value


async def test_auto_tool_choice_sometimes_calls_a_tool_after_some_text(simulate: Simulate) -> None:
    kinds = set()
    async with simulate() as (_, client, _):
        for i in range(12):
            async with client.messages.stream(**{**request(f"q{i}"), "tools": [WEATHER]}) as stream:
                message = await stream.get_final_message()
            kinds.add((tuple(b.type for b in message.content), message.stop_reason))
    assert kinds == {(("text",), "end_turn"), (("text", "tool_use"), "tool_use")}


async def test_max_tokens_inside_tool_json_ends_with_partial_json(simulate: Simulate) -> None:
    body = {**request("Weather?", max_tokens=5), "tools": [WEATHER], "tool_choice": {"type": "any"}}
    async with simulate() as (sim, client, url):
        events = await raw_events(url, body)
        async with client.messages.stream(**body) as stream:
            streamed = await stream.get_final_message()
        plain = await client.messages.create(**body)
    full = planned(sim.config, {**body, "max_tokens": 1000}).blocks[0].text
    partial = "".join(d["delta"]["partial_json"] for n, d in events if n == "content_block_delta")
    assert full.startswith(partial)
    assert partial != full
    with pytest.raises(json.JSONDecodeError):
        json.loads(partial)
    assert streamed.stop_reason == plain.stop_reason == "max_tokens"
    assert streamed.usage.output_tokens == 5
    assert content(streamed) == content(plain)  # the partial input as the SDK parses it


async def test_thinking_comes_first_with_a_signature_and_counts_as_output(simulate: Simulate) -> None:
    body = {**request("Think", max_tokens=3000), "thinking": {"type": "enabled", "budget_tokens": 1024}}
    async with simulate() as (sim, client, url):
        events = await raw_events(url, body)
        async with client.messages.stream(**body) as stream:
            streamed = await stream.get_final_message()
        plain = await client.messages.create(**body)
        cut = await client.messages.create(
            **{**body, "max_tokens": 1100, "messages": request("Think more")["messages"]}
        )
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.create(**{**body, "thinking": {"type": "enabled", "budget_tokens": 512}})
    plan = planned(sim.config, body)
    assert [b.type for b in streamed.content] == ["thinking", "text"]
    thinking = streamed.content[0]
    assert thinking.type == "thinking"
    assert thinking.thinking == plan.blocks[0].text
    assert thinking.signature == plan.blocks[0].signature != ""
    assert content(streamed) == content(plain)
    assert streamed.usage.output_tokens == plan.output_tokens == len(plan.blocks[0].tokens) + len(plan.tokens)
    deltas = [d["delta"]["type"] for n, d in events if n == "content_block_delta" and d["index"] == 0]
    assert deltas[-1] == "signature_delta"
    assert set(deltas[:-1]) == {"thinking_delta"}
    assert cut.usage.output_tokens <= 1100
    assert caught.value.body["error"]["message"] == THINKING_BUDGET  # type: ignore[index]


async def test_stop_sequence_stops_before_it(simulate: Simulate) -> None:
    async with simulate() as (_, client, _):
        full = text_of(await client.messages.create(**request()))
        sequence = " " + full.split()[6]
        async with client.messages.stream(**request(), stop_sequences=[sequence, "never there"]) as stream:
            stopped = await stream.get_final_message()
    assert stopped.stop_reason == "stop_sequence"
    assert stopped.stop_sequence == sequence
    assert text_of(stopped) == full[: full.index(sequence)]


def cached_request(system: str, ttl: str | None = None, text: str = "Question") -> dict[str, Any]:
    control: dict[str, str] = {"type": "ephemeral", **({"ttl": ttl} if ttl else {})}
    return {**request(text), "system": [{"type": "text", "text": system, "cache_control": control}]}


async def test_prompt_cache_is_written_then_read_within_its_ttl(simulate: Simulate) -> None:
    clock = FakeClock()
    system = "Background. " * 2500  # 5,000 tokens: above Haiku 4.5's minimum of 4,096
    async with simulate(clock=clock) as (sim, client, _):
        total = (
            await client.messages.count_tokens(**{k: v for k, v in cached_request(system).items() if k != "max_tokens"})
        ).input_tokens
        async with client.messages.stream(**cached_request(system)) as stream:
            first = (await stream.get_final_message()).usage
        clock.advance(299)
        second = (await client.messages.create(**cached_request(system, text="Another"))).usage
        clock.advance(299)  # a read refreshed the entry: still there
        third = (await client.messages.create(**cached_request(system))).usage
        clock.advance(301)
        expired = (await client.messages.create(**cached_request(system))).usage
        clock.advance(301)
        long_lived = (await client.messages.create(**cached_request(system, ttl="1h"))).usage
        clock.advance(3000)
        still = (await client.messages.create(**cached_request(system, ttl="1h"))).usage
        short = (await client.messages.create(**cached_request("Too short to cache."))).usage
    written = first.cache_creation_input_tokens
    assert written is not None
    assert written >= 5000
    assert first.cache_creation is not None
    assert first.cache_creation.ephemeral_5m_input_tokens == written
    assert first.cache_read_input_tokens == 0
    assert first.input_tokens + written == total
    assert second.cache_read_input_tokens == written
    assert second.cache_creation_input_tokens == 0
    assert 0 < second.input_tokens < 20
    assert third.cache_read_input_tokens == written
    assert expired.cache_creation_input_tokens == written
    assert expired.cache_read_input_tokens == 0
    assert long_lived.cache_creation is not None
    assert long_lived.cache_creation.ephemeral_1h_input_tokens == written
    assert still.cache_read_input_tokens == written
    assert short.cache_creation_input_tokens == short.cache_read_input_tokens == 0
    assert sim.stats.cache_creation_input_tokens_billed == 3 * written
    assert sim.stats.cache_read_input_tokens_billed == 3 * written


async def test_requests_sent_at_once_all_write_a_prefix_whose_first_response_has_not_begun(
    simulate: Simulate,
) -> None:
    system = "Background. " * 2500
    slow_start = replace(REALISTIC, timing=Timing(ttft=0.5, tokens_per_second=1e6))  # each response begins at 0.5 s
    async with simulate(slow_start) as (sim, client, _):
        usages: list[anthropic.types.Usage] = []

        async def send(i: int) -> None:
            usages.append((await client.messages.create(**cached_request(system, text=f"Question {i}"))).usage)

        async with anyio.create_task_group() as group:
            for i in range(8):
                group.start_soon(send, i)
        after = (await client.messages.create(**cached_request(system, text="Later"))).usage
    written = usages[0].cache_creation_input_tokens
    assert written is not None
    assert written > 4096
    assert [(u.cache_creation_input_tokens, u.cache_read_input_tokens) for u in usages] == [(written, 0)] * 8
    assert (after.cache_creation_input_tokens, after.cache_read_input_tokens) == (0, written)
    assert sim.stats.cache_creation_input_tokens_billed == 8 * written


async def test_a_stream_that_never_began_writes_nothing_readable_and_one_that_began_does(
    simulate: Simulate,
) -> None:
    system = "Background. " * 2500
    async with simulate() as (sim, client, _):
        with raises_as_the_sdk_does(httpx2.RemoteProtocolError):  # dropped before message_start
            async with client.messages.stream(
                **cached_request(system), extra_headers={"x-sim-fault": "drop at=0"}
            ) as broken:
                await broken.get_final_message()
        async with client.messages.stream(**cached_request(system, text="Another")) as stream:
            async for event in stream:  # message_start has come: the entry is readable from now
                assert event.type == "message_start"
                began = event.message.usage
                reader = (await client.messages.create(**cached_request(system, text="Third"))).usage
                break
    assert sim.stats.cache_creation_input_tokens_billed == 2 * (began.cache_creation_input_tokens or 0)
    assert began.cache_read_input_tokens == 0
    assert reader.cache_read_input_tokens == began.cache_creation_input_tokens


async def test_odd_events_are_legal_and_the_sdk_accumulates_through_them(simulate: Simulate) -> None:
    seen: set[str] = set()
    mid_block_ping = False
    message_deltas = set()
    async with simulate() as (_, client, url):
        for i in range(30):
            body = request(f"odd {i}", max_tokens=60)
            events = await raw_events(url, body)
            seen.update(name for name, _ in events)
            message_deltas.add(sum(1 for name, _ in events if name == "message_delta"))
            open_block = False
            for name, _ in events:
                open_block = name in ("content_block_start", "content_block_delta") or (open_block and name == "ping")
                mid_block_ping = mid_block_ping or (open_block and name == "ping" and events[1][0] != "ping")
            async with client.messages.stream(**body) as stream:
                final = await stream.get_final_message()
            assert text_of(final) == "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert UNKNOWN_EVENT in seen
    assert mid_block_ping
    assert message_deltas == {1, 2}  # "one or more", with cumulative usage


async def test_no_stop_is_complete_by_the_sdks_accumulation(simulate: Simulate) -> None:
    async with simulate() as (sim, client, url):
        full = await client.messages.create(**request())
        events = await raw_events(url, request(), "no_stop")
        async with client.messages.stream(**request(), extra_headers={"x-sim-fault": "no_stop"}) as stream:
            broken = await stream.get_final_message()
    names = [name for name, _ in events]
    assert "message_stop" not in names
    assert names[-1] in ("message_delta", "ping", UNKNOWN_EVENT)
    assert names.index("message_delta") > max(i for i, name in enumerate(names) if name == "content_block_stop")
    assert broken.stop_reason == "end_turn"
    assert text_of(broken) == text_of(full)
    assert sim.stats.faults_injected["no_stop"] == 2


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("drop at=0", httpx2.RemoteProtocolError),  # before message_start
        ("truncate at=0", AssertionError),  # an empty body: the SDK has no message to give
        ("error_event at=0", anthropic.APIStatusError),
        ("malformed variant=not_json", json.JSONDecodeError),
        ("malformed variant=orphan_delta", IndexError),
    ],
)
async def test_faults_at_the_edges_and_malformed_events(
    simulate: Simulate, fault: str, expected: type[Exception]
) -> None:
    async with simulate() as (sim, client, _):
        with raises_as_the_sdk_does(expected):
            async with client.messages.stream(**request(), extra_headers={"x-sim-fault": fault}) as stream:
                await stream.get_final_message()
    assert sim.stats.faults_injected[fault.split()[0]] == 1


async def test_unknown_blocks_and_deltas_pass_through_the_sdk(simulate: Simulate) -> None:
    async with simulate() as (_, client, url):
        full = text_of(await client.messages.create(**request()))
        events = await raw_events(url, request(), "malformed variant=unknown_delta")
        async with client.messages.stream(
            **request(), extra_headers={"x-sim-fault": "malformed variant=unknown_delta"}
        ) as s:
            with_delta = await s.get_final_message()
        async with client.messages.stream(
            **request(), extra_headers={"x-sim-fault": "malformed variant=unknown_block"}
        ) as s:
            with_block = await s.get_final_message()
    unknown = [d for n, d in events if n == "content_block_delta" and d["delta"]["type"] not in ("text_delta",)]
    assert len(unknown) == 1
    assert text_of(with_delta) == text_of(with_block) == full
    assert [b.type for b in with_block.content] == ["text", "sim_future_block"]


async def test_a_drawn_fault_can_strike_after_the_message_delta(simulate: Simulate) -> None:
    """Seeded positions range over the whole stream after the first delta, message_delta included."""
    tails = set()
    async with simulate() as (_, _, url):
        for i in range(40):
            events = await raw_events(url, request(f"t{i}", max_tokens=8), "truncate")
            tails.add(events[-1][0])
    assert {"content_block_delta", "message_delta"} <= tails


async def test_input_rate_limit_counts_cache_writes_not_reads(simulate: Simulate) -> None:
    clock = FakeClock()
    system = "Background. " * 2500  # 7,500 tokens
    config = replace(REALISTIC, limits=Limits(itpm=60_000, burst_seconds=10))  # a bucket of 10,000
    async with simulate(config, clock=clock) as (_, client, _):
        await client.messages.create(**cached_request(system))  # writes 7,500
        for i in range(5):  # reads cost almost nothing
            await client.messages.create(**cached_request(system, text=f"Question {i}"))
        with pytest.raises(anthropic.RateLimitError):  # the same prompt uncached does not fit
            await client.messages.create(**{**request(), "system": system})
