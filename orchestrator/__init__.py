"""orchestrator: a concurrent, resumable batch streaming runner for the Anthropic Messages API.

The Python API (see README "From Python")::

    import orchestrator
    done = orchestrator.run_job([{"prompt": "Hello"}], simulate=True, results="results/hello")
    for line in done.results(): ...
"""

from orchestrator.errors import JobAborted, JobChangedError, JobFileError, OrchestratorError, UserError
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
