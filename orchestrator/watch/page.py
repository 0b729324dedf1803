"""The live page: one self-contained HTML file (its style and script inline, nothing fetched but
this server's ``status.json`` and ``charts``), updating itself without a reload."""

from __future__ import annotations

from orchestrator.report.html import STYLE

LIVE_STYLE = """
.tiles { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; margin: 14px 0; }
.tile { border: 1px solid #e3e7ee; border-radius: 6px; padding: 8px 10px; }
.tile .label { color: #5b6574; font-size: 12px; } .tile .value { font-size: 20px; font-weight: 600; }
.tile .sub { color: #5b6574; font-size: 12px; }
.bar { background: #e3e7ee; border-radius: 4px; height: 10px; overflow: hidden; min-width: 80px; }
.bar > div { background: #3b6fd8; height: 100%; }
.bar.low > div { background: #e07b39; }
#progress { height: 14px; margin: 8px 0; }
.error { color: #b3261e; } .state { font-weight: 600; }
td.text { text-align: left; white-space: pre-wrap; max-width: 480px; }
#errors th:last-child, #replies th { text-align: left; }
"""

SCRIPT = """
const $ = (id) => document.getElementById(id);
const num = (v, d = 0) => v === null || v === undefined ? '-' :
  v.toLocaleString('en-US', {maximumFractionDigits: d, minimumFractionDigits: d});
const usd = (v) => v === null || v === undefined ? 'unpriced' : '$' + num(v, 4);
const pct = (v) => v === null || v === undefined ? '-' : num(100 * v, 1) + '%';
function span(s) {
  if (s === null || s === undefined) return '?';
  s = Math.round(s); const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), r = s % 60;
  return h ? `${h}h${String(m).padStart(2, '0')}m` : `${m}m${String(r).padStart(2, '0')}s`;
}
function when(t) { return t ? new Date(t * 1000).toLocaleTimeString() : '-'; }
function set(id, text) { $(id).textContent = text; }
function row(cells, cls) {
  const tr = document.createElement('tr');
  for (const c of cells) {
    const td = document.createElement('td');
    if (c instanceof Node) td.appendChild(c); else td.textContent = c;
    tr.appendChild(td);
  }
  if (cls) tr.lastChild.className = cls;
  return tr;
}
function bar(fraction) {
  const b = document.createElement('div'); b.className = 'bar' + (fraction < 0.2 ? ' low' : '');
  const f = document.createElement('div'); f.style.width = (100 * Math.max(0, Math.min(1, fraction))) + '%';
  b.appendChild(f); return b;
}
function table(id, head, rows) {
  const t = $(id); t.replaceChildren();
  const tr = document.createElement('tr');
  for (const h of head) { const th = document.createElement('th'); th.textContent = h; tr.appendChild(th); }
  t.appendChild(tr); for (const r of rows) t.appendChild(r);
  t.closest('section').hidden = rows.length === 0;
}
function show(s) {
  if (s.error) { set('state', s.error); $('state').className = 'error'; return; }
  $('state').className = 'state';
  document.title = `${s.done}/${s.total} ${s.job} - orchestrator watch`;
  set('job', s.job + (s.simulated ? ' (SIMULATED)' : ''));
  set('where', `${s.database} - endpoint ${s.endpoint || 'not recorded'}`);
  const ago = s.read_at - s.updated_at, left = s.total - s.done;
  set('state', left === 0 ? 'finished' : s.in_flight > 0 && ago < 30 ? 'running' :
      `not running (last write ${span(ago)} ago)`);
  set('updated', `read ${when(s.read_at)}, last write ${when(s.updated_at)}, every ${num(s.refresh_seconds, 1)} s`);
  $('progress').firstChild.style.width = (s.total ? 100 * s.done / s.total : 0) + '%';
  set('done', `${num(s.done)} / ${num(s.total)}`);
  set('done-sub', s.total ? pct(s.done / s.total) : '');
  set('in-flight', num(s.in_flight));
  set('in-flight-sub', s.run.allowed != null ? `allowed ${num(s.run.allowed)} of ${num(s.run.concurrency)}` : '');
  set('failed', num(s.failed)); set('retries', num(s.retries));
  set('retries-sub', s.run.pauses != null ? `${num(s.run.pauses)} pauses, ${num(s.run.cuts)} cuts` : '');
  set('tps', num(s.rates.output_tokens_per_second)); set('rpm', num(s.rates.requests_per_minute));
  const over = s.rates.kind ? `${s.rates.kind}, over ${span(s.rates.over_seconds)}` : '';
  set('tps-sub', over); set('rpm-sub', over);
  set('cost', usd(s.cost_usd));
  set('cost-sub', s.cap_usd != null ? `of ${usd(s.cap_usd)} cap (${pct(s.cost_usd / s.cap_usd)})` : 'no cap');
  set('eta', left === 0 ? 'done' : span(s.eta_seconds));
  const due = s.deadline == null ? null : s.deadline - s.read_at;
  set('eta-sub', due === null ? '' : `deadline ${when(s.deadline)} (${due > 0 ? 'in ' + span(due) : 'passed'})`);
  set('cache', pct(s.cache.hit_rate));
  set('cache-sub', `${num(s.cache.read_tokens)} read, ${num(s.cache.write_tokens)} written`);
  const limits = [];
  for (const [model, classes] of Object.entries(s.rate_limits))
    for (const [name, l] of Object.entries(classes))
      limits.push(row([model, name, `${num(l.remaining)} / ${num(l.limit)}`, bar(l.headroom ?? 0),
                       pct(l.headroom), l.reset || '-']));
  table('limits', ['model', 'limit', 'remaining', 'headroom', '', 'reset'], limits);
  set('limits-at', s.run.noted_at ? `as of ${when(s.run.noted_at)}` : '');
  const states = Object.entries(s.batches.states).map(([k, v]) => `${num(v)} ${k}`).join(', ');
  const went = s.ways ? `; went: ${num(s.ways.batch)} by message batch, ${num(s.ways.streamed)} streamed; ` +
    `cost ${usd(s.cost_usd)} against ${usd(s.cost_streamed_usd)} streaming it all` : '';
  set('batch-states', states + went);
  table('batches', ['batch', 'state', 'requests', 'counts', 'expires'],
        s.batches.open.map(b => row([b.id || '(being created)', b.state, num(b.requests),
          b.counts ? Object.entries(b.counts).map(([k, v]) => `${k} ${v}`).join(', ') : '-', when(b.expires_at)])));
  $('batches').closest('section').hidden = !states;
  table('errors', ['kind', 'attempts', 'latest', 'latest message'],
        s.errors.map(e => row([e.kind, num(e.count), when(e.latest_at),
          (e.latest_type ? e.latest_type + ': ' : '') + (e.latest_message || '')], 'text')));
  table('replies', ['custom_id', 'prompt', 'reply'],
        s.replies.map(r => { const tr = row([r.custom_id, r.prompt, r.reply], 'text');
                             tr.children[1].className = 'text'; return tr; }));
  return s;
}
let chartsDue = 0;
async function tick() {
  let wait = 2;
  try {
    const s = show(await (await fetch('status.json', {cache: 'no-store'})).json());
    wait = Math.max(1, s.refresh_seconds || 1);
    if (Date.now() >= chartsDue) {
      const html = await (await fetch('charts', {cache: 'no-store'})).text();
      $('charts').innerHTML = html;
      chartsDue = Date.now() + 1000 * Math.max(2, s.charts_refresh_seconds || 5);
    }
  } catch (e) { set('state', 'the watcher cannot be reached: ' + e); $('state').className = 'error'; }
  setTimeout(tick, 1000 * wait);
}
tick();
"""


