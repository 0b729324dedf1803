"""Tables and templates: CSV, JSONL and Parquet rows through a prompt template, end to end; the CSV export."""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import tracemalloc
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
from pathlib import Path

import pytest

from orchestrator.cli import run_command
from orchestrator.errors import JobFileError, Problem
from orchestrator.jobs.read import read_requests
from orchestrator.jobs.spec import load_spec
from orchestrator.jobs.tables import parse_parts
from orchestrator.models import Loaded, Usage
from orchestrator.pricing import load_prices
from tests.conftest import Running
from tests.helpers import params_of, query, read_results, reply_of, text_of

pytestmark = pytest.mark.anyio

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tables"
FAST = ["--quiet", "--checkpoint-interval", "0.05"]
SPEC_TAIL = """
[template]
prompt = "Review of {product}:\\n{text}\\nAnswer in {{JSON}}."
system = "You review {product} reviews."

[defaults]
model = "claude-haiku-4-5"
max_tokens = 60
"""
HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None


def table_job(tmp_path: Path, kind: str) -> Path:
    """The reviews fixture as a CSV, JSONL or Parquet table job, in ``tmp_path``."""
    for name in ("reviews.csv", "reviews.jsonl"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    table = f"reviews.{kind}"
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = [json.loads(line) for line in (FIXTURES / "reviews.jsonl").read_text().splitlines()]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / table)
    spec = tmp_path / "job.toml"
    columns = '["max_tokens", "temperature"]' if kind == "csv" else '["max_tokens"]'
    spec.write_text(f'[[tables]]\npath = "{table}"\nid_column = "id"\nparam_columns = {columns}\n{SPEC_TAIL}')
    return spec


def test_csv_rows_through_the_template() -> None:
    items = list(read_requests(load_spec(FIXTURES / "reviews.toml", {})))
    assert all(isinstance(item, Loaded) for item in items)
    first, second, third = (item for item in items if isinstance(item, Loaded))
    assert (first.custom_id, first.line) == ("r1", 2)
    assert (
        first.params["messages"][0]["content"]
        == 'Review of Kettle, steel:\nBoils fast. "Loud" though.\nAnswer in {JSON}.'
    )
    assert first.params["system"] == "You review Kettle, steel reviews."
    assert first.params["max_tokens"] == 40
    assert "temperature" not in first.params  # an empty override cell keeps the default
    assert (
        second.params["messages"][0]["content"]
        == "Review of Toaster:\nLine one,\nline two; with a semicolon.\nAnswer in {JSON}."
    )
    assert (second.params["max_tokens"], second.params["temperature"]) == (60, 0.5)
    assert third.params["messages"][0]["content"].startswith("Review of Lamp {desk}:\nWarm light\r\nand, a comma")
    assert third.line == 4  # rows, not lines: the row above spans two lines
    assert first.row == {
        "id": "r1",
        "product": "Kettle, steel",
        "text": 'Boils fast. "Loud" though.',
        "max_tokens": "40",
        "temperature": "",
    }


def test_doubled_quotes_beside_a_delimiter_in_one_field(tmp_path: Path) -> None:
    # csv.Sniffer alone reads this dialect without doubled quotes, and the rows fall apart.
    rows = "".join(f'k{i},"Review {i}, with ""quotes""\nand a second line"\n' for i in range(50))
    (tmp_path / "t.csv").write_text("id,text\n" + rows)
    (tmp_path / "job.toml").write_text('[[tables]]\npath = "t.csv"\nid_column = "id"\n[template]\nprompt = "{text}"\n')
    items = list(read_requests(load_spec(tmp_path / "job.toml", {})))
    assert len(items) == 50
    first = items[0]
    assert isinstance(first, Loaded)
    assert first.params["messages"][0]["content"] == 'Review 0, with "quotes"\nand a second line'


