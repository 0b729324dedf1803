"""What the simulator answers: pure functions of the request body and a seed.

- The full reply to a conversation is a list of blocks (thinking, text, tool_use) drawn from PRNGs
  seeded by a hash of (seed, model, system, tools, tool_choice, thinking, messages), where a
  trailing assistant message (a prefill) is left out of the hash. So a request that prefills part
  of the reply gets exactly the rest of it.
- Every block is a list of tokens of the simulator's tokenizer (``tokens.py``), the one that also
  counts input (``count_input_tokens``, the same for ``/v1/messages`` and ``count_tokens``).
- A request with an output format (``output_config.format``) gets JSON valid for its schema as
  its text, and a tool call gets input valid for its tool's schema (``structured.py``), as a
  ``strict`` tool is guaranteed to.
- A seeded share of conversations (``refusals``) is refused: the reply stops part way through its
  text with ``stop_reason: refusal`` and ``stop_details``.
- The reply is then cut before the first stop sequence in its text, and at ``max_tokens``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import random
from dataclasses import dataclass, replace
from typing import Any, Literal

from orchestrator.simulator.structured import format_schema, json_reply, refusal_details, schema_value
from orchestrator.simulator.tokens import count_tokens, tokenize

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

REQUEST_OVERHEAD = 3  # input tokens of any request
MESSAGE_OVERHEAD = 4  # input tokens of each message, beside its content

BlockKind = Literal["thinking", "text", "tool_use"]


@dataclass(frozen=True)
class PlannedBlock:
    """One content block of a reply, as the tokens it is generated as."""

    kind: BlockKind
    tokens: list[str]
    name: str = ""  # tool_use: the tool's name
    ident: str = ""  # tool_use: the block's id
    signature: str = ""  # thinking: sent once the block is whole
    complete: bool = True  # False when max_tokens cut the block

    @property
    def text(self) -> str:
        return "".join(self.tokens)


@dataclass(frozen=True)
class ReplyPlan:
    """The blocks one response will emit, and why it stops."""

    blocks: list[PlannedBlock]
    stop_reason: str  # "end_turn", "max_tokens", "stop_sequence", "tool_use" or "refusal"
    stop_sequence: str | None = None
    stop_details: dict[str, Any] | None = None  # a refusal's

    @property
    def tokens(self) -> list[str]:
        """The tokens of the reply's text blocks."""
        return [token for block in self.blocks if block.kind == "text" for token in block.tokens]

    @property
    def output_tokens(self) -> int:
        return sum(len(block.tokens) for block in self.blocks)


@dataclass(frozen=True)
class Segment:
    """A piece of a request's input (a tool, a system block, a message block), in prompt order."""

    tokens: int
    key: bytes  # identifies the prompt up to and including this piece (model included)
    ttl: float | None  # seconds, when the piece carries a cache_control breakpoint


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


def cache_ttl(block: Any) -> float | None:
    """The lifetime a ``cache_control`` marker asks for (5 minutes unless ``ttl`` is "1h"), or None."""
    marker = block.get("cache_control") if isinstance(block, dict) else None
    if not marker:
        return None
    return 3600.0 if marker.get("ttl") == "1h" else 300.0


def _bare(block: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in block.items() if key != "cache_control"}


def input_segments(body: dict[str, Any]) -> list[Segment]:
    """The request's input in the order the API caches it: tools, system, messages."""
    items: list[tuple[Any, int, float | None]] = []  # (what identifies it, tokens, breakpoint ttl)
    for tool in body.get("tools") or []:
        bare = _bare(tool)
        items.append((["tool", bare], count_tokens(json.dumps(bare, sort_keys=True)), cache_ttl(tool)))
    system = body.get("system")
    for block in [{"type": "text", "text": system}] if isinstance(system, str) else system or []:
        text = block_text([block])
        items.append((["system", text], count_tokens(text), cache_ttl(block)))
    for message in body["messages"]:
        content = message["content"]
        for number, block in enumerate([{"type": "text", "text": content}] if isinstance(content, str) else content):
            overhead = MESSAGE_OVERHEAD if number == 0 else 0
            what = [message["role"], number, _bare(block)]
            items.append((what, overhead + count_tokens(block_text([block])), cache_ttl(block)))
    if cache_ttl(body) is not None:  # automatic caching: a breakpoint on the last block
        what, tokens, _ = items[-1]
        items[-1] = (what, tokens, cache_ttl(body))
    digest = hashlib.sha256(body["model"].encode())
    cached = any(ttl is not None for _, _, ttl in items)  # else the keys are never looked at
    segments: list[Segment] = []
    for what, tokens, ttl in items:
        if cached:
            digest.update(json.dumps(what, sort_keys=True, separators=(",", ":")).encode())
        overhead = REQUEST_OVERHEAD if not segments else 0
        segments.append(Segment(tokens=overhead + tokens, key=digest.digest(), ttl=ttl))
    return segments


def count_input_tokens(body: dict[str, Any]) -> int:
    """Input tokens of a request: 3, plus each tool's JSON, the system text, and 4 and the text of each message."""
    return sum(segment.tokens for segment in input_segments(body))


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


