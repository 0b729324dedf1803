"""What the live page shows, from one reading of the store and the readings before it (pure).

``status`` is the JSON of ``/status.json`` (docs/watch.md lists its fields). Rates are taken over
the readings of the last ``WINDOW`` seconds; until two readings are ``MIN_SPAN`` apart, over the
job's whole run (from its first attempt to its last write).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from orchestrator.models import State, Usage
from orchestrator.store import BatchRow, FailureKind, JobRow

WINDOW = 60.0  # seconds of readings the rates are taken over
MIN_SPAN = 2.0  # seconds two readings must be apart to give a rate
MESSAGE_CHARS = 300  # of an error message shown
TEXT_CHARS = 600  # of a prompt or reply shown (--show-text)
LIMIT_CLASSES = ("requests", "input-tokens", "output-tokens", "tokens")


@dataclass(frozen=True)
class Reading:
    """One look at a job's store."""

    at: float  # unix time
    job: JobRow
    counts: dict[str, int]
    billed: Usage
    cost: Decimal | None
    retries: int
    failures: list[FailureKind]
    batches: list[BatchRow]
    notes: tuple[dict[str, Any], float] | None  # the run's notes and when it wrote them
    first_start: float | None
    replies: list[tuple[str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)  # --show-text only
    deadline: float | None = None  # Unix time the job is to be done by (--deadline)
    ways: dict[str, int] | None = None  # a job with message batches: succeeded requests by way
    cost_streamed: Decimal | None = None  # what the tokens billed would have cost all streamed

    @property
    def done(self) -> int:
        return self.counts[State.SUCCEEDED] + self.counts[State.ERRORED]


class Rates:
    """The readings of the last ``WINDOW`` seconds: (time, requests done, output tokens billed)."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int, int]] = deque()

    def add(self, reading: Reading) -> None:
        samples = self._samples
        samples.append((reading.at, reading.done, reading.billed.output_tokens))
        while len(samples) > 2 and samples[1][0] <= reading.at - WINDOW:
            samples.popleft()

    def now(self) -> tuple[float, float, float] | None:
        """(output tokens per second, requests per minute, over how many seconds), or None for too few readings."""
        if len(self._samples) < 2:
            return None
        (t0, done0, out0), (t1, done1, out1) = self._samples[0], self._samples[-1]
        span = t1 - t0
        if span < MIN_SPAN:
            return None
        return max(0, out1 - out0) / span, max(0, done1 - done0) / span * 60, span


def _average(reading: Reading) -> tuple[float, float, float] | None:
    if reading.first_start is None:
        return None
    span = reading.job.updated_at - reading.first_start
    if span <= 0:
        return None
    return reading.billed.output_tokens / span, reading.done / span * 60, span


def _headroom(headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    """By class (requests, input-tokens, ...): limit, remaining, reset and remaining / limit."""
    found = {}
    for name in LIMIT_CLASSES:
        try:
            limit = int(headers[f"anthropic-ratelimit-{name}-limit"])
            remaining = int(headers[f"anthropic-ratelimit-{name}-remaining"])
        except (KeyError, ValueError):
            continue
        found[name] = {
            "limit": limit,
            "remaining": remaining,
            "reset": headers.get(f"anthropic-ratelimit-{name}-reset"),
            "headroom": None if limit <= 0 else min(1.0, remaining / limit),
        }
    return found


def _text(content: Any) -> str:
    """The text of a message's content (a string or blocks), cut to ``TEXT_CHARS``."""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "".join(block.get("text", "") for block in content if isinstance(block, dict))
    else:
        text = ""
    return text if len(text) <= TEXT_CHARS else text[:TEXT_CHARS] + "..."


def _prompt(params: dict[str, Any]) -> str:
    users = [m for m in params.get("messages", []) if isinstance(m, dict) and m.get("role") == "user"]
    return _text(users[-1].get("content")) if users else ""


def _usd(value: Decimal | float | None) -> float | None:
    return None if value is None else float(round(Decimal(str(value)), 6))


def status(reading: Reading, rates: Rates) -> dict[str, Any]:
    """The page's numbers, as JSON."""
    counts = reading.counts
    total = sum(counts.values())
    remaining = total - reading.done
    measured = rates.now()
    rate, rate_kind = (measured, "recent") if measured is not None else (_average(reading), "average")
    tokens_per_second, per_minute, span = rate if rate is not None else (None, None, None)
    eta = 0.0 if remaining == 0 else None if not per_minute else remaining / per_minute * 60
    notes, noted_at = reading.notes if reading.notes is not None else ({}, None)
    billed = reading.billed
    cacheable = billed.input_tokens + billed.cache_creation_input_tokens + billed.cache_read_input_tokens
    job = reading.job
    return {
        "job": job.name,
        "simulated": job.simulated,
        "endpoint": job.endpoint,
        "read_at": reading.at,
        "updated_at": job.updated_at,
        "counts": counts,
        "total": total,
        "done": reading.done,
        "in_flight": counts[State.RUNNING],
        "failed": counts[State.ERRORED],
        "retries": reading.retries,
        "rates": {
            "output_tokens_per_second": tokens_per_second,
            "requests_per_minute": per_minute,
            "over_seconds": span,
            "kind": rate_kind if rate is not None else None,
        },
        "eta_seconds": eta,
        "cost_usd": _usd(reading.cost),
        "cap_usd": _usd(notes.get("cap_usd")),
        "cost_streamed_usd": _usd(reading.cost_streamed),
        "ways": reading.ways,
        "deadline": reading.deadline,
        "billed_tokens": billed.as_dict(),
        "cache": {
            "hit_rate": None if cacheable == 0 else billed.cache_read_input_tokens / cacheable,
            "read_tokens": billed.cache_read_input_tokens,
            "write_tokens": billed.cache_creation_input_tokens,
        },
        "run": {
            "noted_at": noted_at,
            "mode": notes.get("mode"),
            "concurrency": notes.get("concurrency"),
            "allowed": notes.get("allowed"),
            "pauses": notes.get("pauses"),
            "cuts": notes.get("cuts"),
        },
        "rate_limits": {model: _headroom(headers) for model, headers in notes.get("rate_limits", {}).items()},
        "batches": {
            "states": dict(Counter(batch.state for batch in reading.batches)),
            "open": [
                {
                    "id": batch.id,
                    "state": batch.state,
                    "requests": batch.requests,
                    "counts": batch.counts,
                    "expires_at": batch.expires_at,
                }
                for batch in reading.batches
                if batch.open
            ],
        },
        "errors": [
            {
                "kind": kind.kind,
                "count": kind.count,
                "latest_at": kind.latest_at,
                "latest_type": kind.latest_type,
                "latest_message": None if kind.latest_message is None else kind.latest_message[:MESSAGE_CHARS],
            }
            for kind in reading.failures
        ],
        "replies": [
            {"custom_id": custom_id, "prompt": _prompt(params), "reply": _text(result.get("content"))}
            for custom_id, params, result in reading.replies
        ],
    }
