"""Settings of the simulator: replies, streams, timing, rate limits and faults."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Timing:
    """Per-stream timing. All delays are divided by ``speed``; ``speed=math.inf`` means no delays."""

    ttft: float = 0.5  # seconds to the first token
    tokens_per_second: float = 60.0  # per stream
    speed: float = 1.0
    tick: float = 0.02  # tokens due within one tick are written together

    def scaled(self, seconds: float) -> float:
        return 0.0 if math.isinf(self.speed) else seconds / self.speed


@dataclass(frozen=True)
class Limits:
    """Per-minute limits like the API's; None means unlimited. ``spend_cap`` refuses everything."""

    rpm: float | None = None
    itpm: float | None = None
    otpm: float | None = None
    burst_seconds: float = 1.0  # capacity of each bucket, in seconds of refill
    spend_cap: bool = False


@dataclass(frozen=True)
class FaultRates:
    """Probability of each fault per request (seeded: the same requests get the same faults)."""

    overloaded: float = 0.0  # 529 before the stream
    server_error: float = 0.0  # 500 before the stream
    error_event: float = 0.0  # in-band overloaded_error at some point of the stream
    drop: float = 0.0  # connection dropped at some point of the stream
    stall: float = 0.0  # no bytes for ``stall_seconds`` at some point of the stream
    truncate: float = 0.0  # body ends cleanly at some point of the stream, without message_stop
    no_stop: float = 0.0  # body ends cleanly after message_delta: only message_stop is missing
    malformed: float = 0.0  # one malformed event (see faults.MALFORMED_VARIANTS), then the stream goes on
    stall_seconds: float = 30.0  # real seconds, not scaled by speed


@dataclass(frozen=True)
class BatchSettings:
    """The Message Batches API: processing time, the API's limits, and faults by seeded rate.

    Times are seconds on the simulator's clock and are not divided by ``Timing.speed``: with
    ``speed=inf`` a batch is still seen ``in_progress`` until ``seconds`` have passed.
    With ``seconds_max`` each batch takes a time of its own, drawn (seeded by the batch) between
    ``seconds`` and ``seconds_max``, and its requests finish in a seeded order at seeded times
    within it: batches end in any order, as the API's do ("most within an hour, all within 24").
    """

    seconds: float = 3.0  # from creation to the end of processing (requests finish one by one within it)
    seconds_max: float | None = None  # a batch's time drawn from [seconds, seconds_max]; None: seconds each
    cancel_seconds: float = 0.5  # a canceled batch stays ``canceling`` this long, then ends
    max_requests: int = 100_000  # per batch (400 beyond)
    max_bytes: int = 256 * 1024 * 1024  # the create request's body (413 beyond)
    errored: float = 0.0  # per request: an ``errored`` result (api_error or overloaded_error)
    expired: float = 0.0  # per request: an ``expired`` result
    rate_limited: float = 0.0  # per call of a batch endpoint: 429 with retry-after
    overloaded: float = 0.0  # per call of a batch endpoint: 529


@dataclass(frozen=True)
class SimulatorConfig:
    seed: int = 0
    reply_min: int = 20  # tokens in a full reply, drawn per conversation
    reply_max: int = 300
    # Tokens per text/thinking/tool-JSON delta, drawn per delta from this range (seeded per
    # conversation and attempt). The API's deltas carry several tokens: (1, 5) is realistic.
    tokens_per_delta: tuple[int, int] = (1, 5)
    # Share of conversations refused (stop_reason "refusal" part way through the reply), seeded per conversation.
    refusals: float = 0.0
    odd_events: bool = True  # extra pings anywhere (mid-block too), as the API sends them
    unknown_events: bool = True  # now and then an event of an unknown type, which clients must ignore
    timing: Timing = field(default_factory=Timing)
    limits: Limits = field(default_factory=Limits)
    faults: FaultRates = field(default_factory=FaultRates)
    batches: BatchSettings = field(default_factory=BatchSettings)
    reject_api_keys: frozenset[str] = frozenset()
    count_tokens_endpoint: bool = True  # False: /v1/messages/count_tokens answers 404, as on some servers
    # Model ids served beside those of api.modelinfo.MODELS (any other id gets the API's 404).
    extra_models: frozenset[str] = frozenset()

    @classmethod
    def from_json(cls, stored: Mapping[str, Any]) -> SimulatorConfig:
        """A configuration stored as JSON (``dataclasses.asdict``'s shape; fields left out keep
        their defaults, unknown ones are ignored)."""
        parts = {"timing": Timing, "limits": Limits, "faults": FaultRates, "batches": BatchSettings}
        values: dict[str, Any] = {}
        for item in fields(cls):
            if item.name not in stored:
                continue
            value = stored[item.name]
            if item.name in parts:
                known = {f.name for f in fields(parts[item.name])}
                value = parts[item.name](**{key: v for key, v in value.items() if key in known})
            elif item.name == "tokens_per_delta":
                value = tuple(value)
            elif item.name in ("reject_api_keys", "extra_models"):
                value = frozenset(value)
            values[item.name] = value
        return cls(**values)
