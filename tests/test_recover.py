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
from orchestrator.simulator.replies import full_reply, plan_reply

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
    ],
)
def test_resolve(strategy: Strategy, request_params: dict[str, Any], expected: Strategy) -> None:
    assert resolve(strategy, request_params) is expected


def test_prefill_keeps_the_partial_and_asks_for_the_rest() -> None:
    original = params(max_tokens=100)
    kept = after_break(Recovery(), Strategy.AUTO, original, partial("Once upon a time.\n\n"), 6)
    assert kept.mode == "prefill"
    assert kept.output_tokens == 6
    follow = next_params(original, kept)
    assert follow is not None
    assert follow["max_tokens"] == 94
    assert follow["messages"][-1] == {"role": "assistant", "content": "Once upon a time."}
    assert original["messages"] == [{"role": "user", "content": "hi"}]  # not mutated
    final = join(kept, message("\n\nThe end.", 4))
    assert final["content"][0]["text"] == "Once upon a time.\n\nThe end."
    assert final["usage"] == {"input_tokens": 12, "output_tokens": 10}  # the original input, all output
    assert final["stop_reason"] == "end_turn"
    assert kept.summary() == {"strategy": "prefill", "exact": True, "kept_output_tokens": 6, "breaks": 1}


def test_trimmed_whitespace_is_carried_over_when_the_continuation_lacks_it() -> None:
    kept = after_break(Recovery(), Strategy.PREFILL, params(), partial("Hello "), 2)
    assert join(kept, message("world", 1))["content"][0]["text"] == "Hello world"
    assert join(kept, message(" world", 1))["content"][0]["text"] == "Hello world"


def test_a_request_with_its_own_prefill_is_extended() -> None:
    original = params()
    original["messages"].append({"role": "assistant", "content": "Sure:"})
    kept = after_break(Recovery(), Strategy.AUTO, original, partial(" one, two, "), 3)
    follow = next_params(original, kept)
    assert follow is not None
    assert follow["messages"][-1] == {"role": "assistant", "content": "Sure: one, two,"}
    assert len(follow["messages"]) == 2


def test_continue_quotes_the_partial_and_is_marked_inexact() -> None:
    original = params("claude-opus-5")
    kept = after_break(Recovery(), Strategy.CONTINUE, original, partial("Part one"), 2)
    follow = next_params(original, kept)
    assert follow is not None
    assert follow["messages"][-1] == {"role": "user", "content": CONTINUE_PROMPT.format(partial="Part one")}
    final = join(kept, message(" and part two.", 4))
    assert final["content"][0]["text"] == "Part one and part two."
    assert kept.summary() == {"strategy": "continue", "exact": False, "kept_output_tokens": 2, "breaks": 1}


def test_restart_and_unrecoverable_partials_start_over() -> None:
    assert after_break(Recovery(), Strategy.RESTART, params(), partial("abc"), 1) == Recovery()
    tool = {"type": "tool_use", "id": "t", "name": "f", "partial_json": '{"a'}
    assert after_break(Recovery(), Strategy.AUTO, params(), partial("abc", more=[tool]), 3) == Recovery()
    assert next_params(params(), Recovery()) == params()


def test_nothing_received_asks_the_same_again() -> None:
    kept = after_break(Recovery(), Strategy.AUTO, params(), partial("Half"), 1)
    again = after_break(kept, Strategy.AUTO, params(), None, 0)
    assert again == kept
    empty = after_break(kept, Strategy.AUTO, params(), partial(""), 0)
    assert empty.text == "Half"


def test_a_reply_that_already_used_max_tokens_is_finished_without_a_request() -> None:
    kept = after_break(Recovery(), Strategy.AUTO, params(max_tokens=5), partial("one two three four five"), 5)
    assert next_params(params(max_tokens=5), kept) is None
    final = finish_without_continuation(kept)
    assert final["stop_reason"] == "max_tokens"
    assert final["content"] == [{"type": "text", "text": "one two three four five"}]
    assert final["usage"]["output_tokens"] == 5
    assert final["id"] == "msg_1"


@pytest.mark.parametrize("seed", range(4))
def test_breaking_anywhere_and_continuing_by_prefill_gives_the_uninterrupted_reply(seed: int) -> None:
    """The simulator's reply model stands in for the API: break the reply at every token, twice."""
    original = params(max_tokens=10_000)
    original["messages"][0]["content"] = f"prompt {seed}"
    tokens = full_reply(seed, original, 30, 60)
    full = "".join(tokens)
    for first in range(1, len(tokens)):
        second = min(len(tokens) - 1, first + 1 + first % 5)
        kept = after_break(Recovery(), Strategy.AUTO, original, partial("".join(tokens[:first])), first)
        follow = next_params(original, kept)
        assert follow is not None
        rest = plan_reply(seed, follow, 30, 60).tokens
        if second > first:  # the continuation breaks too
            cut = second - first
            kept = after_break(kept, Strategy.AUTO, original, partial("".join(rest[:cut])), cut)
            follow = next_params(original, kept)
            assert follow is not None
            rest = plan_reply(seed, follow, 30, 60).tokens
        final = join(kept, message("".join(rest), len(rest)))
        assert final["content"][0]["text"] == full, (first, second)
