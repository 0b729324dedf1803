"""What the simulator answers: pure functions of the request body and a seed.

- The full reply to a conversation is a list of tokens drawn from a PRNG seeded by a hash of
  (seed, model, system, messages), where a trailing assistant message (a prefill) is left out
  of the hash. So a request that prefills part of the reply gets exactly the rest of it.
- Input tokens follow a fixed counting rule (``count_input_tokens``), the same for
  ``/v1/messages`` and ``/v1/messages/count_tokens``.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from typing import Any

_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
    "at",
    "which",
    "but",
    "have",
    "an",
    "they",
    "you",
    "were",
    "her",
    "she",
    "there",
    "been",
    "one",
    "all",
    "we",
    "their",
    "has",
    "would",
    "when",
    "if",
    "so",
    "no",
    "what",
    "out",
    "up",
    "more",
    "other",
    "into",
    "time",
    "only",
    "some",
    "could",
    "them",
    "these",
    "two",
    "may",
    "then",
    "do",
    "first",
    "any",
    "my",
    "now",
    "such",
    "like",
    "our",
    "over",
    "man",
    "me",
    "even",
    "most",
    "made",
    "after",
    "also",
    "did",
    "many",
    "before",
    "must",
    "through",
    "back",
    "years",
    "where",
    "much",
    "your",
    "way",
    "well",
    "down",
    "should",
    "because",
    "each",
    "just",
    "those",
    "people",
    "how",
    "too",
    "little",
    "state",
    "good",
    "very",
    "make",
    "world",
    "still",
    "own",
    "see",
    "men",
    "work",
    "long",
    "get",
    "here",
    "between",
    "both",
    "life",
    "being",
    "under",
    "never",
    "day",
    "same",
    "another",
    "know",
    "while",
    "last",
    "might",
    "us",
    "great",
    "old",
    "year",
    "off",
    "come",
    "since",
    "against",
    "go",
    "came",
    "right",
    "used",
    "take",
    "three",
    "stream",
    "token",
    "limit",
    "bucket",
    "window",
    "reply",
    "prompt",
    "model",
    "batch",
    "retry",
    "resume",
    "checkpoint",
]


@dataclass(frozen=True)
class ReplyPlan:
    """The tokens one response will emit, and why it stops."""

    tokens: list[str]
    stop_reason: str  # "end_turn" or "max_tokens"


def block_text(content: Any) -> str:
    """The text of a message's ``content`` (a string or a list of blocks)."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content:
        kind = block.get("type")
        if kind == "text":
            parts.append(block["text"])
        elif kind in ("tool_use", "server_tool_use"):
            parts.append(json.dumps(block.get("input", {}), sort_keys=True))
        elif kind == "tool_result":
            parts.append(block_text(block.get("content", "")))
        elif kind == "thinking":
            parts.append(block.get("thinking", ""))
    return "".join(parts)


def system_text(system: Any) -> str:
    if system is None:
        return ""
    return block_text(system)


def count_text_tokens(text: str) -> int:
    """The simulator's token count of a text: one token per 4 characters, rounded up."""
    return (len(text) + 3) // 4


def count_input_tokens(body: dict[str, Any]) -> int:
    """Input tokens of a request: 3, plus the system text, plus 4 and the text of each message."""
    total = 3 + count_text_tokens(system_text(body.get("system")))
    for message in body["messages"]:
        total += 4 + count_text_tokens(block_text(message["content"]))
    return total


def last_user(body: dict[str, Any]) -> dict[str, Any]:
    """The conversation's last user message (the first message if there is none)."""
    for message in reversed(body["messages"]):
        if message["role"] == "user":
            return message  # type: ignore[no-any-return]
    return body["messages"][0]  # type: ignore[no-any-return]


def prefill_of(body: dict[str, Any]) -> str | None:
    """The text of a trailing assistant message, if the conversation ends with one."""
    last = body["messages"][-1]
    if last["role"] != "assistant":
        return None
    return block_text(last["content"])


def _fingerprint(seed: int, body: dict[str, Any], messages: list[Any]) -> bytes:
    key = json.dumps([seed, body["model"], body.get("system"), messages], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(key.encode()).digest()


def conversation_key(seed: int, body: dict[str, Any]) -> bytes:
    """Identifies a conversation whatever its prefill: a prefilled retry is the same conversation."""
    messages = body["messages"]
    if prefill_of(body) is not None:
        messages = messages[:-1]
    return _fingerprint(seed, body, messages)


def full_reply(seed: int, body: dict[str, Any], reply_min: int, reply_max: int) -> list[str]:
    """The whole reply the conversation would get without a prefill or a max_tokens cut."""
    rng = random.Random(conversation_key(seed, body))
    length = rng.randint(reply_min, reply_max)
    tokens: list[str] = []
    capital = True
    while len(tokens) < length - 1:
        word = rng.choice(_WORDS)
        roll = rng.random()
        after_word = bool(tokens) and tokens[-1] not in (".", ",", "\n\n")
        if capital:
            tokens.append(word.capitalize() if not tokens or tokens[-1] == "\n\n" else " " + word.capitalize())
            capital = False
        elif after_word and roll < 0.06:
            tokens.append(".")
            capital = True
            if rng.random() < 0.3:
                tokens.append("\n\n")
        elif after_word and roll < 0.12:
            tokens.append(",")
        else:
            tokens.append(" " + word)
    del tokens[length - 1 :]  # a sentence end may have added two tokens
    last = rng.choice(_WORDS)
    last = last.capitalize() if capital or not tokens or tokens[-1] in (".", "\n\n") else last
    tokens.append(("" if not tokens or tokens[-1] == "\n\n" else " ") + last + ".")
    return tokens


def continuation(tokens: list[str], prefix: str) -> list[str] | None:
    """The tokens that follow ``prefix`` in the reply, or None if ``prefix`` does not start it.

    A prefix that ends inside a token yields the rest of that token as the first piece.
    """
    if not "".join(tokens).startswith(prefix):
        return None
    size = 0
    for index, token in enumerate(tokens):
        if size == len(prefix):
            return tokens[index:]
        if size + len(token) > len(prefix):
            return [token[len(prefix) - size :], *tokens[index + 1 :]]
        size += len(token)
    return []


def plan_reply(seed: int, body: dict[str, Any], reply_min: int, reply_max: int) -> ReplyPlan:
    """The tokens a response emits: the full reply, or what follows a prefill, cut at max_tokens."""
    full = full_reply(seed, body, reply_min, reply_max)
    prefill = prefill_of(body)
    tokens = full
    if prefill is not None:
        rest = continuation(full, prefill)
        if rest is None:
            # A prefill that is not the start of our reply: answer the whole conversation afresh.
            rng = random.Random(_fingerprint(seed, body, body["messages"]))
            rest = [" " + rng.choice(_WORDS) for _ in range(rng.randint(reply_min, reply_max))]
        tokens = rest
    limit = int(body["max_tokens"])
    if len(tokens) > limit:
        return ReplyPlan(tokens=tokens[:limit], stop_reason="max_tokens")
    return ReplyPlan(tokens=tokens, stop_reason="end_turn")
