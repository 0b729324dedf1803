"""What the API refuses by model (an unknown id, max_tokens above the model's, sampling fields, a prompt
past the context window, empty text blocks): the simulator refuses it as the API does, and the runner
says so before sending where it knows the model's limits."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from decimal import Decimal
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
from orchestrator.models import Loaded, Usage
from orchestrator.pricing import BATCH, Price, load_prices
from orchestrator.simulator import SimulatorConfig, Timing
from tests.conftest import Running
from tests.helpers import read_results, write_jsonl

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
pytestmark = pytest.mark.anyio
FAST = ["--quiet", "--checkpoint-interval", "0.05"]
JOBS = Path(__file__).resolve().parent.parent / "jobs"


_HI = {"role": "user", "content": "hi"}
WEATHER = {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
NEW_MODELS = (
    "claude-fable-5-2",
    "claude-mythos-5-2",
    "claude-fable-5-1",
    "claude-mythos-5-1",
    "claude-opus-5-5",
    "claude-sonnet-5-5",
    "claude-haiku-5-5",
)


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
        (
            {"model": "claude-opus-5-5", "thinking": {"type": "disabled"}},
            400,
            "invalid_request_error",
            '"thinking.type.disabled" is not supported for this model. Use "thinking.type.adaptive" and '
            '"output_config.effort" to control thinking behavior.',
        ),
        (
            {"model": "claude-fable-5-1", "max_tokens": 2000, "thinking": {"type": "enabled", "budget_tokens": 1024}},
            400,
            "invalid_request_error",
            '"thinking.type.enabled" is not supported for this model. Use "thinking.type.adaptive" and '
            '"output_config.effort" to control thinking behavior.',
        ),
        (
            {"model": "claude-opus-4-7", "max_tokens": 2000, "thinking": {"type": "enabled", "budget_tokens": 1024}},
            400,
            "invalid_request_error",
            '"thinking.type.enabled" is not supported for this model. Use "thinking.type.adaptive" and '
            '"output_config.effort" to control thinking behavior.',
        ),
        (
            {"model": "claude-sonnet-5-5", "thinking": {"type": "disabled"}},
            400,
            "invalid_request_error",
            '"thinking.type.disabled" is not supported for this model. Use "thinking.type.between_tools" for the '
            'lowest thinking setting, or "thinking.type.adaptive" and "output_config.effort" to control thinking '
            "behavior.",
        ),
        (
            {"model": "claude-opus-5-5", "thinking": {"type": "between_tools"}},
            400,
            "invalid_request_error",
            '"thinking.type.between_tools" is not supported for this model.',
        ),
        (
            {"thinking": {"type": "adaptive"}},
            400,
            "invalid_request_error",
            "adaptive thinking is not supported on this model",
        ),
        (
            {"model": "claude-sonnet-5-5", "thinking": {"type": "between_tools"}, "output_config": {"effort": "xhigh"}},
            400,
            "invalid_request_error",
            '"thinking.type.between_tools" is not supported at effort "xhigh" for this model. Use '
            '"thinking.type.adaptive" to run at "xhigh" or "max" effort.',
        ),
        (
            {"model": "claude-haiku-5-5", "thinking": {"type": "disabled"}, "output_config": {"effort": "max"}},
            400,
            "invalid_request_error",
            '"thinking.type.disabled" is not supported at effort "max" for this model. Use '
            '"thinking.type.adaptive" to run at "xhigh" or "max" effort.',
        ),
        (
            {"model": "claude-sonnet-5-5", "thinking": {"type": "between_tools", "display": "summarized"}},
            400,
            "invalid_request_error",
            "thinking.between_tools.display: Extra inputs are not permitted",
        ),
        *(
            (
                {"model": model, "tools": [WEATHER], "tool_choice": choice},
                400,
                "invalid_request_error",
                'tool_choice: type "tool" and "any" are not supported for this model.',
            )
            for model, choice in (
                ("claude-opus-5-5", {"type": "any"}),
                ("claude-sonnet-5-5", {"type": "tool", "name": "get_weather"}),
                ("claude-fable-5-1", {"type": "any"}),
                ("claude-mythos-5-1", {"type": "any"}),
                ("claude-fable-5-2", {"type": "tool", "name": "get_weather"}),
                ("claude-mythos-5-2", {"type": "any"}),
            )
        ),
        *(
            ({"model": "claude-haiku-5-5", **fields}, 400, "invalid_request_error", message)
            for fields, message in (
                ({"temperature": 0.5}, "`temperature` is deprecated for this model."),
                ({"top_p": 1}, "`top_p` is deprecated for this model."),
                ({"top_k": 5}, "`top_k` is deprecated for this model."),
                (
                    {"temperature": 1, "top_p": 0.99},
                    "`temperature` and `top_p` cannot both be specified for this model. Please use only one.",
                ),
            )
        ),
        (
            {"model": "claude-opus-5-5", "temperature": 0.7},
            400,
            "invalid_request_error",
            "`temperature` is deprecated for this model.",
        ),
        (
            {"model": "claude-fable-5-2", "max_tokens": 128_001},
            400,
            "invalid_request_error",
            "max_tokens: 128001 > 128000, which is the maximum allowed number of output tokens for claude-fable-5-2",
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
    accepted: list[dict[str, Any]] = [
        {"max_tokens": 64_000},
        {"model": "claude-opus-5", "max_tokens": 128_000, "temperature": 0.2},
        {"model": "claude-haiku-4-5-20251001", "top_p": 0.5, "top_k": 3},
        {"model": "claude-next-6"},  # a model newer than the table, served by this server
        *({"model": model, "max_tokens": 128_000, "thinking": {"type": "adaptive"}} for model in NEW_MODELS),
        {"model": "claude-opus-5-5", "temperature": 1, "tools": [WEATHER], "tool_choice": {"type": "auto"}},
        {"model": "claude-haiku-5-5", "top_p": 0.99, "tools": [WEATHER], "tool_choice": {"type": "any"}},
        {"model": "claude-haiku-5-5", "thinking": {"type": "disabled"}, "output_config": {"effort": "high"}},
        {"model": "claude-sonnet-5-5", "thinking": {"type": "between_tools"}, "output_config": {"effort": "high"}},
        {"model": "claude-opus-4-7", "thinking": {"type": "adaptive"}},
        {"messages": [{"role": "user", "content": "go on"}, {"role": "assistant", "content": ""}]},
    ]
    async with simulate(config) as (_, client, _):
        for fields in accepted:
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


async def test_count_tokens_refuses_forced_tool_use_where_the_model_does(simulate: Simulate) -> None:
    forced: dict[str, Any] = {"messages": [_HI], "tools": [WEATHER], "tool_choice": {"type": "any"}}
    async with simulate() as (_, client, _):
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.count_tokens(model="claude-opus-5-5", **forced)
        counted = await client.messages.count_tokens(model="claude-haiku-5-5", **forced)  # Haiku 5.5 takes it
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["error"]["message"] == 'tool_choice: type "tool" and "any" are not supported for this model.'
    assert counted.input_tokens > 0


def test_the_new_models_have_their_limits() -> None:
    for model in NEW_MODELS:
        limits = model_limits(model)
        assert limits is not None, model
        assert (limits.context_window, limits.max_output) == (1_000_000, 128_000), model
        assert limit_problem({"model": model, "max_tokens": 128_000, "messages": [_HI]}) is None, model
    assert model_limits("claude-opus-5-5-20260922") is None  # no dated ids: the alias is the id


async def test_thinking_tool_choice_and_sampling_the_model_refuses_are_refused_before_sending(
    simulate: Simulate, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_jsonl(
        tmp_path / "j.jsonl",
        [
            {"prompt": "a", "model": "claude-opus-5-5", "thinking": {"type": "disabled"}},
            {"prompt": "b", "model": "claude-sonnet-5-5", "tools": [WEATHER], "tool_choice": {"type": "any"}},
            {"prompt": "c", "model": "claude-haiku-5-5", "temperature": 0.2},
            {"prompt": "d", "model": "claude-haiku-5-5", "top_k": 4},
            {
                "prompt": "e",
                "model": "claude-sonnet-5-5",
                "thinking": {"type": "between_tools"},
                "output_config": {"effort": "max"},
            },
            {"prompt": "f", "model": "claude-opus-4-8", "thinking": {"type": "enabled", "budget_tokens": 1024}},
            {"prompt": "g", "model": "claude-sonnet-5-5", "thinking": {"type": "between_tools", "display": "omitted"}},
        ],
    )
    err = await _refused(simulate, capsys, job)
    assert f"{job}:1: claude-opus-5-5 takes no thinking type disabled (it takes adaptive)" in err
    assert f"{job}:2: claude-sonnet-5-5 takes no forced tool use (the API refuses tool_choice any and tool" in err
    assert f"{job}:3: claude-haiku-5-5 takes temperature only at its default, 1 (the API refuses any other)" in err
    assert f"{job}:4: claude-haiku-5-5 takes no top_k (the API refuses any value for it)" in err
    assert f"{job}:5: claude-sonnet-5-5 takes thinking type between_tools only at effort high or below, not max" in err
    assert f"{job}:6: claude-opus-4-8 takes no thinking type enabled (it takes adaptive or disabled)" in err
    assert (
        f"{job}:7: claude-sonnet-5-5 takes thinking type between_tools with no other field: drop thinking.display"
        in err
    )
    spec = tmp_path / "job.toml"
    spec.write_text(
        'inputs = ["p.txt"]\n[defaults]\nmodel = "claude-haiku-4-5"\n'
        'tool_choice = { type = "any" }\ntools = [{ name = "t", input_schema = { type = "object" } }]\n'
    )
    (tmp_path / "p.txt").write_text("one\n")
    err = await _refused(simulate, capsys, spec, "--model", "claude-fable-5-2")
    assert "--model: claude-fable-5-2 takes no forced tool use" in err
    with pytest.raises(UserError, match=r"^model: claude-mythos-5-1 takes no forced tool use"):
        await arun_job(spec, simulate=True, model="claude-mythos-5-1", results=tmp_path / "python")
    assert not (tmp_path / "python").exists()


# The prices documented for the new models (USD per million tokens: input, 5m and 1h cache writes,
# cache reads, output); Haiku 5.5 is priced by each request's prompt length, which the file cannot say.
NEW_PRICES = {
    "claude-opus-5-5": ("4", "5", "8", "0.20", "20"),
    "claude-sonnet-5-5": ("2", "2.50", "4", "0.10", "10"),
    "claude-fable-5-1": ("10", "12.50", "20", "0.25", "50"),
    "claude-mythos-5-1": ("10", "12.50", "20", "0.25", "50"),
    "claude-fable-5-2": ("8", "10", "16", "0.20", "40"),
    "claude-mythos-5-2": ("8", "10", "16", "0.20", "40"),
}


def test_the_new_models_are_priced() -> None:
    prices = load_prices()
    for model, expected in NEW_PRICES.items():
        price = prices.price(model)
        assert price is not None, model
        assert price == Price(*(Decimal(value) for value in expected)), model
    assert prices.price("claude-haiku-5-5") is None  # tiered by prompt length: unpriced, never guessed
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000, cache_read_input_tokens=1_000_000)
    assert prices.cost("claude-opus-5-5", usage, BATCH) == Decimal("12.10")  # (4 + 20 + 0.20) / 2
