"""RunOptions: one typed object from the table of settings, stored with the job as JSON, resumed
from a database that the previous version (which stored a command line) made."""

from __future__ import annotations

import inspect
import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import orchestrator
from orchestrator.cli import run_command
from orchestrator.cli.parser import build_parser, run_options
from orchestrator.errors import UserError
from orchestrator.library import Job, arun_job, run_job
from orchestrator.options import TABLE, RunOptions, resumed
from orchestrator.settings import merge
from orchestrator.simulator import SimulatorConfig, Timing
from orchestrator.store.legacy import options_of
from tests.helpers import query

# Made by orchestrator at a094cb3 (job options stored as a command line): six prompts, run with
# `orchestrator run job.jsonl --simulate --speed inf --seed 7 --concurrency 2 --max-cost 0.012
# --db /orchestrator-legacy-fixture/job.sqlite --quiet`, stopped at its spend cap with 2 succeeded and 4 pending.
LEGACY = Path(__file__).parent / "fixtures" / "legacy" / "job.sqlite"


def test_every_setting_is_a_typed_field_and_a_typed_keyword() -> None:
    """Whoever adds a setting to settings.SETTINGS adds its field and its keywords (docs/development.md)."""
    annotations = {item: RunOptions.__dataclass_fields__[item].type for item in RunOptions.__dataclass_fields__}
    takers: list[Callable[..., Any]] = [run_job, arun_job, Job.resume, Job.aresume]
    for setting in TABLE:
        expected = f"{setting.kind.__name__} | None"
        assert annotations.get(setting.name) == expected, setting.name
        assert getattr(RunOptions(job=Path("j")), setting.name) is None  # not given: the spec's, else the default
        for taker in takers:
            parameter = inspect.signature(taker).parameters.get(setting.name)
            assert parameter is not None, f"{taker.__qualname__} has no keyword {setting.name}"
            assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
            assert parameter.annotation == expected, (taker.__qualname__, setting.name)
            assert parameter.default is None
            assert f"    {setting.name}: {setting.help}" in (taker.__doc__ or ""), (taker.__qualname__, setting.name)
    options = run_options(build_parser().parse_args(["run", "j.jsonl", "--limit-headroom", "0.5", "--rpm", "60"]))
    assert options.given == {"headroom": 0.5, "rpm": 60.0}


def test_options_are_checked_when_made_and_named_as_their_caller_writes_them() -> None:
    with pytest.raises(orchestrator.UserError, match=r"^--limit-headroom must be a number above 0 and at most 1"):
        RunOptions(job=Path("j"), headroom=1.5)
    with pytest.raises(orchestrator.UserError, match=r"^headroom must be a number above 0 and at most 1"):
        RunOptions(job=Path("j"), headroom=1.5, python=True)
    with pytest.raises(orchestrator.UserError, match=r"^give simulate or base_url, not both$"):
        RunOptions(job=Path("j"), simulate=SimulatorConfig(), base_url="http://x", python=True)
    assert RunOptions(job=Path("j"), concurrency=4.0).concurrency == 4  # type: ignore[arg-type]


def test_stored_options_are_json_and_read_back_the_same(tmp_path: Path) -> None:
    config = SimulatorConfig(seed=3, timing=Timing(speed=math.inf), reject_api_keys=frozenset({"k"}))
    options = RunOptions(
        job=tmp_path / "j.jsonl", simulate=config, concurrency=3, max_cost=2.0, results=tmp_path, model="m"
    )
    stored = json.loads(json.dumps(options.to_json()))
    assert "retry_errored" not in stored  # one-off permissions are never stored
    assert RunOptions.from_json(stored) == options
    assert RunOptions.from_json(stored, concurrency=5).concurrency == 5


def test_a_resume_in_another_mode_drops_what_was_stored_for_the_other(tmp_path: Path) -> None:
    stored = RunOptions(job=tmp_path / "job.jsonl", deadline="2h", poll_interval=0.5, batch_size=10, concurrency=4)
    streamed = resumed(stored, tmp_path / "job.sqlite", None, settings={"mode": "stream"})
    assert streamed.mode == "stream"
    assert (streamed.deadline, streamed.poll_interval, streamed.batch_size) == (None, None, None)
    assert streamed.concurrency == 4  # what applies to both modes stays
    kept = resumed(stored, tmp_path / "job.sqlite", None, settings={"concurrency": 2})
    assert (kept.deadline, kept.poll_interval, kept.concurrency) == ("2h", 0.5, 2)
    batched = resumed(stored, tmp_path / "job.sqlite", None, settings={"mode": "batch"})
    assert (batched.deadline, batched.batch_size) == ("2h", 10)
    # A deadline given to a resume of a streamed job: batches and streaming, the stored mode gone.
    was_streamed = RunOptions(job=tmp_path / "job.jsonl", mode="stream", concurrency=4)
    dated = resumed(was_streamed, tmp_path / "job.sqlite", None, settings={"deadline": "1h"})
    assert (dated.mode, dated.deadline, dated.concurrency) == (None, "1h", 4)
    assert merge({}, {}, dated.given).mode == "batch"