def test_any_sniffed_dialect_and_generated_ids(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("name;note\nada;'x; y'\nbob;plain\n")
    (tmp_path / "job.toml").write_text('[[tables]]\npath = "t.csv"\n[template]\nprompt = "{name}: {note}"\n')
    items = list(read_requests(load_spec(tmp_path / "job.toml", {})))
    assert [(i.custom_id, i.params["messages"][0]["content"]) for i in items if isinstance(i, Loaded)] == [
        ("t-2", "ada: x; y"),  # ';' delimiter and ' quotes, sniffed
        ("t-3", "bob: plain"),
    ]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{a.b}", "only plain column names"),
        ("{a[0]}", "only plain column names"),
        ("{a!r}", "only plain column names"),
        ("{a:>{b}}", "only plain column names"),
        ("{}", "only plain column names"),
        ("oops }", "Single '}'"),
    ],
)
def test_templates_take_plain_names_only(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_parts(template)


def test_literal_braces() -> None:
    parts = parse_parts("{{x}} {y}")
    assert "".join(literal for literal, _ in parts) == "{x} "
    assert [name for _, name in parts if name] == ["y"]


def test_spec_problems(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("a\n1\n")
    (tmp_path / "job.toml").write_text(
        '[[tables]]\npath = "t.csv"\nparam_columns = ["colour", "system"]\nsize = 1\n'
        '[[tables]]\npath = "missing.csv"\n[template]\nprompt = "{a}"\nsystem = "s"\n'
    )
    with pytest.raises(JobFileError) as caught:
        load_spec(tmp_path / "job.toml", {})
    text = str(caught.value)
    assert "unknown key 'size'" in text
    assert "param column 'colour' is not a request field" in text
    assert "'system' and [template] system both" in text
    assert "table 'missing.csv': no such file" in text
    (tmp_path / "job.toml").write_text('[[tables]]\npath = "t.csv"\n')
    with pytest.raises(JobFileError, match=r"need a \[template\]"):
        load_spec(tmp_path / "job.toml", {})


def test_missing_columns_and_values_name_file_and_row(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,text\nx1,hello\n")
    (tmp_path / "b.csv").write_text("id,text,max_tokens\nx2,hi,12\nx3,,5\nx4,yo,many\nx 5,yo,\nx6,a,b,c\n")
    (tmp_path / "c.jsonl").write_text('{"id": "y1", "text": "t"}\n{"id": "y2"}\n{"text": "u"}\n[1]\n')
    (tmp_path / "job.toml").write_text(
        '[[tables]]\npath = "a.csv"\n[[tables]]\npath = "b.csv"\nid_column = "id"\nparam_columns = ["max_tokens"]\n'
        '[[tables]]\npath = "c.jsonl"\nid_column = "id"\n[template]\nprompt = "{text}"\nsystem = "{lang}"\n'
    )
    spec = load_spec(tmp_path / "job.toml", {})
    problems = [str(item) for item in read_requests(spec) if isinstance(item, Problem)]
    a, b, c = (str(tmp_path / name) for name in ("a.csv", "b.csv", "c.jsonl"))
    assert problems[0] == f"{a}:1: the template's {{lang}} names no column of this table (columns: id, text)"
    assert (
        problems[1] == f"{b}:1: the template's {{lang}} names no column of this table (columns: id, text, max_tokens)"
    )
    assert problems[2] == f"{c}:1: no column 'lang' (the template's {{lang}})"
    (tmp_path / "job.toml").write_text(
        '[[tables]]\npath = "b.csv"\nid_column = "id"\nparam_columns = ["max_tokens"]\n'
        '[[tables]]\npath = "c.jsonl"\nid_column = "id"\n[template]\nprompt = "{text}"\n'
    )
    spec = load_spec(tmp_path / "job.toml", {})
    problems = [str(item) for item in read_requests(spec) if isinstance(item, Problem)]
    assert problems == [
        f"{b}:3: no value in column 'text' (the template's {{text}})",
        f"{b}:4: column 'max_tokens': max_tokens must be an integer, not 'many'",
        f"{b}:5: invalid custom_id 'x 5': it must match ^[a-zA-Z0-9_-]{{1,64}}$",
        f"{b}:6: the row has 4 fields, the header 3",
        f"{c}:2: no column 'text' (the template's {{text}})",
        f"{c}:3: no value in id_column 'id'",
        f"{c}:4: a row of a JSONL table must be a JSON object",
    ]


async def test_bad_rows_exit_2_and_send_nothing(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "t.csv").write_text('text\nfine\n\n""\n')
    (tmp_path / "job.toml").write_text('[[tables]]\npath = "t.csv"\n[template]\nprompt = "{text}"\n')
    async with simulate() as (sim, _, url):
        out = tmp_path / "out"
        status = await run_command(["run", str(tmp_path / "job.toml"), "--base-url", url, "--results", str(out), *FAST])
    assert status == 2
    assert f"{tmp_path / 't.csv'}:4: no value in column 'text'" in capsys.readouterr().err
    assert sim.stats.requests == 0
    assert not (out / "job.sqlite").exists()  # nothing written


@pytest.mark.parametrize(
    "kind",
    ["csv", "jsonl", pytest.param("parquet", marks=pytest.mark.skipif(not HAS_PYARROW, reason="needs pyarrow"))],
)
async def test_table_job_runs_and_the_csv_export_joins_rows_back(simulate: Simulate, tmp_path: Path, kind: str) -> None:
    spec = table_job(tmp_path, kind)
    out = tmp_path / "out"
    async with simulate() as (sim, _, url):
        assert await run_command(["run", str(spec), "--base-url", url, "--results", str(out), *FAST]) == 0
    params = params_of(spec)
    lines = read_results(out)
    assert [line["custom_id"] for line in lines] == ["r1", "r2", "r3"]
    for line in lines:
        assert text_of(line) == reply_of(sim, params[line["custom_id"]])
    assert params["r1"]["max_tokens"] == 40
    assert params["r2"]["max_tokens"] == 60
    assert await run_command(["export", str(out / "job.sqlite"), "--format", "csv"]) == 0
    with (out / "results.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    source = [json.loads(line) for line in (FIXTURES / "reviews.jsonl").read_text().splitlines()]
    prices = load_prices()
    for row, line, original in zip(rows, lines, source, strict=True):
        assert row["id"] == original["id"]
        assert row["product"] == original["product"]
        assert row["text"] == original["text"]  # the input's own column: commas, quotes, newlines intact
        assert row["custom_id"] == line["custom_id"]
        assert row["result_type"] == "succeeded"
        assert row["reply_text"] == text_of(line)
        assert row["stop_reason"] == line["result"]["message"]["stop_reason"]
        billed = line["billed_usage"]
        assert (int(row["input_tokens"]), int(row["output_tokens"])) == (
            billed["input_tokens"],
            billed["output_tokens"],
        )
        assert Decimal(row["cost_usd"]) == prices.cost("claude-haiku-4-5", Usage.from_dict(billed))
    assert list(rows[0]).index("custom_id") > list(rows[0]).index("product")
    assert query(out / "job.sqlite", "SELECT COUNT(*) FROM requests WHERE input_row IS NOT NULL") == [(3,)]


async def test_csv_export_of_a_plain_job_has_the_reply_text(simulate: Simulate, tmp_path: Path) -> None:
    job = tmp_path / "p.txt"
    job.write_text("one\ntwo\n")
    out = tmp_path / "out"
    async with simulate() as (_, _, url):
        assert await run_command(["run", str(job), "--base-url", url, "--results", str(out), *FAST]) == 0
    target = tmp_path / "x.csv"
    assert await run_command(["export", str(out / "job.sqlite"), "--format", "csv", "--out", str(target)]) == 0
    with target.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["custom_id"] for row in rows] == ["p-1", "p-2"]
    assert [row["reply_text"] for row in rows] == [text_of(line) for line in read_results(out)]


def test_a_big_table_is_streamed(tmp_path: Path) -> None:
    with (tmp_path / "big.csv").open("w") as handle:
        handle.write("id,text\n")
        for i in range(20_000):
            handle.write(f'k{i},"row {i}, with a comma and ""quotes"""\n')
    (tmp_path / "job.toml").write_text(
        '[[tables]]\npath = "big.csv"\nid_column = "id"\n[template]\nprompt = "{text}"\n'
    )
    spec = load_spec(tmp_path / "job.toml", {})
    tracemalloc.start()
    count = sum(1 for _ in read_requests(spec))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count == 20_000
    assert peak < 2_000_000


async def test_csv_export_renames_input_columns_named_like_its_own(simulate: Simulate, tmp_path: Path) -> None:
    (tmp_path / "t.jsonl").write_text('{"custom_id": "a1", "cost_usd": 3, "q": "x"}\n')
    (tmp_path / "job.toml").write_text(
        '[[tables]]\npath = "t.jsonl"\nid_column = "custom_id"\n[template]\nprompt = "{q}"\n'
    )
    out = tmp_path / "out"
    async with simulate() as (_, _, url):
        assert (
            await run_command(["run", str(tmp_path / "job.toml"), "--base-url", url, "--results", str(out), *FAST]) == 0
        )
    assert await run_command(["export", str(out / "job.sqlite"), "--format", "csv"]) == 0
    with (out / "results.csv").open(newline="") as handle:
        header, row = list(csv.reader(handle))
    assert header[:3] == ["input_custom_id", "input_cost_usd", "q"]
    assert row[:4] == ["a1", "3", "x", "a1"]
    assert Decimal(row[header.index("cost_usd")]) > 0
