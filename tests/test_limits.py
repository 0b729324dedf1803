"""The limiter: pure arithmetic with the clock in the test's hands, and its async wrapper."""

from __future__ import annotations

import random

import anyio
import anyio.lowlevel
import pytest

from orchestrator.api.bucket import TokenBucket
from orchestrator.api.tokens import estimate_input_tokens
from orchestrator.run.limits import (
    CLASSES,
    DEFAULT_FLOW_GUESS,
    DEFAULT_OUTPUT_GUESS,
    DEFAULT_TOKENS_PER_DELTA,
    Limiter,
    LimitState,
    Permit,
    parse_headers,
)
from orchestrator.settings import LimitSpec
from orchestrator.simulator.replies import count_input_tokens
from tests.conftest import FakeClock

M = "claude-haiku-4-5"


def state(
    spec: LimitSpec, concurrency: int = 100, headroom: float = 1.0, burst: float = 1.0, probe: bool = False
) -> LimitState:
    """A limiter state; unless ``probe``, as if the first response had already come back."""
    limits = LimitState(concurrency, default=spec, headroom=headroom, burst=burst)
    limits.model(M, 0.0).probing = probe
    return limits


def test_rpm_paces_requests() -> None:
    limits = state(LimitSpec(rpm=60))  # one a second, a bucket of one
    first = limits.admit(M, 10, 100, now=0.0)
    assert isinstance(first, Permit)
    assert limits.admit(M, 10, 100, now=0.0) == pytest.approx(1.0)
    assert limits.admit(M, 10, 100, now=0.5) == pytest.approx(0.5)
    assert isinstance(limits.admit(M, 10, 100, now=1.0), Permit)


def test_headroom_keeps_the_client_behind_the_server() -> None:
    limits = state(LimitSpec(rpm=600), headroom=0.97)
    assert isinstance(limits.admit(M, 1, 1, now=0.0), Permit)
    bucket = limits.models[M].buckets["requests"]
    assert bucket.rate == pytest.approx(600 * 0.97 / 60)


def test_input_tokens_are_reserved_then_corrected() -> None:
    limits = state(LimitSpec(itpm=6000))  # 100 a second, a bucket of 100
    permit = limits.admit(M, 80, 100, now=0.0)
    assert isinstance(permit, Permit)
    assert limits.admit(M, 80, 100, now=0.0) == pytest.approx(0.6)  # needs 80, has 20
    limits.input_known(permit, 30, now=0.0)  # the real usage: 50 come back
    limits.input_known(permit, 30, now=0.0)  # once only
    assert limits.models[M].buckets["input-tokens"].level == pytest.approx(70)
    assert isinstance(limits.admit(M, 70, 100, now=0.0), Permit)


def test_output_is_reserved_charged_as_it_streams_and_settled() -> None:
    limits = state(LimitSpec(otpm=60_000))  # 1,000 a second, a bucket of 1,000 (one second of burst)
    bucket = limits.model(M, 0.0).buckets["output-tokens"]
    permit = limits.admit(M, 0, 4096, now=0.0)
    assert isinstance(permit, Permit)
    # A down payment: what one stream produces within the burst, not its whole expected output.
    assert permit.output_reserved == DEFAULT_FLOW_GUESS * 1.0 < DEFAULT_OUTPUT_GUESS
    assert bucket.level == pytest.approx(1000 - DEFAULT_FLOW_GUESS)
    limits.output_streamed(permit, 50, now=0.0)  # within the down payment: nothing more
    assert bucket.level == pytest.approx(940)
    limits.output_streamed(permit, 400, now=0.0)  # beyond it: charged as it streams
    assert bucket.level == pytest.approx(600)
    limits.release(permit, 450, completed=True, now=2.0)  # 2 s after its admission: refilled
    assert bucket.level == pytest.approx(1000 - 50)
    model = limits.models[M]
    assert model.output_guess == pytest.approx(DEFAULT_OUTPUT_GUESS + (450 - DEFAULT_OUTPUT_GUESS) * 0.2)
    assert model.flow_guess == pytest.approx(DEFAULT_FLOW_GUESS + (225 - DEFAULT_FLOW_GUESS) * 0.2)
    short = limits.admit(M, 0, 10, now=2.0)  # never reserves more than max_tokens
    assert isinstance(short, Permit)
    assert short.output_reserved == 10
    limits.release(short, 3, completed=False, now=2.0)  # unused reservation comes back
    assert bucket.level == pytest.approx(1000 - 50 - 3)


