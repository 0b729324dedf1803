"""Plain data shared by all modules: requests, their states, usage, attempt outcomes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

# Top-level fields of a Messages API request that a job may set (the sampling fields are
# still accepted by older models; the API, not this list, has the last word on values).
MESSAGE_PARAMS = frozenset(
    {
        "cache_control",
        "diagnostics",
        "speed",
        "user_profile_id",
        "workspace_id",
        "model",
        "max_tokens",
        "messages",
        "system",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "metadata",
        "tools",
        "tool_choice",
        "thinking",
        "service_tier",
        "container",
        "mcp_servers",
        "output_config",
        "output_format",  # the beta's name of output_config.format (deprecated, still accepted)
        "context_management",
        "inference_geo",
    }
)


class State(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    ERRORED = "errored"


# The reason recorded for an attempt cut short by a stop or a crash (one cause, one name).
INTERRUPTED_REASON = "job_stopped"


class Outcome(StrEnum):
    """How one attempt ended."""

    SUCCEEDED = "succeeded"
    BROKEN = "broken"  # the stream ended without message_stop, dropped, stalled or sent an error event
    RETRYABLE = "retryable"  # refused before the stream, worth another try (429, 5xx, 529, connection)
    PERMANENT = "permanent"  # refused for good (400 and the like)
    FATAL = "fatal"  # the whole job must stop (401, 403, spend cap)
    INTERRUPTED = "interrupted"  # the job was stopped while the attempt ran


@dataclass(frozen=True)
class Request:
    """One request of a job, as loaded into the store."""

    id: int  # the store's row id, in input order
    custom_id: str
    params: dict[str, Any]
    attempts: int  # attempts made so far
    kept: dict[str, Any] | None = None  # what earlier attempts kept of the reply (recover.Recovery)
    interrupted: dict[str, Any] | None = None  # the last checkpoint of an attempt cut by a stop or a crash
    interrupted_estimated: bool = False  # whether that checkpoint's output tokens are our estimate


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0  # all cache writes, 5-minute and 1-hour
    cache_read_input_tokens: int = 0
    cache_creation_1h_input_tokens: int = 0  # the 1-hour writes among them (priced higher)

    def add(self, other: Usage) -> None:
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cache_creation_input_tokens += other.cache_creation_input_tokens
        self.cache_read_input_tokens += other.cache_read_input_tokens
        self.cache_creation_1h_input_tokens += other.cache_creation_1h_input_tokens

    def minus(self, other: Usage) -> Usage:
        mine, theirs = self.as_dict(), other.as_dict()
        return Usage(**{name: mine[name] - theirs[name] for name in mine})

    def as_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cache_creation_1h_input_tokens": self.cache_creation_1h_input_tokens,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Usage:
        """From an API usage object (its ``cache_creation`` breakdown gives the 1-hour writes)."""
        breakdown = data.get("cache_creation") or {}
        return cls(
            input_tokens=data.get("input_tokens") or 0,
            output_tokens=data.get("output_tokens") or 0,
            cache_creation_input_tokens=data.get("cache_creation_input_tokens") or 0,
            cache_read_input_tokens=data.get("cache_read_input_tokens") or 0,
            cache_creation_1h_input_tokens=breakdown.get("ephemeral_1h_input_tokens") or 0,
        )


# -- what the runner hands the store ---------------------------------------------------


@dataclass(frozen=True)
class Waits:
    """Seconds an attempt waited before it was sent, by what for."""

    slot: float = 0.0  # a free concurrency slot (every stream of the concurrency busy)
    rate_limit: float = 0.0  # the rate limiter: a bucket's refill, a pause after a 429, a probe
    prefix: float = 0.0  # another request to warm the cached prefix it reads


@dataclass(frozen=True)
class AttemptStarted:
    request_id: int
    number: int
    at: float  # when the attempt began: before the rate limiter admitted it
    kept: dict[str, Any] | None = None  # what the reply keeps as this attempt starts (recover.Recovery)
    corrects: tuple[int, int] | None = None  # (number, output tokens): an interrupted attempt's recount
    sent_at: float | None = None  # when the request went out (None: nothing was sent)
    waits: Waits | None = None  # what it waited for before it was sent (None: nothing was sent)


@dataclass(frozen=True)
class Checkpoint:
    request_id: int
    number: int
    partial: dict[str, Any] | None  # the partial message so far
    message_id: str | None
    usage: Usage
    first_token_at: float | None
    at: float
    output_estimated: bool = False  # the output tokens are our estimate (the stream broke before its count)


@dataclass(frozen=True)
class AttemptEnded:
    """An attempt's end; with ``final`` set, the request's end too, in the same transaction."""

    checkpoint: Checkpoint
    outcome: Outcome
    reason: str | None
    status: int | None
    error: dict[str, Any] | None
    final: tuple[State, dict[str, Any]] | None  # (succeeded|errored, message or error body)
    next_state: State = State.RUNNING  # the request's state when not final
    recovery: dict[str, Any] | None = None  # how a broken reply was continued, if it was
    kept: dict[str, Any] | None = None  # what the reply keeps so far (None: nothing), when not final


@dataclass(frozen=True)
class Released:
    """A request waiting to retry (between attempts) when its run stopped: pending again."""

    request_id: int


Record = AttemptStarted | AttemptEnded | Released


@dataclass(frozen=True)
class BatchResult:
    """What one line of a message batch's results means for its request (``batch.results`` decides)."""

    custom_id: str
    outcome: Outcome
    reason: str | None  # the error type, "expired" or "canceled"; None for a success
    usage: Usage
    message_id: str | None
    error: dict[str, Any] | None  # the API's error body, or one in its shape
    final: tuple[State, dict[str, Any]] | None  # a success, or an error not worth another batch
    retry: bool = False  # worth another batch while attempts remain (else it becomes an errored result)


# What the input readers (jobs/) hand the store to load: records, not input formats.

# The params of every request as stored: compact, non-ASCII escaped (the text the sender reads).
encode_params = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


@dataclass(slots=True)
class Loaded:
    """One valid request read from an input, with where it came from."""

    custom_id: str
    params: dict[str, Any]
    path: str
    line: int | None
    row: dict[str, Any] | None = None  # a table row's columns (joined back to its result by the CSV export)


@dataclass(slots=True)
class Prompts:
    """The requests of consecutive lines of one input, checked in bulk. Line ``first + i`` is the
    request of ``items[i]``: its custom_id (empty: ``<stem>-<line>``) followed by its prompt as a
    JSON string; its params are ``prefix + prompt + suffix``, the text ``encode_params`` gives."""

    path: str
    stem: str
    first: int
    items: list[str]
    prefix: str
    suffix: str
