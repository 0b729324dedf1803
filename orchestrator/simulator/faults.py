"""Which fault, if any, a response suffers: drawn from seeded rates or forced by the request.

A fault is forced by the header ``x-sim-fault`` or by a directive anywhere in the request's
last user message, both in the form ``KIND [after=N] [at=E] [times=K] [seconds=T] [variant=V]``;
in a message it is written ``<<sim-fault: KIND after=N times=K>>``. Where a mid-stream fault
strikes: ``after`` content deltas (``content_block_delta`` events), or ``at`` events of the
stream (0: before ``message_start``); neither: a seeded point anywhere in the stream. ``times``
is how many attempts of the same conversation suffer it (default: all), ``seconds`` the length
of a stall, ``variant`` which malformed event (default: seeded).
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass
from enum import StrEnum

from orchestrator.simulator.config import FaultRates


class FaultKind(StrEnum):
    OVERLOADED = "overloaded"
    SERVER_ERROR = "server_error"
    ERROR_EVENT = "error_event"
    DROP = "drop"
    STALL = "stall"
    TRUNCATE = "truncate"
    NO_STOP = "no_stop"
    MALFORMED = "malformed"


BEFORE_STREAM = frozenset({FaultKind.OVERLOADED, FaultKind.SERVER_ERROR})

# not_json: a data line that is not JSON; orphan_delta: a delta for a block that never started;
# unknown_block: a content block of an unknown type; unknown_delta: a delta of an unknown type.
MALFORMED_VARIANTS = ("not_json", "orphan_delta", "unknown_block", "unknown_delta")


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    after: int | None = None  # content deltas sent before a mid-stream fault
    at: int | None = None  # or: stream events sent before it
    spot: float = 0.0  # or (neither given): where in the stream, as a fraction of its events
    seconds: float = 0.0  # stall length
    variant: str = ""  # malformed: which event


@dataclass(frozen=True)
class ForcedFault:
    kind: FaultKind
    after: int | None = None
    at: int | None = None
    times: int | None = None
    seconds: float | None = None
    variant: str | None = None


_DIRECTIVE = re.compile(r"<<sim-fault:\s*([^>]*)>>")
_OPTIONS = ("after", "at", "times", "seconds", "variant")


class FaultSpecError(ValueError):
    pass


def parse_fault_spec(spec: str) -> ForcedFault:
    words = spec.split()
    if not words:
        raise FaultSpecError("empty fault spec")
    try:
        kind = FaultKind(words[0])
    except ValueError:
        known = ", ".join(k.value for k in FaultKind)
        raise FaultSpecError(f"unknown fault {words[0]!r} (known: {known})") from None
    options: dict[str, str] = {}
    for word in words[1:]:
        name, sep, value = word.partition("=")
        if not sep or name not in _OPTIONS:
            raise FaultSpecError(f"bad fault option {word!r} (use after=N, at=E, times=K, seconds=T, variant=V)")
        options[name] = value
    variant = options.get("variant")
    if variant is not None and variant not in MALFORMED_VARIANTS:
        raise FaultSpecError(f"unknown variant {variant!r} (known: {', '.join(MALFORMED_VARIANTS)})")
    try:
        return ForcedFault(
            kind=kind,
            after=int(options["after"]) if "after" in options else None,
            at=int(options["at"]) if "at" in options else None,
            times=int(options["times"]) if "times" in options else None,
            seconds=float(options["seconds"]) if "seconds" in options else None,
            variant=variant,
        )
    except ValueError as exc:
        raise FaultSpecError(f"bad fault spec {spec!r}: {exc}") from None


def find_directive(text: str) -> str | None:
    match = _DIRECTIVE.search(text)
    return match.group(1) if match else None


def choose_fault(
    *,
    forced: ForcedFault | None,
    rates: FaultRates,
    seed: int,
    fingerprint: bytes,
    attempt: int,
) -> Fault | None:
    """The fault for attempt number ``attempt`` (1-based) of a conversation, if any."""
    rng = random.Random(hashlib.sha256(b"%d:%d:" % (seed, attempt) + fingerprint).digest())
    spot, variant = rng.random(), rng.choice(MALFORMED_VARIANTS)
    if forced is not None:
        if forced.times is not None and attempt > forced.times:
            return None
        return Fault(
            kind=forced.kind,
            after=forced.after,
            at=forced.at,
            spot=spot,
            seconds=forced.seconds if forced.seconds is not None else rates.stall_seconds,
            variant=forced.variant or variant,
        )
    roll = rng.random()
    for kind in FaultKind:
        rate: float = getattr(rates, kind.value)
        if roll < rate:
            return Fault(kind=kind, spot=spot, seconds=rates.stall_seconds, variant=variant)
        roll -= rate
    return None
