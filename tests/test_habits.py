"""Inputs and outputs given by habit: ``--out -``, CSV cells a spreadsheet would run, table files given
directly, options at extreme values, an early Ctrl-C; each end to end through the command line."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from orchestrator.cli import run_command
from orchestrator.crash import INTERRUPT_ENV
from orchestrator.errors import UserError
from orchestrator.jobs.read import read_requests
from orchestrator.jobs.spec import load_spec
from orchestrator.models import Loaded
from orchestrator.report.export import spreadsheet_safe
from orchestrator.run.files import files_needed, make_room, pool_size
from orchestrator.simulator import SimulatorConfig, Timing
from tests.conftest import Running
from tests.helpers import query, read_results, write_jsonl

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
pytestmark = pytest.mark.anyio
FAST = ["--quiet", "--checkpoint-interval", "0.05"]
HAS_PYARROW = importlib.util.find_spec("pyarrow") is not None


async def _ran(simulate: Simulate, job: Path, out: Path, *extra: str) -> Path:
    async with simulate() as (_, _, url):
        assert await run_command(["run", str(job), "--results", str(out), "--base-url", url, *FAST, *extra]) == 0
    return out / "job.sqlite"


# -- --out - ----------------------------------------------------------------------------------


async def test_export_and_report_write_to_standard_output_with_out_dash(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": f"p{i}"} for i in range(3)])
    db = await _ran(simulate, job, tmp_path / "out")
    written = (tmp_path / "out" / "results.jsonl").read_text()
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert await run_command(["export", str(db), "--out", "-"]) == 0
    captured = capsys.readouterr()
    assert captured.out == written
    assert "wrote 3 results to standard output" in captured.err
    assert await run_command(["export", str(db), "--format", "csv", "--out", "-"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["custom_id"] for row in rows] == ["j-1", "j-2", "j-3"]
    assert await run_command(["report", str(db), "--format", "json", "--out", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["total"]["requests"]["succeeded"] == 3
    assert not (tmp_path / "-").exists()


async def test_out_never_overwrites_the_database_nor_takes_a_folder(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": "p"}])
    db = await _ran(simulate, job, tmp_path / "out")
    before = db.read_bytes()
    capsys.readouterr()
    assert await run_command(["export", str(db), "--out", str(db)]) == 2
    assert "is the job's database" in capsys.readouterr().err
    assert await run_command(["report", str(db), "--out", str(db)]) == 2
    assert "is the job's database" in capsys.readouterr().err
    assert await run_command(["export", str(db), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert db.read_bytes() == before


def test_export_to_a_pipe_is_the_results_file(tmp_path: Path) -> None:
    """The habit itself: ``orchestrator export DB --out - | ...`` in a shell."""
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": "p1"}, {"prompt": "p2"}])
    out = tmp_path / "out"
    run = [sys.executable, "-m", "orchestrator", "run", str(job), "--simulate", "--speed", "inf", "--results", str(out)]
    subprocess.run([*run, "--quiet"], check=True, capture_output=True, timeout=60)
    piped = subprocess.run(
        f"{sys.executable} -m orchestrator export {out / 'job.sqlite'} --out - | cat",
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert piped.returncode == 0
    assert piped.stdout == (out / "results.jsonl").read_text()
    assert not (tmp_path / "-").exists()


# -- CSV cells a spreadsheet would run --------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "safe"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+SUM(A1)", "'+SUM(A1)"),
        ("-2+3", "'-2+3"),
        ("@cmd", "'@cmd"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("-12", "-12"),
        ("+1.5e3", "+1.5e3"),
        ("plain", "plain"),
        ("", ""),
    ],
)
def test_spreadsheet_safe_quotes_what_could_start_a_formula(cell: str, safe: str) -> None:
    assert spreadsheet_safe(cell) == safe


async def test_excel_safe_csv_export_quotes_formula_cells_of_rows_and_replies(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rows.csv").write_text('id,note,text\nr1,=1+1,"@SUM(A1)"\nr2,-7,plain\n')
    spec = tmp_path / "job.toml"
    spec.write_text('[[tables]]\npath = "rows.csv"\nid_column = "id"\n[template]\nprompt = "{text} {note}"\n')
    db = await _ran(simulate, spec, tmp_path / "out")
    plain, safe = tmp_path / "plain.csv", tmp_path / "safe.csv"
    assert await run_command(["export", str(db), "--format", "csv", "--out", str(plain)]) == 0
    assert await run_command(["export", str(db), "--format", "csv", "--excel-safe", "--out", str(safe)]) == 0
    with plain.open(newline="") as handle:
        plain_rows = list(csv.DictReader(handle))
    with safe.open(newline="") as handle:
        safe_rows = list(csv.DictReader(handle))
    assert [row["note"] for row in plain_rows] == ["=1+1", "-7"]  # as they were, by default
    assert [row["note"] for row in safe_rows] == ["'=1+1", "-7"]  # a number stays a number
    assert [row["text"] for row in safe_rows] == ["'@SUM(A1)", "plain"]
    for before, after in zip(plain_rows, safe_rows, strict=True):
        assert after["reply_text"] == spreadsheet_safe(before["reply_text"])
        assert after["input_tokens"] == before["input_tokens"]
    capsys.readouterr()
    assert await run_command(["export", str(db), "--excel-safe"]) == 2
    assert "--excel-safe is for --format csv" in capsys.readouterr().err
    assert read_results(tmp_path / "out")[0]["custom_id"] == "r1"


# -- options at extreme values ----------------------------------------------------------------


async def test_a_huge_concurrency_costs_what_the_work_needs(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two workers per unit of concurrency were started whatever the work: a million took minutes."""
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": "one"}])
    out = tmp_path / "out"
    async with simulate() as (sim, _, url):
        argv = ["run", str(job), "--results", str(out), "--base-url", url, "--concurrency", "1000000", *FAST]
        assert await run_command(argv) == 0
        assert sim.stats.requests == 1
    assert read_results(out)[0]["result"]["type"] == "succeeded"
    assert pool_size(1_000_000, 1) == 1
    assert pool_size(8, 1_000) == 8
    assert pool_size(8, 0) == 1