def _uncached(content: Any) -> Any:
    """Content as the model reads it: without ``cache_control`` markers, and one bare text block
    the same as its string (caching changes what is billed, never the reply)."""
    if not isinstance(content, list):
        return content
    blocks = [_bare(block) if isinstance(block, dict) else block for block in content]
    single = blocks[0] if len(blocks) == 1 and isinstance(blocks[0], dict) else {}
    if single.keys() == {"type", "text"} and single["type"] == "text":
        return single["text"]
    return blocks


def _fingerprint(seed: int, body: dict[str, Any], messages: list[Any]) -> bytes:
    messages = [{**message, "content": _uncached(message.get("content"))} for message in messages]
    parts = [seed, body["model"], _uncached(body.get("system")), messages]
    parts += [_uncached(body.get("tools"))] if body.get("tools") is not None else []
    parts += [body[name] for name in ("tool_choice", "thinking") if body.get(name) is not None]
    key = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(key.encode()).digest()


def conversation_key(seed: int, body: dict[str, Any]) -> bytes:
    """Identifies a conversation whatever its prefill: a prefilled retry is the same conversation."""
    messages = body["messages"]
    if prefill_of(body) is not None:
        messages = messages[:-1]
    return _fingerprint(seed, body, messages)


@functools.cache
def _piece(text: str) -> tuple[str, ...]:
    """The tokens of a word with its leading space or capital (few distinct ones: cached)."""
    return tuple(tokenize(text))


def _sentences(rng: random.Random, length: int) -> list[str]:
    """``length`` tokens of sentences (at least a word), ending with a period when there is room."""
    tokens: list[str] = []
    capital = True
    while len(tokens) < length - 1:
        word = rng.choice(_WORDS)
        roll = rng.random()
        after_word = bool(tokens) and tokens[-1] not in (".", ",", "\n\n")
        if capital:
            word = word.capitalize()
            tokens += _piece(word if not tokens or tokens[-1] == "\n\n" else " " + word)
            capital = False
        elif after_word and roll < 0.06:
            tokens.append(".")
            capital = True
            if rng.random() < 0.3:
                tokens.append("\n\n")
        elif after_word and roll < 0.12:
            tokens.append(",")
        else:
            tokens += _piece(" " + word)
    if length <= 1:
        return tokenize(rng.choice(_WORDS).capitalize())[:1]
    del tokens[length - 1 :]  # a sentence end or a long word may have added more
    if tokens[-1] in (".", ",", "\n\n"):  # end on a word, so that the final period follows one
        word = rng.choice(_WORDS)
        previous = tokens[-2] if len(tokens) > 1 else "."
        tokens[-1] = tokenize(" " + (word.capitalize() if previous in (".", "\n\n") else word))[0]
    tokens.append(".")
    return tokens


def full_reply(seed: int, body: dict[str, Any], reply_min: int, reply_max: int) -> list[str]:
    """The tokens of the reply's text when nothing cuts it (no prefill, stop sequence or max_tokens)."""
    return _reply_text(conversation_key(seed, body), reply_min, reply_max)


def _reply_text(key: bytes, reply_min: int, reply_max: int) -> list[str]:
    rng = random.Random(key)
    return _sentences(rng, rng.randint(reply_min, reply_max))


