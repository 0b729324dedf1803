"""Shared fixtures: the simulator in-process on a loopback port, and the real SDK client against it."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anthropic
import pytest

from orchestrator.simulator import Simulator, SimulatorConfig, Timing, serve

# Real recorded API responses (a copy of the team's shared fixtures: the tests need nothing beside the repo).
REAL_STREAMS = Path(__file__).resolve().parent / "fixtures" / "real-streams"
INSTANT = Timing(speed=math.inf)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """A dummy key for the SDK, and no base URL that could point anywhere but the simulator."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


Running = tuple[Simulator, anthropic.AsyncAnthropic, str]


@asynccontextmanager
async def running(simulator: Simulator, **client_options: object) -> AsyncIterator[Running]:
    async with serve(simulator) as url:
        client = anthropic.AsyncAnthropic(
            base_url=url,
            api_key="sk-test",
            max_retries=0,
            **client_options,  # type: ignore[arg-type]
        )
        async with client:
            yield simulator, client, url


@pytest.fixture
def simulate() -> Callable[..., AbstractAsyncContextManager[Running]]:
    """``async with simulate(config, clock=..., **client_options) as (sim, client, url)``."""

    def start(
        config: SimulatorConfig | None = None,
        clock: Callable[[], float] | None = None,
        **client_options: object,
    ) -> AbstractAsyncContextManager[Running]:
        config = config or SimulatorConfig(timing=INSTANT)
        simulator = Simulator(config) if clock is None else Simulator(config, clock=clock)
        return running(simulator, **client_options)

    return start
