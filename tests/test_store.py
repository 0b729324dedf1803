"""The store: migrations from a blank database, all-or-nothing loads, reloads, state transitions."""

from __future__ import annotations

import json
import sqlite3
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.errors import JobFileError, Problem
from orchestrator.models import AttemptEnded, AttemptStarted, Checkpoint, Loaded, Outcome, State, Usage
from orchestrator.store import MIGRATIONS, open_store
from orchestrator.store.schema import migrate, migration_name

pytestmark = pytest.mark.anyio


def item(custom_id: str, text: str = "hi", line: int = 1) -> Loaded:
    params = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": text}]}
    return Loaded(custom_id, params, "in.jsonl", line)


def checkpoint(request_id: int, number: int, output: int, partial: dict[str, Any] | None = None) -> Checkpoint:
    return Checkpoint(request_id, number, partial, "msg_1", Usage(10, output), None, 100.0 + output)


async def test_migrations_from_blank_are_recorded_once(tmp_path: Path) -> None:
    db = tmp_path / "job.sqlite"
    async with open_store(db) as store:
        assert await migrate(store.db) == []  # already applied on open
    connection = sqlite3.connect(db)
    names = [row[0] for row in connection.execute("SELECT name FROM migrations")]
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    connection.close()
    assert names == [migration_name(step) for step in MIGRATIONS]
    assert {"job", "requests", "attempts", "migrations"} <= tables
    assert mode == "wal"


async def test_load_is_all_or_nothing_and_finds_duplicates(tmp_path: Path) -> None:
    items: list[Loaded | Problem] = [
        item("a", line=1),
        item("b", line=2),
        item("a", line=3),
        item("b", line=4),
    ]
    async with open_store(tmp_path / "job.sqlite") as store:
        with pytest.raises(JobFileError) as caught:
            await store.load("job", {}, "f1", items)
        assert await store.counts() == {"pending": 0, "running": 0, "succeeded": 0, "errored": 0}
        assert await store.job() is None
    text = str(caught.value)
    assert "in.jsonl:3: duplicate custom_id 'a' (first at in.jsonl:1)" in text
    assert "in.jsonl:4: duplicate custom_id 'b' (first at in.jsonl:2)" in text


async def test_duplicates_name_the_first_line_in_input_order(tmp_path: Path) -> None:
    items: list[Loaded | Problem] = [item(f"u{n}", line=n) for n in range(1, 10)]
    items += [
        item("x", line=10),
        item("x", line=11),
    ]
    async with open_store(tmp_path / "job.sqlite") as store:
        with pytest.raises(JobFileError) as caught:
            await store.load("job", {}, "f1", items)
    assert [str(p) for p in caught.value.problems] == ["in.jsonl:11: duplicate custom_id 'x' (first at in.jsonl:10)"]


async def test_duplicates_across_batches_and_prompt_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("orchestrator.store.load.LOAD_BATCH", 2)
    items: list[Loaded | Problem] = [item("a", line=1), item("b", line=2), item("c", line=3), item("a", line=4)]
    items += [Problem("in.jsonl", 5, "bad"), Loaded("p", item("p").params, "one/p.txt", None)]
    items += [Loaded("p", item("p").params, "two/p.txt", None)]
    seen: list[int] = []
    async with open_store(tmp_path / "job.sqlite") as store:
        with pytest.raises(JobFileError) as caught:
            await store.load("job", {}, "f1", items, seen.append)
        assert await store.counts() == {"pending": 0, "running": 0, "succeeded": 0, "errored": 0}
    assert [str(p) for p in caught.value.problems] == [
        "in.jsonl:4: duplicate custom_id 'a' (first at in.jsonl:1)",
        "in.jsonl:5: bad",
        "two/p.txt: duplicate custom_id 'p' (first at one/p.txt; prompt files are named by their file stem: "
        "rename one)",
    ]
    assert seen[-1] == len(items)


async def test_problems_are_capped(tmp_path: Path) -> None:
    items: list[Loaded | Problem] = [Problem("f", n, "bad") for n in range(1, 31)]
    async with open_store(tmp_path / "job.sqlite") as store:
        with pytest.raises(JobFileError) as caught:
            await store.load("job", {}, "f1", items)
    assert len(caught.value.problems) == 20
    assert caught.value.more == 10
    assert "... and 10 more problems" in str(caught.value)