def _client_tools(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [tool for tool in body.get("tools") or [] if isinstance(tool.get("input_schema"), dict)]


def _has_tool_result(message: dict[str, Any]) -> bool:
    content = message["content"]
    return isinstance(content, list) and any(block.get("type") == "tool_result" for block in content)


def _chosen_tool(rng: random.Random, body: dict[str, Any]) -> tuple[dict[str, Any], bool] | None:
    """The tool the reply calls, and whether ``tool_choice`` forced it; None for a text reply.

    ``auto`` calls a tool half the time, unless the conversation just returned a tool result.
    """
    tools = _client_tools(body)
    choice = body.get("tool_choice") or {"type": "auto"}
    kind = choice.get("type")
    if not tools or kind == "none":
        return None
    if kind == "tool":
        return next(tool for tool in tools if tool["name"] == choice["name"]), True
    if kind == "any":
        return rng.choice(tools), True
    if _has_tool_result(body["messages"][-1]) or rng.random() < 0.5:
        return None
    return rng.choice(tools), False


def full_blocks(
    seed: int, body: dict[str, Any], reply_min: int, reply_max: int, refusals: float = 0.0
) -> tuple[list[PlannedBlock], str, dict[str, Any] | None]:
    """The whole reply (blocks, natural stop reason and its details) before any prefill, stop
    sequence or max_tokens cut."""
    key = conversation_key(seed, body)
    blocks, stop_reason = _natural_blocks(key, body, reply_min, reply_max)
    rng = random.Random(key + b":refusal")
    if refusals <= 0 or rng.random() >= refusals:
        return blocks, stop_reason, None
    kept = [block for block in blocks if block.kind == "thinking"]
    text = next((block for block in blocks if block.kind == "text"), None)
    if text is not None and (cut := rng.randint(0, len(text.tokens) // 2)):
        kept.append(replace(text, tokens=text.tokens[:cut]))
    return kept, "refusal", refusal_details(rng)


def _natural_blocks(key: bytes, body: dict[str, Any], reply_min: int, reply_max: int) -> tuple[list[PlannedBlock], str]:
    blocks: list[PlannedBlock] = []
    thinking = body.get("thinking") or {}
    if thinking.get("type") == "enabled":
        budget = int(thinking["budget_tokens"])
        rng = random.Random(key + b":thinking")
        signature = base64.b64encode(hashlib.sha512(key + b":signature").digest() * 3).decode()
        length = rng.randint(min(reply_min, budget), min(reply_max, budget))
        blocks.append(PlannedBlock("thinking", _sentences(rng, length), signature=signature))
    rng = random.Random(key + b":tool")
    chosen = _chosen_tool(rng, body)
    schema = format_schema(body)
    if schema is not None and chosen is None:  # the answer is JSON for the schema (and no text precedes a tool call)
        blocks.append(PlannedBlock("text", tokenize(json_reply(random.Random(key + b":json"), schema))))
    elif schema is None and (chosen is None or not chosen[1]):  # a forced tool call has no text before it
        blocks.append(PlannedBlock("text", _reply_text(key, reply_min, reply_max)))
    if chosen is None:
        return blocks, "end_turn"
    tool = chosen[0]
    arguments = json.dumps(schema_value(rng, tool["input_schema"], tool["input_schema"]))
    ident = "toolu_01" + hashlib.blake2b(key + b":tool_use", digest_size=11).hexdigest()
    blocks.append(PlannedBlock("tool_use", tokenize(arguments), name=tool["name"], ident=ident))
    return blocks, "tool_use"


def continuation(tokens: list[str], prefix: str) -> list[str] | None:
    """The tokens that follow ``prefix`` in the reply, or None if ``prefix`` does not start it.

    A prefix that ends inside a token yields the rest of that token as the first piece.
    """
    if not "".join(tokens).startswith(prefix):
        return None
    return _split(tokens, len(prefix))[1]


def _split(tokens: list[str], position: int) -> tuple[list[str], list[str]]:
    """The tokens before and after character ``position``; a token across it is split in two."""
    size = 0
    for index, token in enumerate(tokens):
        if size == position:
            return tokens[:index], tokens[index:]
        if size + len(token) > position:
            cut = position - size
            return [*tokens[:index], token[:cut]], [token[cut:], *tokens[index + 1 :]]
        size += len(token)
    return tokens, []


def _first_stop(text: str, context: str, stop_sequences: list[str]) -> tuple[int, str] | None:
    """Where in ``text`` (generated after ``context``) the first stop sequence starts, and which."""
    whole = context + text
    found: list[tuple[int, int, str]] = []
    for order, sequence in enumerate(stop_sequences):
        at = whole.find(sequence, max(0, len(context) - len(sequence) + 1))
        if at >= 0:
            found.append((at, order, sequence))
    if not found:
        return None
    at, _, sequence = min(found)
    return max(0, at - len(context)), sequence


def _foreign_reply(seed: int, body: dict[str, Any], reply_min: int, reply_max: int) -> list[str]:
    """A deterministic reply to a conversation whose prefill is not the start of our reply."""
    rng = random.Random(_fingerprint(seed, body, body["messages"]))
    return [token for _ in range(rng.randint(reply_min, reply_max)) for token in tokenize(" " + rng.choice(_WORDS))]


def plan_reply(seed: int, body: dict[str, Any], reply_min: int, reply_max: int, refusals: float = 0.0) -> ReplyPlan:
    """What a response emits: the full reply or what follows a prefill, cut at a stop sequence and max_tokens."""
    blocks, stop_reason, details = full_blocks(seed, body, reply_min, reply_max, refusals)
    prefill = prefill_of(body)
    context = ""
    if prefill is not None:
        rest = continuation(blocks[0].tokens, prefill) if blocks and blocks[0].kind == "text" else None
        if rest is None:
            blocks, stop_reason = [PlannedBlock("text", _foreign_reply(seed, body, reply_min, reply_max))], "end_turn"
            details = None
        else:
            blocks, context = [replace(blocks[0], tokens=rest), *blocks[1:]], prefill
    stop_sequence = None
    for index, block in enumerate(blocks):
        stop = _first_stop(block.text, context, body.get("stop_sequences") or []) if block.kind == "text" else None
        if stop is not None:
            blocks = [*blocks[:index], replace(block, tokens=_split(block.tokens, stop[0])[0])]
            stop_reason, stop_sequence, details = "stop_sequence", stop[1], None
            break
        context = ""
    left = int(body["max_tokens"])
    for index, block in enumerate(blocks):
        if len(block.tokens) > left or (left == 0 and index > 0):
            cut = [replace(block, tokens=block.tokens[:left], complete=False)] if left else []
            return ReplyPlan(blocks=[*blocks[:index], *cut], stop_reason="max_tokens")
        left -= len(block.tokens)
    return ReplyPlan(blocks=blocks, stop_reason=stop_reason, stop_sequence=stop_sequence, stop_details=details)
