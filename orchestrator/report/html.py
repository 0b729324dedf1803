"""The report as one self-contained HTML file: tables and inline SVG charts, nothing fetched.

Charts: requests and output tokens over time, the latency distribution, cost by model.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from decimal import Decimal

from orchestrator.models import State
from orchestrator.pricing import PriceTable, money
from orchestrator.report.figures import (
    PERCENTILES,
    Figures,
    JobReport,
    as_dict,
    deadline_text,
    rate_text,
    seconds_text,
    simulated_note,
    ways_text,
)

WIDTH, HEIGHT, PAD = 500, 190, 40
BLUE, ORANGE, GREEN = "#3b6fd8", "#e07b39", "#3a9d5d"

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1100px;
       color: #1d2430; padding: 0 16px; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 18px; margin-top: 32px; }
h3 { font-size: 15px; margin: 18px 0 6px; color: #3a4250; }
.meta { color: #5b6574; margin-bottom: 18px; }
.wide { overflow-x: auto; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13px; }
th, td { padding: 4px 8px; text-align: right; border-bottom: 1px solid #e3e7ee; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f5f9; font-weight: 600; }
tr.total td { font-weight: 600; }
.charts { display: flex; flex-wrap: wrap; gap: 18px; }
.chart { border: 1px solid #e3e7ee; border-radius: 6px; padding: 8px 10px; }
.chart svg text { font-size: 11px; fill: #5b6574; }
.note { color: #8a5a00; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value))


def _axis(max_value: float, label: str) -> str:
    return (
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - 10}" y2="{HEIGHT - PAD}" stroke="#c5ccd8"/>'
        f'<line x1="{PAD}" y1="10" x2="{PAD}" y2="{HEIGHT - PAD}" stroke="#c5ccd8"/>'
        f'<text x="{PAD - 4}" y="16" text-anchor="end">{max_value:,.0f}</text>'
        f'<text x="{PAD - 4}" y="{HEIGHT - PAD}" text-anchor="end">0</text>'
        f'<text x="{WIDTH / 2}" y="{HEIGHT - 8}" text-anchor="middle">{_esc(label)}</text>'
    )


def bar_chart(title: str, values: Sequence[float], color: str, x_label: str, first: str = "", last: str = "") -> str:
    """Vertical bars, one per value, scaled to the largest."""
    top = max(values, default=0) or 1
    inner_w, inner_h = WIDTH - PAD - 10, HEIGHT - PAD - 10
    width = inner_w / max(1, len(values))
    bars = "".join(
        f'<rect x="{PAD + i * width + 0.5:.1f}" y="{HEIGHT - PAD - v / top * inner_h:.1f}" '
        f'width="{max(1.0, width - 1):.1f}" height="{v / top * inner_h:.1f}" fill="{color}"/>'
        for i, v in enumerate(values)
    )
    ends = (
        f'<text x="{PAD}" y="{HEIGHT - PAD + 14}">{_esc(first)}</text>'
        f'<text x="{WIDTH - 10}" y="{HEIGHT - PAD + 14}" text-anchor="end">{_esc(last)}</text>'
    )
    return (
        f'<div class="chart"><h3>{_esc(title)}</h3><svg width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{_esc(title)}">{_axis(top, x_label)}{bars}{ends}</svg></div>'
    )


def hbar_chart(title: str, items: Sequence[tuple[str, float, str]], color: str) -> str:
    """Horizontal bars with a label and a value text each."""
    if not items:
        return ""
    row = 26
    height = row * len(items) + 10
    top = max(value for _, value, _ in items) or 1
    label_w, bar_w = 200, WIDTH - 200 - 110
    rows = "".join(
        f'<text x="{label_w - 8}" y="{i * row + 20}" text-anchor="end">{_esc(label)}</text>'
        f'<rect x="{label_w}" y="{i * row + 8}" width="{max(1.0, value / top * bar_w):.1f}" height="16" '
        f'fill="{color}"/>'
        f'<text x="{label_w + value / top * bar_w + 6:.1f}" y="{i * row + 20}">{_esc(text)}</text>'
        for i, (label, value, text) in enumerate(items)
    )
    return (
        f'<div class="chart"><h3>{_esc(title)}</h3><svg width="{WIDTH}" height="{height}" role="img" '
        f'aria-label="{_esc(title)}">{rows}</svg></div>'
    )


def histogram(values: list[float], bins: int = 30) -> tuple[list[int], float, float]:
    if not values:
        return [], 0.0, 0.0
    low, high = min(values), max(values)
    width = (high - low) / bins or 1.0
    counts = [0] * bins
    for value in values:
        counts[min(bins - 1, int((value - low) / width))] += 1
    return counts, low, high


def _table(rows: dict[str, Figures]) -> str:
    head = (
        "<tr><th>model</th><th>succeeded</th><th>errored</th><th>unfinished</th><th>input tok</th>"
        "<th>output tok</th><th>cache write</th><th>cache read</th><th>cost</th><th>wasted output tok</th>"
        "<th>wasted cost</th></tr>"
    )
    body = "".join(
        f"<tr{' class=total' if name.startswith('(') else ''}><td>{_esc(name)}</td>"
        f"<td>{f.requests[State.SUCCEEDED]:,}</td><td>{f.requests[State.ERRORED]:,}</td>"
        f"<td>{f.requests['unfinished']:,}</td><td>{f.billed.input_tokens:,}</td><td>{f.billed.output_tokens:,}</td>"
        f"<td>{f.billed.cache_creation_input_tokens:,}</td><td>{f.billed.cache_read_input_tokens:,}</td>"
        f"<td>{money(f.billed_cost)}</td><td>{f.wasted.output_tokens:,}</td><td>{money(f.wasted_cost)}</td></tr>"
        for name, f in rows.items()
    )
    return f"<div class=wide><table>{head}{body}</table></div>"


def _details(f: Figures) -> str:
    figures = as_dict(f)
    latency = "".join(
        f"<tr><td>{name}</td>" + "".join(f"<td>{seconds_text(values[f'p{p}'])}</td>" for p in PERCENTILES) + "</tr>"
        for name, values in (
            ("time to first token", figures["latency_seconds"]["time_to_first_token"]),
            ("total", figures["latency_seconds"]["total"]),
            ("wait for a concurrency slot (per request)", figures["latency_seconds"]["slot_wait"]),
            ("wait for the rate limiter (per request)", figures["latency_seconds"]["rate_limit_wait"]),
            ("backoff between attempts (per request)", figures["latency_seconds"]["backoff"]),
        )
    )
    throughput = figures["throughput"]
    parts = [
        "<table><tr><th>latency (succeeded, from the send)</th>"
        + "".join(f"<th>p{p}</th>" for p in PERCENTILES)
        + "</tr>"
        f"{latency}</table>",
        f"<p>Throughput: {rate_text(throughput['requests_per_minute'])} requests/min, "
        f"{rate_text(throughput['output_tokens_per_minute'])} output tokens/min over {f.elapsed:,.1f} s.</p>",
    ]
    if f.ways["batch"] or f.batch_cost:
        went = ways_text(f)
        parts.append(f"<p>{_esc(went[:1].upper() + went[1:])}.</p>")
    if f.failed_attempts:
        rows = "".join(f"<tr><td>{_esc(r)}</td><td>{n:,}</td></tr>" for r, n in f.failed_attempts.most_common())
        parts.append(f"<table><tr><th>failed attempts by reason</th><th>count</th></tr>{rows}</table>")
    if f.errors:
        rows = "".join(
            f"<tr><td>{_esc(kind)}</td><td style='text-align:left'>{_esc(message[:120])}</td><td>{n:,}</td></tr>"
            for (kind, message), n in f.errors.most_common(5)
        )
        parts.append(f"<table><tr><th>most frequent errors</th><th>message</th><th>count</th></tr>{rows}</table>")
    if f.unpriced:
        parts.append(f"<p class=note>Unpriced (no price for): {_esc(', '.join(sorted(f.unpriced)))}.</p>")
    return "".join(parts)


def charts(reports: list[JobReport], total: Figures) -> str:
    """The report's charts, one block of inline SVG (``orchestrator watch`` draws them as a job runs)."""
    timeline = total.timeline()
    span = total.elapsed
    charts = []
    if timeline:
        charts.append(
            bar_chart("Requests finished over time", [n for _, n, _ in timeline], BLUE, "time", "0 s", f"{span:,.0f} s")
        )
        charts.append(
            bar_chart("Output tokens over time", [t for _, _, t in timeline], ORANGE, "time", "0 s", f"{span:,.0f} s")
        )
    for name, values in (("Latency distribution: total", total.total), ("Time to first token", total.ttft)):
        counts, low, high = histogram(values)
        if counts:
            charts.append(bar_chart(name, counts, GREEN, "seconds", f"{low:.2f} s", f"{high:.2f} s"))
    costs: dict[str, Decimal] = {}
    for report in reports:
        for model, f in report.models.items():
            if f.billed_cost is not None:
                costs[model] = costs.get(model, Decimal(0)) + f.billed_cost
    charts.append(hbar_chart("Cost by model", [(m, float(c), f"${c:,.4f}") for m, c in sorted(costs.items())], BLUE))
    return f'<div class="charts">{"".join(charts)}</div>'


