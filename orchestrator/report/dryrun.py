"""What a job would cost and how long it would take, before anything is spent.

Reads the job as a run would (bad input is reported the same way), and per model counts the
requests, estimates the input tokens and adds up ``max_tokens``. When the server answers
``count_tokens`` (the API does, and so does the simulator), the first requests of each model are
counted exactly and the estimate of the rest is scaled by what that sample showed. Costs: the
lower bound is the input alone, the upper bound adds every ``max_tokens`` used; streamed, and
in batch mode (the batch share of the price, and the number of message batches). Duration: what
the configured limits allow, from the requests and input tokens (lower) and every
``max_tokens`` of output (upper). Nothing is written and no message is sent.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from orchestrator.api.modelinfo import minimum_cacheable
from orchestrator.api.prefix import Planner, boundaries
from orchestrator.api.tokens import estimate_input_tokens
from orchestrator.batch.deadline import batch_split, can_meet, stream_pace, stream_share, streaming_seconds
from orchestrator.batch.plan import Splitter, request_size
from orchestrator.errors import MAX_PROBLEMS, JobFileError, Problem
from orchestrator.models import Loaded
from orchestrator.pricing import Price, PriceTable, money, plus
from orchestrator.settings import JobSettings, limit_specs
from orchestrator.when import span

if TYPE_CHECKING:
    import anthropic

SAMPLE = 50  # requests per model counted exactly with count_tokens
COUNT_FIELDS = ("system", "tools", "tool_choice", "thinking")


@dataclass
class ModelPlan:
    requests: int = 0
    estimated_input: int = 0  # our estimate, over every request
    max_output: int = 0  # the sum of max_tokens
    sampled: int = 0  # requests counted exactly
    sampled_exact: int = 0
    sampled_estimate: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)
    # With prompt caching (cache auto): estimated tokens written to and read from the cache.
    cache_writes: int = 0
    cache_reads: int = 0
    prefixes: int = 0  # distinct shared prefixes

    def scaled(self, tokens: int) -> int:
        """Our estimate, scaled by what the exact sample showed."""
        if self.sampled and self.sampled_estimate:
            return round(tokens * self.sampled_exact / self.sampled_estimate)
        return tokens

    @property
    def input_tokens(self) -> int:
        """Input tokens of every request: the estimate, scaled by what the exact sample showed."""
        return self.scaled(self.estimated_input)

    def cached_input_cost(self, price: Price) -> Decimal:
        """USD of the input with prompt caching: writes at the 5-minute write price, reads at the read price."""
        writes, reads = self.scaled(self.cache_writes), self.scaled(self.cache_reads)
        uncached = max(self.input_tokens - writes - reads, 0)
        return (uncached * price.input + writes * price.cache_write_5m + reads * price.cache_read) / 1_000_000


@dataclass
class DryRun:
    models: dict[str, ModelPlan]
    counted: bool  # count_tokens answered
    note: str | None = None  # why it did not
    batches: int = 0  # message batches the job makes in batch mode
    deadline: float | None = None  # Unix time the job is to be done by (--deadline)
    now: float = 0.0  # Unix time of the plan


def plan(items: Iterable[Loaded | Problem], splitter: Splitter | None = None) -> dict[str, ModelPlan]:
    """Per-model counts and estimates of a job's requests (and, given a splitter, its message batches);
    its problems raise as a run's would."""
    models: dict[str, ModelPlan] = {}
    problems: list[Problem] = []
    planner = Planner()
    prefixes: list[tuple[str, list[tuple[int, int]]]] = []  # per request: its model, (key, tokens) of its boundaries
    for item in items:
        if isinstance(item, Problem):
            problems.append(item)
            continue
        if splitter is not None:
            splitter.add(request_size(item.custom_id, json.dumps(item.params, separators=(",", ":"))))
        model = models.setdefault(item.params["model"], ModelPlan())
        model.requests += 1
        model.estimated_input += estimate_input_tokens(item.params)
        model.max_output += item.params["max_tokens"]
        if len(model.samples) < SAMPLE:
            model.samples.append(item.params)
        planner.add(item.params)
        minimum = minimum_cacheable(item.params["model"])
        found = [(b.key, b.tokens) for b in boundaries(item.params) if b.tokens >= minimum]
        prefixes.append((item.params["model"], found))
    if problems:
        raise JobFileError(problems[:MAX_PROBLEMS], max(0, len(problems) - MAX_PROBLEMS))
    _cache_estimate(models, prefixes, planner.plan().shared)
    return models


