"""Bad input, options and environments get a clear answer: exit 2, what and where, nothing sent or written."""

from __future__ import annotations

import json
import os
import random
import socket
import sys
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import anyio
import pytest

from orchestrator.cli import run_command
from orchestrator.cli.parser import build_parser
from orchestrator.run.reach import Reach
from tests.conftest import Running
from tests.helpers import params_of, query

pytestmark = pytest.mark.anyio

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
FAST = ["--quiet", "--checkpoint-interval", "0.05"]
BOM = b"\xef\xbb\xbf"


def spec_file(tmp_path: Path, body: str) -> Path:
    (tmp_path / "prompts.txt").write_text("one\ntwo\n")
    path = tmp_path / "job.toml"
    path.write_text(f'name = "j"\ninputs = ["prompts.txt"]\nresults = "out"\n{body}')
    return path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[run]\nconcurrency = "eight"\n', "job.toml:5: [run] concurrency must be an integer at least 1, not 'eight'"),
        ('[defaults]\nmax_tokens = "lots"\n', "job.toml:5: [defaults] max_tokens must be an integer at least 1"),
        ("[defaults]\nsystem = 'x'\nmodel = 5\n", "job.toml:6: [defaults] model must be a non-empty string, not 5"),
        ("[defaults]\ntemperature = 3\n", "job.toml:5: [defaults] temperature must be a number from 0 to 1"),
    ],
)
async def test_a_bad_spec_is_answered_before_anything_is_sent_or_written(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, message: str
) -> None:
    spec = spec_file(tmp_path, body)
    async with simulate() as (sim, _, url):
        assert await run_command(["run", str(spec), "--base-url", url, *FAST]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Nothing was sent" in err
    assert sim.stats.requests == 0
    assert not (tmp_path / "out").exists()


async def test_prompt_files_with_the_same_name_are_duplicates_named_by_file(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "same.txt").write_text(f"prompt from {folder}")
    spec = tmp_path / "job.toml"
    spec.write_text('inputs = ["*/*.txt"]\nresults = "out"\n')
    async with simulate() as (sim, _, url):
        assert await run_command(["run", str(spec), "--base-url", url, *FAST]) == 2
    err = capsys.readouterr().err
    first, second = tmp_path / "a" / "same.txt", tmp_path / "b" / "same.txt"
    assert f"{second}: duplicate custom_id 'same' (first at {first}; prompt files are named by their file stem" in err
    assert sim.stats.requests == 0
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--max-tokens", "0"], "--max-tokens must be an integer at least 1, not 0"),
        (["--model", ""], "--model must be a non-empty string, not ''"),
        (["--temperature", "1.5"], "--temperature must be a number from 0 to 1, not 1.5"),
        (["--rpm", "0"], "--rpm must be a number above 0"),
        (["--read-timeout", "-1"], "--read-timeout must be a number at least 0.1"),
        (["--read-timeout", "1e-9"], "--read-timeout must be a number at least 0.1, not 1e-09"),
        (["--poll-interval", "0.001"], "--poll-interval must be a number at least 0.01"),
        (["--retry-max-seconds", "-1"], "--retry-max-seconds must be a number at least 0"),
        (["--concurrency", "0"], "--concurrency must be an integer at least 1"),
    ],
)
async def test_bad_option_values_are_refused(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str], option: list[str], message: str
) -> None:
    job = tmp_path / "p.txt"
    job.write_text("hello\n")
    out = tmp_path / "out"
    async with simulate() as (sim, _, url):
        assert await run_command(["run", str(job), "--base-url", url, "--results", str(out), *option, *FAST]) == 2
        assert await run_command(["run", str(job), "--base-url", url, "--dry-run", *option]) == 2
    assert message in capsys.readouterr().err
    assert sim.stats.requests == 0
    assert sim.stats.count_tokens_calls == 0
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["--reply-tokens", "5:1"],
        ["--reply-tokens", "1:1000000000"],
        ["--speed", "0"],
        ["--speed", "nan"],
        ["--ttft", "-1"],
        ["--tps", "0"],
        ["--burst-seconds", "-2"],
        ["--sim-rpm", "0"],
        ["--stall-seconds", "inf"],
        ["--fault", "drop=2"],
        ["--port", "70000"],
    ],
)
def test_bad_simulator_options_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["simulate", *argv])
    assert caught.value.code == 2
    assert f"argument {argv[0]}" in capsys.readouterr().err