def render_html(reports: list[JobReport], prices: PriceTable, now: float) -> str:
    total = Figures()
    for report in reports:
        total.merge(report.total())
    sections = []
    for report in reports:
        rows = dict(sorted(report.models.items()))
        job_total = report.total()
        if len(rows) > 1:
            rows["(all models)"] = job_total
        stands = deadline_text(report, now)
        sections.append(
            f"<h2>Job {_esc(report.title)}</h2><div class=meta>{_esc(report.path)}</div>"
            f"{_table(rows)}{_details(job_total)}" + ("" if stands is None else f"<p>{_esc(stands.capitalize())}.</p>")
        )
    overall = ""
    if len(reports) > 1:
        heading = f"All {len(reports)} jobs{simulated_note(reports)}"
        overall = f"<h2>{_esc(heading)}</h2>{_table({'(all models)': total})}{_details(total)}"
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        f"<title>orchestrator report</title><style>{STYLE}</style></head><body>"
        f"<h1>Usage and cost report</h1><div class=meta>Prices: {_esc(prices.source)} (USD per million tokens). "
        f"Total cost: <b>{money(total.billed_cost)}</b>, of which wasted by retries and restarts: "
        f"<b>{money(total.wasted_cost)}</b>.</div>"
        f"{charts(reports, total)}{overall}{''.join(sections)}</body></html>\n"
    )
