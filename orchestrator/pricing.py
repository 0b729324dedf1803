"""Prices (a dated data file shipped with the package, overridable) and the cost of usage (pure).

A model id is priced by its own entry, else by its family (the id without its date:
``claude-haiku-4-5-20251001`` is priced as ``claude-haiku-4-5``); a model with neither is
unpriced, never guessed. Usage of the ``batch`` service tier (message batches) costs the
file's ``batch`` share of these prices (0.5: half).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any

from orchestrator.api.modelinfo import family
from orchestrator.errors import UserError
from orchestrator.models import Usage

FIELDS = ("input", "cache_write_5m", "cache_write_1h", "cache_read", "output")
MILLION = Decimal(1_000_000)
STANDARD, BATCH = "standard", "batch"  # service tiers


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: Decimal
    cache_write_5m: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal
    output: Decimal

    def cost(self, usage: Usage) -> Decimal:
        cache_1h = usage.cache_creation_1h_input_tokens
        cache_5m = usage.cache_creation_input_tokens - cache_1h
        return (
            usage.input_tokens * self.input
            + cache_5m * self.cache_write_5m
            + cache_1h * self.cache_write_1h
            + usage.cache_read_input_tokens * self.cache_read
            + usage.output_tokens * self.output
        ) / MILLION


@dataclass(frozen=True)
class PriceTable:
    as_of: str
    source: str
    models: dict[str, Price]
    batch: Decimal = Decimal("0.5")  # the Message Batches price as a share of the standard one

    def price(self, model: str) -> Price | None:
        return self.models.get(model) or self.models.get(family(model))

    def cost(self, model: str, usage: Usage, tier: str = STANDARD) -> Decimal | None:
        """What ``usage`` of ``model`` costs in a service tier (``batch``: the batch share; others: standard)."""
        price = self.price(model)
        if price is None:
            return None
        return price.cost(usage) * self.batch if tier == BATCH else price.cost(usage)

    def total(self, billed: dict[tuple[str, str], Usage]) -> Decimal | None:
        """The cost of usage by (model, tier); None if a model is unpriced."""
        total = Decimal(0)
        for (model, tier), usage in billed.items():
            cost = self.cost(model, usage, tier)
            if cost is None:
                return None
            total += cost
        return total

    def total_streamed(self, billed: dict[tuple[str, str], Usage]) -> Decimal | None:
        """What the same usage would have cost had it all streamed (every tier at the standard price)."""
        total: Decimal | None = Decimal(0)
        for (model, _), usage in billed.items():
            total = plus(total, self.cost(model, usage))
        return total


def plus(a: Decimal | None, b: Decimal | None) -> Decimal | None:
    """A sum of costs, None (unpriced) if either is."""
    return None if a is None or b is None else a + b


def money(value: Decimal | None) -> str:
    """A cost as shown to people: dollars to four places, or "unpriced"."""
    return "unpriced" if value is None else f"${value:,.4f}"


def _parse(data: Any, where: str) -> tuple[str, dict[str, Price], Decimal | None]:
    try:
        models = {
            name: Price(**{field: Decimal(str(entry[field])) for field in FIELDS})
            for name, entry in data["models"].items()
        }
        batch = None if data.get("batch") is None else Decimal(str(data["batch"]))
        return str(data.get("as_of", "undated")), models, batch
    except (KeyError, TypeError, AttributeError, ArithmeticError) as exc:
        raise UserError(
            f"{where}: not a prices file ({exc!r}); expected "
            '{"as_of": "YYYY-MM-DD", "batch": 0.5, "models": {"<model>": {'
            + ", ".join(f'"{f}": N' for f in FIELDS)
            + "}}}"
        ) from None


def load_prices(override: Path | None = None) -> PriceTable:
    """The shipped prices, with the models of ``override`` (same format) replacing or adding to them."""
    shipped = json.loads(resources.files("orchestrator").joinpath("data/prices.json").read_text())
    as_of, models, batch = _parse(shipped, "the shipped prices")
    assert batch is not None
    source = f"shipped prices as of {as_of}"
    if override is not None:
        try:
            data = json.loads(override.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{override}: cannot read prices: {exc}") from None
        their_date, theirs, their_batch = _parse(data, str(override))
        models = {**models, **theirs}
        batch = their_batch or batch
        source += f", overridden by {override} as of {their_date}"
    return PriceTable(as_of=as_of, source=source, models=models, batch=batch)
