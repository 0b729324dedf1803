"""orchestrator: a concurrent, resumable batch streaming runner for the Anthropic Messages API.

The Python API (see README "From Python")::

    import orchestrator
    done = orchestrator.run_job([{"prompt": "Hello"}], simulate=True, results="results/hello")
    for line in done.results(): ...

The API is imported on first use (``import orchestrator`` alone loads nothing heavy): the command
line (``python -m orchestrator``) imports this package first, and must be able to take a Ctrl-C
cleanly from its first instant (``orchestrator.entry``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.errors import JobAborted, JobChangedError, JobFileError, OrchestratorError, UserError

if TYPE_CHECKING:
    from orchestrator.library import JobResult, arun_job, run_job

__all__ = [
    "JobAborted",
    "JobChangedError",
    "JobFileError",
    "JobResult",
    "OrchestratorError",
    "UserError",
    "arun_job",
    "run_job",
]
_LIBRARY = frozenset({"JobResult", "arun_job", "run_job"})


def __getattr__(name: str) -> Any:
    if name in _LIBRARY:
        from orchestrator import library

        return getattr(library, name)
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