def test_a_full_output_bucket_admits_the_streams_its_flow_sustains_at_once() -> None:
    # 2M OTPM: 32,333 tokens a second at 97%, half a second of burst. The API counts output as it
    # is generated, so a full bucket admits what the flow sustains (60 tokens/s a stream), at once;
    # a stream's whole expected output (256 tokens) would have admitted only 63.
    limits = LimitState(1000, default=LimitSpec(rpm=10**6, itpm=10**9, otpm=2_000_000))
    admitted = 0
    while isinstance(limits.admit(M, 10, 4096, now=0.0), Permit):
        admitted += 1
    assert admitted == int(2_000_000 * 0.97 / 60 / DEFAULT_FLOW_GUESS)  # 538
    model = limits.models[M]
    for _ in range(50):  # long replies at 200 tokens a second, in deltas of 4: fewer streams sustain the flow
        model.learn(1000, 5.0, 250)
    assert model.down_payment(4096) == pytest.approx(100, rel=0.01)
    assert model.tokens_per_delta == pytest.approx(4, rel=0.01)


@pytest.mark.anyio
async def test_streamed_deltas_are_charged_as_the_tokens_they_carry() -> None:
    limiter = Limiter(state(LimitSpec(otpm=60_000)))  # a bucket of 1,000
    bucket = limiter.state.model(M, 0.0).buckets["output-tokens"]
    permit = await limiter.acquire(M, 0, 4096)  # a down payment of 60
    limiter.output_streamed(permit, 100)  # deltas of about 3 tokens until one stream has completed
    assert bucket.level == pytest.approx(1000 - 100 * DEFAULT_TOKENS_PER_DELTA, abs=1)
    limiter.release(permit, 500, completed=True, deltas=100)  # settled at the server's count
    assert bucket.level == pytest.approx(500, abs=1)
    assert limiter.state.models[M].tokens_per_delta == pytest.approx(3 + (5 - 3) * 0.2)


def test_output_flow_near_the_limit_stops_launches() -> None:
    limits = state(LimitSpec(otpm=6000))  # 100 a second
    permit = limits.admit(M, 0, 4096, now=0.0)
    assert isinstance(permit, Permit)
    limits.output_streamed(permit, 500, now=0.0)  # a long reply drains the bucket into debt
    wait = limits.admit(M, 0, 4096, now=0.0)
    assert isinstance(wait, float)
    assert wait > 4.0


def test_concurrency_blocks_until_a_release() -> None:
    limits = state(LimitSpec(), concurrency=2)
    a = limits.admit(M, 1, 1, now=0.0)
    b = limits.admit(M, 1, 1, now=0.0)
    assert isinstance(a, Permit)
    assert isinstance(b, Permit)
    assert limits.admit(M, 1, 1, now=0.0) is None
    limits.release(a, 1, completed=True, now=0.0)
    assert isinstance(limits.admit(M, 1, 1, now=0.0), Permit)


def test_a_429_pauses_everyone_once() -> None:
    limits = state(LimitSpec())
    limits.pause(5.0, now=10.0)
    limits.pause(3.0, now=11.0)  # overlapping pauses do not add up
    assert limits.admit(M, 1, 1, now=12.0) == pytest.approx(3.0)
    assert isinstance(limits.admit(M, 1, 1, now=15.0), Permit)


def test_overload_cuts_concurrency_once_per_cooldown_and_success_restores_it() -> None:
    limits = state(LimitSpec(), concurrency=20)
    limits.overloaded(now=0.0)
    limits.overloaded(now=0.5)  # the same burst of errors: one cut
    assert limits.allowed == pytest.approx(14.0)
    limits.overloaded(now=3.0)
    assert limits.allowed == pytest.approx(9.8)
    for _ in range(10):
        limits.succeeded()
    assert 10.5 < limits.allowed < 11.0  # about one per round of allowed requests
    for _ in range(1000):
        limits.succeeded()
    assert limits.allowed == 20.0
    for n in range(20):
        limits.overloaded(now=100.0 + 3 * n)
    assert limits.allowed == 1.0


