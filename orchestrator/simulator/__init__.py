"""An Anthropic-compatible Messages API simulator: deterministic replies, limits, timing, faults.

The core of orchestrator never imports this package; the CLI, the tests and the benchmarks do.
"""

from orchestrator.simulator.config import BatchSettings, FaultRates, Limits, SimulatorConfig, Timing
from orchestrator.simulator.faults import FaultKind
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
