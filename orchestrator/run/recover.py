"""Continuing a broken stream instead of paying for it twice (pure).

After an attempt breaks mid-stream, what it received is kept and the next attempt asks only for
the rest:

- ``prefill``: the kept reply, trailing whitespace trimmed, becomes the last assistant message;
  the continuation is joined to it (the trimmed whitespace is carried over if the continuation
  does not bring its own). Exact. Only for models that accept prefill, only for text: not when
  the request asks for extended thinking or the partial holds anything but text.
- ``continue``: for models that reject prefill, a user message quotes the kept reply and asks
  for the rest. Cheaper than a restart, not byte-exact; the result says so.
- ``restart``: the request again from scratch.
- ``auto``: prefill where it can be used, restart otherwise.

A request with an output format (structured outputs) is always restarted: the API takes no
prefill with a format, and a continuation asked for in a user message would be a new JSON
document, not the rest of this one. The simulator's replies are seeded by the conversation, so
a restart brings the same reply (as a model at temperature 0 mostly does).

The continuation's ``max_tokens`` is what the original had left after the tokens of what it
prefills (the kept text as sent, trailing whitespace trimmed: the continuation regenerates
that whitespace and pays for it), so the joined reply stops where the uninterrupted one would
have. Those tokens are counted by the server where it can (``count.py``); until then, and
where it can't, they are bounded by the text's UTF-8 bytes, so a reply stops short of
``max_tokens`` rather than past it. The final message looks like an uninterrupted one:
content joined, ``stop_reason`` from the last attempt, ``usage`` with the input of the original
request and every output token the message holds.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any

from orchestrator.api.modelinfo import accepts_prefill
from orchestrator.outputs import output_format
from orchestrator.run.count import upper_bound

CONTINUE_PROMPT = (
    "Your previous reply was cut off. Here is everything you wrote so far, between the markers:\n"
    "<partial_reply>\n{partial}\n</partial_reply>\n"
    "Continue the reply from exactly where it stops. Output only the continuation: do not repeat "
    "anything, do not comment on the interruption."
)


class Strategy(StrEnum):
    AUTO = "auto"
    PREFILL = "prefill"
    CONTINUE = "continue"
    RESTART = "restart"


@dataclass(frozen=True)
class Recovery:
    """What has been kept of one request's reply over its broken attempts."""

    text: str = ""  # the reply so far (after any prefill of the request's own)
    output_tokens: int = 0  # output tokens of ``counted_text``: the server's count, or an upper bound
    counted: bool = True  # whether ``output_tokens`` is the server's count (else its upper bound)
    shell: dict[str, Any] | None = None  # the first started attempt's message without content (id, usage, ...)
    mode: str | None = None  # "prefill" or "continue" once a continuation is asked for
    breaks: int = 0  # attempts whose output was kept

    @property
    def exact(self) -> bool:
        return self.mode != "continue"

    @property
    def counted_text(self) -> str:
        """The part of the kept text the next attempt does not regenerate: what prefill sends
        (trailing whitespace trimmed), or all of it for ``continue``."""
        return self.text.rstrip() if self.mode == Strategy.PREFILL else self.text

    def with_count(self, tokens: int) -> Recovery:
        """This recovery with ``counted_text`` counted by the server."""
        return replace(self, output_tokens=tokens, counted=True)

    def to_dict(self) -> dict[str, Any] | None:
        """As stored with the request; None when nothing is kept."""
        return None if self == Recovery() else asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Recovery:
        # Kept before its tokens were counted (an older store): count them again before going on.
        return cls() if not data else cls(**{"counted": False, **data})

    def summary(self) -> dict[str, Any] | None:
        """What the result line says about recovery, or None if nothing was recovered."""
        if self.mode is None:
            return None
        return {
            "strategy": self.mode,
            "exact": self.exact,
            "kept_output_tokens": self.output_tokens,
            "kept_tokens": "counted" if self.counted else "upper_bound",
            "breaks": self.breaks,
        }


def _own_prefill(messages: list[dict[str, Any]]) -> str | None:
    last = messages[-1]
    if last.get("role") != "assistant":
        return None
    content = last["content"]
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if block.get("type") == "text")


def _thinking(params: dict[str, Any]) -> bool:
    thinking = params.get("thinking")
    return isinstance(thinking, dict) and thinking.get("type") not in (None, "disabled")


