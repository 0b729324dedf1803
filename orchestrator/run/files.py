"""The streams a run uses and the open files they need: a connection per stream (two with the in-process simulator,
whose end of each is in this process too), plus the database, its journal and the rest.

A system's default soft limit (often 1,024) is below what a few thousand streams need; the hard
limit usually is not: the soft one is raised to what the run needs, and a run the hard limit
cannot hold is refused before anything is sent, saying how many streams fit.
"""

from __future__ import annotations

import resource

from orchestrator.errors import UserError

SPARE_FILES = 64  # the database and its journal, the event loop, standard streams, the SDK's own


def pool_size(concurrency: int, pending: int) -> int:
    """Streams a run can use at once: the concurrency, but never more than the requests it has to run
    (``--concurrency 1000000`` with one request starts two workers, not two million)."""
    return max(1, min(concurrency, pending))


def files_needed(streams: int, in_process_server: bool) -> int:
    return streams * (2 if in_process_server else 1) + SPARE_FILES


def make_room(streams: int, *, in_process_server: bool) -> None:
    """Raise the soft limit of open files to what ``streams`` need; UserError if the hard limit is lower."""
    needed = files_needed(streams, in_process_server)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or needed <= soft:
        return
    if hard != resource.RLIM_INFINITY and needed > hard:
        fits = (hard - SPARE_FILES) // (2 if in_process_server else 1)
        raise UserError(
            f"--concurrency {streams:,}: {streams:,} streams need about {needed:,} open files and this process may "
            f"open {hard:,} (ulimit -Hn): lower --concurrency to {max(fits, 1):,} or less, or raise the limit"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
