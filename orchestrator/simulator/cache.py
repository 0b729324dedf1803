"""Prompt caching like the API's: cache_control breakpoints mark prefixes that later requests read.

A prefix ending at a breakpoint is cached only if it holds at least the model's minimum of
tokens. A request reads the longest cached prefix of its prompt and writes the rest up to its
last breakpoint; ``input_tokens`` is what is left after the last breakpoint (or everything, when
nothing is cached or written). An entry lives for its TTL (5 minutes, or 1 hour) from its last
use, on the simulator's clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.api.modelinfo import family, model_version
from orchestrator.simulator.replies import Segment

# Minimum cacheable prompt length by model (tokens); others: 1024.
_MINIMUMS = {
    "claude-opus-5": 512,
    "claude-fable-5": 512,
    "claude-mythos-5": 512,
    "claude-haiku-4-5": 4096,
    "claude-opus-4-5": 4096,
    "claude-opus-4-6": 4096,
    "claude-opus-4-7": 4096,
    "claude-sonnet-4-6": 2048,
}


def minimum_cacheable(model: str) -> int:
    name = family(model)
    if name in _MINIMUMS:
        return _MINIMUMS[name]
    if "haiku" in name and (model_version(name) or (0, 0)) < (4, 0):
        return 2048
    return 1024


@dataclass(frozen=True)
class InputUsage:
    """How a request's input is billed."""

    input_tokens: int  # neither read from nor written to the cache
    cache_read: int = 0
    cache_write_5m: int = 0
    cache_write_1h: int = 0
    writes: tuple[tuple[bytes, float], ...] = ()  # (prefix key, ttl) written
    read: tuple[bytes, float] | None = None  # (prefix key, ttl) read

    @property
    def cache_creation(self) -> int:
        return self.cache_write_5m + self.cache_write_1h

    @property
    def rate_limited(self) -> int:
        """What counts against the input tokens per minute: uncached input and cache writes, not reads."""
        return self.input_tokens + self.cache_creation

    def fields(self) -> dict[str, object]:
        """The input part of a response's ``usage``."""
        return {
            "input_tokens": self.input_tokens,
            "cache_creation_input_tokens": self.cache_creation,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_write_5m,
                "ephemeral_1h_input_tokens": self.cache_write_1h,
            },
        }


_PRUNE_AT = 10_000  # entries; past this, expired ones are dropped at the next write


@dataclass
class PromptCache:
    entries: dict[bytes, tuple[float, float]] = field(default_factory=dict)  # key -> (expires at, ttl)

    def lookup(self, model: str, segments: list[Segment], now: float) -> InputUsage:
        """How a request with this prompt would be billed now (nothing changes until ``commit``)."""
        total = sum(segment.tokens for segment in segments)
        breakpoints = [index for index, segment in enumerate(segments) if segment.ttl is not None]
        if not breakpoints:
            return InputUsage(input_tokens=total)
        minimum = minimum_cacheable(model)
        prefix = [0]
        for segment in segments:
            prefix.append(prefix[-1] + segment.tokens)
        last = breakpoints[-1]
        read_end, read = 0, None
        for index in range(last, -1, -1):
            entry = self.entries.get(segments[index].key)
            if entry is not None and entry[0] > now:
                read_end, read = index + 1, (segments[index].key, entry[1])
                break
        writes: list[tuple[bytes, float]] = []
        written = {300.0: 0, 3600.0: 0}
        done = read_end
        for index in breakpoints:
            ttl = segments[index].ttl
            assert ttl is not None
            if index + 1 > done and prefix[index + 1] >= minimum:
                written[ttl] += prefix[index + 1] - prefix[done]
                writes.append((segments[index].key, ttl))
                done = index + 1
        cache_read = prefix[read_end]
        return InputUsage(
            input_tokens=total - cache_read - written[300.0] - written[3600.0],
            cache_read=cache_read,
            cache_write_5m=written[300.0],
            cache_write_1h=written[3600.0],
            writes=tuple(writes),
            read=read,
        )

    def commit(self, usage: InputUsage, now: float) -> None:
        """The request was served: store what it wrote, and refresh what it read."""
        if len(self.entries) > _PRUNE_AT:
            self.entries = {key: entry for key, entry in self.entries.items() if entry[0] > now}
        for key, ttl in (*usage.writes, *([usage.read] if usage.read else [])):
            self.entries[key] = (now + ttl, ttl)