def resolve(strategy: Strategy, params: dict[str, Any]) -> Strategy:
    """The strategy to use for these params: AUTO and PREFILL fall back to RESTART where prefill can't be used;
    a reply in a structured format is always restarted."""
    if output_format(params) is not None:
        return Strategy.RESTART
    prefill_ok = accepts_prefill(params["model"]) and not _thinking(params)
    if strategy is Strategy.AUTO:
        return Strategy.PREFILL if prefill_ok else Strategy.RESTART
    if strategy is Strategy.PREFILL and not prefill_ok:
        return Strategy.RESTART
    if strategy is Strategy.CONTINUE and _thinking(params):
        return Strategy.RESTART
    return strategy


def after_break(
    recovery: Recovery, strategy: Strategy, params: dict[str, Any], partial: dict[str, Any] | None
) -> Recovery:
    """The recovery after an attempt broke having received ``partial`` (its snapshot, or None).

    Its ``output_tokens`` is the upper bound of the kept text until ``with_count`` says better."""
    chosen = resolve(strategy, params)
    if chosen is Strategy.RESTART:
        return Recovery()
    if partial is None:
        return recovery  # nothing arrived: the next attempt asks for the same thing again
    blocks = partial.get("content", [])
    if any(block.get("type") != "text" for block in blocks):
        return Recovery()  # tool use or thinking in flight cannot be continued
    text = "".join(block.get("text", "") for block in blocks)
    shell = recovery.shell or {key: value for key, value in partial.items() if key != "content"}
    if not text:
        return replace(recovery, shell=shell)
    kept = Recovery(text=_joined_text(recovery, text), shell=shell, mode=chosen.value, breaks=recovery.breaks + 1)
    return replace(kept, output_tokens=upper_bound(kept.counted_text), counted=False)


def next_params(params: dict[str, Any], recovery: Recovery) -> dict[str, Any] | None:
    """The params of the next attempt; None if the kept reply already used every ``max_tokens``."""
    if recovery.mode is None or not recovery.text.strip():
        return params
    left = params["max_tokens"] - recovery.output_tokens
    if left < 1:
        return None
    messages = copy.deepcopy(params["messages"])
    if recovery.mode == Strategy.PREFILL:
        own = _own_prefill(messages)
        if own is not None:
            messages[-1] = {"role": "assistant", "content": (own + recovery.text).rstrip()}
        else:
            messages.append({"role": "assistant", "content": recovery.text.rstrip()})
    else:
        messages.append({"role": "user", "content": CONTINUE_PROMPT.format(partial=recovery.text)})
    return {**params, "messages": messages, "max_tokens": left}


def _joined_text(recovery: Recovery, continuation: str) -> str:
    if recovery.mode != Strategy.PREFILL:
        return recovery.text + continuation
    kept = recovery.text.rstrip()
    trimmed = recovery.text[len(kept) :]
    if continuation[:1].isspace() or not continuation:
        return kept + continuation
    return kept + trimmed + continuation


def join(recovery: Recovery, message: dict[str, Any]) -> dict[str, Any]:
    """The final message of a recovered reply, as if it had never broken."""
    if recovery.mode is None or not recovery.text:
        return message
    content = list(message.get("content", []))
    if content and content[0].get("type") == "text":
        content[0] = {**content[0], "text": _joined_text(recovery, content[0]["text"])}
    else:
        content.insert(0, {"type": "text", "text": _joined_text(recovery, "")})
    usage = dict(message.get("usage", {}))
    for key, value in (recovery.shell or {}).get("usage", {}).items():
        if key != "output_tokens":
            usage[key] = value
    usage["output_tokens"] = recovery.output_tokens + usage.get("output_tokens", 0)
    return {**message, "content": content, "usage": usage}


def finish_without_continuation(recovery: Recovery, max_tokens: int) -> dict[str, Any]:
    """The final message when the kept reply already reached ``max_tokens`` (or its upper bound
    did: no attempt ever asked for more than was left, so the text holds at most ``max_tokens``)."""
    shell = recovery.shell or {"type": "message", "role": "assistant"}
    usage = {**shell.get("usage", {}), "output_tokens": min(recovery.output_tokens, max_tokens)}
    return {**shell, "content": [{"type": "text", "text": recovery.text}], "stop_reason": "max_tokens", "usage": usage}
