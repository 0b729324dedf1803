"""The one error hierarchy of orchestrator.

    OrchestratorError
    ├── UserError                 bad input or options; exit status 2, nothing sent
    │   ├── JobFileError          a job file problem, with file and line
    │   └── JobChangedError       the job file differs from the job already in the database
    └── JobAborted                the job cannot go on (bad key, no permission, spend cap); exit 3

Errors of single requests are not exceptions of ours: ``retry.classify`` turns whatever the
SDK raised into a decision (retry, permanent, or abort the job).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_PROBLEMS = 20  # problems listed in one JobFileError; the rest are counted


class OrchestratorError(Exception):
    exit_status = 1


class UserError(OrchestratorError):
    exit_status = 2


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one line of one input file."""

    path: str
    line: int | None  # 1-based; None for a whole file
    message: str

    def __str__(self) -> str:
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.message}"


class JobFileError(UserError):
    """Input that cannot be run, reported with every problem found (up to a limit)."""

    def __init__(self, problems: list[Problem], more: int = 0) -> None:
        self.problems = problems
        self.more = more
        lines = [str(p) for p in problems]
        if more:
            lines.append(f"... and {more} more problems")
        lines.append("Nothing was sent. Fix the input and run the same command again.")
        super().__init__("\n".join(lines))


class JobChangedError(UserError):
    pass


class JobAborted(OrchestratorError):
    exit_status = 3