def _cache_estimate(
    models: dict[str, ModelPlan], prefixes: list[tuple[str, list[tuple[int, int]]]], shared: Mapping[int, int]
) -> None:
    """What placed breakpoints would write and read, in job order: each request reads the deepest
    shared prefix already written and writes the rest of its own deepest shared one."""
    written: set[int] = set()
    for model, found in prefixes:
        ours = [(key, tokens) for key, tokens in found if key in shared]
        if not ours:
            continue
        key, tokens = ours[-1]
        read = max((tokens for key, tokens in ours if key in written), default=0)
        models[model].cache_reads += read
        models[model].cache_writes += tokens - read
        if key not in written:
            models[model].prefixes += 1
        written.update(key for key, _ in ours)


async def count_samples(client: anthropic.AsyncAnthropic, models: dict[str, ModelPlan]) -> str | None:
    """Count each model's sample exactly; return why not, if the server would not."""
    import anthropic  # the SDK only where a request is sent (the command line starts fast)
    import httpx2

    for model, found in models.items():
        for params in found.samples:
            extra = {key: params[key] for key in COUNT_FIELDS if key in params}
            try:
                counted = await client.messages.count_tokens(
                    model=model, messages=params["messages"], extra_body=extra or None
                )
            except (anthropic.APIError, httpx2.HTTPError) as exc:
                return f"count_tokens is not available here ({type(exc).__name__}); input tokens are estimated"
            found.sampled += 1
            found.sampled_exact += counted.input_tokens
            found.sampled_estimate += estimate_input_tokens(params)
    return None


def _minutes(amount: float, per_minute: float | None) -> float | None:
    return None if per_minute is None else amount / per_minute


def duration(models: dict[str, ModelPlan], limits: dict[str, Any]) -> tuple[float, float, str] | None:
    """(lower, upper minutes, what binds) at the configured limits, or None if none is configured."""
    default, per_model = limit_specs(limits)
    lower = upper = 0.0
    binding = ""
    known = False
    for model, found in models.items():
        spec = per_model.get(model, default)
        times = {
            "RPM": _minutes(found.requests, spec.rpm),
            "ITPM": _minutes(found.input_tokens, spec.itpm),
        }
        floor = max((t for t in times.values() if t is not None), default=0.0)
        output = _minutes(found.max_output, spec.otpm)
        ceiling = max(floor, output or 0.0)
        if any(t is not None for t in times.values()) or output is not None:
            known = True
        if floor >= lower:
            lower = floor
            binding = max(times, key=lambda k: times[k] or 0.0) if floor else "OTPM"
        upper = max(upper, ceiling)
    return (lower, upper, binding) if known else None


def _times(value: Decimal | None, share: Decimal) -> Decimal | None:
    return None if value is None else value * share


def _caching(result: DryRun, prices: PriceTable, low_total: Decimal | None) -> str:
    """The input's cost with prompt caching (cache auto) beside its cost without."""
    found = [f for f in result.models.values() if f.prefixes]
    if not found:
        return "  prompt caching: no prefix is shared by two requests and long enough to cache; input as above"
    cached: Decimal | None = Decimal(0)
    for model, plan_of in result.models.items():
        price = prices.price(model)
        cached = None if price is None else plus(cached, plan_of.cached_input_cost(price))
    shared = sum(f.prefixes for f in found)
    read = sum(f.scaled(f.cache_reads) for f in found)
    total = sum(f.input_tokens for f in result.models.values()) or 1
    return (
        f"  prompt caching (cache auto, the default): input {money(cached)} instead of {money(low_total)}; "
        f"{shared:,} shared prefixes, {read / total:.0%} of the input read from the cache (--cache off: without)"
    )


