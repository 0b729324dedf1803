"""Structured outputs end to end: a schema in (spec, option, job lines), checked before anything is
sent; results carrying ``output`` or ``output_error``; status, report and the CSV export."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import Field

from orchestrator.api.schema import validate
from orchestrator.cli import run_command
from orchestrator.outputs import CUT, ERRORED, INVALID, NOT_JSON, REFUSED, VALID, message_output
from orchestrator.simulator import SimulatorConfig
from tests.conftest import INSTANT, Running
from tests.helpers import read_results, write_jsonl

pytestmark = pytest.mark.anyio

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
FAST = ["--quiet", "--checkpoint-interval", "0.05"]
JOBS = Path(__file__).parent.parent / "jobs"
SCHEMA: dict[str, Any] = json.loads((JOBS / "example" / "review.schema.json").read_text())
FORMAT = {"format": {"type": "json_schema", "schema": SCHEMA}}


async def test_the_example_extraction_job_runs_and_exports_its_fields(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert (
        await run_command(
            ["run", str(JOBS / "extract.toml"), "--simulate", "--speed", "inf", "--results", str(out), *FAST]
        )
        == 0
    )
    lines = read_results(out)
    assert [line["custom_id"] for line in lines] == ["r1", "r2", "r3"]
    for line in lines:
        assert validate(line["output"], SCHEMA) is None
        assert "output_error" not in line
    assert (
        await run_command(["export", str(out / "job.sqlite"), "--format", "csv", "--out", str(tmp_path / "r.csv")]) == 0
    )
    with (tmp_path / "r.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = list(rows[0])
    # The input row's columns, then one column per top-level property, then ours.
    assert columns[:5] == ["id", "product", "text", "max_tokens", "temperature"]
    assert columns[5 : 5 + len(SCHEMA["properties"]) + 1] == [f"output.{n}" for n in SCHEMA["properties"]] + [
        "output_error"
    ]
    for row, line in zip(rows, lines, strict=True):
        assert row["output.sentiment"] == line["output"]["sentiment"]
        assert row["output.would_recommend"] == json.dumps(line["output"]["would_recommend"])
        assert json.loads(row["output.aspects"]) == line["output"]["aspects"]  # nested: JSON text
    capsys.readouterr()
    assert await run_command(["status", str(out / "job.sqlite"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"][VALID] == 3


async def test_outputs_are_valid_cut_refused_or_not_json_and_counted(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines: list[dict[str, Any]] = [{"prompt": f"review {i}", "custom_id": f"v{i}"} for i in range(30)]
    lines += [{"prompt": "short", "custom_id": "cut", "max_tokens": 5}]
    lines += [{"prompt": "stopped", "custom_id": "stopped", "stop_sequences": ['"rating"']}]
    lines += [{"prompt": "plain", "custom_id": "plain", "output_config": {"effort": "low"}}]
    job = write_jsonl(tmp_path / "job.jsonl", lines)
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    out = tmp_path / "out"
    async with simulate(SimulatorConfig(timing=INSTANT, refusals=0.2)) as (_, _, url):
        command = ["run", str(job), "--base-url", url, "--results", str(out), "--output-schema", str(schema_file)]
        assert await run_command([*command, *FAST]) == 0
    results = {line["custom_id"]: line for line in read_results(out)}
    assert results["cut"]["output"] is None
    assert results["cut"]["output_error"].startswith("cut by max_tokens")
    assert results["stopped"]["output_error"].startswith("not JSON")
    # A line's own output_config replaces the job's (as any field a line sets): no format, no output.
    assert "output" not in results["plain"]
    refused = [line for line in results.values() if line["result"]["message"]["stop_reason"] == "refusal"]
    assert refused
    for line in refused:
        assert line["output"] is None
        assert line["output_error"].startswith("refused")
    valid = [line for line in results.values() if line.get("output") is not None]
    assert len(valid) + len(refused) + 3 == len(lines)
    assert all(validate(line["output"], SCHEMA) is None for line in valid)
    capsys.readouterr()
    assert await run_command(["status", str(out / "job.sqlite"), "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)["outputs"]
    assert counts == {VALID: len(valid), CUT: 1, REFUSED: len(refused), NOT_JSON: 1, INVALID: 0, ERRORED: 0}
    assert await run_command(["report", str(out / "job.sqlite")]) == 0
    assert f"structured outputs: {len(valid)} valid, 1 cut by max_tokens, {len(refused)} refused, 1 not JSON" in (
        capsys.readouterr().out
    )


def test_a_reply_that_fails_the_schema_says_where() -> None:
    message = {"content": [{"type": "text", "text": '{"rating": "five"}'}], "stop_reason": "end_turn"}
    output = message_output(message, lambda value: validate(value, SCHEMA))
    assert output.status == INVALID
    assert output.fields() == {
        "output": None,
        "output_error": "fails the schema at $.product: required property missing",
    }
    assert message_output(None, lambda value: None).status == ERRORED


@pytest.mark.parametrize("inline", [False, True])
async def test_a_schema_the_api_would_refuse_is_reported_before_anything_is_sent(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str], inline: bool
) -> None:
    (tmp_path / "prompts.txt").write_text("one\ntwo\n")
    bad = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}, "additionalProperties": False}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    output = (
        '[output.schema]\ntype = "object"\nadditionalProperties = false\n[output.schema.properties.n]\n'
        'type = "integer"\nminimum = 1\n'
        if inline
        else '[output]\nschema = "bad.json"\n'
    )
    spec = tmp_path / "job.toml"
    spec.write_text(f'name = "j"\ninputs = ["prompts.txt"]\nresults = "out"\n{output}')
    async with simulate() as (sim, _, url):
        assert await run_command(["run", str(spec), "--base-url", url, *FAST]) == 2
        err = capsys.readouterr().err
        assert "job.toml" in err
        assert ("[output] schema at" if inline else "bad.json: output schema at") in err
        assert "$.properties.n: For 'integer' type, property 'minimum' is not supported; remove it" in err
        assert (
            await run_command(
                [
                    "run",
                    str(tmp_path / "prompts.txt"),
                    "--base-url",
                    url,
                    "--output-schema",
                    str(tmp_path / "bad.json"),
                    *FAST,
                ]
            )
            == 2
        )
        assert "--output-schema" in capsys.readouterr().err
        line = {"prompt": "x", "output_config": {"format": {"type": "json_schema", "schema": {"type": "object"}}}}
        job = write_jsonl(tmp_path / "lines.jsonl", [{"prompt": "fine"}, line])
        assert await run_command(["run", str(job), "--base-url", url, *FAST]) == 2
        err = capsys.readouterr().err
        assert "lines.jsonl:2" in err
        assert "'additionalProperties' must be explicitly set to false" in err
        strict = {"name": "t", "strict": True, "input_schema": {"type": "object", "properties": {}}}
        job = write_jsonl(
            tmp_path / "tools.jsonl", [{"prompt": "x", "tools": [{"name": "u", "input_schema": {}}, strict]}]
        )
        assert await run_command(["run", str(job), "--base-url", url, *FAST]) == 2
        assert (
            "tools.jsonl:1: 'tools' tools[1] (strict) input_schema at $: For 'object' type" in capsys.readouterr().err
        )
        assert sim.stats.requests == 0
    assert not (tmp_path / "out").exists()


def test_the_python_api_takes_a_pydantic_model_and_gives_instances_and_a_frame(tmp_path: Path) -> None:
    from pydantic import BaseModel

    import orchestrator
    from orchestrator.simulator import Timing

    class Aspect(BaseModel):
        aspect: str
        opinion: Literal["good", "bad", "neutral"]

    class Review(BaseModel):
        product: str
        stars: int = Field(le=50)  # the API takes no bound: the model checks it (the simulator draws 0 to 100)
        aspects: list[Aspect]

    rows = [{"prompt": f"review {i}"} for i in range(30)] + [{"prompt": "cut", "max_tokens": 6}]
    config = SimulatorConfig(timing=Timing(speed=math.inf), refusals=0.1)
    done = orchestrator.run_job(rows, simulate=config, results=tmp_path / "out", output_schema=Review)
    assert done.complete
    lines = list(done.results())
    outputs = list(done.outputs())
    assert len(outputs) == len(lines) == len(rows)
    instances = [item for item in outputs if item is not None]
    assert instances
    assert all(isinstance(item, Review) and item.stars <= 50 for item in instances)
    errors = [line["output_error"] for line in lines if line["output"] is None]
    assert any(
        error.startswith("fails the schema at $.stars: Input should be less than or equal to 50") for error in errors
    )
    assert any(error.startswith("cut by max_tokens") for error in errors)
    # The stored results checked by the dict schema the API was sent: the bound is not in it.
    stored = list(orchestrator.open_job(done.db).outputs())
    assert sum(item is not None for item in stored) > len(instances)
    frame = done.to_pandas()
    assert list(frame.columns) == ["custom_id", "product", "stars", "aspects", "output_error"]
    assert len(frame) == len(rows)
    assert frame["stars"].dropna().max() <= 50


def test_a_dict_schema_gives_dicts(tmp_path: Path) -> None:
    import orchestrator
    from orchestrator.simulator import Timing

    done = orchestrator.run_job(
        [{"prompt": "one"}, {"prompt": "two"}],
        simulate=SimulatorConfig(timing=Timing(speed=math.inf)),
        results=tmp_path / "out",
        output_schema=SCHEMA,
    )
    outputs = list(done.outputs())
    assert len(outputs) == 2
    assert all(validate(item, SCHEMA) is None for item in outputs)
    assert list(done.to_pandas().columns) == ["custom_id", *SCHEMA["properties"], "output_error"]