def _tile(key: str, label: str) -> str:
    return (
        f'<div class=tile><div class=label>{label}</div><div class=value id="{key}">-</div>'
        f'<div class=sub id="{key}-sub"></div></div>'
    )


TILES = "".join(
    _tile(key, label)
    for key, label in (
        ("done", "done of total"),
        ("in-flight", "in flight"),
        ("failed", "failed"),
        ("retries", "retries"),
        ("tps", "output tokens/s"),
        ("rpm", "requests/min"),
        ("cost", "spend"),
        ("eta", "ETA"),
        ("cache", "cache hit rate"),
    )
)

PAGE = (
    "<!doctype html><html lang=en><head><meta charset=utf-8>"
    "<meta name=viewport content='width=device-width, initial-scale=1'>"
    f"<title>orchestrator watch</title><style>{STYLE}{LIVE_STYLE}</style></head><body>"
    "<h1 id=job>orchestrator watch</h1><div class=meta><span id=where></span><br>"
    "<span id=state class=state>reading...</span> - <span id=updated></span></div>"
    f"<div class=bar id=progress><div style='width:0'></div></div><div class=tiles>{TILES}</div>"
    "<section><h2>Rate limits <small class=meta id=limits-at></small></h2><div class=wide><table id=limits></table>"
    "</div></section>"
    "<section hidden><h2>Message batches</h2><div class=meta id=batch-states></div><div class=wide>"
    "<table id=batches></table></div></section>"
    "<section><h2>Failed attempts by kind</h2><div class=wide><table id=errors></table></div></section>"
    "<section><h2>Latest replies</h2><div class=wide><table id=replies></table></div></section>"
    "<h2>Charts</h2><div id=charts></div>"
    f"<script>{SCRIPT}</script></body></html>\n"
)
