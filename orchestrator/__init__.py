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

The API is imported on first use (``import orchestrator`` alone loads nothing): the command
line (``python -m orchestrator``) imports this package first, and must be able to take a Ctrl-C
cleanly from its first instant (``orchestrator.entry``).
"""

from __future__ import annotations

TYPE_CHECKING = False  # not typing's: importing typing alone takes milliseconds a Ctrl-C can fall in
if TYPE_CHECKING:
    from typing import Any

    from orchestrator.errors import JobAborted, JobChangedError, JobFileError, OrchestratorError, UserError
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
_ERRORS = frozenset({"JobAborted", "JobChangedError", "JobFileError", "OrchestratorError", "UserError"})


def __getattr__(name: str) -> Any:
    if name in __all__:
        from importlib import import_module

        return getattr(import_module("orchestrator.errors" if name in _ERRORS else "orchestrator.library"), name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
