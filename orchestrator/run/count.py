"""How many tokens a piece of a reply holds: counted by the server, or bounded when it won't say.

A broken stream does not say how many tokens it delivered (a delta carries several, and the
count comes only with ``message_delta``). The continuation of a reply must know it, or it
asks for too many and ends past ``max_tokens``. So the kept text is counted with
``POST /v1/messages/count_tokens`` (free, its own rate limit), by difference: the text as a
user message, minus what an empty-enough message costs. That cost (the request's and the
message's fixed overhead) is measured once per model with a one-character message, which is one
token in any byte-level tokenizer.

When the server does not answer (an endpoint without ``count_tokens``, its rate limit, an
outage), the kept text is bounded instead: no token is shorter than one UTF-8 byte, so its byte
count is an upper bound. A reply continued from an upper bound stops short of ``max_tokens``,
never past it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import anthropic
import httpx2

PROBE = "."  # one character: one token, so a message of it costs the overhead plus one
GONE_STATUSES = frozenset({400, 404, 405, 501})  # the endpoint or the model can't count: don't ask again


def upper_bound(text: str) -> int:
    """At least as many as the tokens ``text`` holds: its UTF-8 bytes."""
    return len(text.encode())


def generated_text(partial: dict[str, Any]) -> str:
    """Everything a partial message's blocks generated: text, thinking and tool JSON."""
    pieces = []
    for block in partial.get("content", []):
        for key in ("text", "thinking", "partial_json"):
            value = block.get(key)
            if isinstance(value, str):
                pieces.append(value)
    return "".join(pieces)


@dataclass
class TokenCounter:
    """Counts texts with the server's ``count_tokens``, per model; remembers where it can't."""

    client: anthropic.AsyncAnthropic
    overhead: dict[str, int] = field(default_factory=dict)  # per model: a message's count beside its text
    unavailable: set[str] = field(default_factory=set)  # models whose counts were refused for good
    calls: int = 0

    async def count(self, model: str, text: str) -> int | None:
        """The tokens of ``text`` for ``model`` as the server counts them; None if it does not say."""
        if not text.strip():
            return 0 if not text else None  # whitespace alone is not a valid message to count
        if model in self.unavailable:
            return None
        try:
            if model not in self.overhead:
                self.overhead[model] = await self._message(model, PROBE) - 1
            tokens = await self._message(model, text) - self.overhead[model]
        except anthropic.APIStatusError as exc:
            if exc.status_code in GONE_STATUSES:
                self.unavailable.add(model)
            return None
        except (anthropic.APIConnectionError, httpx2.HTTPError):
            return None
        return tokens if 0 < tokens <= upper_bound(text) else None

    async def bound(self, model: str, text: str) -> tuple[int, bool]:
        """(tokens, counted): the server's count of ``text``, else its upper bound."""
        tokens = await self.count(model, text)
        return (upper_bound(text), False) if tokens is None else (tokens, True)

    async def _message(self, model: str, text: str) -> int:
        self.calls += 1
        counted = await self.client.messages.count_tokens(model=model, messages=[{"role": "user", "content": text}])
        return counted.input_tokens
