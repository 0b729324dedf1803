"""An Anthropic-compatible Messages API simulator: deterministic replies, limits, timing, faults.

The core of orchestrator never imports this package; the CLI, the tests and the benchmarks do.
The server (aiohttp) is imported on first use, so that the command line's parser, which only
needs the configuration, starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.simulator.config import BatchSettings, FaultRates, Limits, SimulatorConfig, Timing
from orchestrator.simulator.faults import FaultKind

if TYPE_CHECKING:
    from orchestrator.simulator.server import STATS_PATH, Simulator, Stats, serve

__all__ = [
    "STATS_PATH",
    "BatchSettings",
    "FaultKind",
    "FaultRates",
    "Limits",
    "Simulator",
    "SimulatorConfig",
    "Stats",
    "Timing",
    "serve",
]

_SERVER = frozenset({"STATS_PATH", "Simulator", "Stats", "serve"})


def __getattr__(name: str) -> Any:
    if name in _SERVER:
        from orchestrator.simulator import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
