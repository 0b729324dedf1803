"""Which fault, if any, a response suffers: drawn from seeded rates or forced by the request.

A fault is forced by the header ``x-sim-fault`` or by a directive anywhere in the request's
last user message, both in the form ``KIND [after=N] [times=K] [seconds=T]``; in a message
it is written ``<<sim-fault: KIND after=N times=K>>``. ``after`` is the number of content
deltas sent before the fault (mid-stream kinds), ``times`` how many attempts of the same
conversation suffer it (default: all), ``seconds`` the length of a stall.
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


BEFORE_STREAM = frozenset({FaultKind.OVERLOADED, FaultKind.SERVER_ERROR})


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    after: int = 0  # content deltas sent before a mid-stream fault
    seconds: float = 0.0  # stall length


@dataclass(frozen=True)
class ForcedFault:
    kind: FaultKind
    after: int | None
    times: int | None
    seconds: float | None


_DIRECTIVE = re.compile(r"<<sim-fault:\s*([^>]*)>>")


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
        if not sep or name not in ("after", "times", "seconds"):
            raise FaultSpecError(f"bad fault option {word!r} (use after=N, times=K, seconds=T)")
        options[name] = value
    try:
        return ForcedFault(
            kind=kind,
            after=int(options["after"]) if "after" in options else None,
            times=int(options["times"]) if "times" in options else None,
            seconds=float(options["seconds"]) if "seconds" in options else None,
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
    deltas: int,
) -> Fault | None:
    """The fault for attempt number ``attempt`` (1-based) of a conversation that has ``deltas`` deltas."""
    rng = random.Random(hashlib.sha256(b"%d:%d:" % (seed, attempt) + fingerprint).digest())
    default_after = rng.randint(0, max(0, deltas - 1))
    if forced is not None:
        if forced.times is not None and attempt > forced.times:
            return None
        return Fault(
            kind=forced.kind,
            after=min(forced.after if forced.after is not None else default_after, deltas),
            seconds=forced.seconds if forced.seconds is not None else rates.stall_seconds,
        )
    roll = rng.random()
    for kind in FaultKind:
        rate: float = getattr(rates, kind.value)
        if roll < rate:
            return Fault(kind=kind, after=default_after, seconds=rates.stall_seconds)
        roll -= rate
    return None