def test_a_byte_order_mark_is_stripped_everywhere(tmp_path: Path) -> None:
    (tmp_path / "lines.txt").write_bytes(BOM + b"first line\nsecond\n")
    (tmp_path / "simple.jsonl").write_bytes(BOM + json.dumps({"prompt": "json prompt"}).encode() + b"\n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "one.md").write_bytes(BOM + b"markdown prompt")
    spec = tmp_path / "job.toml"
    spec.write_bytes(BOM + b'inputs = ["lines.txt", "simple.jsonl", "folder"]\n[defaults]\nmax_tokens = 9\n')
    found = params_of(spec)
    prompts = {custom_id: params["messages"][0]["content"] for custom_id, params in found.items()}
    assert prompts == {
        "lines-1": "first line",
        "lines-2": "second",
        "simple-1": "json prompt",
        "one": "markdown prompt",
    }
    assert all(params["max_tokens"] == 9 for params in found.values())


async def test_empty_inputs_say_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.txt").write_bytes(BOM + b"\n  \n")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.csv").write_text("not a prompt")
    for name, message in [
        ("empty.jsonl", "empty: no request in it"),
        ("blank.txt", "empty: no request in it"),
        ("folder", "empty: no .txt or .md file in this folder"),
    ]:
        path = tmp_path / name
        assert await run_command(["run", str(path), "--simulate", "--results", str(tmp_path / "out"), *FAST]) == 2
        assert f"{path}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


async def finished_job(tmp_path: Path) -> Path:
    """A small job run to its end against the simulator; its database."""
    job = tmp_path / "p.txt"
    job.write_text("one\ntwo\nthree\n")
    out = tmp_path / "out"
    assert await run_command(["run", str(job), "--simulate", "--speed", "inf", "--results", str(out), *FAST]) == 0
    return out / "job.sqlite"


async def test_a_file_that_is_not_a_job_database_is_named_and_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = await finished_job(tmp_path)
    damaged = tmp_path / "damaged" / "job.sqlite"
    damaged.parent.mkdir()
    data = bytearray(db.read_bytes())
    data[8192:] = random.Random(0).randbytes(len(data) - 8192)
    damaged.write_bytes(bytes(data))
    text = tmp_path / "text" / "job.sqlite"
    text.parent.mkdir()
    text.write_text("not a database\n")
    capsys.readouterr()
    for path, why in [(damaged, "database disk image is malformed"), (text, "file is not a database")]:
        before = path.read_bytes()
        for argv in (
            ["status", str(path)],
            ["status", str(path), "--json"],
            ["export", str(path)],
            ["report", str(path)],
            ["resume", str(path)],
            ["run", str(tmp_path / "p.txt"), "--db", str(path), "--simulate", *FAST],
        ):
            assert await run_command(argv) == 2, argv
            err = capsys.readouterr().err
            assert f"{path} is not a job database, or a damaged one ({why}). Nothing was changed." in err, argv
        assert path.read_bytes() == before
        assert sorted(p.name for p in path.parent.iterdir()) == ["job.sqlite"]
    assert await run_command(["status", str(db.parent)]) == 2
    assert "is a folder, not a job database" in capsys.readouterr().err
    assert await run_command(["run", str(db), "--simulate"]) == 2
    assert f"a job database, not a job file: continue its job with: orchestrator resume {db}" in capsys.readouterr().err


async def test_a_path_that_cannot_be_written_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = await finished_job(tmp_path)
    target = tmp_path / "missing" / "report.txt"
    assert await run_command(["report", str(db), "--out", str(target)]) == 2
    assert f"{target}: No such file or directory. Check the path" in capsys.readouterr().err


async def test_a_closed_pipe_ends_the_output_quietly(tmp_path: Path) -> None:
    db = await finished_job(tmp_path)
    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before anything is written, as `| head` is after its lines
    try:
        done = await anyio.run_process(
            [sys.executable, "-m", "orchestrator", "report", str(db)], stdout=writer, check=False
        )
    finally:
        os.close(writer)
    assert done.returncode == 141
    assert done.stderr == b""


