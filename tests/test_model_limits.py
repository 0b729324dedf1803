"""What the API refuses by model (an unknown id, max_tokens above the model's, sampling fields, a prompt
past the context window, empty text blocks): the simulator refuses it as the API does, and the runner
says so before sending where it knows the model's limits."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anthropic
import pytest

from orchestrator.api.modelinfo import MODELS, SNAPSHOTS, limit_problem, model_limits
from orchestrator.cli import run_command
from orchestrator.errors import UserError
from orchestrator.jobs.read import read_requests
from orchestrator.jobs.spec import load_spec
from orchestrator.library import arun_job
from orchestrator.models import Loaded
from orchestrator.simulator import SimulatorConfig, Timing
from tests.conftest import Running
from tests.helpers import read_results, write_jsonl

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
pytestmark = pytest.mark.anyio
FAST = ["--quiet", "--checkpoint-interval", "0.05"]
JOBS = Path(__file__).resolve().parent.parent / "jobs"


_HI = {"role": "user", "content": "hi"}


def _params(**fields: Any) -> dict[str, Any]:
    """SDK arguments: the required fields as such, the rest sent verbatim (as the runner sends them)."""
    params = {"model": "claude-haiku-4-5", "max_tokens": 16, "messages": [_HI], **fields}
    rest = {key: params.pop(key) for key in list(params) if key not in ("model", "max_tokens", "messages")}
    return {**params, "extra_body": rest}


@pytest.mark.parametrize(
    ("fields", "status", "error_type", "message"),
    [
        (
            {"max_tokens": 1_000_000_000},
            400,
            "invalid_request_error",
            "max_tokens: 1000000000 > 64000, which is the maximum allowed number of output tokens for claude-haiku-4-5",
        ),
        (
            {"model": "claude-sonnet-4-5-20250929", "max_tokens": 64_001},
            400,
            "invalid_request_error",
            "max_tokens: 64001 > 64000, which is the maximum allowed number of output tokens for "
            "claude-sonnet-4-5-20250929",
        ),
        ({"model": "claude-haiku-4.5"}, 404, "not_found_error", "model: claude-haiku-4.5"),
        ({"model": "claude-haiku-4-5-20990101"}, 404, "not_found_error", "model: claude-haiku-4-5-20990101"),
        (
            {"temperature": 0.5, "top_p": 0.9},
            400,
            "invalid_request_error",
            "`temperature` and `top_p` cannot both be specified for this model. Please use only one.",
        ),
        (
            {"model": "claude-opus-4-7", "temperature": 0.5},
            400,
            "invalid_request_error",
            "`temperature` is deprecated for this model.",
        ),
        (
            {"model": "claude-opus-4-8", "top_k": 5},
            400,
            "invalid_request_error",
            "`top_k` is deprecated for this model.",
        ),
        ({"top_p": 1.5}, 400, "invalid_request_error", "top_p: Input should be a number between 0 and 1"),
        ({"top_k": -1}, 400, "invalid_request_error", "top_k: Input should be greater than or equal to 0"),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": ""}]}]},
            400,
            "invalid_request_error",
            "messages: text content blocks must be non-empty",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": " \n"}]}]},
            400,
            "invalid_request_error",
            "messages: text content blocks must contain non-whitespace text",
        ),
        (
            {"system": [{"type": "text", "text": ""}]},
            400,
            "invalid_request_error",
            "system: text content blocks must be non-empty",
        ),
        (
            {"messages": [{"role": "user", "content": ""}]},
            400,
            "invalid_request_error",
            "messages.0: all messages must have non-empty content except for the optional final assistant message",
        ),
        (
            {"messages": [{"role": "user", "content": " a" * 200_001}]},
            400,
            "invalid_request_error",
            "prompt is too long: 200008 tokens > 200000 maximum",
        ),
    ],
)
async def test_the_simulator_refuses_what_the_api_refuses(
    simulate: Simulate, fields: dict[str, Any], status: int, error_type: str, message: str
) -> None:
    async with simulate() as (sim, client, _):
        with pytest.raises(anthropic.APIStatusError) as caught:
            await client.messages.create(**_params(**fields), timeout=30)  # a timeout: the SDK's own check aside
        body = caught.value.body
        assert caught.value.status_code == status
        assert isinstance(body, dict)
        assert body["error"] == {"type": error_type, "message": message}
        # and a stream is refused the same way, before it starts
        with pytest.raises(anthropic.APIStatusError) as streamed:
            await client.messages.create(**_params(**fields), stream=True)
        assert streamed.value.status_code == status
        assert sim.stats.input_tokens_billed == 0


async def test_the_simulator_serves_what_the_api_accepts(simulate: Simulate) -> None:
    config = SimulatorConfig(timing=Timing(speed=math.inf), extra_models=frozenset({"claude-next-6"}))
    async with simulate(config) as (_, client, _):
        for fields in (
            {"max_tokens": 64_000},
            {"model": "claude-opus-5", "max_tokens": 128_000, "temperature": 0.2},
            {"model": "claude-haiku-4-5-20251001", "top_p": 0.5, "top_k": 3},
            {"model": "claude-next-6"},  # a model newer than the table, served by this server
            {"messages": [{"role": "user", "content": "go on"}, {"role": "assistant", "content": ""}]},
        ):
            reply = await client.messages.create(**_params(**fields), timeout=30)
            assert reply.stop_reason is not None


def test_every_model_of_the_table_and_its_snapshots_has_limits() -> None:
    assert all(model_limits(model) is MODELS[model] for model in MODELS)
    assert all(model_limits(snapshot) is not None for snapshot in SNAPSHOTS)
    assert model_limits("claude-3-opus-20240229") is None  # retired
    assert limit_problem({"model": "claude-unknown-9", "max_tokens": 10**9}) is None  # unknown: the API's word


def test_the_shipped_examples_use_models_the_api_serves() -> None:
    for spec in sorted(JOBS.glob("*.toml")):
        requests = [item for item in read_requests(load_spec(spec, {})) if isinstance(item, Loaded)]
        assert requests
        for item in requests:
            assert model_limits(item.params["model"]) is not None, (spec, item.custom_id)
            assert limit_problem(item.params) is None, (spec, item.custom_id)


# -- before sending --------------------------------------------------------------------------


async def _refused(simulate: Simulate, capsys: pytest.CaptureFixture[str], job: Path, *options: str) -> str:
    out = job.parent / "out"
    async with simulate() as (sim, _, url):
        status = await run_command(["run", str(job), "--base-url", url, "--results", str(out), *FAST, *options])
        assert sim.stats.requests == 0
    assert status == 2
    assert not out.exists()
    return capsys.readouterr().err


async def test_max_tokens_above_the_models_limit_is_refused_before_sending(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": "a"}, {"prompt": "b", "max_tokens": 70_000}])
    err = await _refused(simulate, capsys, job)
    assert f"{job}:2: max_tokens 70,000 is more than claude-haiku-4-5 can write: at most 64,000 output tokens" in err
    err = await _refused(simulate, capsys, job, "--max-tokens", "1000000000")
    assert "--max-tokens: max_tokens 1,000,000,000 is more than claude-haiku-4-5 can write" in err
    err = await _refused(simulate, capsys, job, "--model", "claude-opus-4-5", "--max-tokens", "100000")
    assert "--max-tokens: max_tokens 100,000 is more than claude-opus-4-5 can write" in err
    text = tmp_path / "p.txt"
    text.write_text("one\ntwo\n")
    err = await _refused(simulate, capsys, text, "--max-tokens", "64001")
    assert "--max-tokens: max_tokens 64,001" in err
    spec = tmp_path / "job.toml"
    spec.write_text('inputs = ["p.txt"]\n[defaults]\nmodel = "claude-sonnet-4-5"\nmax_tokens = 200000\n')
    err = await _refused(simulate, capsys, spec)
    assert f"{spec}:4: [defaults] max_tokens 200,000 is more than claude-sonnet-4-5 can write" in err
    err = await _refused(simulate, capsys, spec, "--model", "claude-haiku-4-5")
    assert "--model: max_tokens 200,000 is more than claude-haiku-4-5 can write" in err
    # From Python, the keyword is named.
    with pytest.raises(UserError, match=r"^max_tokens: max_tokens 100,000 is more than claude-haiku-4-5"):
        await arun_job(text, simulate=True, max_tokens=100_000, results=tmp_path / "python")
    with pytest.raises(UserError, match=r"^model: max_tokens 200,000 is more than claude-haiku-4-5"):
        await arun_job(spec, simulate=True, model="claude-haiku-4-5", results=tmp_path / "python")
    assert not (tmp_path / "python").exists()


async def test_sampling_fields_the_model_refuses_are_refused_before_sending(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_jsonl(
        tmp_path / "j.jsonl",
        [
            {"prompt": "a", "temperature": 0.3, "top_p": 0.9},
            {"prompt": "b", "model": "claude-opus-4-7", "temperature": 0.3},
            {"custom_id": "c", "params": {"model": "claude-opus-4-8", "max_tokens": 9, "messages": [_HI], "top_k": 3}},
        ],
    )
    err = await _refused(simulate, capsys, job)
    assert f"{job}:1: claude-haiku-4-5 takes temperature or top_p, not both: drop one of them" in err
    assert f"{job}:2: claude-opus-4-7 takes no temperature" in err
    assert f"{job}:3: claude-opus-4-8 takes no top_k" in err
    plain = write_jsonl(tmp_path / "k.jsonl", [{"prompt": "a"}])
    err = await _refused(simulate, capsys, plain, "--model", "claude-opus-4-7", "--temperature", "0.5")
    assert "--temperature: claude-opus-4-7 takes no temperature" in err


async def test_an_unknown_model_is_named_before_sending_and_gets_the_apis_404(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_jsonl(tmp_path / "j.jsonl", [{"prompt": "a"}, {"prompt": "b", "model": "claude-haiku-4.5"}])
    out = tmp_path / "out"
    async with simulate() as (sim, _, url):
        assert await run_command(["run", str(job), "--base-url", url, "--results", str(out), *FAST]) == 0
        assert sim.stats.requests == 2
    assert "note: claude-haiku-4.5: not a model this version of orchestrator knows" in capsys.readouterr().err
    first, second = read_results(out)
    assert first["result"]["type"] == "succeeded"
    assert second["result"]["error"]["error"] == {"type": "not_found_error", "message": "model: claude-haiku-4.5"}
    assert second["attempts"] == 1  # never retried
