"""Usage, cost, latency and throughput of jobs, from their stores; rendered as text, JSON or CSV.

Per job and per model: requests by outcome; tokens billed over every attempt (input, output,
cache writes, cache reads) and what they cost; tokens kept in the final messages, so what
retries and restarts wasted; latency percentiles of the successful requests; throughput;
failed attempts by reason; the most frequent errors. Costs come from ``pricing``; a model
without a price is reported as unpriced, never guessed.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from orchestrator.api.modelinfo import family
from orchestrator.models import State, Usage
from orchestrator.outputs import STATUSES, counts_text
from orchestrator.pricing import BATCH, PriceTable, money, plus
from orchestrator.report.caching import PrefixRow, cache_prefixes
from orchestrator.report.export import output_counts
from orchestrator.store import Store
from orchestrator.when import deadline_line

PERCENTILES = (50, 90, 99)
# The waits of a request, each for what it is (seconds, summed over its attempts): before a send, for a
# free concurrency slot, for the rate limiter (buckets, a pause after a 429), for another request to
# warm the cached prefix it reads; and the backoff between a failed attempt and the next.
WAITS = ("slot_wait", "rate_limit_wait", "prefix_wait", "backoff")
TIMELINE_BUCKETS = 60
WAYS = ("batch", "streamed")  # the ways a reply came: in a message batch, or streamed


def percentile(values: list[float], p: float) -> float | None:
    """The p-th percentile (nearest rank) of ``values``, or None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class Figures:
    """Everything reported for one model of one job, or summed over several."""

    requests: Counter[str] = field(default_factory=Counter)  # by state
    billed: Usage = field(default_factory=Usage)
    estimated_output: int = 0  # of the billed output tokens: our estimate (streams broken before their count)
    kept: Usage = field(default_factory=Usage)
    billed_cost: Decimal | None = Decimal(0)
    kept_cost: Decimal | None = Decimal(0)
    unpriced: set[str] = field(default_factory=set)
    ttft: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)  # latency of the successful attempt, from its send
    # Per request, over its attempts: waits before a send, by what for, and the backoff between attempts.
    slot_wait: list[float] = field(default_factory=list)
    rate_limit_wait: list[float] = field(default_factory=list)
    prefix_wait: list[float] = field(default_factory=list)
    backoff: list[float] = field(default_factory=list)
    failed_attempts: Counter[str] = field(default_factory=Counter)  # by reason
    errors: Counter[tuple[str, str]] = field(default_factory=Counter)  # (type, message)
    first_start: float | None = None
    last_finish: float | None = None
    finishes: list[tuple[float, int]] = field(default_factory=list)  # (finished_at, output tokens kept)
    outputs: Counter[str] = field(default_factory=Counter)  # structured outputs by status (outputs.STATUSES)
    ways: Counter[str] = field(default_factory=Counter)  # succeeded requests by way: batch, streamed
    batch_cost: Decimal | None = Decimal(0)  # of billed_cost: what was billed at the batch price
    cost_streamed: Decimal | None = Decimal(0)  # what the billed tokens would have cost all streamed

    def merge(self, other: Figures) -> None:
        self.requests.update(other.requests)
        self.billed.add(other.billed)
        self.estimated_output += other.estimated_output
        self.kept.add(other.kept)
        self.billed_cost = plus(self.billed_cost, other.billed_cost)
        self.kept_cost = plus(self.kept_cost, other.kept_cost)
        self.unpriced |= other.unpriced
        self.ttft += other.ttft
        self.total += other.total
        for kind in WAITS:
            getattr(self, kind).extend(getattr(other, kind))
        self.failed_attempts.update(other.failed_attempts)
        self.errors.update(other.errors)
        self.first_start = _min(self.first_start, other.first_start)
        self.last_finish = _max(self.last_finish, other.last_finish)
        self.finishes += other.finishes
        self.outputs.update(other.outputs)
        self.ways.update(other.ways)
        self.batch_cost = plus(self.batch_cost, other.batch_cost)
        self.cost_streamed = plus(self.cost_streamed, other.cost_streamed)

    @property
    def wasted(self) -> Usage:
        return Usage(*(b - k for b, k in zip(_tuple(self.billed), _tuple(self.kept), strict=True)))

    @property
    def wasted_cost(self) -> Decimal | None:
        if self.billed_cost is None or self.kept_cost is None:
            return None
        return self.billed_cost - self.kept_cost

    @property
    def streamed_cost(self) -> Decimal | None:
        """Of billed_cost: what was billed at the streaming price."""
        if self.billed_cost is None or self.batch_cost is None:
            return None
        return self.billed_cost - self.batch_cost

    @property
    def elapsed(self) -> float:
        if self.first_start is None or self.last_finish is None:
            return 0.0
        return max(0.0, self.last_finish - self.first_start)

    def per_minute(self, amount: float) -> float | None:
        return amount / (self.elapsed / 60) if self.elapsed > 0 else None

    def timeline(self, buckets: int = TIMELINE_BUCKETS) -> list[tuple[float, int, int]]:
        """(seconds since the first start, requests finished, output tokens kept) per time slice."""
        if self.first_start is None or not self.finishes:
            return []
        width = max(self.elapsed / buckets, 1e-9)
        slices = [[0, 0] for _ in range(buckets)]
        for finished, tokens in self.finishes:
            index = min(buckets - 1, int((finished - self.first_start) / width))
            slices[index][0] += 1
            slices[index][1] += tokens
        return [(i * width, n, tokens) for i, (n, tokens) in enumerate(slices)]