async def test_settings_below_their_floor_are_refused_before_sending(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": "one"}])
    spec = tmp_path / "job.toml"
    spec.write_text('inputs = ["j.jsonl"]\n[run]\ncheckpoint_interval = 1e-9\n')
    async with simulate() as (sim, _, url):
        argv = ["run", str(job), "--results", str(tmp_path / "o"), "--base-url", url, "--quiet"]
        assert await run_command([*argv, "--checkpoint-interval", "0.000001"]) == 2
        assert "--checkpoint-interval must be a number at least 0.01, not 1e-06" in capsys.readouterr().err
        assert await run_command(["run", str(spec), "--base-url", url, "--quiet"]) == 2
        assert f"{spec}:3: [run] checkpoint_interval must be a number at least 0.01" in capsys.readouterr().err
        assert sim.stats.requests == 0


def test_open_files_are_raised_to_what_the_streams_need_or_the_run_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits = {"soft": 1024, "hard": 4096}
    monkeypatch.setattr(resource, "getrlimit", lambda _: (limits["soft"], limits["hard"]))
    monkeypatch.setattr(resource, "setrlimit", lambda _, pair: limits.update(soft=pair[0]))
    make_room(100, in_process_server=True)
    assert limits["soft"] == 1024  # room enough already
    make_room(2000, in_process_server=False)
    assert limits["soft"] == files_needed(2000, False) == 2064
    with pytest.raises(UserError, match=r"--concurrency 3,000: .* lower --concurrency to 2,016 or less"):
        make_room(3000, in_process_server=True)


# -- a Ctrl-C in the first instants -----------------------------------------------------------


def _run_argv(job: Path, out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "orchestrator",
        "run",
        str(job),
        "--simulate",
        "--speed",
        "inf",
        "--results",
        str(out),
    ]


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ("start", "interrupted before it began: nothing was sent"),  # before any of the tool is imported
        ("imported", "orchestrator: interrupted"),  # the command line imported, its event loop not started
        ("store", "orchestrator: interrupted"),  # the job's database open, nothing loaded
        ("loading", "orchestrator: interrupted"),  # every line stored, the load not committed
    ],
)
def test_a_ctrl_c_at_each_early_step_exits_130_without_a_traceback(tmp_path: Path, step: str, message: str) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": f"p{i}"} for i in range(50)])
    out = tmp_path / "out"
    env = {**os.environ, INTERRUPT_ENV: step}
    done = subprocess.run([*_run_argv(job, out), "--quiet"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 130, done.stderr
    assert "Traceback" not in done.stderr
    assert "KeyboardInterrupt" not in done.stderr
    assert message in done.stderr
    if (out / "job.sqlite").exists():
        assert query(out / "job.sqlite", "SELECT COUNT(*) FROM attempts") == [(0,)]  # nothing was sent
    # and the same command then runs the job whole
    again = subprocess.run([*_run_argv(job, out), "--quiet"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert len(read_results(out)) == 50


def test_a_ctrl_c_right_after_start_exits_130_without_a_traceback(tmp_path: Path) -> None:
    """The habit itself: a signal as soon as the process exists (while Python and the tool import)."""
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": "p"}])
    process = subprocess.Popen(
        [*_run_argv(job, tmp_path / "out"), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    # Python's own start (site, before the tool's first line) can still see it: a signal that early
    # ends the interpreter as SIGINT does (-2), which a shell reports as 130 too.
    assert process.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err or "init_import_site" in err


# -- files given directly -------------------------------------------------------------------------


async def test_a_csv_given_directly_runs_as_the_table_a_user_means(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text(
        "custom_id,prompt,max_tokens,temperature,system,note\n"
        'a1,"Hello, world",40,0.5,Be terse.,first\n'
        "a2,Second prompt,,,,second\n"
    )
    out = tmp_path / "out"
    async with simulate() as (sim, _, url):
        argv = ["run", str(rows), "--results", str(out), "--base-url", url, *FAST]
        assert await run_command(argv) == 0
        assert sim.stats.requests == 2  # the header is not a prompt
    first, second = read_results(out)
    assert (first["custom_id"], second["custom_id"]) == ("a1", "a2")
    params = {item.custom_id: item.params for item in read_requests(load_spec(rows, {})) if isinstance(item, Loaded)}
    assert params["a1"]["messages"] == [{"role": "user", "content": "Hello, world"}]
    assert (params["a1"]["max_tokens"], params["a1"]["temperature"], params["a1"]["system"]) == (40, 0.5, "Be terse.")
    assert params["a2"]["max_tokens"] == 1024  # an empty cell keeps the default
    assert "temperature" not in params["a2"]
    assert "note" not in params["a1"]  # the row's data, not a field
    assert await run_command(["export", str(out / "job.sqlite"), "--format", "csv", "--out", "-"]) == 0
    exported = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["note"] for row in exported] == ["first", "second"]
    # the same table named in a spec's inputs runs the same way
    spec = tmp_path / "job.toml"
    spec.write_text('inputs = ["rows.csv"]\n')
    assert [item.params for item in read_requests(load_spec(spec, {})) if isinstance(item, Loaded)] == list(
        params.values()
    )


@pytest.mark.parametrize(
    "suffix",
    [".tsv", ".ndjson", pytest.param(".parquet", marks=pytest.mark.skipif(not HAS_PYARROW, reason="needs pyarrow"))],
)
def test_other_table_and_jsonl_files_given_directly(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"rows{suffix}"
    records = [{"custom_id": "x1", "prompt": "one"}, {"custom_id": "x2", "prompt": "two"}]
    if suffix == ".tsv":
        path.write_text("custom_id\tprompt\nx1\tone\nx2\ttwo\n")
    elif suffix == ".ndjson":
        write_jsonl(path, records)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    loaded = [item for item in read_requests(load_spec(path, {})) if isinstance(item, Loaded)]
    assert [(item.custom_id, item.params["messages"][0]["content"]) for item in loaded] == [
        ("x1", "one"),
        ("x2", "two"),
    ]


def _folder(tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "prompts"
    folder.mkdir()
    for name in names:
        if name.endswith("/"):
            (folder / name).mkdir()
            (folder / name / "inner.txt").write_text("inner")
        else:
            (folder / name).write_text("text")
    return folder


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: _text(d / "rows.csv", "id,text\n1,hello\n"), "a table given directly needs a 'prompt' column"),
        (lambda d: _text(d / "rows.csv", "id,text\n1,hello\n"), 'prompt = "... {id} ..."'),
        (
            lambda d: _text(d / "rows.csv", "prompt,max_token\nhi,5\n"),
            "column 'max_token' is not a request field: did you mean 'max_tokens'?",
        ),
        (lambda d: _text(d / "rows.csv", "prompt,temperature\nhi,hot\n"), "rows.csv:2: column 'temperature'"),
        (lambda d: _text(d / "rows.json", '[{"prompt": "hi"}]'), "jq -c '.[]'"),
        (lambda d: _text(d / "rows.xlsx", "PK"), "a spreadsheet: save it as CSV"),
        (lambda d: _text(d / "rows.jsonl.gz", "x"), "a compressed file (.gz)"),
        (lambda d: Path("-"), "standard input is not read"),
        (lambda d: _folder(d, "a.txt", "rows.csv", "more.jsonl"), "also holds more.jsonl, rows.csv"),
        (lambda d: _folder(d, "sub/"), "its subfolders are not read"),
        (
            lambda d: write_jsonl(d / "results.jsonl", [{"custom_id": "a", "result": {"type": "succeeded"}}]),
            "a results line (what a run writes), not a request",
        ),
    ],
)
async def test_what_cannot_be_a_job_is_refused_before_sending_saying_what_to_do(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Callable[[Path], Path], message: str
) -> None:
    job = make(tmp_path)
    out = tmp_path / "out"
    async with simulate() as (sim, _, url):
        assert await run_command(["run", str(job), "--results", str(out), "--base-url", url, *FAST]) == 2
        assert sim.stats.requests == 0
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not out.exists()


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- each wait for what it is -------------------------------------------------------------------


async def test_the_report_names_each_wait_for_what_it_is(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_jsonl(
        tmp_path / "j.jsonl",
        [{"prompt": "first <<sim-fault: overloaded times=1>>"}, *({"prompt": f"p{i}"} for i in range(3))],
    )
    out = tmp_path / "out"
    paced = SimulatorConfig(reply_min=5, reply_max=5, timing=Timing(ttft=0.05, tokens_per_second=1000))
    async with simulate(paced) as (_, _, url):
        argv = ["run", str(job), "--results", str(out), "--base-url", url, "--concurrency", "1", *FAST]
        assert await run_command([*argv, "--backoff-base", "0.05", "--backoff-cap", "0.05"]) == 0
    db = out / "job.sqlite"
    capsys.readouterr()
    assert await run_command(["report", str(db), "--format", "json"]) == 0
    latency = json.loads(capsys.readouterr().out)["total"]["latency_seconds"]
    # One stream at a time: the later requests waited for the slot, never for the rate limiter (no limits).
    assert latency["slot_wait"]["p99"] >= 0.05
    assert latency["rate_limit_wait"]["p99"] == 0
    slots = query(db, "SELECT slot_wait FROM attempts WHERE request_id = (SELECT MAX(id) FROM requests)")
    assert slots[0][0] >= 0.05  # behind a whole stream (its time to first token alone is 0.05 s)
    # The first request's backoff: from its failed attempt's end to its second attempt's start.
    (gap,) = query(
        db,
        "SELECT b.started_at - a.ended_at FROM attempts a JOIN attempts b ON b.request_id = a.request_id "
        "AND b.number = 2 WHERE a.number = 1 AND a.outcome = 'retryable'",
    )
    assert latency["backoff"]["p99"] == pytest.approx(gap[0])
    assert gap[0] > 0
    assert await run_command(["report", str(db)]) == 0
    text = capsys.readouterr().out
    assert "for a free concurrency slot p50" in text
    assert "backoff between attempts (per request): p50" in text
    assert await run_command(["report", str(db), "--format", "csv"]) == 0
    header = next(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert {"slot_wait_p99_s", "rate_limit_wait_p99_s", "backoff_p99_s"} <= set(header)


async def test_results_and_db_are_never_standard_output(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": "p"}])
    async with simulate() as (sim, _, url):
        for flag in ("--results", "--db"):
            assert await run_command(["run", str(job), flag, "-", "--base-url", url, "--quiet"]) == 2
            assert f"{flag} - : a job's results are a folder" in capsys.readouterr().err
        assert sim.stats.requests == 0
    assert not (tmp_path / "-").exists()


async def test_an_empty_text_block_is_refused_before_sending(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blank = {"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": " "}]}
    job = write_jsonl(
        tmp_path / "j.jsonl",
        [
            {"custom_id": "a", "params": {"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [blank]}},
            {"prompt": "p", "system": [{"type": "text", "text": ""}]},
        ],
    )
    async with simulate() as (sim, _, url):
        assert await run_command(["run", str(job), "--results", str(tmp_path / "o"), "--base-url", url, *FAST]) == 2
        assert sim.stats.requests == 0
    err = capsys.readouterr().err
    assert f"{job}:1: messages.0.content.1: a text block must hold non-whitespace text" in err
    assert f"{job}:2: system.0: a text block must hold non-whitespace text" in err
