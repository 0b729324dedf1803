"""Fewer garbage collections while a job runs.

Thousands of open streams keep hundreds of thousands of live objects (connections, buffers,
tasks), and every read allocates a few more. With CPython's default threshold (a young
collection every 700 net allocations, an older one every tenth of those) the collector walked
that heap over a thousand times in a 2,000-stream run: 2.9 of 9.0 CPU-seconds
(``scripts/bench_scale.py``). During a run, the objects that exist before it (the SDK's module
graph, the job's settings) are frozen out of the collector's reach and a young collection runs
every 50,000 allocations: the same 2,000 streams then spend about 0.5 CPU-seconds collecting.
Reference cycles are still collected, only in larger steps, so memory still levels off
(``scripts/bench_memory.py``). The process's own settings come back when the last run ends.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 50_000  # net allocations between young collections (CPython's default: 700)

_runs = 0  # runs in progress in this process (the Python API may run several at once)
_saved: tuple[int, int, int] = gc.get_threshold()


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Run the body with the process's earlier objects frozen and young collections rarer."""
    global _runs, _saved
    if _runs == 0:
        _saved = gc.get_threshold()
        gc.freeze()
        gc.set_threshold(YOUNG_THRESHOLD, _saved[1], _saved[2])
    _runs += 1
    try:
        yield
    finally:
        _runs -= 1
        if _runs == 0:
            gc.set_threshold(*_saved)
            gc.unfreeze()