def test_a_deadline_and_streaming_alone_are_refused_together_but_given_now_streaming_wins() -> None:
    with pytest.raises(UserError, match="drop one of them"):
        merge({}, {}, {"deadline": "1h", "mode": "stream"})
    streamed = merge({"deadline": "1h"}, {}, {"mode": "stream"})  # a spec's deadline gives way
    assert (streamed.mode, streamed.deadline) == ("stream", None)
    assert merge({"deadline": "1h"}, {}, {}).mode == "batch"


def test_a_stored_command_line_reads_as_its_options() -> None:
    argv = [
        "run",
        "/jobs/j.jsonl",
        "--simulate",
        "--speed=inf",
        "--conc",  # argparse took unique prefixes
        "2",
        "--batch",
        "--fault",
        "drop=0.1",
        "--reply-tokens",
        "5:9",
        "--reject-key",
        "a",
        "--no-count-tokens",
        "--batch-seconds",
        "2:5",
        "--limit-headroom",
        "0.5",
        "--quiet",
        "--watch",
    ]
    stored = options_of(argv)
    assert stored == {
        "job": "/jobs/j.jsonl",
        "concurrency": 2,
        "mode": "batch",
        "headroom": 0.5,
        "quiet": True,
        "watch": 8766,
        "simulate": {
            "timing": {"speed": math.inf},
            "faults": {"drop": 0.1},
            "reply_min": 5,
            "reply_max": 9,
            "reject_api_keys": ["a"],
            "count_tokens_endpoint": False,
            "batches": {"seconds": 2.0, "seconds_max": 5.0},
        },
    }
    options = RunOptions.from_json(stored)
    assert options.simulate is not None
    assert options.simulate.faults.drop == 0.1
    assert options.simulate.timing.speed == math.inf
    assert options.simulate.reject_api_keys == frozenset({"a"})
    assert (options.simulate.batches.seconds, options.simulate.batches.seconds_max) == (2.0, 5.0)


def test_a_job_of_the_previous_version_resumes_from_python(tmp_path: Path) -> None:
    db = tmp_path / "job.sqlite"
    shutil.copy(LEGACY, db)
    assert json.loads(query(db, "SELECT spec FROM job")[0][0])["argv"][:3] == [
        "run",
        "/orchestrator-legacy-fixture/job.jsonl",
        "--simulate",
    ]
    job = orchestrator.open_job(db)
    before = job.status()  # read-only, and migrated first
    assert before.counts == {"pending": 4, "running": 0, "succeeded": 2, "errored": 0}
    assert before.simulated
    spec = json.loads(query(db, "SELECT spec FROM job")[0][0])
    assert "argv" not in spec
    assert spec["options"]["concurrency"] == 2
    assert spec["options"]["simulate"] == {"seed": 7, "timing": {"speed": math.inf}}
    with pytest.raises(orchestrator.JobAborted, match=r"spend cap.*max_cost"):
        job.resume()  # the stored cap still holds
    done = job.resume(max_cost=1.0)  # against the simulator it ran on, with its stored configuration
    assert done.complete
    assert done.succeeded == 6
    # The two results of the previous version were kept, not asked again.
    assert query(db, "SELECT COUNT(*) FROM attempts WHERE outcome = 'succeeded'") == [(6,)]
    lines = list(job.results())
    assert [line["custom_id"] for line in lines] == [f"q{i}" for i in range(1, 7)]
    report = job.report()
    assert report["jobs"][0]["total"]["requests"]["succeeded"] == 6
    exported = job.export(tmp_path / "out.csv", format="csv")
    assert exported.written == 6
    assert exported.unfinished == 0
    assert (tmp_path / "out.csv").read_text().startswith("custom_id,result_type,")
    assert job.cancel(base_url="http://127.0.0.1:9") == []  # no batches: nothing is sent


@pytest.mark.anyio
async def test_a_job_of_the_previous_version_resumes_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "job.sqlite"
    shutil.copy(LEGACY, db)
    assert await run_command(["resume", str(db), "--max-cost", "1", "--quiet"]) == 0
    assert "is gone; running the job as stored" in capsys.readouterr().err  # a note, printed by the CLI
    job = orchestrator.open_job(db)
    assert (await job.astatus()).counts["succeeded"] == 6
    assert [line["custom_id"] async for line in job.aresults()] == [f"q{i}" for i in range(1, 7)]
    assert (await job.areport())["jobs"][0]["total"]["requests"]["succeeded"] == 6
    assert (await job.aexport()).written == 6
    with pytest.raises(orchestrator.UserError, match=r"job\.astatus"):
        job.status()  # the sync twin refuses inside a running loop
