"""Helpers shared by the end-to-end tests: job files, results, the simulator's expected replies."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import pytest

from orchestrator.jobs.read import read_requests
from orchestrator.jobs.spec import load_spec
from orchestrator.models import Loaded
from orchestrator.run.engine import Job
from orchestrator.runtime.progress import Quiet
from orchestrator.runtime.summary import Summary
from orchestrator.settings import JobSettings
from orchestrator.simulator import Simulator
from orchestrator.simulator.replies import plan_reply
from orchestrator.store import Store, open_store

# A tool for tool_use replies: the simulator streams its input as input_json_delta chunks.
TOOLS = [
    {
        "name": "get_weather",
        "description": "The weather somewhere",
        "input_schema": {
            "type": "object",
            "properties": {"location": {"type": "string"}, "unit": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["location"],
        },
    }
]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")  # CI installs it (apt-get install chromium)


def chromium_flags(profile: Path) -> list[str]:
    """Headless Chromium that fetches nothing of its own, with a profile of its own."""
    return ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}"]  # fmt: skip


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def read_results(path: Path) -> list[dict[str, Any]]:
    """The lines of a results.jsonl (or of ``path/results.jsonl`` for a results folder)."""
    if path.is_dir():
        path = path / "results.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def text_of(line: dict[str, Any]) -> str:
    """The text of a succeeded results line."""
    return "".join(b["text"] for b in line["result"]["message"]["content"] if b["type"] == "text")


def reply_of(sim: Simulator, params: dict[str, Any]) -> str:
    """What the simulator answers to these params when nothing breaks."""
    return "".join(plan_reply(sim.config.seed, params, sim.config.reply_min, sim.config.reply_max).tokens)


def params_of(job: Path, cli_defaults: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    found = {}
    for item in read_requests(load_spec(job, cli_defaults or {})):
        assert isinstance(item, Loaded)
        found[item.custom_id] = item.params
    return found


def expected_replies(sim: Simulator, job: Path) -> dict[str, str]:
    """custom_id -> the uninterrupted reply, for every request of a job file."""
    return {custom_id: reply_of(sim, params) for custom_id, params in params_of(job).items()}


def query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(db)
    try:
        return connection.execute(sql, args).fetchall()
    finally:
        connection.close()


@asynccontextmanager
async def loaded_store(job: Path, db: Path) -> AsyncIterator[Store]:
    """The store of a job file: new, or the one already holding the same job."""
    spec = load_spec(job, {})
    async with open_store(db) as store:
        await store.load(spec.name, {"argv": []}, spec.fingerprint(), read_requests(spec))
        yield store


async def run_in_process(
    job: Path, db: Path, client: anthropic.AsyncAnthropic, settings: JobSettings
) -> tuple[Job, Summary]:
    """Load a job file into a new store and run it with the engine directly."""
    async with loaded_store(job, db) as store:
        running = Job(store, client, settings, Quiet())
        summary = await running.run(handle_signals=False)
    return running, summary


async def until_checkpointed(sim: Simulator, running: Job, streams: int) -> None:
    """Wait until ``streams`` streams stall and a checkpoint holds every delta they received."""
    await sim.until(lambda s: s.stalls_now == streams)
    await running.writer.until(
        lambda w: len(w.live) == streams and all(not live.dirty for live in w.live.values()) and w.tally.checkpoints > 0
    )


@contextmanager
def raises_as_the_sdk_does(expected: type[BaseException]) -> Iterator[None]:
    """``pytest.raises(expected)``; where ``expected`` is a failure to read a response's body (an
    httpx2 error), the SDK's connection or timeout error caused by it too (anthropic 2.17 wraps
    them; earlier versions let them through)."""
    if not issubclass(expected, httpx2.HTTPError):
        with pytest.raises(expected):
            yield
        return
    with pytest.raises((expected, anthropic.APIConnectionError)) as caught:
        yield
    assert isinstance(caught.value, expected) or isinstance(caught.value.__cause__, expected)