def _tuple(usage: Usage) -> tuple[int, ...]:
    return (
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_creation_input_tokens,
        usage.cache_read_input_tokens,
        usage.cache_creation_1h_input_tokens,
    )


def _min(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


@dataclass
class JobReport:
    name: str
    path: str
    models: dict[str, Figures]
    simulated: bool = False  # it holds results of the built-in simulator, not of the API
    prefixes: list[PrefixRow] = field(default_factory=list)  # the prompt cache by prefix
    deadline: float | None = None  # Unix time the job was to be done by (--deadline)
    done_at: float | None = None  # Unix time its last request finished, once all have (whatever the filters)

    @property
    def title(self) -> str:
        return f"{self.name} (SIMULATED)" if self.simulated else self.name

    def total(self) -> Figures:
        total = Figures()
        for figures in self.models.values():
            total.merge(figures)
        return total


@dataclass(frozen=True)
class Filters:
    since: float | None = None  # unix time
    until: float | None = None
    models: tuple[str, ...] = ()  # model ids or families

    def keeps(self, model: str) -> bool:
        return not self.models or model in self.models or family(model) in self.models


async def job_report(store: Store, path: Path, prices: PriceTable, filters: Filters) -> JobReport:
    job = await store.job()
    deadline = await store.deadline()
    models: dict[str, Figures] = {}

    def figures(model: str) -> Figures:
        return models.setdefault(model, Figures())

    for (model, tier), usage in (await store.billed_by_tier(filters.since, filters.until)).items():
        if filters.keeps(model):
            f = figures(model)
            f.billed.add(usage)
            f.billed_cost = plus(f.billed_cost, prices.cost(model, usage, tier))
            f.cost_streamed = plus(f.cost_streamed, prices.cost(model, usage))
            if tier == BATCH:
                f.batch_cost = plus(f.batch_cost, prices.cost(model, usage, tier))
    for model, tokens in (await store.estimated_output_by_model(filters.since, filters.until)).items():
        if filters.keeps(model):
            figures(model).estimated_output = tokens
    for model, reason, count in await store.failed_attempts(filters.since, filters.until):
        if filters.keeps(model):
            figures(model).failed_attempts[reason] += count
    async for row in store.request_outcomes(filters.since, filters.until):
        model = row["model"]
        if not filters.keeps(model):
            continue
        f = figures(model)
        state = row["state"]
        f.requests[state if state in (State.SUCCEEDED, State.ERRORED) else "unfinished"] += 1
        f.first_start = _min(f.first_start, row["started_at"])
        if row["finished_at"] is not None:
            f.last_finish = _max(f.last_finish, row["finished_at"])
        if state == State.SUCCEEDED and row["kept"] is not None:
            f.kept.add(row["kept"])
            f.kept_cost = plus(f.kept_cost, prices.cost(model, row["kept"], row["tier"]))
            f.finishes.append((row["finished_at"], row["kept"].output_tokens))
            f.ways["batch" if row["tier"] == BATCH else "streamed"] += 1
            if row["ttft"] is not None:
                f.ttft.append(row["ttft"])
            if row["latency"] is not None:
                f.total.append(row["latency"])
        for kind in WAITS:
            if row[kind] is not None:
                getattr(f, kind).append(row[kind])
        if state == State.ERRORED and row["error"] is not None:
            f.errors[row["error"]] += 1

    def kept(row: dict[str, Any]) -> bool:
        finished = row["timing"]["finished_at"]
        in_range = (filters.since is None or finished >= filters.since) and (
            filters.until is None or finished < filters.until
        )
        return filters.keeps(row["model"]) and (finished is None or in_range)

    for model, counts in (await output_counts(store, kept)).items():
        figures(model).outputs.update(counts)
    for model, f in models.items():
        if prices.price(model) is None:
            f.billed_cost = f.kept_cost = f.batch_cost = f.cost_streamed = None
            f.unpriced.add(model)
    return JobReport(
        name=job.name if job else path.stem,
        path=str(path),
        models=models,
        simulated=bool(job and job.simulated),
        prefixes=await cache_prefixes(store, prices),
        deadline=None if deadline is None else deadline[1],
        done_at=await store.done_at(),
    )


def deadline_met(report: JobReport, now: float) -> bool | None:
    """Whether the job was done by its deadline; None while it may still be (or it has none)."""
    if report.deadline is None:
        return None
    if report.done_at is None:
        return False if now > report.deadline else None
    return report.done_at <= report.deadline


def deadline_text(report: JobReport, now: float) -> str | None:
    """The job's deadline and how it stands: met (by how much), missed (by how much), or the time left."""
    return None if report.deadline is None else deadline_line(report.deadline, report.done_at, now)


def find_databases(paths: list[Path]) -> list[Path]:
    """Job databases named directly, or found under folders (such as ``results/``)."""
    found: list[Path] = []
    for path in paths:
        found += sorted(path.rglob("job.sqlite")) if path.is_dir() else [path]
    return found


# -- rendering ----------------------------------------------------------------------------


def seconds_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def rate_text(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _stamp(value: float | None) -> str | None:
    return None if value is None else datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")


def as_dict(figures: Figures) -> dict[str, Any]:
    def money(value: Decimal | None) -> float | None:
        return None if value is None else float(round(value, 6))

    return {
        "requests": {
            "succeeded": figures.requests[State.SUCCEEDED],
            "errored": figures.requests[State.ERRORED],
            "unfinished": figures.requests["unfinished"],
        },
        "billed_tokens": figures.billed.as_dict(),
        "billed_output_tokens_estimated": figures.estimated_output,
        "kept_tokens": figures.kept.as_dict(),
        "wasted_tokens": figures.wasted.as_dict(),
        "cost_usd": money(figures.billed_cost),
        "kept_cost_usd": money(figures.kept_cost),
        "wasted_cost_usd": money(figures.wasted_cost),
        "unpriced_models": sorted(figures.unpriced),
        "ways": {way: figures.ways[way] for way in WAYS},
        "cost_by_way_usd": {"batch": money(figures.batch_cost), "streamed": money(figures.streamed_cost)},
        "cost_streamed_usd": money(figures.cost_streamed),
        "latency_seconds": {
            "time_to_first_token": {f"p{p}": percentile(figures.ttft, p) for p in PERCENTILES},
            "total": {f"p{p}": percentile(figures.total, p) for p in PERCENTILES},
            **{kind: {f"p{p}": percentile(getattr(figures, kind), p) for p in PERCENTILES} for kind in WAITS},
        },
        "throughput": {
            "elapsed_seconds": figures.elapsed,
            "requests_per_minute": figures.per_minute(
                figures.requests[State.SUCCEEDED] + figures.requests[State.ERRORED]
            ),
            "output_tokens_per_minute": figures.per_minute(figures.kept.output_tokens),
        },
        "first_start": _stamp(figures.first_start),
        "last_finish": _stamp(figures.last_finish),
        "failed_attempts_by_reason": dict(figures.failed_attempts.most_common()),
        "top_errors": [
            {"type": kind, "message": message, "count": count}
            for (kind, message), count in figures.errors.most_common(5)
        ],
        **({"outputs": {status: figures.outputs[status] for status in STATUSES}} if figures.outputs else {}),
    }


def render_json(reports: list[JobReport], prices: PriceTable, now: float) -> str:
    total = Figures()
    for report in reports:
        total.merge(report.total())
    return json.dumps(
        {
            "prices": {"as_of": prices.as_of, "source": prices.source},
            "jobs": [
                {
                    "job": r.name,
                    "database": r.path,
                    "simulated": r.simulated,
                    "deadline": _stamp(r.deadline),
                    "deadline_met": deadline_met(r, now),
                    "total": as_dict(r.total()),
                    "cache_prefixes": prefixes_dict(r.prefixes),
                    "models": {m: as_dict(f) for m, f in sorted(r.models.items())},
                }
                for r in reports
            ],
            "total": as_dict(total),
        },
        indent=2,
    )


CSV_COLUMNS = [
    "job", "model", "succeeded", "errored", "unfinished", "input_tokens", "output_tokens",
    "cache_write_tokens", "cache_write_1h_tokens", "cache_read_tokens", "cost_usd", "kept_output_tokens",
    "wasted_input_tokens", "wasted_output_tokens", "wasted_cost_usd", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s",
    "total_p50_s", "total_p90_s", "total_p99_s", *(f"{kind}_p{p}_s" for kind in WAITS for p in PERCENTILES),
    "requests_per_minute", "output_tokens_per_minute", "simulated",
    "by_batch", "streamed", "batch_cost_usd", "streamed_cost_usd", "cost_all_streamed_usd", "deadline",
    "deadline_met",
]  # fmt: skip


def _csv_row(report: JobReport, model: str, f: Figures, now: float) -> list[Any]:
    data = as_dict(f)
    latency = data["latency_seconds"]
    return [
        report.name, model, f.requests[State.SUCCEEDED], f.requests[State.ERRORED], f.requests["unfinished"],
        f.billed.input_tokens, f.billed.output_tokens, f.billed.cache_creation_input_tokens,
        f.billed.cache_creation_1h_input_tokens, f.billed.cache_read_input_tokens, data["cost_usd"],
        f.kept.output_tokens, f.wasted.input_tokens, f.wasted.output_tokens, data["wasted_cost_usd"],
        *(latency["time_to_first_token"][f"p{p}"] for p in PERCENTILES),
        *(latency["total"][f"p{p}"] for p in PERCENTILES),
        *(latency[kind][f"p{p}"] for kind in WAITS for p in PERCENTILES),
        data["throughput"]["requests_per_minute"], data["throughput"]["output_tokens_per_minute"], report.simulated,
        f.ways["batch"], f.ways["streamed"], data["cost_by_way_usd"]["batch"], data["cost_by_way_usd"]["streamed"],
        data["cost_streamed_usd"], _stamp(report.deadline), deadline_met(report, now),
    ]  # fmt: skip


def render_csv(reports: list[JobReport], now: float) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for report in reports:
        for model, figures in sorted(report.models.items()):
            writer.writerow(_csv_row(report, model, figures, now))
        writer.writerow(_csv_row(report, "(all models)", report.total(), now))
    return out.getvalue()


def _text_block(title: str, rows: dict[str, Figures]) -> list[str]:
    lines = [title]
    header = (
        f"  {'model':<28}{'ok':>7}{'err':>6}{'open':>6}{'input':>12}{'output':>12}{'cache w':>10}"
        f"{'cache r':>10}{'cost':>13}{'wasted out':>12}{'wasted $':>12}"
    )
    lines.append(header)
    for model, f in rows.items():
        lines.append(
            f"  {model:<28}{f.requests[State.SUCCEEDED]:>7,}{f.requests[State.ERRORED]:>6,}"
            f"{f.requests['unfinished']:>6,}{f.billed.input_tokens:>12,}{f.billed.output_tokens:>12,}"
            f"{f.billed.cache_creation_input_tokens:>10,}{f.billed.cache_read_input_tokens:>10,}"
            f"{money(f.billed_cost):>13}{f.wasted.output_tokens:>12,}{money(f.wasted_cost):>12}"
        )
    return lines


def _text_details(f: Figures) -> list[str]:
    figures = as_dict(f)
    latency = figures["latency_seconds"]
    ttft, total, slot, rate, prefix, backoff = (
        ", ".join(f"p{p} {seconds_text(latency[kind][f'p{p}'])}" for p in PERCENTILES)
        for kind in ("time_to_first_token", "total", *WAITS)
    )
    throughput = figures["throughput"]
    lines = [
        f"  latency (succeeded, from the request's send): first token {ttft}; total {total}",
        f"  waiting before a send (per request): for a free concurrency slot {slot}; for the rate limiter {rate}"
        + (f"; for a warm cached prefix {prefix}" if any(f.prefix_wait) else ""),
        f"  backoff between attempts (per request): {backoff}",
        f"  throughput: {rate_text(throughput['requests_per_minute'])} requests/min, "
        f"{rate_text(throughput['output_tokens_per_minute'])} output tokens/min over {f.elapsed:,.1f} s",
    ]
    if f.estimated_output:
        lines.append(
            f"  billed output tokens: {f.estimated_output:,} of {f.billed.output_tokens:,} are our estimate "
            "(streams that broke before the server counted them)"
        )
    if f.outputs:
        lines.append(f"  structured outputs: {counts_text(f.outputs)}")
    if f.ways["batch"] or f.batch_cost:
        lines.append(f"  {ways_text(f)}")
    if f.failed_attempts:
        reasons = ", ".join(f"{reason} {count:,}" for reason, count in f.failed_attempts.most_common())
        lines.append(f"  failed attempts by reason: {reasons}")
    for (kind, message), count in f.errors.most_common(5):
        lines.append(f"  error x{count:,}: {kind}: {message[:100]}")
    if f.unpriced:
        lines.append(f"  unpriced (no price for): {', '.join(sorted(f.unpriced))}; pass --prices FILE to price them")
    return lines


def ways_text(f: Figures) -> str:
    """What went which way, and the cost against streaming it all."""
    ratio = f" ({f.billed_cost / f.cost_streamed:.2f}x)" if f.billed_cost is not None and f.cost_streamed else ""
    return (
        f"went: {f.ways['batch']:,} by message batch ({money(f.batch_cost)}), {f.ways['streamed']:,} streamed "
        f"({money(f.streamed_cost)}); cost {money(f.billed_cost)} against {money(f.cost_streamed)} "
        f"streaming it all{ratio}"
    )


def _text_prefixes(prefixes: list[PrefixRow], most: int = 10) -> list[str]:
    if not prefixes:
        return []
    lines = [
        "  prompt cache by prefix:",
        f"    {'prefix':<18}{'model':<28}{'tokens':>9}{'requests':>10}{'writes':>12}{'reads':>14}{'saved':>12}",
    ]
    for row in prefixes[:most]:
        lines.append(
            f"    {row.key:<18}{row.model:<28}{row.tokens:>9,}{row.requests:>10,}{row.writes:>12,}{row.reads:>14,}"
            f"{money(row.saved):>12}"
        )
    if len(prefixes) > most:
        lines.append(f"    ... and {len(prefixes) - most:,} more prefixes (--format json lists them all)")
    return lines


def prefixes_dict(prefixes: list[PrefixRow]) -> list[dict[str, Any]]:
    return [
        {
            "prefix": row.key,
            "model": row.model,
            "tokens": row.tokens,
            "requests": row.requests,
            "cache_write_tokens": row.writes,
            "cache_write_1h_tokens": row.writes_1h,
            "cache_read_tokens": row.reads,
            "saved_usd": None if row.saved is None else float(round(row.saved, 6)),
        }
        for row in prefixes
    ]


def simulated_note(reports: list[JobReport]) -> str:
    simulated = sum(report.simulated for report in reports)
    return f" ({simulated} of them SIMULATED)" if simulated else ""


def render_text(reports: list[JobReport], prices: PriceTable, now: float) -> str:
    lines = [f"prices: {prices.source} (USD per million tokens)", ""]
    grand = Figures()
    for report in reports:
        total = report.total()
        grand.merge(total)
        rows = dict(sorted(report.models.items()))
        if len(rows) > 1:
            rows["(all models)"] = total
        lines += _text_block(f"job {report.title}  ({report.path})", rows)
        lines += _text_details(total)
        stands = deadline_text(report, now)
        if stands is not None:
            lines.append(f"  {stands}")
        lines += _text_prefixes(report.prefixes)
        lines.append("")
    if len(reports) > 1:
        lines += _text_block(f"all {len(reports)} jobs{simulated_note(reports)}", {"(all models)": grand})
        lines += _text_details(grand)
    return "\n".join(lines).rstrip() + "\n"
