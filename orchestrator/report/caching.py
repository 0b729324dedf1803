"""The prompt cache by prefix: each shared prefix's requests, writes, reads and what it saved.

A request's prefix is the deepest breakpoint of the body a run sends it (``api.prefix``: the
user's own, or those placed on the prefixes the job's requests share). Saved: what its cached
tokens would have cost sent uncached, less what the writes and reads cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from orchestrator.api.prefix import Planner, place
from orchestrator.pricing import MILLION, PriceTable

if TYPE_CHECKING:
    from orchestrator.store import Store


@dataclass
class PrefixRow:
    key: str  # the prefix's digest, in hex
    model: str
    requests: int = 0
    tokens: int = 0  # the prefix's tokens, as the cache counted them (the most one request wrote or read)
    writes: int = 0
    writes_1h: int = 0
    reads: int = 0
    saved: Decimal | None = Decimal(0)  # USD against sending it uncached; None if the model is unpriced


async def cache_prefixes(store: Store, prices: PriceTable) -> list[PrefixRow]:
    """The job's cached prefixes, most requests first."""
    planner = Planner()
    async for params, _, _, _ in store.cache_by_request():
        planner.add(params)
    plan = planner.plan()
    rows: dict[int, PrefixRow] = {}
    async for params, writes, writes_1h, reads in store.cache_by_request():
        points = place(params, plan)[1]
        if not points or not (writes or reads):
            continue
        model = params["model"]
        row = rows.setdefault(points[-1].key, PrefixRow(f"{points[-1].key:016x}", model))
        row.requests += 1
        row.tokens = max(row.tokens, writes + reads)
        row.writes += writes
        row.writes_1h += writes_1h
        row.reads += reads
    for row in rows.values():
        price = prices.price(row.model)
        if price is None:
            row.saved = None
            continue
        writes_5m = row.writes - row.writes_1h
        row.saved = (
            row.reads * (price.input - price.cache_read)
            - writes_5m * (price.cache_write_5m - price.input)
            - row.writes_1h * (price.cache_write_1h - price.input)
        ) / MILLION
    return sorted(rows.values(), key=lambda row: -row.requests)
