"""The spend cap (pure): no attempt is launched when what the job has spent plus the worst case of
everything in flight, this attempt included, would pass the cap.

An attempt's worst case is an upper bound of its input tokens (every token holds at least one
byte of the prompt's JSON text; cache writes at their higher price when the request marks any
``cache_control``) plus all of its ``max_tokens``, at the model's price. When it ends, its worst
case gives way to what it was billed. Once one launch is refused the budget refuses every later
one: the job stops launching, lets what is in flight finish, and a later run with a higher cap
goes on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from orchestrator.models import Usage
from orchestrator.pricing import BATCH, MILLION, STANDARD, PriceTable

TOOL_PROMPT_TOKENS = 1024  # room for the API's hidden tool-use system prompt (a few hundred tokens)
PROMPT_FIELDS = ("system", "messages", "tools", "tool_choice", "mcp_servers")


def input_bound(params: Mapping[str, Any]) -> int:
    """An upper bound of a request's input tokens."""
    text = json.dumps({key: params.get(key) for key in PROMPT_FIELDS}, ensure_ascii=False)
    return len(text.encode()) + (TOOL_PROMPT_TOKENS if params.get("tools") or params.get("mcp_servers") else 0)


def worst_case(prices: PriceTable, params: Mapping[str, Any], tier: str = STANDARD) -> Decimal | None:
    """The most one attempt with these params can cost, in USD (in a message batch: at batch prices);
    None for an unpriced model."""
    price = prices.price(params["model"])
    if price is None:
        return None
    per_input = price.input
    if "cache_control" in json.dumps(params):
        per_input = max(per_input, price.cache_write_5m, price.cache_write_1h)
    worst = (input_bound(params) * per_input + int(params["max_tokens"]) * price.output) / MILLION
    return worst * prices.batch if tier == BATCH else worst


@dataclass
class Budget:
    """What a job may still launch under ``cap`` USD (no cap: everything)."""

    cap: Decimal | None = None
    prices: PriceTable | None = None
    spent: Decimal = Decimal(0)  # billed by ended attempts, this run and earlier ones
    reserved: Decimal = Decimal(0)  # the worst case of the attempts in flight
    refused: bool = False  # a launch was refused: nothing more is launched

    def admit(self, params: Mapping[str, Any], tier: str = STANDARD) -> Decimal | None:
        """Reserve the worst case of an attempt with ``params`` (in ``tier``) and return it; None (and
        nothing more from now on) when launching it could pass the cap."""
        if self.cap is None or self.prices is None:
            return Decimal(0)
        worst = None if self.refused else worst_case(self.prices, params, tier)
        if worst is None or self.spent + self.reserved + worst > self.cap:
            self.refused = True
            return None
        self.reserved += worst
        return worst

    def settle(self, worst: Decimal, model: str, billed: Usage) -> None:
        """An attempt admitted with ``worst`` ended having been billed ``billed``."""
        if self.cap is None or self.prices is None:
            return
        self.reserved -= worst
        self.spent += self.prices.cost(model, billed) or Decimal(0)
