"""Where a job's cache breakpoints go, in either mode: the prefixes its pending requests share."""

from __future__ import annotations

from orchestrator.api.prefix import CachePlan, Planner
from orchestrator.store import Store

PAGE = 512  # requests read from the store at once


async def cache_plan(store: Store, ttl: str = "5m", requests_per_second: float | None = None) -> CachePlan:
    """Where breakpoints go: the block-aligned prefixes the job's pending requests share (1h for
    those whose uses are more than 5 minutes apart at ``requests_per_second``)."""
    planner = Planner()
    after = 0
    while page := await store.pending(after, PAGE):
        for request in page:
            planner.add(request.params)
        after = page[-1].id
    return planner.plan(ttl, requests_per_second)
