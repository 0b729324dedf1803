"""Chaos in the suite: every fault, a client stopped again and again by every kind of stop, then
resumed: every request ends with one result, the uninterrupted reply or a prefix of it cut by
``max_tokens``, never past it. (``scripts/bench_chaos.py`` runs the same, bigger.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.simulator import Simulator, serve
from tests.chaos import STOPS, chaos, chaos_config

pytestmark = pytest.mark.anyio


@pytest.mark.timeout(120)
async def test_chaos(tmp_path: Path) -> None:
    simulator = Simulator(chaos_config(seed=7))
    async with serve(simulator) as url:
        figures = await chaos(simulator, url, tmp_path, count=150, stops=6, seed=7)
    assert figures.wrong == []
    assert sum(figures.stops.values()) == 6
    assert set(figures.stops) == set(STOPS)  # SIGKILL, SIGINT, SIGTERM, a second SIGINT, a 401
    assert figures.cut > 10  # max_tokens cut many replies, continued or not
    assert len(figures.faults) >= 7  # every kind of fault struck
    # What the results say was billed is what the server billed for what reached the client: never more.
    assert figures.billed_recorded <= figures.billed_server