def closed_port() -> int:
    """A loopback port nothing listens on (connections to it are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_the_endpoint_is_unreachable_after_failed_connects_in_a_row_with_no_answer() -> None:
    reach = Reach(after=3)
    assert not reach.missed(gives_up=False)
    assert not reach.missed(gives_up=False)
    assert reach.missed(gives_up=False)  # three in a row
    reach = Reach(after=3)
    assert reach.missed(gives_up=True)  # a request would be given up before any answer
    reach = Reach(after=3)
    reach.missed(gives_up=False)
    reach.missed(gives_up=False)
    reach.answer()  # anything answered: a blip, not an unreachable endpoint
    assert not reach.missed(gives_up=True)
    assert not reach.missed(gives_up=False)
    assert reach.missed(gives_up=False)


async def test_an_unreachable_endpoint_stops_the_job_and_leaves_its_requests_pending(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = tmp_path / "p.txt"
    job.write_text("".join(f"prompt {i}\n" for i in range(12)))
    out = tmp_path / "out"
    db = out / "job.sqlite"
    closed = f"http://127.0.0.1:{closed_port()}"
    async with simulate() as (sim, _, url):
        for wrong, more, why in [
            (closed, ["--max-attempts", "1"], f"cannot connect to {closed}"),
            (closed, ["--concurrency", "1"], f"cannot connect to {closed}"),
            (f"{url}/wrong", [], f"{url} answered HTTP 404 without the API's error body"),
        ]:
            argv = ["run", str(job), "--base-url", wrong, "--results", str(out), "--backoff-base", "0.01"]
            assert await run_command([*argv, *more, *FAST]) == 3
            err = capsys.readouterr().err
            assert f"the job stopped: the endpoint cannot be reached: {why}" in err
            assert "Its requests are left pending. Check the URL (--base-url, ANTHROPIC_BASE_URL)" in err
            assert query(db, "SELECT COUNT(*) FROM requests WHERE state IN ('pending', 'running')") == [(12,)]
            assert query(db, "SELECT COUNT(*) FROM attempts WHERE reason = 'unreachable'") >= [(1,)]
        assert sim.stats.outcomes["ok"] == 0
        # Nothing was answered there: the job goes on against the right endpoint without being asked to.
        assert await run_command(["resume", str(db), "--base-url", url, "--quiet"]) == 0
    assert sim.stats.outcomes["ok"] == 12
    assert query(db, "SELECT state, COUNT(*) FROM requests GROUP BY state") == [("succeeded", 12)]
    assert json.loads(query(db, "SELECT spec FROM job")[0][0])["options"]["base_url"] == closed  # as created


async def test_errored_requests_run_again_on_demand(simulate: Simulate, tmp_path: Path) -> None:
    job = tmp_path / "job.jsonl"
    lines = [{"prompt": "fine"}, {"prompt": "refused", "thinking": {"type": "enabled", "budget_tokens": 10}}]
    job.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    db = out / "job.sqlite"
    async with simulate() as (sim, _, url):
        argv = ["run", str(job), "--base-url", url, "--results", str(out), *FAST]
        assert await run_command(argv) == 0
        assert await run_command(argv) == 0  # complete: nothing to do
        assert sim.stats.requests == 2
        assert await run_command([*argv, "--retry-errored"]) == 0
        assert sim.stats.requests == 3  # only the errored one
        assert await run_command(["resume", str(db), "--retry-errored", "--quiet"]) == 0
        assert sim.stats.requests == 4
        assert await run_command(["resume", str(db), "--quiet"]) == 0
        assert sim.stats.requests == 4
    assert query(db, "SELECT custom_id, state, attempts FROM requests") == [
        ("job-1", "succeeded", 1),
        ("job-2", "errored", 3),
    ]
    assert "--retry-errored" not in query(db, "SELECT spec FROM job")[0][0]


async def test_a_job_records_its_endpoint_and_simulated_results_never_pass_as_real(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    job = tmp_path / "job.jsonl"
    lines = [{"prompt": "fine"}, {"prompt": "refused", "thinking": {"type": "enabled", "budget_tokens": 10}}]
    job.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert await run_command(["run", str(job), "--simulate", "--speed", "inf", *FAST]) == 0
    simulated = Path("results/simulated/job/job.sqlite")
    capsys.readouterr()
    assert await run_command(["status", str(simulated), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["endpoint"], shown["simulated"]) == ("simulator", True)
    async with simulate() as (sim, _, url):
        # A real run of the same job file is another job, in its own folder.
        assert await run_command(["run", str(job), "--base-url", url, *FAST]) == 0
        assert sim.stats.requests == 2
        assert await run_command(["status", "results/job/job.sqlite", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["simulated"] is False
        # Against the simulated job's database: refused, nothing sent, nothing changed.
        before = query(simulated, "SELECT * FROM job")
        argv = ["run", str(job), "--base-url", url, "--db", str(simulated), "--retry-errored", *FAST]
        assert await run_command(argv) == 2
        assert f"{simulated} holds results from simulator, and this run is against {url}" in capsys.readouterr().err
        assert query(simulated, "SELECT * FROM job") == before
        assert sim.stats.requests == 2
        assert await run_command([*argv, "--allow-endpoint-change"]) == 0
        assert sim.stats.requests == 3
        # A resume goes where the last run went, not where the job was created.
        assert await run_command(["resume", str(simulated), "--retry-errored", "--quiet"]) == 0
        assert sim.stats.requests == 4
    capsys.readouterr()
    assert await run_command(["status", str(simulated), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["endpoint"], shown["simulated"]) == (url, True)  # it still holds the simulator's reply
    assert await run_command(["report", "results"]) == 0
    text = capsys.readouterr().out
    assert "job job (SIMULATED)  (results/simulated/job/job.sqlite)" in text
    assert "job job  (results/job/job.sqlite)" in text
    assert "all 2 jobs (1 of them SIMULATED)" in text
