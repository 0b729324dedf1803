"""A deadline as a user writes it -> a Unix time (pure): ``90m``, ``8h``, ``1h30m``, ``09:00``, an ISO datetime;
and a span of time as it is shown (``1h05m``, ``12m30s``, ``45s``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
CLOCK = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")


class DeadlineError(ValueError):
    """A deadline that is not a duration, a clock time or a datetime, or one already past."""


def parse_deadline(text: str, now: datetime) -> float:
    """The Unix time of a deadline: a duration from ``now`` (``90m``, ``8h``, ``1h30m``, ``2d``,
    ``45s``), a clock time (``09:00``: its next occurrence, in ``now``'s time zone) or an ISO
    datetime (``2026-12-05T09:00``; without a zone, ``now``'s). ``now`` is aware."""
    text = text.strip()
    duration = DURATION.fullmatch(text)
    if text and duration is not None and any(duration.groups()):
        days, hours, minutes, seconds = (float(part or 0) for part in duration.groups())
        return (now + timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)).timestamp()
    clock = CLOCK.fullmatch(text)
    if clock is not None:
        hour, minute, second = int(clock[1]), int(clock[2]), int(clock[3] or 0)
        if hour > 23 or minute > 59 or second > 59:
            raise DeadlineError(f"{text!r} is not a time of day")
        moment = now.replace(hour=hour, minute=minute, second=second, microsecond=0)
        return (moment if moment > now else moment + timedelta(days=1)).timestamp()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise DeadlineError(
            f"{text!r} is not a deadline: give a duration (90m, 8h, 1h30m), a time of day (09:00) "
            "or a date and time (2026-12-05T09:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=now.tzinfo)
    if moment <= now:
        raise DeadlineError(f"{text!r} has passed already")
    return moment.timestamp()


def deadline_at(text: str, now: float) -> float:
    """``parse_deadline`` from the Unix time ``now``, in the local time zone."""
    return parse_deadline(text, datetime.fromtimestamp(now).astimezone())


def deadline_form(text: str) -> None:
    """Raises DeadlineError (a ValueError) unless ``text`` has a deadline's form (passed or not)."""
    parse_deadline(text, datetime.fromtimestamp(0, UTC))


def span(seconds: float) -> str:
    """``1h05m``, ``12m30s``, ``45s`` (a negative span shows as ``0s``)."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    if hours:
        return f"{hours}h{rest // 60:02d}m"
    return f"{rest // 60}m{rest % 60:02d}s" if rest >= 60 else f"{rest}s"


def deadline_line(deadline: float, done_at: float | None, now: float) -> str:
    """A job's deadline (local time) and how it stands: met or missed (done at ``done_at``, by how
    much), or, not done, the time left."""
    when = datetime.fromtimestamp(deadline).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if done_at is not None:
        gap = span(abs(deadline - done_at))
        stands = f"met, done {gap} before it" if done_at <= deadline else f"missed, done {gap} after it"
    else:
        stands = f"{span(deadline - now)} left" if now < deadline else "passed"
    return f"deadline {when}: {stands}"
