"""What a failed attempt stands for (pure): retry it, give it up, or stop the job.

Retried: 408, 409, 429, 5xx, 529, connection failures (``connect`` when no connection could be
made at all, not ``reached``; so is a client error without the API's error body: ``run.reach``
says when the endpoint is unreachable and the job stops), broken
streams (an in-band error event, a dropped connection, a stall, an end before the message is
complete, a malformed stream). Never retried: other 4xx.
Stopping the whole job: 401, 402, 403 and the spend-cap 429. ``x-should-retry`` overrides the
status code either way. Anything else (a bug of ours) is not classified here and propagates.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import anthropic
import httpx2

from orchestrator.errors import StreamError
from orchestrator.models import Outcome

FATAL_STATUSES = frozenset({401, 402, 403})
RETRY_STATUSES = frozenset({408, 409, 429})
SPEND_CAP_CODE = "enforced_spend_limit_reached"
CONNECT_ERRORS = (httpx2.ConnectError, httpx2.ConnectTimeout)


@dataclass(frozen=True)
class Failure:
    outcome: Outcome
    reason: str  # short, stable: "http_529", "in_band_overloaded_error", "connection", ...
    status: int | None
    error: dict[str, Any]  # the API's error body, or one in its shape
    retry_after: float | None = None
    headers: Mapping[str, str] | None = None  # the response's, when it had one
    # False when the attempt did not reach the Messages API: no connection could be made, or the
    # answer was a client error without the API's error body (a wrong URL's 404 page, say).
    reached: bool = True


def _api_body(exc: anthropic.APIStatusError) -> dict[str, Any] | None:
    """The API's error body (``{"type": "error", "error": {...}}``) the response carries, if it does."""
    body = exc.body
    return body if isinstance(body, dict) and isinstance(body.get("error"), dict) else None


def _error_body(exc: anthropic.APIStatusError) -> dict[str, Any]:
    return _api_body(exc) or {"type": "error", "error": {"type": "api_error", "message": str(exc.body or exc.message)}}


def _where(url: httpx2.URL) -> str:
    return f"{url.scheme}://{url.netloc.decode()}"


def retry_after(headers: Mapping[str, str], now: Callable[[], float] = time.time) -> float | None:
    """Seconds the server asks us to wait: ``retry-after`` as seconds or as an HTTP date."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC as well
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now())


def classify(exc: BaseException) -> Failure | None:
    """The failure an exception stands for, or None if it is not a request failure (a bug)."""
    if isinstance(exc, StreamError):  # no_message_stop, malformed_stream
        return Failure(Outcome.BROKEN, exc.reason, None, _shaped("api_error", str(exc)))
    if isinstance(exc, anthropic.APIStatusError):
        status = exc.status_code
        body = _error_body(exc)
        error_type = body["error"].get("type", "api_error")
        if status == 200:  # an in-band error event after the stream began
            return Failure(Outcome.BROKEN, f"in_band_{error_type}", status, body)
        details = body["error"].get("details")
        if status == 429 and isinstance(details, dict) and details.get("error_code") == SPEND_CAP_CODE:
            return Failure(Outcome.FATAL, "spend_cap", status, body)
        should = exc.response.headers.get("x-should-retry")
        if should == "true":
            retryable = True
        elif should == "false":
            retryable = False
        else:
            retryable = status in RETRY_STATUSES or status >= 500
        if status in FATAL_STATUSES and not retryable:
            outcome = Outcome.FATAL
        else:
            outcome = Outcome.RETRYABLE if retryable else Outcome.PERMANENT
        headers = exc.response.headers
        reached = outcome is not Outcome.PERMANENT or _api_body(exc) is not None
        if not reached:
            message = (
                f"{_where(exc.response.request.url)} answered HTTP {status} without the API's error body: "
                f"it does not answer as the Messages API ({str(exc.body or exc.message)[:200]})"
            )
            body = _shaped("api_error", message)
        return Failure(outcome, f"http_{status}", status, body, retry_after(headers), headers, reached)
    if isinstance(exc, anthropic.APIConnectionError) and isinstance(exc.__cause__, CONNECT_ERRORS):
        # No connection could be made (refused, no such host, TLS, connect timeout): the endpoint's
        # failure, not the request's.
        cause = exc.__cause__
        message = f"cannot connect to {_where(exc.request.url)} ({type(cause).__name__}: {cause})"
        return Failure(Outcome.BROKEN, "connect", None, _shaped("api_error", message), reached=False)
    if isinstance(exc, anthropic.APIConnectionError | httpx2.TransportError):
        # Raw httpx2 errors arrive mid-stream (dropped connection, read stall); the SDK wraps
        # the same failures before the stream starts.
        reason = "timeout" if isinstance(exc, anthropic.APITimeoutError | httpx2.TimeoutException) else "connection"
        return Failure(Outcome.BROKEN, reason, None, _shaped("api_error", f"{type(exc).__name__}: {exc}"))
    return None


def _shaped(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type, "message": message}}
