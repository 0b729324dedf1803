"""The simulator's Message Batches API against the real SDK (``client.messages.batches.*``).

Batches live on the simulator's clock: every test drives a FakeClock, so nothing sleeps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any

import anthropic
import httpx2
import pytest

from orchestrator.cli.parser import build_parser, simulator_config
from orchestrator.simulator import BatchSettings, Limits, SimulatorConfig
from orchestrator.simulator.batch_api import LINES_PER_WRITE
from orchestrator.simulator.batches import Batches, BatchStats, parse_requests
from tests.conftest import INSTANT, FakeClock, Running

pytestmark = pytest.mark.anyio

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
HAIKU = "claude-haiku-4-5"


def params(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": HAIKU, "max_tokens": 200, "messages": [{"role": "user", "content": text}], **extra}


def batch_requests(count: int, prefix: str = "req") -> list[dict[str, Any]]:
    return [{"custom_id": f"{prefix}-{i}", "params": params(f"prompt {prefix} {i}")} for i in range(count)]


def config(**batches: Any) -> SimulatorConfig:
    return SimulatorConfig(timing=INSTANT, batches=BatchSettings(**batches))


async def results_of(client: anthropic.AsyncAnthropic, batch_id: str) -> list[Any]:
    return [entry async for entry in await client.messages.batches.results(batch_id)]


async def test_a_batch_runs_to_its_end_and_its_results_equal_the_direct_replies(simulate: Simulate) -> None:
    clock = FakeClock()
    requests = batch_requests(5)
    async with simulate(config(seconds=10), clock=clock) as (sim, client, url):
        batch = await client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        assert batch.id.startswith("msgbatch_")
        assert batch.type == "message_batch"
        assert batch.processing_status == "in_progress"
        assert batch.request_counts.model_dump() == {
            "processing": 5,
            "succeeded": 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        }
        assert batch.ended_at is None
        assert batch.results_url is None
        assert batch.cancel_initiated_at is None
        assert batch.expires_at - batch.created_at == timedelta(hours=24)

        clock.advance(6)  # three of five requests are done, but counts stay in processing until the end
        midway = await client.messages.batches.retrieve(batch.id)
        assert midway.processing_status == "in_progress"
        assert midway.request_counts.processing == 5
        assert midway.request_counts.succeeded == 0
        assert sim.stats.batches.tokens_billed["output_tokens"] > 0

        clock.advance(4)
        ended = await client.messages.batches.retrieve(batch.id)
        assert ended.processing_status == "ended"
        assert ended.request_counts.processing == 0
        assert ended.request_counts.succeeded == 5
        assert ended.ended_at == batch.created_at + timedelta(seconds=10)
        assert ended.results_url == f"{url}/v1/messages/batches/{batch.id}/results"

        results = await results_of(client, batch.id)
        direct = {}
        for request in requests:
            plain = await client.messages.create(**request["params"])
            async with client.messages.stream(**request["params"]) as stream:
                streamed = await stream.get_final_message()
            assert plain.model_dump(exclude={"id"}) == streamed.model_dump(exclude={"id"})
            direct[request["custom_id"]] = plain.model_dump(exclude={"id"})

    assert sorted(entry.custom_id for entry in results) == sorted(direct)
    for entry in results:
        assert entry.result.type == "succeeded"
        message = entry.result.message.model_dump(exclude={"id"})
        assert message["usage"].pop("service_tier") == "batch"
        assert direct[entry.custom_id]["usage"].pop("service_tier") == "standard"
        assert message == direct[entry.custom_id]
    billed = sim.stats.batches
    assert billed.created == billed.ended == 1
    assert billed.results == Counter(succeeded=5)
    assert billed.tokens_billed["input_tokens"] == sum(e.result.message.usage.input_tokens for e in results)
    assert billed.tokens_billed["output_tokens"] == sum(e.result.message.usage.output_tokens for e in results)


TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def test_tool_use_thinking_and_stop_sequences_come_out_of_a_batch_as_they_stream(simulate: Simulate) -> None:
    requests: list[dict[str, Any]] = [
        {"custom_id": "tool", "params": params("Weather?", tools=[TOOL], tool_choice={"type": "any"})},
        {"custom_id": "auto-tool", "params": params("Weather in Paris?", tools=[TOOL])},
        {
            "custom_id": "thinking",
            "params": params("Think", max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 1024}),
        },
        {"custom_id": "stop", "params": params("Tell me a story", stop_sequences=[" the", " of", " and"])},
    ]
    async with simulate(config(seconds=0)) as (_, client, _):
        batch = await client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        await client.messages.batches.retrieve(batch.id)
        results = {entry.custom_id: entry.result for entry in await results_of(client, batch.id)}
        for request in requests:
            async with client.messages.stream(**request["params"]) as stream:
                streamed = (await stream.get_final_message()).model_dump(exclude={"id"})
            result = results[request["custom_id"]]
            assert result.type == "succeeded"
            batched = result.message.model_dump(exclude={"id"})
            batched["usage"]["service_tier"] = "standard"
            assert batched == streamed
    assert results["tool"].message.stop_reason == "tool_use"
    assert results["thinking"].message.content[0].type == "thinking"
    assert results["stop"].message.stop_reason == "stop_sequence"


async def test_results_are_shuffled_and_streamed_in_chunks(simulate: Simulate) -> None:
    count = 2 * LINES_PER_WRITE + 10
    async with simulate(config(seconds=0)) as (sim, client, _):
        batch = await client.messages.batches.create(requests=batch_requests(count))  # type: ignore[arg-type]
        ended = await client.messages.batches.retrieve(batch.id)
        assert ended.processing_status == "ended"
        assert ended.results_url is not None
        async with (
            httpx2.AsyncClient() as http,
            http.stream("GET", ended.results_url, headers={"x-api-key": "sk-test"}) as response,
        ):
            assert response.headers["content-type"] == "application/x-jsonl"
            assert response.headers["transfer-encoding"] == "chunked"
            body = b"".join([chunk async for chunk in response.aiter_raw()])
        order = [entry.custom_id for entry in await results_of(client, batch.id)]
    assert body.count(b"\n") == count
    assert sorted(order) == sorted(f"req-{i}" for i in range(count))
    assert order != [f"req-{i}" for i in range(count)]
    assert sim.stats.batches.results == Counter(succeeded=count)


async def test_list_pages_newest_first_both_ways(simulate: Simulate) -> None:
    async with simulate(config()) as (_, client, _):
        ids = [
            (await client.messages.batches.create(requests=batch_requests(1, f"b{i}"))).id  # type: ignore[arg-type]
            for i in range(5)
        ]
        newest_first = ids[::-1]
        first = await client.messages.batches.list(limit=2)
        assert [b.id for b in first.data] == newest_first[:2]
        assert first.has_more is True
        assert (first.first_id, first.last_id) == (newest_first[0], newest_first[1])
        assert [b.id async for b in client.messages.batches.list(limit=2)] == newest_first

        last = await client.messages.batches.list(after_id=newest_first[2], limit=2)
        assert [b.id for b in last.data] == newest_first[3:]
        assert last.has_more is False

        newer = await client.messages.batches.list(before_id=ids[0], limit=2)
        assert [b.id for b in newer.data] == [ids[2], ids[1]]
        assert newer.has_more is True
        newest = await newer.get_next_page()
        assert [b.id for b in newest.data] == [ids[4], ids[3]]
        assert newest.has_more is False

        everything = await client.messages.batches.list(limit=1000)
        assert [b.id for b in everything.data] == newest_first
        assert everything.has_more is False
        for bad in (0, 1001):
            with pytest.raises(anthropic.BadRequestError, match="limit"):
                await client.messages.batches.list(limit=bad)
        with pytest.raises(anthropic.BadRequestError, match="after_id"):
            await client.messages.batches.list(after_id="msgbatch_unknown")


async def test_cancel_keeps_what_is_done_and_cancels_the_rest(simulate: Simulate) -> None:
    clock = FakeClock()
    async with simulate(config(seconds=10, cancel_seconds=1), clock=clock) as (sim, client, url):
        batch = await client.messages.batches.create(requests=batch_requests(4))  # type: ignore[arg-type]
        clock.advance(5)  # requests 0 and 1 are done
        canceling = await client.messages.batches.cancel(batch.id)
        assert canceling.processing_status == "canceling"
        assert canceling.cancel_initiated_at == batch.created_at + timedelta(seconds=5)
        assert canceling.request_counts.processing == 4
        assert canceling.results_url is None
        assert (await client.messages.batches.cancel(batch.id)).cancel_initiated_at == canceling.cancel_initiated_at
        with pytest.raises(anthropic.AnthropicError, match="results_url"):
            await client.messages.batches.results(batch.id)
        async with httpx2.AsyncClient() as http:
            early = await http.get(f"{url}/v1/messages/batches/{batch.id}/results", headers={"x-api-key": "sk-test"})
        assert early.status_code == 400
        assert early.json()["error"]["type"] == "invalid_request_error"

        clock.advance(10)  # past the batch's own end: nothing more is processed after a cancel
        ended = await client.messages.batches.retrieve(batch.id)
        assert ended.processing_status == "ended"
        assert ended.ended_at == canceling.cancel_initiated_at + timedelta(seconds=1)
        counts = ended.request_counts
        assert (counts.succeeded, counts.canceled, counts.processing) == (2, 2, 0)
        results = {entry.custom_id: entry.result.type for entry in await results_of(client, batch.id)}
        assert results == {"req-0": "succeeded", "req-1": "succeeded", "req-2": "canceled", "req-3": "canceled"}
        with pytest.raises(anthropic.BadRequestError, match="already ended"):
            await client.messages.batches.cancel(batch.id)
    assert sim.stats.batches.canceled == 1
    assert sim.stats.batches.results == Counter(succeeded=2, canceled=2)


async def test_batches_with_a_time_range_end_in_any_order_their_requests_at_seeded_times(simulate: Simulate) -> None:
    async def run(seed: int) -> tuple[list[int], list[str]]:
        clock = FakeClock()
        ranged = SimulatorConfig(seed=seed, timing=INSTANT, batches=BatchSettings(seconds=10, seconds_max=100))
        async with simulate(ranged, clock=clock) as (_, client, _):
            batches = []
            for number in range(6):
                batches.append(await client.messages.batches.create(requests=batch_requests(8, f"b{number}")))  # type: ignore[arg-type]
                clock.advance(1)
            ended_order: list[int] = []
            for _ in range(100):
                clock.advance(1)
                for index, batch in enumerate(batches):
                    if index not in ended_order:
                        seen = await client.messages.batches.retrieve(batch.id)
                        if seen.processing_status == "ended":
                            ended_order.append(index)
                            elapsed = (seen.ended_at - seen.created_at).total_seconds()  # type: ignore[operator]
                            assert 10 <= elapsed <= 100
            assert sorted(ended_order) == list(range(6))
            # Requests finish in a seeded order at seeded times: a cancel halfway keeps a seeded subset.
            late = await client.messages.batches.create(requests=batch_requests(20, "late"))  # type: ignore[arg-type]
            clock.advance(20)
            await client.messages.batches.cancel(late.id)
            clock.advance(10)
            kept = sorted(e.custom_id for e in await results_of(client, late.id) if e.result.type == "succeeded")
        return ended_order, kept

    order, kept = await run(seed=1)
    assert order != sorted(order)  # a later batch ended first
    assert await run(seed=1) == (order, kept)  # seeded
    others = [await run(seed=seed) for seed in (2, 3)]
    assert any(other != (order, kept) for other in others)
    assert 0 < len(kept) < 20
    assert kept != [f"late-{i}" for i in range(len(kept))]  # not the first ones in the batch's order


async def test_only_an_ended_batch_can_be_deleted(simulate: Simulate) -> None:
    clock = FakeClock()
    async with simulate(config(seconds=10), clock=clock) as (sim, client, _):
        batch = await client.messages.batches.create(requests=batch_requests(2))  # type: ignore[arg-type]
        with pytest.raises(anthropic.BadRequestError, match="in_progress"):
            await client.messages.batches.delete(batch.id)
        await client.messages.batches.cancel(batch.id)
        with pytest.raises(anthropic.BadRequestError, match="canceling"):
            await client.messages.batches.delete(batch.id)
        clock.advance(10)
        deleted = await client.messages.batches.delete(batch.id)
        assert (deleted.id, deleted.type) == (batch.id, "message_batch_deleted")
        for call in (client.messages.batches.retrieve, client.messages.batches.delete, client.messages.batches.cancel):
            with pytest.raises(anthropic.NotFoundError):
                await call(batch.id)
        assert (await client.messages.batches.list()).data == []
    assert sim.stats.batches.deleted == 1


@pytest.mark.parametrize(
    ("requests", "status", "message"),
    [
        ([], 400, "at least 1 item"),
        ([{"custom_id": "has space", "params": params("x")}], 400, "requests.0.custom_id: String should match"),
        ([{"custom_id": "x" * 65, "params": params("x")}], 400, "String should match pattern"),
        ([{"custom_id": "", "params": params("x")}], 400, "String should match pattern"),
        (
            [{"custom_id": c, "params": params(c)} for c in ("a", "b", "a")],
            400,
            "requests.2.custom_id: duplicate custom_id 'a' (also in requests.0)",
        ),
        ([{"custom_id": "a"}], 400, "requests.0.params: Field required"),
        ([{"custom_id": "a", "params": "x"}], 400, "requests.0.params: Input should be a valid dictionary"),
        ([{"custom_id": "a", "params": params("x"), "extra": 1}], 400, "Extra inputs are not permitted"),
        (batch_requests(4), 400, "at most 3 items"),
        ([{"custom_id": "big", "params": params("x" * 2000)}], 413, "maximum size of 2,000 bytes"),
    ],
)
async def test_a_bad_batch_is_refused_whole(
    simulate: Simulate, requests: list[dict[str, Any]], status: int, message: str
) -> None:
    async with simulate(config(max_requests=3, max_bytes=2000)) as (sim, client, _):
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        assert (await client.messages.batches.list()).data == []
    assert caught.value.status_code == status
    assert isinstance(caught.value.body, dict)
    error = caught.value.body["error"]
    assert error["type"] == ("request_too_large" if status == 413 else "invalid_request_error")
    assert message in error["message"]
    assert sim.stats.batches.created == 0


async def test_invalid_params_become_errored_results(simulate: Simulate) -> None:
    requests = [
        {"custom_id": "ok", "params": params("fine")},
        {"custom_id": "no-max-tokens", "params": {"model": HAIKU, "messages": [{"role": "user", "content": "x"}]}},
        {"custom_id": "unknown-model", "params": {**params("x"), "model": "claude-nonexistent"}},
        {"custom_id": "streamed", "params": params("x", stream=True)},
    ]
    async with simulate(config(seconds=0)) as (sim, client, _):
        batch = await client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        ended = await client.messages.batches.retrieve(batch.id)
        results = {entry.custom_id: entry.result for entry in await results_of(client, batch.id)}
    assert (ended.request_counts.succeeded, ended.request_counts.errored) == (1, 3)
    assert results["ok"].type == "succeeded"
    errors = {cid: result.error for cid, result in results.items() if result.type == "errored"}
    assert {cid: e.error.type for cid, e in errors.items()} == {
        "no-max-tokens": "invalid_request_error",
        "unknown-model": "not_found_error",
        "streamed": "invalid_request_error",
    }
    assert all(e.type == "error" for e in errors.values())
    assert "max_tokens" in errors["no-max-tokens"].error.message
    assert sim.stats.batches.results == Counter(succeeded=1, errored=3)


async def test_errored_and_expired_results_by_seeded_rate(simulate: Simulate) -> None:
    async def outcome(cfg: SimulatorConfig) -> dict[str, Any]:
        async with simulate(cfg) as (_, client, _):
            batch = await client.messages.batches.create(requests=batch_requests(100))  # type: ignore[arg-type]
            await client.messages.batches.retrieve(batch.id)
            return {
                entry.custom_id: entry.result.error.error.type if entry.result.type == "errored" else entry.result.type
                for entry in await results_of(client, batch.id)
            }

    faulty = config(seconds=0, errored=0.3, expired=0.2)
    first = await outcome(faulty)
    assert first == await outcome(faulty)
    counts = Counter(first.values())
    assert set(counts) == {"succeeded", "expired", "api_error", "overloaded_error"}
    assert 10 < counts["expired"] < 30
    assert 15 < counts["api_error"] + counts["overloaded_error"] < 45
    assert await outcome(config(seconds=0, errored=0.3, expired=0.2, max_requests=100)) == first  # same seed


async def test_a_forced_error_clears_when_the_request_is_resubmitted(simulate: Simulate) -> None:
    requests = [{"custom_id": "flaky", "params": params("Hi <<sim-fault: overloaded times=1>>")}]
    async with simulate(config(seconds=0)) as (_, client, _):
        outcomes = []
        for _attempt in range(2):
            batch = await client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
            await client.messages.batches.retrieve(batch.id)
            [entry] = await results_of(client, batch.id)
            outcomes.append(entry.result)
    assert outcomes[0].type == "errored"
    assert outcomes[0].error.error.type == "overloaded_error"
    assert outcomes[1].type == "succeeded"


async def test_batch_endpoints_answer_429_and_529_by_rate(simulate: Simulate) -> None:
    async with simulate(config(rate_limited=0.5, overloaded=0.5)) as (sim, client, _):
        refusals: list[anthropic.APIStatusError] = []
        for _ in range(20):
            with pytest.raises(anthropic.APIStatusError) as caught:
                await client.messages.batches.list()
            refusals.append(caught.value)
        with pytest.raises(anthropic.APIStatusError):
            await client.messages.batches.create(requests=batch_requests(1))  # type: ignore[arg-type]
    assert {type(exc) for exc in refusals} == {anthropic.RateLimitError, anthropic.OverloadedError}
    for exc in refusals:
        assert exc.response.headers["x-should-retry"] == "true"
        assert (exc.status_code == 429) == ("retry-after" in exc.response.headers)
        assert exc.status_code in (429, 529)
    assert sum(sim.stats.batches.endpoint_faults.values()) == 21
    assert sim.stats.batches.created == 0


async def test_a_rejected_key_gets_401(simulate: Simulate) -> None:
    async with simulate(SimulatorConfig(timing=INSTANT, reject_api_keys=frozenset({"sk-test"}))) as (_, client, _):
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.batches.create(requests=batch_requests(1))  # type: ignore[arg-type]
        with pytest.raises(anthropic.AuthenticationError):
            await client.messages.batches.list()


async def test_the_spend_cap_refuses_new_batches(simulate: Simulate) -> None:
    capped = SimulatorConfig(timing=INSTANT, limits=Limits(spend_cap=True))
    async with simulate(capped) as (sim, client, _):
        with pytest.raises(anthropic.RateLimitError) as caught:
            await client.messages.batches.create(requests=batch_requests(1))  # type: ignore[arg-type]
        assert (await client.messages.batches.list()).data == []
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"]["details"] == {"error_code": "enforced_spend_limit_reached"}
    assert "retry-after" not in caught.value.response.headers
    assert sim.stats.batches.created == 0


async def test_requests_not_processed_within_24_hours_expire(simulate: Simulate) -> None:
    clock = FakeClock()
    async with simulate(config(seconds=48 * 3600), clock=clock) as (_, client, _):
        batch = await client.messages.batches.create(requests=batch_requests(4))  # type: ignore[arg-type]
        clock.advance(25 * 3600)
        ended = await client.messages.batches.retrieve(batch.id)
        results = {entry.custom_id: entry.result.type for entry in await results_of(client, batch.id)}
    assert ended.processing_status == "ended"
    assert ended.ended_at == batch.expires_at
    assert results == {"req-0": "succeeded", "req-1": "succeeded", "req-2": "expired", "req-3": "expired"}


async def test_stats_endpoint_reports_batches(simulate: Simulate) -> None:
    async with simulate(config(seconds=0)) as (_, client, url):
        await client.messages.batches.create(requests=batch_requests(3))  # type: ignore[arg-type]
        async with httpx2.AsyncClient() as http:
            stats = (await http.get(f"{url}/_simulator/stats")).json()["batches"]
    assert (stats["created"], stats["ended"], stats["results"]) == (1, 1, {"succeeded": 3})
    assert stats["tokens_billed"]["output_tokens"] > 0


def test_command_line_options_configure_batches() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["simulate", "--batch-seconds", "7", "--batch-fault", "errored=0.1", "--batch-fault", "rate_limited=0.2"]
    )
    assert simulator_config(args).batches == BatchSettings(seconds=7, errored=0.1, rate_limited=0.2)
    assert simulator_config(parser.parse_args(["simulate"])).batches == BatchSettings()
    ranged = parser.parse_args(["simulate", "--batch-seconds", "30:600"])
    assert simulator_config(ranged).batches == BatchSettings(seconds=30, seconds_max=600)
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", "--batch-seconds", "60:30"])
    with pytest.raises(SystemExit):
        parser.parse_args(["simulate", "--batch-fault", "drop=0.1"])


def test_settling_works_in_slices_so_a_large_batch_does_not_hold_the_server() -> None:
    store = Batches(BatchSettings(seconds=0), seed=0, wall_offset=0.0, stats=BatchStats())
    custom_ids, requests = parse_requests({"requests": batch_requests(5)}, max_requests=5)
    batch = store.create("msgbatch_1", 0.0, custom_ids, requests)
    seen: list[str] = []

    def process(custom_id: str, _params: dict[str, Any]) -> dict[str, Any]:
        seen.append(custom_id)
        return {"type": "expired"}

    assert store.settle(0.0, process, budget=2) is True
    assert (seen, batch.status) == (["req-0", "req-1"], "in_progress")
    assert store.settle(0.0, process, budget=2) is True
    assert store.settle(0.0, process, budget=2) is False
    assert seen == custom_ids
    assert batch.status == "ended"
    assert store.stats.results == Counter(expired=5)
