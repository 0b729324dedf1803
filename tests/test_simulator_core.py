"""Pure parts of the simulator: replies, prefill continuation, model rules, fault choice, buckets."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any

import pytest

from orchestrator.api.bucket import TokenBucket
from orchestrator.api.modelinfo import accepts_prefill, family, minimum_cacheable, model_version
from orchestrator.simulator.cache import PromptCache
from orchestrator.simulator.config import FaultRates
from orchestrator.simulator.events import WireEvent, fault_position
from orchestrator.simulator.faults import FaultKind, FaultSpecError, choose_fault, parse_fault_spec
from orchestrator.simulator.replies import continuation, count_input_tokens, full_reply, input_segments, plan_reply
from orchestrator.simulator.tokens import count_tokens, tokenize

HAIKU = "claude-haiku-4-5"


def body(text: str = "hi", max_tokens: int = 10_000, prefill: str | None = None) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": text}]
    if prefill is not None:
        messages.append({"role": "assistant", "content": prefill})
    return {"model": "claude-haiku-4-5", "max_tokens": max_tokens, "messages": messages}


@pytest.mark.parametrize("seed", range(5))
def test_every_cut_point_continues_exactly(seed: int) -> None:
    tokens = full_reply(seed, body(f"prompt {seed}"), 40, 80)
    full = "".join(tokens)
    for cut in range(len(full) + 1):
        prefix = full[:cut].rstrip()
        rest = continuation(tokens, prefix)
        assert rest is not None
        assert prefix + "".join(rest) == full
        plan = plan_reply(seed, body(f"prompt {seed}", prefill=prefix), 40, 80) if prefix else None
        if plan is not None:
            assert prefix + "".join(plan.tokens) == full


def test_continuation_of_a_foreign_prefix_is_none() -> None:
    assert continuation(["Hello", " world"], "Goodbye") is None
    assert continuation(["Hello", " world"], "Hello world") == []
    assert continuation(["Hello", " world"], "Hello wo") == ["rld"]


def test_a_foreign_prefill_still_gets_a_deterministic_reply() -> None:
    first = plan_reply(0, body(prefill="Something else entirely"), 10, 20)
    second = plan_reply(0, body(prefill="Something else entirely"), 10, 20)
    assert first == second
    assert 10 <= len(first.tokens) <= 20


def test_replies_have_no_doubled_punctuation_and_end_with_a_period() -> None:
    for i in range(50):
        text = "".join(full_reply(0, body(f"p{i}"), 20, 300))
        assert ",." not in text
        assert ".," not in text
        assert ",," not in text
        assert text.endswith(".")
        assert not text.startswith(" ")


def test_input_token_rule() -> None:
    assert count_input_tokens(body("abcd")) == 3 + 0 + 4 + 1
    with_system = {**body("abcdefgh"), "system": [{"type": "text", "text": "a, b"}]}  # "abcdef" "gh"
    assert count_input_tokens(with_system) == 3 + 3 + 4 + 2


def test_tokenizer_splits_any_text_and_joins_back() -> None:
    text = "Hello, world!\n\n  Checkpoints 12345 \t日本語 🙂 x"
    tokens = tokenize(text)
    assert "".join(tokens) == text
    assert tokens[:4] == ["Hello", ",", " world", "!"]
    assert tokens[4:10] == ["\n\n", "  ", "Checkp", "oints", " 123", "45"]
    assert tokens.count("日") == tokens.count("🙂") == 1
    assert count_tokens(text) == len(tokens)


TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather at a place",
        "input_schema": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "hourly": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["location", "days"],
        },
    }
]


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"thinking": {"type": "enabled", "budget_tokens": 2000}},
        {"tools": TOOLS, "tool_choice": {"type": "any"}},
        {"tools": TOOLS},
    ],
)
def test_every_block_is_generated_as_the_tokens_that_count_it(extra: dict[str, Any]) -> None:
    """count_tokens of any prefix cut between tokens is the number of tokens it was generated as."""
    for i in range(20):
        plan = plan_reply(0, {**body(f"p{i}"), **extra}, 20, 120)
        for block in plan.blocks:
            assert tokenize(block.text) == block.tokens
            for cut in range(len(block.tokens) + 1):
                assert count_tokens("".join(block.tokens[:cut])) == cut


def test_reply_blocks_follow_the_request() -> None:
    thinking = plan_reply(0, {**body(), "thinking": {"type": "enabled", "budget_tokens": 1500}}, 20, 100)
    assert [b.kind for b in thinking.blocks] == ["thinking", "text"]
    assert thinking.blocks[0].signature
    assert thinking.output_tokens == sum(len(b.tokens) for b in thinking.blocks)
    forced = plan_reply(0, {**body(), "tools": TOOLS, "tool_choice": {"type": "tool", "name": "get_weather"}}, 20, 100)
    assert [b.kind for b in forced.blocks] == ["tool_use"]
    assert forced.stop_reason == "tool_use"
    arguments = json.loads(forced.blocks[0].text)
    assert {"location", "days"} <= set(arguments)
    assert 1 <= arguments["days"] <= 7
    auto = [plan_reply(0, {**body(f"q{i}"), "tools": TOOLS}, 20, 100) for i in range(20)]
    assert {tuple(b.kind for b in p.blocks) for p in auto} == {("text",), ("text", "tool_use")}
    cut = plan_reply(0, {**body(max_tokens=4), "tools": TOOLS, "tool_choice": {"type": "any"}}, 20, 100)
    assert cut.stop_reason == "max_tokens"
    assert not cut.blocks[0].complete
    assert cut.blocks[0].text == "".join(forced.blocks[0].tokens[:4])


def test_stop_sequences_cut_before_the_first_match() -> None:
    full = "".join(full_reply(0, body(), 40, 80))
    words = full.split()
    sequence = " " + words[5]
    later = " " + words[-2]
    plan = plan_reply(0, {**body(), "stop_sequences": [later, sequence]}, 40, 80)
    assert plan.stop_reason == "stop_sequence"
    assert plan.stop_sequence == sequence
    assert "".join(plan.tokens) == full[: full.index(sequence)]
    prefill = full[: full.index(sequence) - 3].rstrip()
    continued = plan_reply(0, {**body(prefill=prefill), "stop_sequences": [sequence]}, 40, 80)
    assert prefill + "".join(continued.tokens) == full[: full.index(sequence)]
    assert plan_reply(0, {**body(), "stop_sequences": ["never there"]}, 40, 80).stop_reason == "end_turn"


@pytest.mark.parametrize(
    ("model", "version", "prefill"),
    [
        ("claude-haiku-4-5", (4, 5), True),
        ("claude-haiku-4-5-20251001", (4, 5), True),
        ("claude-sonnet-4-5-20250929", (4, 5), True),
        ("claude-opus-4-5", (4, 5), True),
        ("claude-sonnet-4-20250514", (4, 0), True),
        ("claude-3-7-sonnet-20250219", (3, 7), True),
        ("claude-3-opus-20240229", (3, 0), True),
        ("claude-sonnet-4-6", (4, 6), False),
        ("claude-opus-4-8", (4, 8), False),
        ("claude-opus-5", (5, 0), False),
        ("claude-sonnet-5", (5, 0), False),
        ("claude-mythos-5", (5, 0), False),
        ("gpt-4o", None, False),
    ],
)
def test_model_versions_and_prefill(model: str, version: tuple[int, int] | None, prefill: bool) -> None:
    assert model_version(model) == version
    assert accepts_prefill(model) is prefill
    assert not family(model)[-8:].isdigit()


def test_fault_specs() -> None:
    spec = parse_fault_spec("drop after=5 times=1")
    assert (spec.kind, spec.after, spec.times) == (FaultKind.DROP, 5, 1)
    spec = parse_fault_spec("malformed at=0 variant=orphan_delta")
    assert (spec.kind, spec.at, spec.variant) == (FaultKind.MALFORMED, 0, "orphan_delta")
    for bad in ("", "explode", "drop after", "drop after=x", "drop when=3", "malformed variant=odd"):
        with pytest.raises(FaultSpecError):
            parse_fault_spec(bad)


def test_forced_fault_respects_times_and_clamps_after() -> None:
    forced = parse_fault_spec("truncate after=99 times=2")
    rates = FaultRates()
    picks = [choose_fault(forced=forced, rates=rates, seed=0, fingerprint=b"x", attempt=a) for a in (1, 2, 3)]
    assert picks[0] is not None
    assert picks[1] is not None
    assert picks[2] is None
    events = [
        WireEvent(b"start", 0),
        *(WireEvent(b"delta", n, delta=True) for n in range(1, 11)),
        WireEvent(b"end", 10),
    ]
    assert fault_position(picks[0], events) == 11  # after every delta
    assert fault_position(replace(picks[0], after=3), events) == 4
    assert fault_position(replace(picks[0], after=None, at=0), events) == 0
    assert fault_position(replace(picks[0], kind=FaultKind.NO_STOP), events) == 11
    for spot in (0.0, 0.5, 0.999):  # drawn: anywhere after the first delta, never past the last event
        assert 2 <= fault_position(replace(picks[0], after=None, spot=spot), events) <= 11


def test_fault_rates_are_respected() -> None:
    rates = FaultRates(drop=0.25, overloaded=0.25)
    kinds = [choose_fault(forced=None, rates=rates, seed=1, fingerprint=bytes([i]), attempt=1) for i in range(256)]
    drops = sum(1 for k in kinds if k is not None and k.kind is FaultKind.DROP)
    overloads = sum(1 for k in kinds if k is not None and k.kind is FaultKind.OVERLOADED)
    assert 40 < drops < 90
    assert 40 < overloads < 90
    assert all(k is None or (k.after is None and 0 <= k.spot < 1) for k in kinds)


def test_bucket_refills_continuously_and_allows_oversized_takes_when_full() -> None:
    bucket = TokenBucket.per_minute(60, now=0.0, burst_seconds=5)  # 1/s, capacity 5
    assert bucket.capacity == 5
    for _ in range(5):
        assert bucket.wait_time(1, now=0.0) == 0
        bucket.take(1, now=0.0)
    assert bucket.wait_time(1, now=0.0) == pytest.approx(1.0)
    assert bucket.wait_time(1, now=1.0) == 0
    bucket.take(1, now=1.0)
    assert bucket.wait_time(10, now=1.0) == pytest.approx(5.0)  # needs a full bucket, not 10
    assert bucket.wait_time(10, now=6.0) == 0
    bucket.take(10, now=6.0)
    assert bucket.level == pytest.approx(-5)
    assert bucket.wait_time(1, now=6.0) == pytest.approx(6.0)
    bucket.give_back(10, now=6.0)
    assert bucket.level == 5
    assert bucket.time_to_full(6.0) == 0


def test_bucket_with_zero_rate_never_refills() -> None:
    bucket = TokenBucket(capacity=1, rate=0, level=0, updated=0)
    assert math.isinf(bucket.wait_time(1, now=100))
    assert math.isinf(bucket.time_to_full(100))


def test_prompt_cache_reads_the_longest_cached_prefix_and_writes_up_to_the_last_breakpoint() -> None:
    def marked(text: str, ttl: str = "5m") -> dict[str, Any]:
        return {"type": "text", "text": text, "cache_control": {"type": "ephemeral", "ttl": ttl}}

    system = [marked("Rules. " * 2000, ttl="1h")]  # 4,000 tokens, not quite Haiku 4.5's 4,096 alone
    first = {**body("Question"), "system": system, "tools": [{"name": "t", "input_schema": {}}]}
    longer = {**first, "messages": [{"role": "user", "content": [marked("Document. " * 1500), marked("Q")]}]}
    cache = PromptCache()
    short = cache.lookup(HAIKU, input_segments(first), now=0.0)
    assert (short.cache_creation, short.cache_read) == (0, 0)  # below the minimum: nothing cached
    assert short.input_tokens == count_input_tokens(first)
    written = cache.lookup(HAIKU, input_segments(longer), now=0.0)
    assert written.cache_read == 0
    assert written.cache_write_5m == count_input_tokens(longer)  # the system prefix is under the minimum
    assert written.input_tokens == 0
    cache.start(written, now=0.0)
    cache.publish(written, started=0.0, now=0.0)
    again = cache.lookup(HAIKU, input_segments(longer), now=299.0)
    assert (again.cache_read, again.cache_creation, again.input_tokens) == (count_input_tokens(longer), 0, 0)
    assert cache.lookup(HAIKU, input_segments(longer), now=301.0).cache_read == 0  # expired
    assert (
        cache.lookup("claude-sonnet-4-5", input_segments({**first, "model": "claude-sonnet-4-5"}), 0.0).cache_write_1h
        > 0
    )


def marked_system(text: str, ttl: str = "5m") -> dict[str, Any]:
    return {
        **body("Question"),
        "system": [{"type": "text", "text": text, "cache_control": {"type": "ephemeral", "ttl": ttl}}],
    }


def test_a_cache_entry_is_readable_only_once_the_response_writing_it_has_begun() -> None:
    cache = PromptCache()
    prompt = input_segments(marked_system("Rules. " * 3000))
    first = cache.lookup(HAIKU, prompt, now=0.0)
    cache.start(first, now=0.0)
    second = cache.lookup(HAIKU, prompt, now=0.5)  # admitted before the first response began: writes too
    assert first.cache_creation == second.cache_creation > 4096
    assert second.cache_read == 0
    cache.publish(first, started=0.0, now=1.0)
    third = cache.lookup(HAIKU, prompt, now=1.0)
    assert (third.cache_read, third.cache_creation) == (first.cache_creation, 0)
    # The lifetime counts from the start of the request that wrote it, not from its response.
    assert cache.lookup(HAIKU, prompt, now=299.9).cache_read > 0
    assert cache.lookup(HAIKU, prompt, now=300.0).cache_read == 0
    cache.start(third, now=200.0)  # a read at 200 keeps it until 500
    assert cache.lookup(HAIKU, prompt, now=499.0).cache_read > 0
    assert cache.lookup(HAIKU, prompt, now=500.0).cache_read == 0


def test_hits_are_looked_up_at_block_boundaries_up_to_20_blocks_before_a_breakpoint() -> None:
    cache = PromptCache()
    shared = [{"type": "text", "text": "Document. " * 3000}]

    def conversation(extra: int) -> dict[str, Any]:
        blocks: list[dict[str, Any]] = [{"type": "text", "text": f"part {n}"} for n in range(extra)]
        blocks[-1] = {**blocks[-1], "cache_control": {"type": "ephemeral"}}
        return {**body(), "messages": [{"role": "user", "content": shared + blocks}]}

    first = [{**shared[0], "cache_control": {"type": "ephemeral"}}]
    writer = cache.lookup(HAIKU, input_segments({**body(), "messages": [{"role": "user", "content": first}]}), 0.0)
    cache.start(writer, 0.0)
    cache.publish(writer, 0.0, 0.0)
    near = cache.lookup(HAIKU, input_segments(conversation(19)), 1.0)  # the entry is the 20th block back
    far = cache.lookup(HAIKU, input_segments(conversation(20)), 1.0)  # the 21st: out of reach
    assert near.cache_read == writer.cache_creation
    assert (far.cache_read, far.cache_creation) == (0, count_input_tokens(conversation(20)))


def test_mixed_ttls_bill_1h_writes_up_to_the_last_1h_breakpoint_and_5m_writes_after() -> None:
    cache = PromptCache()
    request = {
        **marked_system("Rules. " * 3000, ttl="1h"),
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "Notes. " * 500, "cache_control": {"type": "ephemeral"}}],
            }
        ],
    }
    usage = cache.lookup(HAIKU, input_segments(request), 0.0)
    system_tokens = count_input_tokens(
        {**marked_system("Rules. " * 3000), "messages": [{"role": "user", "content": ""}]}
    )
    assert usage.cache_write_1h > 4096
    assert abs(usage.cache_write_1h - system_tokens) < 10
    assert usage.cache_write_5m > 900
    assert usage.input_tokens == 0
    assert [ttl for _, ttl in usage.writes] == [3600.0, 300.0]


def test_minimum_cacheable_lengths() -> None:
    assert minimum_cacheable("claude-haiku-4-5-20251001") == 4096
    assert minimum_cacheable("claude-sonnet-4-5") == 1024
    assert minimum_cacheable("claude-sonnet-4-6") == 1024
    assert minimum_cacheable("claude-opus-4-7") == 2048
    assert minimum_cacheable("claude-opus-4-6") == 4096
    assert minimum_cacheable("claude-opus-4-8") == 1024
    assert minimum_cacheable("claude-sonnet-5") == 1024
    assert minimum_cacheable("claude-opus-5") == 512
    for model in ("claude-opus-5-5", "claude-sonnet-5-5", "claude-haiku-5-5", "claude-fable-5-1", "claude-mythos-5-2"):
        assert minimum_cacheable(model) == 512, model
    assert minimum_cacheable("claude-3-5-haiku-20241022") == 2048
