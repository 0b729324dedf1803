"""How a running job shows its progress; the only module that imports tqdm.

A tqdm bar on a terminal; plain periodic lines when stderr is not a terminal; nothing when quiet.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import IO, Protocol

import anyio
from tqdm import tqdm

from orchestrator.pricing import money
from orchestrator.when import span


@dataclass(frozen=True)
class Snapshot:
    done: int  # requests with a result, this run and before
    total: int
    in_flight: int
    failed: int  # errored results
    retries: int
    output_tokens: int  # this run, billed and in flight
    elapsed: float  # seconds of this run
    done_this_run: int
    cost: Decimal | None = None  # USD billed so far by the whole job; None if a model is unpriced
    detail: str = ""  # what else the mode has to say (batch mode: batches ended, expiry)
    cap: Decimal | None = None  # the spend cap (--max-cost), if any
    note: str | None = None  # what holds the job up, if anything (a busy database)
    cache_hit: float | None = None  # share of this run's prompt tokens read from the prompt cache


def _rates(s: Snapshot) -> tuple[float, float, float | None]:
    minutes = max(s.elapsed, 1e-9) / 60
    per_minute = s.done_this_run / minutes
    tokens_per_second = s.output_tokens / max(s.elapsed, 1e-9)
    remaining = s.total - s.done
    eta = None if per_minute <= 0 else remaining / per_minute * 60
    return per_minute, tokens_per_second, eta


def _duration(seconds: float | None) -> str:
    return "?" if seconds is None else span(seconds)


def _cost(s: Snapshot) -> str:
    return f"cost {money(s.cost)}" + ("" if s.cap is None else f" of {money(s.cap)} cap")


def _cache(s: Snapshot) -> str:
    return "" if s.cache_hit is None else f"cache hit {s.cache_hit:.0%}"


def describe(s: Snapshot) -> str:
    per_minute, tokens_per_second, eta = _rates(s)
    note = f"{s.note}, " if s.note else ""
    return (
        f"{s.done:,}/{s.total:,} done, {note}{s.in_flight} in flight, {s.failed} failed, {s.retries} retries, "
        f"{tokens_per_second:,.0f} out tok/s, {per_minute:,.0f} req/min, {_cost(s)}, ETA {_duration(eta)}"
        + (f", {_cache(s)}" if s.cache_hit is not None else "")
        + (f", {s.detail}" if s.detail else "")
    )


class View(Protocol):
    def update(self, snapshot: Snapshot) -> None: ...

    def close(self) -> None: ...


class Quiet:
    def update(self, snapshot: Snapshot) -> None:
        pass

    def close(self) -> None:
        pass


class Bar:
    """A tqdm bar whose fields come most important first (ETA, cost, a note, then the rest): a
    narrow terminal trims the line from its end."""

    FORMAT = "{n_fmt}/{total_fmt} ({percentage:.0f}%){postfix} |{bar}|"

    def __init__(self, total: int, done: int, stream: IO[str], ncols: int | None = None) -> None:
        self._bar = tqdm(
            total=total,
            initial=done,
            unit="req",
            file=stream,
            ncols=ncols,
            dynamic_ncols=ncols is None,
            bar_format=self.FORMAT,
        )
        self._done = done

    def update(self, snapshot: Snapshot) -> None:
        per_minute, tokens_per_second, eta = _rates(snapshot)
        fields = [f"ETA {_duration(eta)}", money(snapshot.cost)]
        if snapshot.note:
            fields.append(snapshot.note)
        fields += [
            f"{snapshot.in_flight} in flight",
            f"{snapshot.failed} failed",
            f"{snapshot.retries} retries",
            f"{tokens_per_second:,.0f} out tok/s",
            f"{per_minute:,.0f} req/min",
        ]
        if snapshot.cache_hit is not None:
            fields.append(_cache(snapshot))
        if snapshot.detail:
            fields.append(snapshot.detail)
        self._bar.set_postfix_str(", ".join(fields), refresh=False)
        self._bar.update(snapshot.done - self._done)
        self._done = snapshot.done
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


class Lines:
    """One line every ``every`` seconds, for logs."""

    def __init__(self, stream: IO[str], every: float = 10.0) -> None:
        self._stream = stream
        self._every = every
        self._last = 0.0
        self._latest: Snapshot | None = None

    def _print(self, snapshot: Snapshot) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {describe(snapshot)}", file=self._stream, flush=True)

    def update(self, snapshot: Snapshot) -> None:
        self._latest = snapshot
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._print(snapshot)

    def close(self) -> None:
        if self._latest is not None:
            self._print(self._latest)


def make_view(total: int, done: int, *, quiet: bool, stream: IO[str] = sys.stderr) -> View:
    if quiet:
        return Quiet()
    if stream.isatty():
        return Bar(total, done, stream)
    return Lines(stream)


class LoadProgress:
    """While a job file loads: a line now and then on stderr (none for a file that loads at once,
    none when quiet). Called by the store with the number of lines read so far."""

    def __init__(self, *, quiet: bool, every: float = 2.0, stream: IO[str] = sys.stderr) -> None:
        self._quiet = quiet
        self._every = every
        self._stream = stream
        self._started = time.monotonic()
        self._next = self._started + every

    def __call__(self, read: int) -> None:
        now = time.monotonic()
        if self._quiet or now < self._next:
            return
        self._next = now + self._every
        print(f"loading: {read:,} lines read and checked ({now - self._started:.0f} s)", file=self._stream, flush=True)


PROGRESS_EVERY = 0.5  # seconds between two updates of a view


async def show_progress(view: View, snapshot: Callable[[], Snapshot]) -> None:
    """Update ``view`` with a fresh snapshot every ``PROGRESS_EVERY`` seconds, until cancelled."""
    while True:
        view.update(snapshot())
        await anyio.sleep(PROGRESS_EVERY)
