"""Prompt caching as the API documents it (pure; the caller's clock).

- Breakpoints (``cache_control``) sit on tools, system blocks and message blocks (a top-level
  ``cache_control`` puts one on the last block); an entry is written at each breakpoint past
  what the request reads, if the prefix ending there holds at least the model's minimum.
- A request reads the longest live entry found at a block boundary within ``LOOKBACK`` blocks
  before one of its breakpoints (the breakpoint's own block counted first).
- Billing, as the docs put it for mixed TTLs: A = tokens read, B = the prefix up to the last 1h
  breakpoint written, C = up to the last breakpoint written: reads A, 1h writes B - A, 5m writes
  C - B; ``input_tokens`` is the rest.
- An entry becomes readable only once the response that writes it has begun (``publish``):
  requests admitted before that miss it and write it too, each billed as a write.
- Its lifetime (5 minutes or 1 hour) counts from the start of the last request that wrote or
  read it (``start``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from orchestrator.api.modelinfo import minimum_cacheable
from orchestrator.simulator.replies import Segment

LOOKBACK = 20  # block boundaries looked at for each breakpoint, its own included
FIVE_MINUTES = 300.0
ONE_HOUR = 3600.0


@dataclass(frozen=True)
class InputUsage:
    """How a request's input is billed, and which entries it reads and writes."""

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

    def _live(self, key: bytes, now: float) -> tuple[float, float] | None:
        entry = self.entries.get(key)
        return entry if entry is not None and entry[0] > now else None

    def lookup(self, model: str, segments: list[Segment], now: float) -> InputUsage:
        """How a request with this prompt would be billed now (nothing changes until ``start``)."""
        total = sum(segment.tokens for segment in segments)
        breakpoints = [index for index, segment in enumerate(segments) if segment.ttl is not None]
        if not breakpoints:
            return InputUsage(input_tokens=total)
        prefix = [0]
        for segment in segments:
            prefix.append(prefix[-1] + segment.tokens)
        read_end, read = 0, None
        for breakpoint_at in breakpoints:
            for index in range(breakpoint_at, max(breakpoint_at - LOOKBACK, -1), -1):
                if index < read_end:
                    break
                entry = self._live(segments[index].key, now)
                if entry is not None:
                    read_end, read = index + 1, (segments[index].key, entry[1])
                    break
        minimum = minimum_cacheable(model)
        written = [  # (end of the prefix, its key, ttl) of each entry written
            (index + 1, segments[index].key, segments[index].ttl or FIVE_MINUTES)
            for index in breakpoints
            if index + 1 > read_end and prefix[index + 1] >= minimum
        ]
        long_ends = [end for end, _, ttl in written if ttl == ONE_HOUR]
        b = prefix[long_ends[-1]] if long_ends else prefix[read_end]
        c = prefix[written[-1][0]] if written else prefix[read_end]
        cache_read = prefix[read_end]
        return InputUsage(
            input_tokens=total - c,
            cache_read=cache_read,
            cache_write_5m=c - b,
            cache_write_1h=b - cache_read,
            writes=tuple((key, ttl) for _, key, ttl in written),
            read=read,
        )

    def start(self, usage: InputUsage, now: float) -> None:
        """The request was admitted at ``now``: what it read lives on from now."""
        if usage.read is not None:
            key, ttl = usage.read
            expires, _ = self.entries.get(key, (now, ttl))
            self.entries[key] = (max(expires, now + ttl), ttl)

    def publish(self, usage: InputUsage, started: float, now: float) -> None:
        """The response of a request admitted at ``started`` has begun: what it wrote is readable now."""
        if len(self.entries) > _PRUNE_AT:
            self.entries = {key: entry for key, entry in self.entries.items() if entry[0] > now}
        for key, ttl in usage.writes:
            expires, _ = self.entries.get(key, (started, ttl))
            self.entries[key] = (max(expires, started + ttl), ttl)
