"""The deadline's plan (pure): parsing, the streaming pace, the share streamed at once, what moves when."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from orchestrator.batch.deadline import (
    CANCEL_ALLOWANCE,
    MARGIN,
    LiveBatch,
    batch_split,
    can_meet,
    next_look,
    stream_pace,
    stream_share,
    streaming_seconds,
    to_move,
)
from orchestrator.when import DeadlineError, parse_deadline

NOW = datetime(2026, 12, 4, 8, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90m", 5400), ("8h", 8 * 3600), ("1h30m", 5400), ("45s", 45), ("2d", 2 * 86400), ("1.5h", 5400)],
)
def test_durations_count_from_now(text: str, seconds: float) -> None:
    assert parse_deadline(text, NOW) == NOW.timestamp() + seconds


def test_a_time_of_day_is_its_next_occurrence_and_a_datetime_is_taken_as_given() -> None:
    assert parse_deadline("09:00", NOW) == (NOW + timedelta(minutes=30)).timestamp()
    assert parse_deadline("08:00", NOW) == (NOW + timedelta(hours=23, minutes=30)).timestamp()
    assert parse_deadline("2026-12-05T09:00", NOW) == datetime(2026, 12, 5, 9, tzinfo=UTC).timestamp()
    paris = timezone(timedelta(hours=1))
    assert parse_deadline("2026-12-05T09:00+01:00", NOW) == datetime(2026, 12, 5, 9, tzinfo=paris).timestamp()
    for bad in ("tomorrow", "", "25:00", "8x", "2026-12-01T09:00"):
        with pytest.raises(DeadlineError):
            parse_deadline(bad, NOW)


def test_the_pace_is_measured_once_there_is_a_measure_else_bound_by_the_limits() -> None:
    assert stream_pace(8, 200, 100, measured=3.5) == 3.5
    free = stream_pace(8, 200, 100)
    assert free == pytest.approx(8 / 7.0)  # 8 streams of 2 s + 200 tokens at 40 tokens/s
    assert stream_pace(8, 200, 100, rpm=30) == pytest.approx(0.5)
    assert stream_pace(8, 200, 100, otpm=6000, headroom=0.5) == pytest.approx(0.25)
    assert stream_pace(8, 200, 100, itpm=60_000_000) == free


def test_a_generous_deadline_streams_nothing_a_tight_one_some_and_an_impossible_one_all() -> None:
    pace = 1.0  # a request a second
    assert stream_share(1000, 0.0, 24 * 3600.0, pace) == 0
    impossible = MARGIN + streaming_seconds(1000, pace) - 1
    assert stream_share(1000, 0.0, impossible, pace) == 1000
    assert not can_meet(1000, 0.0, impossible, pace)
    tight = MARGIN + streaming_seconds(1000, pace) + CANCEL_ALLOWANCE / 2
    share = stream_share(1000, 0.0, tight, pace)
    assert 0 < share < 1000
    # What is left for the batches can still stream once a cancel has ended.
    assert can_meet(1000 - share, CANCEL_ALLOWANCE, tight, pace)
    assert stream_share(0, 0.0, 10.0, pace) == 0


def test_the_youngest_batch_moves_when_the_time_left_is_what_streaming_its_work_takes() -> None:
    pace = 1.0
    batches = [LiveBatch(1, 0.0, 100), LiveBatch(2, 5.0, 100), LiveBatch(3, 10.0, 100)]
    all_of_it = CANCEL_ALLOWANCE + streaming_seconds(300, pace)
    assert to_move(0.0, MARGIN + all_of_it + 100, 0, batches, pace) == []  # time enough
    wait = next_look(0.0, MARGIN + all_of_it + 100, 0, batches, pace)
    assert wait == pytest.approx(100 - 0, abs=1e-6)
    assert to_move(0.0, MARGIN + all_of_it, 0, batches, pace) == [3]  # the youngest, and only it
    # While streaming its work is busy for longer than a cancel takes, nothing more moves.
    canceling = [LiveBatch(1, 0.0, 100), LiveBatch(2, 5.0, 100), LiveBatch(3, 10.0, 100, canceling=True)]
    assert to_move(0.0, MARGIN + all_of_it, 0, canceling, pace) == []
    # Once that queue runs low (and the time left is what the rest takes), the next youngest moves.
    rest = [b for b in batches if b.key != 3]
    assert to_move(100.0, MARGIN + all_of_it, 10, rest, pace) == []
    assert to_move(130.0, MARGIN + all_of_it, 10, rest, pace) == [2]
    # A deadline out of reach: streaming is kept busy, and the batches keep their chance to end sooner.
    assert to_move(0.0, 10.0, 0, batches, pace) == [3]
    assert to_move(0.0, 10.0, 0, [LiveBatch(1, 0.0, 10), LiveBatch(2, 1.0, 10), LiveBatch(3, 2.0, 10)], pace) == [
        3,
        2,
        1,
    ]
    assert next_look(0.0, 10.0, 0, [], pace) == float("inf")
    # A cancel under way is looked at again soon (its work streams once it has ended), however far the deadline.
    assert next_look(0.0, 1e6, 0, [LiveBatch(1, 0.0, 10, canceling=True)], pace, cancel=8.0) == 2.0
    assert next_look(0.0, 1e6, 0, [LiveBatch(1, 0.0, 10, canceling=True)], pace, cancel=1.0) == 1.0  # SOONEST
    assert next_look(0.0, 1e6, 0, [LiveBatch(1, 0.0, 10, canceling=True)], pace) == 5.0  # CANCEL_LOOK
    assert next_look(0.0, 1e6, 0, [*batches, LiveBatch(4, 0.0, 10, canceling=True)], pace, cancel=8.0) == 2.0


def test_the_work_spreads_over_several_batches() -> None:
    assert batch_split(1000, 100_000, 10) == 100
    assert batch_split(1000, 50, 10) == 50
    assert batch_split(3, 100_000, 10) == 1
