"""Retry decisions (pure): what is retried, what is permanent, what stops the job; backoff bounds."""

from __future__ import annotations

import random
from typing import Any

import anthropic
import httpx2
import pytest

from orchestrator.api.failures import classify
from orchestrator.errors import BrokenStream
from orchestrator.models import Outcome
from orchestrator.runtime.backoff import Backoff

REQUEST = httpx2.Request("POST", "http://api.test/v1/messages")


def status_error(
    status: int,
    error_type: str = "api_error",
    headers: dict[str, str] | None = None,
    details: dict[str, Any] | None = None,
) -> anthropic.APIStatusError:
    body: dict[str, Any] = {"type": "error", "error": {"type": error_type, "message": "m"}}
    if details:
        body["error"]["details"] = details
    response = httpx2.Response(status, headers=headers or {}, request=REQUEST)
    return anthropic.APIStatusError("m", response=response, body=body)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (400, Outcome.PERMANENT),
        (404, Outcome.PERMANENT),
        (413, Outcome.PERMANENT),
        (401, Outcome.FATAL),
        (402, Outcome.FATAL),
        (403, Outcome.FATAL),
        (408, Outcome.RETRYABLE),
        (409, Outcome.RETRYABLE),
        (429, Outcome.RETRYABLE),
        (500, Outcome.RETRYABLE),
        (504, Outcome.RETRYABLE),
        (529, Outcome.RETRYABLE),
    ],
)
def test_status_codes(status: int, outcome: Outcome) -> None:
    failure = classify(status_error(status))
    assert failure is not None
    assert failure.outcome is outcome
    assert failure.reason == f"http_{status}"
    assert failure.status == status


def test_should_retry_header_overrides_both_ways() -> None:
    forced_no = classify(status_error(529, headers={"x-should-retry": "false"}))
    forced_yes = classify(status_error(400, headers={"x-should-retry": "true"}))
    assert forced_no is not None
    assert forced_no.outcome is Outcome.PERMANENT
    assert forced_yes is not None
    assert forced_yes.outcome is Outcome.RETRYABLE


def test_retry_after_is_read() -> None:
    failure = classify(status_error(429, "rate_limit_error", headers={"retry-after": "7"}))
    assert failure is not None
    assert failure.retry_after == 7.0
    garbled = classify(status_error(429, headers={"retry-after": "soon"}))
    assert garbled is not None
    assert garbled.retry_after is None


def test_spend_cap_stops_the_job() -> None:
    failure = classify(status_error(429, "rate_limit_error", details={"error_code": "enforced_spend_limit_reached"}))
    assert failure is not None
    assert failure.outcome is Outcome.FATAL
    assert failure.reason == "spend_cap"


def test_in_band_error_is_a_broken_stream() -> None:
    failure = classify(status_error(200, "overloaded_error"))
    assert failure is not None
    assert failure.outcome is Outcome.BROKEN
    assert failure.reason == "in_band_overloaded_error"


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (httpx2.RemoteProtocolError("peer closed connection"), "connection"),
        (httpx2.ReadTimeout("timed out"), "timeout"),
        (anthropic.APIConnectionError(request=REQUEST), "connection"),
        (anthropic.APITimeoutError(request=REQUEST), "timeout"),
        (BrokenStream("no message_stop"), "no_message_stop"),
    ],
)
def test_transport_failures_are_broken_streams(exc: Exception, reason: str) -> None:
    failure = classify(exc)
    assert failure is not None
    assert failure.outcome is Outcome.BROKEN
    assert failure.reason == reason
    assert failure.error["type"] == "error"


def test_bugs_are_not_classified() -> None:
    assert classify(KeyError("x")) is None
    assert classify(ValueError("bad")) is None


def test_backoff_is_capped_jittered_and_honours_retry_after() -> None:
    backoff = Backoff(base=1.0, cap=8.0)
    rng = random.Random(0)
    for attempt in range(1, 10):
        ceiling = min(8.0, 2 ** (attempt - 1))
        delays = [backoff.delay(attempt, None, rng) for _ in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # jitter spreads over the whole range
    assert backoff.delay(1, 30.0, rng) == 30.0
