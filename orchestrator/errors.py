"""The one error hierarchy of orchestrator.

    OrchestratorError
    ├── UserError                 bad input or options; exit status 2, nothing sent
    │   ├── JobFileError          a job file problem, with file and line
    │   ├── JobChangedError       the job file differs from the job already in the database
    │   └── JobRunning            another process is running the job right now
    ├── JobAborted                the job cannot go on (bad key, no permission, spend cap); exit 3
    │   └── StorageError          the job's database or results cannot be written (full disk, read-only)
    │       └── DatabaseBusy      another process holds the database's write lock (a run waits it out)
    └── StreamError               one attempt's stream is not a reply: the attempt is broken
        ├── BrokenStream          the body ended cleanly before the message was complete
        └── MalformedStream       an event the accumulation cannot take (undecodable data,
            │                     an event missing its fields, tool input that is not JSON)
            └── EventOrderError   an event out of order: before ``message_start``, or for a
                                  block never started

Errors of single requests (the SDK's, or a StreamError of our own reading of a stream) do not
go past the request: ``api.failures.classify`` turns them into a decision (retry, permanent, or
abort the job).
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


class JobRunning(UserError):
    pass


class JobAborted(OrchestratorError):
    exit_status = 3


class StorageError(JobAborted):
    pass


class DatabaseBusy(StorageError):
    pass


class StreamError(OrchestratorError):
    """A stream that does not make a reply; ``reason`` names it in the attempt's record."""

    reason = "stream_error"


class BrokenStream(StreamError):
    """The body ended without ``message_stop`` and without a complete message: no exception from
    the SDK, but not a reply."""

    reason = "no_message_stop"


class MalformedStream(StreamError):
    """An event the SDK's accumulation would fail on too."""

    reason = "malformed_stream"


class EventOrderError(MalformedStream):
    """An event out of order (the SDK raises ``Unexpected event order`` or an IndexError for it)."""
