"""Recovery of broken streams (pure): what is kept, what is asked next, how the reply is joined."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator.run.recover import (
    CONTINUE_PROMPT,
    Recovery,
    Strategy,
    after_break,
    finish_without_continuation,
    join,
    next_params,
    resolve,
)
from orchestrator.simulator.replies import plan_reply
from orchestrator.simulator.tokens import count_tokens

HAIKU = "claude-haiku-4-5"


def params(model: str = HAIKU, max_tokens: int = 10_000, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": "hi"}], **extra}


def partial(text: str, **blocks: Any) -> dict[str, Any]:
    content = [{"type": "text", "text": text}, *blocks.get("more", [])]
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": HAIKU,
        "content": content,
        "usage": {"input_tokens": 12, "output_tokens": 1},
    }


FORMAT = {"type": "json_schema", "schema": {"type": "object", "properties": {}, "additionalProperties": False}}


def message(text: str, output_tokens: int, stop: str = "end_turn") -> dict[str, Any]:
    return {
        "id": "msg_2",
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop,
        "usage": {"input_tokens": 40, "output_tokens": output_tokens},
    }


@pytest.mark.parametrize(
    ("strategy", "request_params", "expected"),
    [
        (Strategy.AUTO, params(), Strategy.PREFILL),
        (Strategy.AUTO, params("claude-sonnet-4-6"), Strategy.RESTART),
        (Strategy.AUTO, params("claude-opus-5"), Strategy.RESTART),
        (Strategy.AUTO, params(thinking={"type": "enabled", "budget_tokens": 1024}), Strategy.RESTART),
        (Strategy.AUTO, params(thinking={"type": "disabled"}), Strategy.PREFILL),
        (Strategy.PREFILL, params("claude-opus-5"), Strategy.RESTART),
        (Strategy.CONTINUE, params("claude-opus-5"), Strategy.CONTINUE),
        (Strategy.RESTART, params(), Strategy.RESTART),
        # No prefill with a format, and a continuation would be another JSON document: restart.
        (Strategy.AUTO, params(output_config={"format": FORMAT}), Strategy.RESTART),
        (Strategy.CONTINUE, params("claude-opus-5", output_format=FORMAT), Strategy.RESTART),
    ],
)
def test_resolve(strategy: Strategy, request_params: dict[str, Any], expected: Strategy) -> None:
    assert resolve(strategy, request_params) is expected


def test_prefill_keeps_the_partial_and_asks_for_the_rest() -> None:
    original = params(max_tokens=100)
    bounded = after_break(Recovery(), Strategy.AUTO, original, partial("Once upon a time.\n\n"))
    assert bounded.mode == "prefill"
    # Until the server counts it, the kept text is bounded by its bytes (as prefilled: trimmed).
    assert (bounded.output_tokens, bounded.counted) == (len("Once upon a time."), False)
    kept = bounded.with_count(5)  # "Once", " upon", " a", " time", "."; the newlines come again
    follow = next_params(original, kept)
    assert follow is not None
    assert follow["max_tokens"] == 95
    assert follow["messages"][-1] == {"role": "assistant", "content": "Once upon a time."}
    assert original["messages"] == [{"role": "user", "content": "hi"}]  # not mutated
    final = join(kept, message("\n\nThe end.", 4))
    assert final["content"][0]["text"] == "Once upon a time.\n\nThe end."
    assert final["usage"] == {"input_tokens": 12, "output_tokens": 9}  # the original input, all output
    assert final["stop_reason"] == "end_turn"
    summary = {"strategy": "prefill", "exact": True, "kept_output_tokens": 5, "kept_tokens": "counted", "breaks": 1}
    assert kept.summary() == summary
    assert bounded.summary() == {**summary, "kept_output_tokens": 17, "kept_tokens": "upper_bound"}


def test_trimmed_whitespace_is_carried_over_when_the_continuation_lacks_it() -> None:
    kept = after_break(Recovery(), Strategy.PREFILL, params(), partial("Hello "))
    assert join(kept, message("world", 1))["content"][0]["text"] == "Hello world"
    assert join(kept, message(" world", 1))["content"][0]["text"] == "Hello world"


def test_a_request_with_its_own_prefill_is_extended() -> None:
    original = params()
    original["messages"].append({"role": "assistant", "content": "Sure:"})
    kept = after_break(Recovery(), Strategy.AUTO, original, partial(" one, two, "))
    follow = next_params(original, kept)
    assert follow is not None
    assert follow["messages"][-1] == {"role": "assistant", "content": "Sure: one, two,"}
    assert len(follow["messages"]) == 2


def test_continue_quotes_the_partial_and_is_marked_inexact() -> None:
    original = params("claude-opus-5")
    kept = after_break(Recovery(), Strategy.CONTINUE, original, partial("Part one"))
    follow = next_params(original, kept)
    assert follow is not None
    assert follow["messages"][-1] == {"role": "user", "content": CONTINUE_PROMPT.format(partial="Part one")}
    final = join(kept, message(" and part two.", 4))
    assert final["content"][0]["text"] == "Part one and part two."
    assert kept.with_count(2).summary() == {
        "strategy": "continue",
        "exact": False,
        "kept_output_tokens": 2,
        "kept_tokens": "counted",
        "breaks": 1,
    }


def test_restart_and_unrecoverable_partials_start_over() -> None:
    assert after_break(Recovery(), Strategy.RESTART, params(), partial("abc")) == Recovery()
    tool = {"type": "tool_use", "id": "t", "name": "f", "partial_json": '{"a'}
    assert after_break(Recovery(), Strategy.AUTO, params(), partial("abc", more=[tool])) == Recovery()
    assert next_params(params(), Recovery()) == params()


def test_nothing_received_asks_the_same_again() -> None:
    kept = after_break(Recovery(), Strategy.AUTO, params(), partial("Half"))
    again = after_break(kept, Strategy.AUTO, params(), None)
    assert again == kept
    empty = after_break(kept, Strategy.AUTO, params(), partial(""))
    assert empty.text == "Half"


def test_a_reply_that_already_used_max_tokens_is_finished_without_a_request() -> None:
    kept = after_break(Recovery(), Strategy.AUTO, params(max_tokens=5), partial("one two three four five"))
    kept = kept.with_count(5)
    assert next_params(params(max_tokens=5), kept) is None
    final = finish_without_continuation(kept, 5)
    assert final["stop_reason"] == "max_tokens"
    assert final["content"] == [{"type": "text", "text": "one two three four five"}]
    assert final["usage"]["output_tokens"] == 5
    assert final["id"] == "msg_1"


def test_an_upper_bound_past_max_tokens_finishes_short_and_says_max_tokens() -> None:
    kept = after_break(Recovery(), Strategy.AUTO, params(max_tokens=8), partial("one two three"))
    assert (kept.output_tokens, kept.counted) == (13, False)
    assert next_params(params(max_tokens=8), kept) is None
    final = finish_without_continuation(kept, 8)
    assert final["content"] == [{"type": "text", "text": "one two three"}]
    assert (final["stop_reason"], final["usage"]["output_tokens"]) == ("max_tokens", 8)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("max_tokens", [10_000, 25])
def test_breaking_anywhere_and_continuing_by_prefill_gives_the_uninterrupted_reply(seed: int, max_tokens: int) -> None:
    """The simulator's reply model stands in for the API: break the reply at every token, twice;
    the kept text counted as the server counts it. Cut by ``max_tokens`` or not, the joined reply
    is the uninterrupted one, to the token (trailing whitespace is not counted twice)."""
    original = params(max_tokens=max_tokens)
    original["messages"][0]["content"] = f"prompt {seed}"
    whole = plan_reply(seed, original, 30, 60)
    full = "".join(whole.tokens)

    def counted(kept: Recovery) -> Recovery:
        return kept.with_count(count_tokens(kept.counted_text))

    for first in range(1, len(whole.tokens)):
        second = min(len(whole.tokens) - 1, first + 1 + first % 5)
        kept = counted(after_break(Recovery(), Strategy.AUTO, original, partial("".join(whole.tokens[:first]))))
        follow = next_params(original, kept)
        assert follow is not None
        rest = plan_reply(seed, follow, 30, 60)
        if second > first:  # the continuation breaks too
            cut = second - first
            kept = counted(after_break(kept, Strategy.AUTO, original, partial("".join(rest.tokens[:cut]))))
            follow = next_params(original, kept)
            assert follow is not None
            rest = plan_reply(seed, follow, 30, 60)
        final = join(kept, message("".join(rest.tokens), rest.output_tokens, rest.stop_reason))
        assert final["content"][0]["text"] == full, (first, second)
        assert final["stop_reason"] == whole.stop_reason
        assert final["usage"]["output_tokens"] == whole.output_tokens


def test_a_kept_reply_stored_before_counting_is_counted_again() -> None:
    kept = after_break(Recovery(), Strategy.AUTO, params(), partial("Half way")).with_count(2)
    assert kept.to_dict() is not None
    assert Recovery.from_dict(kept.to_dict()) == kept
    old = {key: value for key, value in (kept.to_dict() or {}).items() if key != "counted"}
    assert Recovery.from_dict(old).counted is False
    assert Recovery.from_dict(None) == Recovery()
