"""Client-side rate limits: RPM, ITPM and OTPM buckets per model, concurrency, pauses.

The arithmetic (``LimitState``) is pure over times passed in; ``Limiter`` puts it behind an
async ``acquire`` that waits on a timer or on a release, never by polling.

- A request is admitted when its model's buckets allow it: one request (RPM), its estimated
  input tokens (ITPM) and a down payment on its output (OTPM). The input estimate is corrected
  by the real ``usage`` once the stream starts. The API counts output tokens as they are
  generated (``max_tokens`` does not count), so the down payment is what one stream is expected
  to produce within the bucket's ``burst``: its expected output (a running average), at most its
  expected flow (tokens per second of a stream's life, a running average) times ``burst``. A
  full bucket thus lets in as many streams as the limit's flow sustains, all at once; output is
  charged as it streams beyond the down payment (until a stream's end gives its count: its
  deltas times the tokens a delta carries, a running average) and the unused part is given back
  at the end, so the limiter stops launching when the output flow nears the limit.
- Buckets refill continuously at ``headroom`` (default 97%) of the limit and hold ``burst``
  (0.5) seconds of refill, half what the API's buckets are known to hold at the least: the
  client stays half a bucket behind the server from its first request on, which absorbs about
  half a second of jitter between a launch and its arrival, and it falls further behind as it
  goes since it refills more slowly.
- Limits not given are learned from the ``anthropic-ratelimit-*`` headers of every response,
  and every response brings the buckets back in step with what the server says remains. Until
  a model's first response has come back, a single request to it is in flight: a probe, so that
  a job does not open with a burst of 429s against limits it cannot know yet.
- A 429 pauses every launch for its ``retry-after`` (one cool-down for the pool). A 529 or an
  in-band ``overloaded_error`` cuts the allowed concurrency by 30% (at most once per cool-down)
  and successes raise it back by about one per round of requests.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import anyio

from orchestrator.api.bucket import TokenBucket
from orchestrator.settings import LimitSpec

CLASSES = ("requests", "input-tokens", "output-tokens")
RATE_LIMIT_HEADER = "anthropic-ratelimit-"
DEFAULT_OUTPUT_GUESS = 256  # expected output tokens of a model's first requests
DEFAULT_FLOW_GUESS = 60.0  # expected output tokens per second of a stream's life, until one has completed
DEFAULT_TOKENS_PER_DELTA = 3.0  # the API's deltas carry several tokens; learned from the first completions
OVERLOAD_FACTOR = 0.7
OVERLOAD_COOLDOWN = 2.0  # seconds between two cuts of the concurrency


def parse_headers(headers: Mapping[str, str]) -> dict[str, tuple[int, int]]:
    """``{class: (limit, remaining)}`` from the ``anthropic-ratelimit-*`` headers present."""
    found = {}
    for name in CLASSES:
        limit = headers.get(f"{RATE_LIMIT_HEADER}{name}-limit")
        remaining = headers.get(f"{RATE_LIMIT_HEADER}{name}-remaining")
        if limit is None or remaining is None:
            continue
        try:
            found[name] = (int(limit), int(remaining))
        except ValueError:
            continue
    return found


@dataclass
class ModelLimits:
    """The three buckets of one model; a missing bucket means no known limit."""

    spec: LimitSpec
    headroom: float
    burst: float
    buckets: dict[str, TokenBucket] = field(default_factory=dict)
    limits: dict[str, float] = field(default_factory=dict)  # the per-minute limit behind each bucket
    output_guess: float = DEFAULT_OUTPUT_GUESS
    flow_guess: float = DEFAULT_FLOW_GUESS
    tokens_per_delta: float = DEFAULT_TOKENS_PER_DELTA
    # What this model has in flight: a bucket learned now must not forget it.
    in_flight: dict[str, float] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0.0))
    probing: bool = False  # some limit is unknown and no response has come back yet

    def set_limit(self, name: str, limit: float, now: float, remaining: float | None = None) -> None:
        rate = limit * self.headroom / 60.0
        capacity = max(1.0, rate * self.burst)
        level = capacity if remaining is None else min(capacity, remaining)
        self.buckets[name] = TokenBucket(capacity=capacity, rate=rate, level=level, updated=now)
        self.limits[name] = limit

    def down_payment(self, max_tokens: int) -> float:
        """The output tokens an admission charges: what one stream produces within the burst."""
        return max(1.0, min(float(max_tokens), self.output_guess, self.flow_guess * self.burst))

    def learn(self, output_tokens: int, seconds: float, deltas: int) -> None:
        """A completed attempt produced ``output_tokens`` in ``deltas`` deltas, ``seconds`` from its admission."""
        self.output_guess += (output_tokens - self.output_guess) * 0.2
        if seconds > 0 and output_tokens > 0:
            self.flow_guess += (output_tokens / seconds - self.flow_guess) * 0.2
        if deltas > 0:
            self.tokens_per_delta += (output_tokens / deltas - self.tokens_per_delta) * 0.2

    def wants(self, input_tokens: int, output_tokens: float) -> dict[str, float]:
        return {"requests": 1.0, "input-tokens": float(input_tokens), "output-tokens": output_tokens}

    def wait_time(self, input_tokens: int, output_tokens: float, now: float) -> float:
        wants = self.wants(input_tokens, output_tokens)
        return max((b.wait_time(wants[n], now) for n, b in self.buckets.items()), default=0.0)

    def take(self, input_tokens: int, output_tokens: float, now: float) -> None:
        wants = self.wants(input_tokens, output_tokens)
        for name, bucket in self.buckets.items():
            bucket.take(wants[name], now)
        for name, amount in wants.items():
            self.in_flight[name] += amount

    def done(self, input_tokens: int, output_tokens: float) -> None:
        for name, amount in self.wants(input_tokens, output_tokens).items():
            self.in_flight[name] -= amount

    def adjust(self, name: str, amount: float, now: float) -> None:
        """Charge (positive) or give back (negative) units of one class."""
        bucket = self.buckets.get(name)
        if bucket is None or amount == 0:
            return
        if amount > 0:
            bucket.take(amount, now)
        else:
            bucket.give_back(-amount, now)

    def observe(self, seen: dict[str, tuple[int, int]], now: float) -> None:
        self.probing = False
        for name, (limit, remaining) in seen.items():
            # Token counts in the headers are rounded to the nearest thousand: true to within 500.
            slack = 500 if name != "requests" and limit >= 1000 else 0
            fixed = self.spec.of(name)
            if fixed is None and self.limits.get(name) != limit:
                # Requests launched before this limit was known are not in this bucket, and the
                # server may not have counted them yet either (the one answering here it has).
                answering = 1.0 if name == "requests" else 0.0
                unseen = max(0.0, self.in_flight[name] - answering)
                self.set_limit(name, limit, now, remaining + slack - unseen)
                continue
            bucket = self.buckets.get(name)
            if bucket is not None:
                bucket.refill(now)
                bucket.level = min(bucket.level, remaining + slack)


@dataclass
class Permit:
    """One admitted attempt: what it reserved, and what it has been charged so far."""

    model: str
    input_estimate: int
    output_reserved: float
    admitted_at: float = 0.0
    tokens_per_delta: float = 1.0  # the model's, at the admission: streamed deltas to tokens
    output_charged: float = 0.0
    input_corrected: bool = False
    # Seconds it waited to be admitted: for a free concurrency slot, and for the rate limits (a
    # bucket's refill, a pause after a 429, a probe's first headers).
    slot_wait: float = 0.0
    rate_wait: float = 0.0


class LimitState:
    """All the limiter's arithmetic; every method takes the current time."""

    def __init__(
        self,
        concurrency: int,
        specs: Mapping[str, LimitSpec] | None = None,
        default: LimitSpec | None = None,
        *,
        headroom: float = 0.97,
        burst: float = 0.5,
    ) -> None:
        self.max_concurrency = concurrency
        self.allowed = float(concurrency)
        self.in_flight = 0
        self.paused_until = -math.inf
        self.headroom = headroom
        self.burst = burst
        self._specs = dict(specs or {})
        self._default = default or LimitSpec()
        self.models: dict[str, ModelLimits] = {}
        self._last_cut = -math.inf
        self.cuts = 0  # times an overload cut the allowed concurrency
        self.pauses = 0  # 429 cool-downs
        self.headers: dict[str, Mapping[str, str]] = {}  # by model: the last response headers with limits

    def model(self, name: str, now: float) -> ModelLimits:
        limits = self.models.get(name)
        if limits is None:
            spec = self._specs.get(name, self._default)
            limits = ModelLimits(spec=spec, headroom=self.headroom, burst=self.burst)
            for cls in CLASSES:
                value = spec.of(cls)
                if value is not None:
                    limits.set_limit(cls, value, now)
            limits.probing = len(limits.limits) < len(CLASSES)
            self.models[name] = limits
        return limits

    def admit(self, model: str, input_estimate: int, max_tokens: int, now: float) -> Permit | float | None:
        """A permit if the request may start now; else seconds to wait, or None until a release."""
        if now < self.paused_until:
            return self.paused_until - now
        if self.in_flight >= max(1, math.floor(self.allowed)):
            return None
        limits = self.model(model, now)
        if limits.probing and limits.in_flight["requests"] > 0:
            return None
        output = limits.down_payment(max_tokens)
        wait = limits.wait_time(input_estimate, output, now)
        if wait > 0:
            return wait
        limits.take(input_estimate, output, now)
        self.in_flight += 1
        return Permit(model, input_estimate, output, admitted_at=now, tokens_per_delta=limits.tokens_per_delta)

    def input_known(self, permit: Permit, actual: int, now: float) -> None:
        """The stream started and reported its real input tokens: correct the reservation."""
        if not permit.input_corrected:
            permit.input_corrected = True
            self.model(permit.model, now).adjust("input-tokens", actual - permit.input_estimate, now)

    def output_streamed(self, permit: Permit, tokens: float, now: float) -> None:
        """Output tokens generated so far by this attempt (an estimate): charge what exceeds the reservation."""
        beyond = tokens - max(permit.output_reserved, permit.output_charged)
        if beyond > 0:
            permit.output_charged = tokens
            self.model(permit.model, now).adjust("output-tokens", beyond, now)

    def release(self, permit: Permit, output_tokens: int, completed: bool, now: float, deltas: int = 0) -> None:
        """The attempt ended having received ``output_tokens`` (in ``deltas``): settle its output reservation."""
        self.in_flight -= 1
        limits = self.model(permit.model, now)
        limits.done(permit.input_estimate, permit.output_reserved)
        limits.probing = False  # a response came back, with headers or without
        charged = max(permit.output_reserved, permit.output_charged)
        limits.adjust("output-tokens", output_tokens - charged, now)
        if completed:
            limits.learn(output_tokens, now - permit.admitted_at, deltas)

    def observe(self, model: str, headers: Mapping[str, str], now: float) -> None:
        seen = parse_headers(headers)
        if seen:
            self.model(model, now).observe(seen, now)
            self.headers[model] = headers

    def rate_limit_headers(self) -> dict[str, dict[str, str]]:
        """By model: the ``anthropic-ratelimit-*`` headers of its last response that had them (nothing else)."""
        return {
            model: {name: value for name, value in headers.items() if name.lower().startswith(RATE_LIMIT_HEADER)}
            for model, headers in self.headers.items()
        }

    def pause(self, seconds: float, now: float) -> None:
        """A 429: no launch anywhere for ``seconds`` (pauses overlap, they do not add up)."""
        if now >= self.paused_until:
            self.pauses += 1
        self.paused_until = max(self.paused_until, now + seconds)

    def overloaded(self, now: float) -> None:
        if now - self._last_cut >= OVERLOAD_COOLDOWN:
            self._last_cut = now
            self.cuts += 1
            self.allowed = max(1.0, self.allowed * OVERLOAD_FACTOR)

    def succeeded(self) -> None:
        if self.allowed < self.max_concurrency:
            self.allowed = min(float(self.max_concurrency), self.allowed + 1.0 / self.allowed)