def _deadline(
    result: DryRun, settings: JobSettings, share: Decimal, low_total: Decimal | None, high_total: Decimal | None
) -> list[str]:
    """Under a deadline: whether streaming all of it meets it, and how the work would split (as the
    run plans it at its start, at the pace assumed until one is measured)."""
    assert result.deadline is not None
    requests = sum(f.requests for f in result.models.values())
    limits, _ = limit_specs(settings.limits)
    pace = stream_pace(
        settings.concurrency,
        sum(f.max_output for f in result.models.values()) / max(requests, 1),
        sum(f.input_tokens for f in result.models.values()) / max(requests, 1),
        rpm=limits.rpm,
        itpm=limits.itpm,
        otpm=limits.otpm,
        headroom=settings.headroom,
    )
    when = datetime.fromtimestamp(result.deadline).astimezone().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"  deadline {when} (in {span(result.deadline - result.now)}): streaming all {requests:,} requests "
        f"takes about {span(streaming_seconds(requests, pace))} at {pace:,.2f} requests/s "
        f"({settings.concurrency} streams, every max_tokens used, within the limits; measured once it runs)"
    ]
    if not can_meet(requests, result.now, result.deadline, pace):
        lines.append(
            f"    it cannot be met: everything streams at once (the fastest), cost {money(low_total)} to "
            f"{money(high_total)}"
        )
        return lines
    streamed = stream_share(requests, result.now, result.deadline, pace)
    batched = requests - streamed
    mixed = (batched * share + streamed) / max(requests, 1)  # the price's share, the batches ending in time
    parts = math.ceil(batched / batch_split(batched, settings.batch_size)) if batched else 0
    lines.append(
        f"    {batched:,} to {parts:,} message batches, {streamed:,} streamed at once; cost "
        f"{money(_times(low_total, mixed))} to {money(_times(high_total, mixed))} if the batches end in time, "
        f"up to {money(high_total)} if their work moves to streaming"
    )
    return lines


def render(result: DryRun, prices: PriceTable, settings: JobSettings, source: str) -> str:
    lines = [f"dry run of {source}: nothing was sent and nothing was written.", ""]
    lines.append(
        f"  {'model':<28}{'requests':>10}{'input tokens':>15}{'max output':>13}{'cost low':>12}{'cost high':>12}"
    )
    low_total: Decimal | None = Decimal(0)
    high_total: Decimal | None = Decimal(0)
    for model, found in sorted(result.models.items()):
        price = prices.price(model)
        if price is None:
            low = high = None
        else:
            low = found.input_tokens * price.input / 1_000_000
            high = low + found.max_output * price.output / 1_000_000
        low_total, high_total = plus(low_total, low), plus(high_total, high)
        exact = f" ({found.sampled} exact)" if found.sampled else " (est.)"
        lines.append(
            f"  {model:<28}{found.requests:>10,}{found.input_tokens:>15,}{found.max_output:>13,}"
            f"{money(low):>12}{money(high):>12}   input{exact}"
        )
    lines.append(
        f"  {'total':<28}{sum(f.requests for f in result.models.values()):>10,}{'':>28}"
        f"{money(low_total):>12}{money(high_total):>12}"
    )
    lines.append("")
    lines.append(f"  prices: {prices.source}; low = input only, high = every max_tokens used")
    lines.append(_caching(result, prices, low_total))
    share = prices.batch
    lines.append(
        f"  batch mode (--batch): {result.batches:,} message batches, cost {money(_times(low_total, share))} to "
        f"{money(_times(high_total, share))} ({share:.0%} of the streamed price), results within 24 h"
    )
    if result.deadline is not None:
        lines += _deadline(result, settings, share, low_total, high_total)
    if result.note:
        lines.append(f"  note: {result.note}")
    limited = duration(result.models, settings.limits)
    if limited is None:
        lines.append("  duration: no limits configured (--rpm/--itpm/--otpm); the API's are learned at run time")
    else:
        lower, upper, binding = limited
        lines.append(
            f"  duration at the configured limits: at least {lower:,.1f} min ({binding} binds), "
            f"up to {upper:,.1f} min if every max_tokens is used"
        )
    return "\n".join(lines) + "\n"