async def test_states_attempts_and_results(tmp_path: Path) -> None:
    async with open_store(tmp_path / "job.sqlite") as store:
        assert await store.load("job", {"argv": []}, "f1", [item("a"), item("b")]) == (2, 0)
        page = await store.pending(0, 10)
        assert [r.custom_id for r in page] == ["a", "b"]
        a, b = page
        await store.write([AttemptStarted(a.id, 1, 100.0), AttemptStarted(b.id, 1, 100.0)], [])
        assert (await store.counts())["running"] == 2
        await store.write([], [checkpoint(a.id, 1, 3, {"content": [{"type": "text", "text": "par"}]})])
        broken = AttemptEnded(checkpoint(a.id, 1, 4), Outcome.BROKEN, "connection", None, {"type": "error"}, None)
        done = AttemptEnded(
            checkpoint(b.id, 1, 7), Outcome.SUCCEEDED, None, None, None, (State.SUCCEEDED, {"id": "msg_b"})
        )
        await store.write([broken, done, AttemptStarted(a.id, 2, 101.0)], [])
        final = AttemptEnded(
            checkpoint(a.id, 2, 5), Outcome.SUCCEEDED, None, None, None, (State.SUCCEEDED, {"id": "a"})
        )
        await store.write([final], [])
        assert await store.counts() == {"pending": 0, "running": 0, "succeeded": 2, "errored": 0}
        rows = [row async for row in store.results()]
        assert await store.billed() == Usage(30, 16)
    assert [(r["custom_id"], r["attempts"], r["billed"].output_tokens, r["result"]) for r in rows] == [
        ("a", 2, 9, {"id": "a"}),
        ("b", 1, 7, {"id": "msg_b"}),
    ]
    connection = sqlite3.connect(tmp_path / "job.sqlite")
    partial, outcome = connection.execute(
        "SELECT partial, outcome FROM attempts WHERE request_id = ? AND number = 1", (a.id,)
    ).fetchone()
    connection.close()
    assert outcome == "broken"
    assert partial is None or json.loads(partial) is not None


async def test_a_retry_and_its_success_in_one_batch_leave_the_request_succeeded(tmp_path: Path) -> None:
    async with open_store(tmp_path / "job.sqlite") as store:
        await store.load("job", {}, "f1", [item("a")])
        (a,) = await store.pending(0, 10)
        failed = AttemptEnded(checkpoint(a.id, 1, 0), Outcome.RETRYABLE, "http_529", 529, {"type": "error"}, None)
        done = AttemptEnded(checkpoint(a.id, 2, 5), Outcome.SUCCEEDED, None, None, None, (State.SUCCEEDED, {"id": "m"}))
        await store.write([AttemptStarted(a.id, 1, 1.0), failed, AttemptStarted(a.id, 2, 2.0), done], [])
        assert await store.counts() == {"pending": 0, "running": 0, "succeeded": 1, "errored": 0}


async def test_recover_after_a_crash(tmp_path: Path) -> None:
    async with open_store(tmp_path / "job.sqlite") as store:
        await store.load("job", {}, "f1", [item("a"), item("b")])
        a, _ = await store.pending(0, 10)
        await store.write([AttemptStarted(a.id, 1, 100.0)], [checkpoint(a.id, 1, 3)])
    async with open_store(tmp_path / "job.sqlite") as store:  # a new process after kill -9
        assert await store.reset_interrupted() == 1
        assert (await store.counts())["pending"] == 2
        again = await store.pending(0, 10)
    assert again[0].attempts == 1
    connection = sqlite3.connect(tmp_path / "job.sqlite")
    assert connection.execute("SELECT outcome, output_tokens FROM attempts").fetchall() == [("interrupted", 3)]
    connection.close()


async def test_reload_keeps_unchanged_results(tmp_path: Path) -> None:
    async with open_store(tmp_path / "job.sqlite") as store:
        await store.load("job", {}, "f1", [item("a"), item("b"), item("c")])
        a, b, c = await store.pending(0, 10)
        for request in (a, b, c):
            await store.write([AttemptStarted(request.id, 1, 1.0)], [])
            ended = AttemptEnded(
                checkpoint(request.id, 1, 1),
                Outcome.SUCCEEDED,
                None,
                None,
                None,
                (State.SUCCEEDED, {"id": request.custom_id}),
            )
            await store.write([ended], [])
        added, changed = await store.load("job", {}, "f2", [item("a"), item("b", "changed"), item("d")])
        assert (added, changed) == (1, 1)
        rows = {row["custom_id"]: row async for row in store.results()}
        job = await store.job()
    assert job is not None
    assert job.fingerprint == "f2"
    assert set(rows) == {"a", "b", "d"}
    assert rows["a"]["state"] == "succeeded"
    assert rows["b"]["state"] == "pending"
    assert rows["b"]["attempts"] == 0
    assert rows["d"]["state"] == "pending"


async def test_loading_is_streamed(tmp_path: Path) -> None:
    count = 30_000

    def many() -> Iterator[Loaded]:
        for n in range(count):
            yield item(f"r{n}", "x" * 100, n + 1)

    whole = sum(len(json.dumps(i.params)) for i in many())
    async with open_store(tmp_path / "job.sqlite") as store:
        tracemalloc.start()
        try:
            added, _ = await store.load("job", {}, "f", many())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        page = await store.pending(count - 10, 100)
    assert added == count
    assert len(page) == 10
    assert peak < whole / 3  # batches of 2,000 rows in memory, never the whole input