def test_headers_teach_unknown_limits_and_keep_buckets_in_step() -> None:
    limits = state(LimitSpec(rpm=100), probe=True)  # requests fixed by the user, tokens learned
    headers = {
        "anthropic-ratelimit-requests-limit": "4000",
        "anthropic-ratelimit-requests-remaining": "0",
        "anthropic-ratelimit-input-tokens-limit": "120000",
        "anthropic-ratelimit-input-tokens-remaining": "1000",
        "anthropic-ratelimit-output-tokens-limit": "60000",
        "anthropic-ratelimit-output-tokens-remaining": "garbage",
    }
    limits.observe(M, headers, now=0.0)
    model = limits.models[M]
    assert model.limits == {"requests": 100, "input-tokens": 120000}
    assert model.buckets["requests"].level == 0  # the server says none remain
    assert model.buckets["input-tokens"].capacity == pytest.approx(2000)
    assert model.buckets["input-tokens"].level == pytest.approx(1500)  # 1,000 to the nearest thousand: trust +500
    assert "output-tokens" not in model.buckets


def test_a_probe_goes_first_while_limits_are_unknown() -> None:
    limits = state(LimitSpec(), probe=True)
    probe = limits.admit(M, 1, 1, now=0.0)
    assert isinstance(probe, Permit)
    assert limits.admit(M, 1, 1, now=0.0) is None  # wait for the probe's answer
    limits.observe(M, {"anthropic-ratelimit-requests-limit": "60", "anthropic-ratelimit-requests-remaining": "59"}, 0.0)
    assert isinstance(limits.admit(M, 1, 1, now=0.0), Permit)
    known = LimitState(100, default=LimitSpec(rpm=600, itpm=1e6, otpm=1e6))
    assert isinstance(known.admit(M, 1, 1, now=0.0), Permit)
    assert isinstance(known.admit(M, 1, 1, now=0.0), Permit)  # nothing to learn: no probe
    silent = state(LimitSpec(), probe=True)
    first = silent.admit(M, 1, 1, now=0.0)
    assert isinstance(first, Permit)
    silent.release(first, 1, completed=False, now=0.0)  # an answer without headers ends the probe too
    assert isinstance(silent.admit(M, 1, 1, now=0.0), Permit)


def test_parse_headers_ignores_what_is_missing_or_garbled() -> None:
    assert parse_headers({}) == {}
    assert parse_headers({"anthropic-ratelimit-requests-limit": "5"}) == {}
    assert parse_headers(
        {"anthropic-ratelimit-requests-limit": "5", "anthropic-ratelimit-requests-remaining": "4"}
    ) == {"requests": (5, 4)}


def test_input_estimate_is_generous() -> None:
    for text in ("hi", "x" * 1000, "Explain token buckets in two short paragraphs.\n" * 20):
        body = {"model": M, "max_tokens": 10, "messages": [{"role": "user", "content": text}], "system": "be brief"}
        assert estimate_input_tokens(body) >= count_input_tokens(body)


@pytest.mark.parametrize("limit", ["rpm", "itpm", "otpm"])
def test_pacing_reaches_the_limit_without_429s_despite_jitter(limit: str) -> None:
    """Virtual time: a client paced by LimitState against a server bucket, with arrival jitter."""
    rng = random.Random(1)
    per_minute = {"rpm": 600.0, "itpm": 60_000.0, "otpm": 30_000.0}[limit]
    client = state(LimitSpec(**{limit: per_minute}), concurrency=64, headroom=0.97)
    server = TokenBucket.per_minute(per_minute, now=0.0, burst_seconds=1.0)
    input_tokens, output_tokens = 100, 100
    unit = {"rpm": 1, "itpm": input_tokens, "otpm": output_tokens}[limit]
    now, admitted, refused, done_at = 0.0, 0, 0, 120.0
    in_flight: list[tuple[float, Permit]] = []
    while now < done_at:
        for finish, permit in [f for f in in_flight if f[0] <= now]:
            in_flight.remove((finish, permit))
            client.release(permit, output_tokens, completed=True, now=finish)
        decision = client.admit(M, input_tokens, 4096, now)
        if isinstance(decision, Permit):
            arrival = now + rng.uniform(0.0, 0.02)  # network and parsing jitter
            wants = 1 if limit == "rpm" else input_tokens if limit == "itpm" else 1
            if server.wait_time(wants, arrival) == 0:
                server.take(wants, arrival)
                admitted += 1
                if limit == "otpm":  # the server counts output as it is generated
                    server.take(output_tokens - 1, arrival + 0.5)
                client.input_known(decision, input_tokens, now)
                client.output_streamed(decision, output_tokens, now + 0.5)
                in_flight.append((now + 0.5, decision))
            else:
                refused += 1
                client.release(decision, 0, completed=False, now=now)
            continue
        now += 0.001 if decision is None else max(decision, 0.001)
    achieved = admitted * unit / (done_at / 60)
    assert achieved >= 0.95 * per_minute
    assert refused <= 0.01 * admitted


