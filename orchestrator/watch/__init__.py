"""A live view of a job in the browser: ``orchestrator watch DB`` and ``run ... --watch``.

    figures.py  a reading of the store -> the page's numbers (rates, ETA, headroom; pure)
    page.py     the page: one self-contained HTML file that updates itself from status.json
    server.py   the aiohttp server: the page, /status.json, /charts; reads paced by their cost

It reads the job's store read-only (``store.open_reader``), never takes the runner's lock and
never writes: a job running in another process, in this one, or finished, is watched alike. The
run tells watchers what no request row holds (its cap, the last rate-limit headers) through the
store's notes, written with the writer's batched commits. Prompts and replies are shown only when
asked (``show_text``); the API key and auth token never are.
"""

from orchestrator.watch.server import Watcher, serve_watch

__all__ = ["Watcher", "serve_watch"]
