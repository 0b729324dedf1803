"""A deadline met at the lowest price (pure): what goes to message batches, what streams, and when
a batch's unfinished work moves to streaming.

Batches cost half but promise nothing sooner than 24 hours; streaming costs the full price at a
pace the rate limits set. So the plan keeps every request that is in a batch *movable*: at any
moment, what the batches have not finished could still be streamed before the deadline, at the
streaming pace, after a cancel has taken effect, with a safety margin. Work goes to batches while
that holds; when it is about to stop holding, the youngest live batch is canceled (the oldest are
the likeliest to end first), and its unfinished requests stream once the cancel has ended. One
batch at a time, and only when the streaming queue is about to run dry: the rest keep their chance
to end at half the price. Where even streaming everything now cannot meet the deadline, everything
streams at once (the fastest).

    stream_pace(...)                   streaming requests per second: measured, or from the limits
    stream_share(pending, ...)         how many of the pending requests to stream at once
    to_move(now, deadline, ...)        the live batches to cancel now
    next_look(now, deadline, ...)      how long the plan can wait before it must look again

Times are seconds on one clock (the caller's); counts are requests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

SAFETY = 0.25  # streaming is planned to take this share longer than the pace says
MARGIN = 10.0  # seconds kept free before the deadline
CANCEL_ALLOWANCE = 60.0  # seconds a cancel is assumed to take to end, until one has been measured
STREAM_TTFT = 2.0  # seconds to a stream's first token, for a pace not yet measured
STREAM_TOKENS_PER_SECOND = 40.0  # output tokens a second of one stream, likewise (a slow model's)
SOONEST = 1.0  # seconds: the plan never asks to be looked at sooner than this
CANCEL_LOOK = 5.0  # seconds between looks at a cancel under way, at most
PARTS = 10  # the batched work spreads over this many batches at least


def stream_pace(
    concurrency: int,
    output_tokens: float,
    input_tokens: float,
    *,
    rpm: float | None = None,
    itpm: float | None = None,
    otpm: float | None = None,
    headroom: float = 1.0,
    measured: float | None = None,
) -> float:
    """Requests a second that streaming gets through: ``measured`` once there is a measure (requests
    ended by streaming over the time it streamed), else ``concurrency`` streams of ``output_tokens``
    at a slow stream's speed, within the per-minute limits known (at ``headroom``)."""
    if measured is not None and measured > 0:
        return measured
    pace = concurrency / (STREAM_TTFT + output_tokens / STREAM_TOKENS_PER_SECOND)
    for limit, per_request in ((rpm, 1.0), (itpm, input_tokens), (otpm, output_tokens)):
        if limit is not None and per_request > 0:
            pace = min(pace, limit * headroom / 60.0 / per_request)
    return pace


def streaming_seconds(requests: int, pace: float) -> float:
    """How long streaming ``requests`` is planned to take (with the safety share)."""
    return requests / pace * (1 + SAFETY) if requests else 0.0


def stream_share(pending: int, now: float, deadline: float, pace: float, cancel: float = CANCEL_ALLOWANCE) -> int:
    """How many of ``pending`` requests (none in a batch yet) must stream at once, the rest going to
    batches, so that what the batches then hold can still be moved in time: all of them when even
    streaming everything now would not meet the deadline."""
    if pending == 0:
        return 0
    left = deadline - MARGIN - now
    if streaming_seconds(pending, pace) >= left:
        return pending
    room = (left - cancel) * pace / (1 + SAFETY)  # requests streaming can take once a move has ended
    return min(pending, max(0, math.ceil(pending - room)))


def can_meet(requests: int, now: float, deadline: float, pace: float) -> bool:
    """Whether streaming ``requests`` from ``now`` ends before the deadline."""
    return now + streaming_seconds(requests, pace) + MARGIN <= deadline


@dataclass(frozen=True)
class LiveBatch:
    """A batch of the job on the server, not yet ended: ``unfinished`` requests it may still end."""

    key: int
    created: float
    unfinished: int
    canceling: bool = False


def _needed(queued: int, live: int, pace: float, cancel: float) -> float:
    """Seconds to stream the queue and then what live batches hold (their cancel overlapping the queue)."""
    if live == 0:
        return streaming_seconds(queued, pace)
    return max(streaming_seconds(queued, pace), cancel) + streaming_seconds(live, pace)


def _split(queued: int, batches: Sequence[LiveBatch]) -> tuple[int, list[LiveBatch]]:
    """(what will stream: the queue and the canceling batches' unfinished work; the live batches
    with work, oldest first)."""
    queue = queued + sum(batch.unfinished for batch in batches if batch.canceling)
    live = sorted((b for b in batches if not b.canceling and b.unfinished), key=lambda b: (b.created, b.key))
    return queue, live


def to_move(
    now: float,
    deadline: float,
    queued: int,
    batches: Sequence[LiveBatch],
    pace: float,
    cancel: float = CANCEL_ALLOWANCE,
    look: float = SOONEST,
) -> list[int]:
    """The keys of the live batches to cancel now, youngest first. ``queued``: requests streaming or
    waiting to (a canceling batch's unfinished ones count as queued: they stream once it ends);
    ``look``: seconds until the plan is looked at again. Nothing while streaming is busy for longer
    than a cancel takes: canceling more would only lengthen its queue."""
    left = deadline - MARGIN - now
    queue, live = _split(queued, batches)
    moved: list[int] = []
    while live:
        rest = sum(batch.unfinished for batch in live)
        if _needed(queue, rest, pace, cancel) + look < left:
            break  # time enough to move them later
        if streaming_seconds(queue, pace) > cancel + look:
            break  # streaming is busy: move the next one when its queue runs low
        youngest = live.pop()
        moved.append(youngest.key)
        queue += youngest.unfinished
    return moved


def next_look(
    now: float,
    deadline: float,
    queued: int,
    batches: Sequence[LiveBatch],
    pace: float,
    cancel: float = CANCEL_ALLOWANCE,
) -> float:
    """Seconds until ``to_move`` may have something to move, or a cancel may have ended (its work
    streams once it has: looked at every quarter of the time a cancel is allowed, at most every
    CANCEL_LOOK); at least SOONEST."""
    queue, batches_live = _split(queued, batches)
    live = sum(batch.unfinished for batch in batches_live)
    canceling = any(batch.canceling and batch.unfinished for batch in batches)
    ending = max(SOONEST, min(CANCEL_LOOK, cancel / 4)) if canceling else math.inf
    if not live:
        return ending
    slack = deadline - MARGIN - now - _needed(queue, live, pace, cancel)
    busy = streaming_seconds(queue, pace) - cancel
    return min(ending, max(SOONEST, slack, busy))


def batch_split(requests: int, batch_size: int, parts: int = PARTS) -> int:
    """Requests per batch so that the work spreads over ``parts`` batches at least (a batch's
    unfinished work can then move without canceling the rest), within ``batch_size``."""
    return max(1, min(batch_size, math.ceil(requests / parts)))