@pytest.mark.anyio
async def test_limiter_waits_in_virtual_time() -> None:
    clock = FakeClock(0.0)
    waited: list[float | None] = []

    async def fake_wait(event: anyio.Event, timeout: float | None) -> None:
        waited.append(timeout)
        assert timeout is not None
        clock.advance(timeout)
        await anyio.lowlevel.checkpoint()

    limiter = Limiter(state(LimitSpec(rpm=60), concurrency=10), clock=clock, wait=fake_wait)
    for _ in range(5):
        permit = await limiter.acquire(M, 1, 1)
        limiter.release(permit, 1, completed=True)
    assert clock.now == pytest.approx(4.0)
    assert waited == pytest.approx([1.0] * 4)
    assert "in_flight=0" in repr(limiter)


@pytest.mark.anyio
async def test_limiter_wakes_a_waiter_on_release_and_cancelled_waiters_take_nothing() -> None:
    limiter = Limiter(state(LimitSpec(), concurrency=1))
    first = await limiter.acquire(M, 1, 1)
    got: list[Permit] = []

    async def second() -> None:
        got.append(await limiter.acquire(M, 1, 1))

    async with anyio.create_task_group() as group:
        group.start_soon(second)
        await anyio.wait_all_tasks_blocked()
        assert got == []
        limiter.release(first, 1, completed=True)
    assert len(got) == 1
    assert limiter.state.in_flight == 1
    with anyio.move_on_after(0.01):  # a waiter cancelled while blocked
        await limiter.acquire(M, 1, 1)
    assert limiter.state.in_flight == 1


def _headers(limit: int) -> dict[str, str]:
    return {f"anthropic-ratelimit-{name}-{kind}": str(limit) for name in CLASSES for kind in ("limit", "remaining")}


@pytest.mark.anyio
async def test_the_probes_headers_let_every_waiter_go_at_once() -> None:
    limiter = Limiter(state(LimitSpec(), concurrency=100, probe=True))  # the first request probes alone
    probe = await limiter.acquire(M, 1, 1)
    got: list[Permit] = []

    async def launch() -> None:
        got.append(await limiter.acquire(M, 1, 1))

    async with anyio.create_task_group() as group:
        for _ in range(50):
            group.start_soon(launch)
        await anyio.wait_all_tasks_blocked()
        assert got == []
        limiter.observe(M, _headers(1_000_000_000))
    assert len(got) == 50
    assert limiter.state.in_flight == 51
    limiter.release(probe, 1, completed=True)


@pytest.mark.anyio
async def test_a_cancelled_head_of_the_queue_hands_the_wait_on() -> None:
    limiter = Limiter(state(LimitSpec(), concurrency=1))
    first = await limiter.acquire(M, 1, 1)
    got: list[Permit] = []

    async def launch() -> None:
        got.append(await limiter.acquire(M, 1, 1))

    async with anyio.create_task_group() as outer:
        async with anyio.create_task_group() as heads:
            heads.start_soon(launch)  # the head of the queue
            await anyio.wait_all_tasks_blocked()
            outer.start_soon(launch)  # queued behind it
            await anyio.wait_all_tasks_blocked()
            heads.cancel_scope.cancel()
        await anyio.wait_all_tasks_blocked()
        assert got == []
        limiter.release(first, 1, completed=True)
    assert len(got) == 1
    assert limiter.state.in_flight == 1


@pytest.mark.anyio
async def test_one_models_wait_never_holds_up_another_model() -> None:
    other = "claude-sonnet-4-5"
    limiter = Limiter(LimitState(10, {M: LimitSpec(rpm=1, itpm=10**9, otpm=10**9)}, LimitSpec(), burst=1.0))
    first = await limiter.acquire(M, 1, 1)  # M's one request a minute is spent
    got: list[str] = []

    async def take(model: str) -> None:
        await limiter.acquire(model, 1, 1)
        got.append(model)

    async with anyio.create_task_group() as group:
        group.start_soon(take, M)  # waits about a minute for M's bucket
        await anyio.wait_all_tasks_blocked()
        group.start_soon(take, M)  # queued behind it
        group.start_soon(take, other)
        await anyio.wait_all_tasks_blocked()
        assert got == [other]  # admitted at once, while M's head waits on its timer
        group.cancel_scope.cancel()
    limiter.release(first, 1, completed=True)
    assert limiter.state.in_flight == 1  # the cancelled waiters took nothing
