"""orchestrator: a concurrent, resumable batch streaming runner for the Anthropic Messages API.

The Python API (docs/python.md)::

    import orchestrator
    done = orchestrator.run_job([{"prompt": "Hello"}], simulate=True, results="results/hello")
    for line in done.results(): ...
    job = orchestrator.open_job("results/hello/job.sqlite")
    job.status().counts, job.report()["jobs"], job.export("hello.csv", format="csv")

Notes go to the ``orchestrator`` logger (the command line prints them); the library itself writes
nothing to stderr unless ``progress=True``. The simulator's configuration for ``simulate=``:
``orchestrator.simulator.SimulatorConfig``.

The API is imported on first use (``import orchestrator`` alone loads nothing heavy): the command
line (``python -m orchestrator``) imports this package first, and must be able to take a Ctrl-C
cleanly from its first instant (``orchestrator.entry``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from orchestrator.errors import JobAborted, JobChangedError, JobFileError, OrchestratorError, UserError

if TYPE_CHECKING:
    from orchestrator.library import (
        BatchStatus,
        Exported,
        Job,
        JobResult,
        JobStatus,
        arender_report,
        arun_job,
        open_job,
        run_job,
    )

logging.getLogger("orchestrator").addHandler(logging.NullHandler())

__all__ = [
    "BatchStatus",
    "Exported",
    "Job",
    "JobAborted",
    "JobChangedError",
    "JobFileError",
    "JobResult",
    "JobStatus",
    "OrchestratorError",
    "UserError",
    "arender_report",
    "arun_job",
    "open_job",
    "run_job",
]
_LIBRARY = frozenset(
    {"BatchStatus", "Exported", "Job", "JobResult", "JobStatus", "arender_report", "arun_job", "open_job", "run_job"}
)


def __getattr__(name: str) -> Any:
    if name in _LIBRARY:
        from orchestrator import library

        return getattr(library, name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
