"""Loading a block at a time (jobs/bulk.py, the store's Prompts path) stores exactly what loading
line by line stores, and refuses exactly what it refuses, with the same file:line messages."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest

from orchestrator.errors import JobFileError
from orchestrator.jobs.read import read_requests
from orchestrator.jobs.spec import load_spec
from orchestrator.models import Prompts
from orchestrator.store import open_store

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).parent / "fixtures" / "loading"


@pytest.fixture(params=[64, 1 << 17], ids=["tiny-blocks", "blocks"])
def block_bytes(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Blocks of a few lines (every block boundary and run of lines exercised), and the usual size."""
    size: int = request.param
    monkeypatch.setattr("orchestrator.jobs.lines.BLOCK_BYTES", size)
    return size


async def _load(path: Path, db: Path, bulk: bool, defaults: dict[str, Any]) -> list[tuple[Any, ...]] | list[str]:
    """The stored requests (custom_id, params text, source) in order, or the problems refused."""
    spec = load_spec(path, defaults)
    items = read_requests(spec, bulk=True) if bulk else read_requests(spec)
    async with open_store(db) as store:
        try:
            await store.load(spec.name, {}, spec.fingerprint(), items)
        except JobFileError as exc:
            assert await store.job() is None
            assert sum((await store.counts()).values()) == 0
            return [str(problem) for problem in exc.problems]
    connection = sqlite3.connect(db)
    rows = connection.execute("SELECT custom_id, params, source, input_row FROM requests ORDER BY id").fetchall()
    connection.close()
    return rows


def _bulk_lines(path: Path, defaults: dict[str, Any]) -> set[int]:
    """The lines read as Prompts blocks."""
    return {
        block.first + i
        for block in read_requests(load_spec(path, defaults), bulk=True)
        if isinstance(block, Prompts)
        for i in range(len(block.items))
    }


@pytest.mark.parametrize("name", ["good.jsonl", "bad.jsonl", "prompts.txt"])
@pytest.mark.parametrize("defaults", [{}, {"model": "claude-x", "system": "caf\u00e9 \u2028", "temperature": 0.5}])
async def test_bulk_stores_and_refuses_what_line_by_line_does(
    tmp_path: Path, block_bytes: int, name: str, defaults: dict[str, Any]
) -> None:
    path = Path(shutil.copy(FIXTURES / name, tmp_path / name))
    by_line = await _load(path, tmp_path / "by-line.sqlite", False, defaults)
    in_bulk = await _load(path, tmp_path / "bulk.sqlite", True, defaults)
    assert in_bulk == by_line
    assert len(by_line) > 10


async def test_plain_prompt_lines_are_read_in_bulk_and_the_rest_line_by_line(tmp_path: Path, block_bytes: int) -> None:
    path = Path(shutil.copy(FIXTURES / "good.jsonl", tmp_path / "good.jsonl"))
    bulk = _bulk_lines(path, {})
    # json.dumps with and without ensure_ascii, compact, with a custom_id either side, CRLF,
    # escapes json.dumps writes: in bulk. Escapes it would not write (\/, upper-case hex), other
    # spacing, repeated keys, other fields: line by line.
    assert {1, 2, 3, 4, 5, 8, 9, 10, 11, 14, 15, 16, 20, 21, 23} <= bulk
    assert not {6, 7, 12, 13, 17, 18, 19, 22} & bulk
    text = _bulk_lines(Path(shutil.copy(FIXTURES / "prompts.txt", tmp_path / "prompts.txt")), {})
    assert {1, 2, 5, 6, 7, 8, 9, 10} <= text
    assert not {3, 4} & text


async def test_a_bad_line_deep_in_a_big_file_is_named_and_nothing_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    lines = [json.dumps({"prompt": f"prompt {n}"}) for n in range(1, 30_001)]
    lines[24_999] = '{"prompt": "unclosed'
    lines[27_000] = json.dumps({"custom_id": "big-2", "prompt": "collides with a generated id"})
    path.write_text("\n".join(lines) + "\n")
    assert await _refused(path, tmp_path / "job.sqlite") == [
        f"{path}:25000: malformed JSON: Unterminated string starting at: line 1 column 12 (char 11)",
        f"{path}:27001: duplicate custom_id 'big-2' (first at {path}:2)",
    ]


async def _refused(path: Path, db: Path) -> list[str]:
    """The problems a bulk load of ``path`` is refused for (nothing stored)."""
    result = await _load(path, db, True, {})
    assert result
    assert all(isinstance(problem, str) for problem in result)
    return [str(problem) for problem in result]


async def test_duplicates_in_and_across_blocks_name_both_lines(tmp_path: Path, block_bytes: int) -> None:
    path = tmp_path / "in.jsonl"
    lines = [json.dumps({"custom_id": f"id-{n % 7}", "prompt": f"p {n}"}) for n in range(1, 10)]
    path.write_text("\n".join(lines) + "\n")
    assert await _refused(path, tmp_path / "job.sqlite") == [
        f"{path}:8: duplicate custom_id 'id-1' (first at {path}:1)",
        f"{path}:9: duplicate custom_id 'id-2' (first at {path}:2)",
    ]


async def test_a_load_cancelled_midway_leaves_nothing_and_loads_again(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p {n}"}) + "\n" for n in range(20_000)))
    spec = load_spec(path, {})
    seen: list[int] = []
    async with open_store(tmp_path / "job.sqlite") as store:
        with anyio.CancelScope() as scope:

            def progress(read: int) -> None:
                seen.append(read)
                if read > 5_000:
                    scope.cancel()  # as a stop (Ctrl-C) does, while blocks are going in

            await store.load(spec.name, {}, spec.fingerprint(), read_requests(spec, bulk=True), progress)
        assert scope.cancelled_caught
        assert await store.job() is None
        assert sum((await store.counts()).values()) == 0
        assert await store.load(spec.name, {}, spec.fingerprint(), read_requests(spec, bulk=True)) == (20_000, 0)
    assert 5_000 < seen[-1] < 20_000
