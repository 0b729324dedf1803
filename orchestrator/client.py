"""The SDK client a run sends its requests with: against the built-in simulator when the run
simulates (the one place the core starts it), else the endpoint's base URL. The SDK and the
simulator are imported here only when a client is opened: the command line starts fast."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from orchestrator.endpoint import check_key
from orchestrator.settings import JobSettings

if TYPE_CHECKING:
    import anthropic
    import httpx2

    from orchestrator.simulator.config import SimulatorConfig


def http_client(settings: JobSettings) -> httpx2.AsyncClient:
    """The SDK's aiohttp transport, its pool as large as the concurrency.

    It reads a stream at a fraction of the default httpx transport's CPU per event (h11 parses
    the body in Python, and its pool scans every connection on each request), which is what
    thousands of concurrent streams are made of.
    """
    import anthropic
    import httpx2

    limits = httpx2.Limits(max_connections=settings.concurrency + 8, max_keepalive_connections=settings.concurrency)
    timeout = httpx2.Timeout(settings.read_timeout, connect=10.0)
    return anthropic.DefaultAioHttpClient(limits=limits, timeout=timeout)


@asynccontextmanager
async def open_client(
    simulate: SimulatorConfig | None, base_url: str | None, settings: JobSettings
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The SDK client: against the built-in simulator when given its configuration, else the endpoint."""
    import anthropic

    if simulate is not None:
        from orchestrator.simulator import Simulator, serve  # --simulate: the simulator starts here

        async with (
            serve(Simulator(simulate)) as url,
            anthropic.AsyncAnthropic(
                base_url=url, api_key="sk-simulator", max_retries=0, http_client=http_client(settings)
            ) as client,
        ):
            yield client
        return
    check_key(False)
    async with anthropic.AsyncAnthropic(base_url=base_url, max_retries=0, http_client=http_client(settings)) as client:
        yield client