Wait = Callable[[anyio.Event, float | None], Awaitable[None]]


async def wait_event(event: anyio.Event, timeout: float | None) -> None:
    """Wait for ``event``, at most ``timeout`` seconds (None: no limit)."""
    with anyio.move_on_after(math.inf if timeout is None else timeout):
        await event.wait()


@dataclass(eq=False)
class _Waiter:
    """A launch waiting its turn: woken when it is admitted or has become the head of the queue."""

    model: str
    input_estimate: int
    max_tokens: int
    woken: anyio.Event = field(default_factory=anyio.Event)
    permit: Permit | None = None


class Limiter:
    """``LimitState`` behind an async ``acquire``. Each model has its own queue: its waiters go in
    order, and only the head of each queue waits, on a timer (when its model's buckets will allow
    it) or on a change (a release, a correction), holding nothing another model needs: one model's
    wait never holds up a launch for another. When a head is admitted it admits every waiter
    behind it that the limits allow, all at once: after a probe, or when limits are far away, a
    thousand launches go in one step of the event loop, not one per step. With nobody waiting, a
    launch the limits allow is admitted at once."""

    def __init__(
        self, state: LimitState, clock: Callable[[], float] = anyio.current_time, wait: Wait = wait_event
    ) -> None:
        self.state = state
        self._clock = clock
        self._wait = wait
        self._waiters: dict[str, deque[_Waiter]] = {}  # per model: its waiters, in order
        self._reasons: dict[str, str] = {}  # per model: what its head waits for ("slot" or "rate")
        self._changed = anyio.Event()

    def __repr__(self) -> str:
        state = self.state
        levels = {
            model: {name: round(bucket.level, 1) for name, bucket in limits.buckets.items()}
            for model, limits in state.models.items()
        }
        return (
            f"<Limiter in_flight={state.in_flight} allowed={state.allowed:.1f} "
            f"paused_for={max(0.0, state.paused_until - self._clock()):.1f}s levels={levels}>"
        )

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def acquire(self, model: str, input_estimate: int, max_tokens: int) -> Permit:
        waiters = self._waiters.setdefault(model, deque())
        if not waiters:
            decision = self.state.admit(model, input_estimate, max_tokens, self._clock())
            if isinstance(decision, Permit):
                return decision
        waiter = _Waiter(model, input_estimate, max_tokens)
        waiters.append(waiter)
        waited = {"slot": 0.0, "rate": 0.0}  # what each wait was for, by the head's reason as it began
        try:
            while waiter.permit is None:
                began, reason = self._clock(), self._reasons.get(model, "rate")
                if waiters[0] is waiter:
                    wait = self._admit_waiters(waiters)
                    if waiter.permit is None:
                        reason = self._reasons[model] = self._reason(wait)
                        await self._wait(self._changed, wait)
                else:
                    await waiter.woken.wait()
                waited[reason] += self._clock() - began
        except BaseException:
            if waiter.permit is not None:  # admitted as it was cancelled: give the permit back
                self.release(waiter.permit, 0, completed=False)
            else:
                head = waiters[0] is waiter
                waiters.remove(waiter)
                if head and waiters:
                    waiters[0].woken.set()  # the next in line takes over the waiting
            raise
        waiter.permit.slot_wait, waiter.permit.rate_wait = waited["slot"], waited["rate"]
        return waiter.permit

    def _reason(self, wait: float | None) -> str:
        """What the head of a queue waits for: a free concurrency slot, or the rate limits."""
        state = self.state
        full = state.in_flight >= max(1, math.floor(state.allowed))
        return "slot" if wait is None and full else "rate"  # a pause or a bucket gives a time to wait

    def _admit_waiters(self, waiters: deque[_Waiter]) -> float | None:
        """Admit waiters from the head on while the limits allow; then wake the new head (it waits
        next), and return what the head must wait for (seconds, or None until a change)."""
        now = self._clock()
        while waiters:
            head = waiters[0]
            decision = self.state.admit(head.model, head.input_estimate, head.max_tokens, now)
            if not isinstance(decision, Permit):
                head.woken.set()
                return decision
            head.permit = decision
            waiters.popleft()
            head.woken.set()
        return None

    def input_known(self, permit: Permit, actual: int) -> None:
        self.state.input_known(permit, actual, self._clock())
        if actual < permit.input_estimate:
            self._notify()

    def output_streamed(self, permit: Permit, deltas: int) -> None:
        """The attempt has received ``deltas`` deltas (or, once its stream gave it, the server's count
        of its output tokens, which this overestimates until ``release`` settles it)."""
        # Called on every read of every stream: the clock is read only when there is output to
        # charge beyond what the permit reserved, which most reads do not have.
        tokens = deltas * permit.tokens_per_delta
        if tokens > permit.output_reserved and tokens > permit.output_charged:
            self.state.output_streamed(permit, tokens, self._clock())

    def release(self, permit: Permit, output_tokens: int, completed: bool, deltas: int = 0) -> None:
        self.state.release(permit, output_tokens, completed, self._clock(), deltas)
        if completed:
            self.state.succeeded()
        self._notify()

    def observe(self, model: str, headers: Mapping[str, str]) -> None:
        probing = model in self.state.models and self.state.models[model].probing
        self.state.observe(model, headers, self._clock())
        if probing:
            self._notify()  # the probe's headers are in: the others may go

    def pause(self, seconds: float) -> None:
        self.state.pause(seconds, self._clock())

    def overloaded(self) -> None:
        self.state.overloaded(self._clock())
