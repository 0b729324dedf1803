"""Structured outputs: the schema subset the API takes, values checked against a schema, and the
simulator's JSON replies, refusals, strict tools and 400s, through the real SDK."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import anthropic
import pytest

from orchestrator.api.schema import schema_problems, validate
from orchestrator.simulator import SimulatorConfig
from orchestrator.simulator.format_checks import BOTH_FORMATS, CITATIONS_WITH_FORMAT, PREFILL_WITH_FORMAT
from orchestrator.simulator.replies import plan_reply
from orchestrator.simulator.structured import schema_value
from tests.conftest import INSTANT, Running

Simulate = Callable[..., AbstractAsyncContextManager[Running]]
HAIKU = "claude-haiku-4-5"

# Every supported feature at once: nested objects, $defs/$ref, enum, const, anyOf, type lists,
# arrays with minItems, formats, booleans, nulls, optional properties.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative"]},
        "score": {"type": "integer"},
        "ratio": {"type": "number"},
        "kind": {"const": "review"},
        "verified": {"type": "boolean"},
        "nothing": {"type": "null"},
        "when": {"type": "string", "format": "date"},
        "contact": {"anyOf": [{"type": "string", "format": "email"}, {"type": "null"}]},
        "note": {"type": ["string", "null"]},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "product": {"$ref": "#/$defs/product"},
    },
    "required": ["sentiment", "score", "kind", "tags", "product"],
    "additionalProperties": False,
    "$defs": {
        "product": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "id": {"type": "string", "format": "uuid"}},
            "required": ["name", "id"],
            "additionalProperties": False,
        }
    },
}


def body(text: str = "Review: great kettle", schema: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "model": HAIKU,
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": text}],
        "output_config": {"format": {"type": "json_schema", "schema": schema or SCHEMA}},
        **extra,
    }


def closed(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "additionalProperties": False, **extra}


@pytest.mark.parametrize(
    ("schema", "where", "message"),
    [
        (
            {"type": "object", "properties": {}},
            "$",
            "For 'object' type, 'additionalProperties' must be explicitly set to false",
        ),
        (
            closed({"n": {"type": "number", "minimum": 0, "maximum": 5}}),
            "$.properties.n",
            "For 'number' type, properties minimum, maximum are not supported",
        ),
        (closed({"a": {"type": "array", "maxItems": 3}}), "$.properties.a", "property 'maxItems' is not supported"),
        (closed({"a": {"type": "array", "minItems": 2}}), "$.properties.a", "values other than 0 or 1"),
        (closed({"s": {"type": "string", "maxLength": 9}}), "$.properties.s", "property 'maxLength' is not supported"),
        (closed({"s": {"type": "string", "format": "color"}}), "$.properties.s", "format 'color' is not supported"),
        (closed({"e": {"enum": [{"a": 1}]}}), "$.properties.e.enum", "must be strings, numbers, booleans or null"),
        (closed({"r": {"$ref": "other.json#/x"}}), "$.properties.r", "External $ref is not supported"),
        (
            closed(
                {"next": {"$ref": "#/$defs/node"}}, **{"$defs": {"node": closed({"next": {"$ref": "#/$defs/node"}})}}
            ),
            "$.properties.next.properties.next",
            "Recursive schemas are not supported",
        ),
        (closed({"x": {"type": "object", "properties": {}}}), "$.properties.x", "'additionalProperties' must be"),
    ],
)
def test_schema_problems_name_what_the_api_refuses_and_where(schema: dict[str, Any], where: str, message: str) -> None:
    problems = schema_problems(schema)
    assert problems, schema
    assert problems[0][0] == where
    assert message in problems[0][1]


def test_the_full_schema_is_accepted() -> None:
    assert schema_problems(SCHEMA) == []


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ({"sentiment": "great"}, '$.sentiment: "great" is not one of "positive", "neutral", "negative"'),
        ({"score": "3"}, "$.score: expected integer, got string"),
        ({"tags": []}, "$.tags: 0 items, fewer than minItems 1"),
        ({"tags": ["a", 2]}, "$.tags[1]: expected string, got integer"),
        ({"product": {"name": "k", "id": "nope"}}, '$.product.id: "nope" is not a valid uuid'),
        ({"product": {"name": "k"}}, "$.product.id: required property missing"),
        ({"extra": 1}, "$.extra: property not allowed (additionalProperties is false)"),
        ({"contact": 5}, "$.contact: 5 fits none of the 2 alternatives (anyOf)"),
        ({"kind": "other"}, '$.kind: expected "review", got "other"'),
    ],
)
def test_validate_says_where_a_value_fails(value: dict[str, Any], error: str) -> None:
    good = schema_value(random.Random(1), SCHEMA, SCHEMA)
    assert validate(good, SCHEMA) is None
    assert validate({**good, **value}, SCHEMA) == error


def test_json_replies_fit_their_schema_and_are_seeded() -> None:
    texts = set()
    for number in range(200):
        plan = plan_reply(0, body(f"review {number}"), 20, 300)
        text = "".join(plan.tokens)
        assert plan.stop_reason == "end_turn"
        assert validate(json.loads(text), SCHEMA) is None, text
        assert "".join(plan_reply(0, body(f"review {number}"), 20, 300).tokens) == text
        texts.add(text)
    assert len(texts) == 200


def test_max_tokens_cuts_the_json_and_refusals_stop_it_with_details() -> None:
    cut = plan_reply(0, body(max_tokens=7), 20, 300)
    assert cut.stop_reason == "max_tokens"
    assert cut.output_tokens == 7
    with pytest.raises(ValueError, match=r"Unterminated|Expecting"):
        json.loads("".join(cut.tokens))
    plans = [plan_reply(0, body(f"r{n}"), 20, 300, refusals=0.2) for n in range(300)]
    refused = [plan for plan in plans if plan.stop_reason == "refusal"]
    assert 30 < len(refused) < 90
    assert all(plan.stop_details is not None and plan.stop_details["type"] == "refusal" for plan in refused)
    assert {plan.stop_details["category"] for plan in refused if plan.stop_details} >= {None, "cyber"}


def test_strict_tools_get_inputs_valid_for_their_schema() -> None:
    tool = {"name": "record", "strict": True, "input_schema": SCHEMA}
    for number in range(50):
        request = {**body(f"q{number}"), "tools": [tool], "tool_choice": {"type": "any"}}
        del request["output_config"]
        plan = plan_reply(0, request, 20, 300)
        assert plan.stop_reason == "tool_use"
        assert validate(json.loads(plan.blocks[-1].text), SCHEMA) is None


@pytest.mark.anyio
async def test_the_sdk_streams_json_as_text_deltas_and_reads_refusals(simulate: Simulate) -> None:
    config = SimulatorConfig(timing=INSTANT, tokens_per_delta=(1, 5), refusals=0.3)
    async with simulate(config) as (_, client, _):
        deltas: list[str] = []
        refusals = []
        for number in range(12):
            async with client.messages.stream(**body(f"review {number}")) as stream:
                async for event in stream:
                    if event.type == "content_block_delta" and event.delta.type == "text_delta":
                        deltas.append(event.delta.text)
                message = await stream.get_final_message()
            whole = await client.messages.create(**body(f"review {number}"))
            assert whole.model_dump()["content"] == message.model_dump()["content"]
            assert whole.stop_reason == message.stop_reason
            if message.stop_reason == "refusal":
                assert message.stop_details is not None
                assert message.stop_details.type == "refusal"
                refusals.append(message)
            else:
                text = "".join(block.text for block in message.content if block.type == "text")
                assert validate(json.loads(text), SCHEMA) is None
        assert refusals
        assert len(deltas) > 12 * 5
        assert max(len(d) for d in deltas) > 3


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"output_config": {"format": {"type": "json_schema", "schema": {"type": "object", "properties": {}}}}},
            "output_config.format.schema: For 'object' type, 'additionalProperties' must be explicitly set to false",
        ),
        (
            {
                "output_config": None,
                "output_format": {"type": "json_schema", "schema": closed({"n": {"type": "integer", "maximum": 3}})},
            },
            "output_format.schema: For 'integer' type, property 'maximum' is not supported",
        ),
        ({"output_format": {"type": "json_schema", "schema": SCHEMA}}, BOTH_FORMATS),
        (
            {"tools": [{"name": "t", "strict": True, "input_schema": {"type": "object", "properties": {}}}]},
            "tools.0.custom: For 'object' type, 'additionalProperties' must be explicitly set to false",
        ),
        ({"output_config": {"format": {"type": "json", "schema": SCHEMA}}}, "does not match any of the expected tags"),
    ],
)
async def test_the_simulator_refuses_what_the_api_refuses(
    simulate: Simulate, change: dict[str, Any], message: str
) -> None:
    async with simulate() as (_, client, _):
        beta = {"output_format": change.pop("output_format")} if "output_format" in change else None
        request = {key: value for key, value in {**body(), **change}.items() if value is not None}
        with pytest.raises(anthropic.BadRequestError) as caught:
            await client.messages.create(**request, extra_body=beta)
        assert caught.value.status_code == 400
        assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
        assert message in caught.value.body["error"]["message"]  # type: ignore[index]


@pytest.mark.anyio
async def test_citations_and_prefill_are_refused_with_a_format_and_the_beta_name_works(simulate: Simulate) -> None:
    document = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "A kettle."},
        "citations": {"enabled": True},
    }
    cited = body()
    cited["messages"] = [{"role": "user", "content": [document, {"type": "text", "text": "Review it"}]}]
    prefilled = body()
    prefilled["messages"] = [*prefilled["messages"], {"role": "assistant", "content": '{"sentiment"'}]
    beta = body()
    beta_format = {"output_format": beta.pop("output_config")["format"]}
    async with simulate() as (_, client, _):
        for request, message in ((cited, CITATIONS_WITH_FORMAT), (prefilled, PREFILL_WITH_FORMAT)):
            with pytest.raises(anthropic.BadRequestError, match="structured outputs") as caught:
                await client.messages.create(**request)
            assert caught.value.body["error"]["message"] == message  # type: ignore[index]
        reply = await client.messages.create(**beta, extra_body=beta_format)
        assert validate(json.loads(reply.content[0].text), SCHEMA) is None


def test_a_pydantic_model_gives_a_schema_the_api_takes_and_validates_its_own() -> None:
    from pydantic import BaseModel, Field

    from orchestrator.outputs import is_model, model_check, model_schema

    class Aspect(BaseModel):
        aspect: str
        opinion: str

    class Review(BaseModel):
        product: str
        rating: int = Field(ge=1, le=5)  # the API takes no bounds: the SDK moves them into the description
        aspects: list[Aspect]

    assert is_model(Review)
    assert not is_model(SCHEMA)
    schema = model_schema(Review)
    assert schema_problems(schema) == []
    check = model_check(Review)
    assert check({"product": "k", "rating": 3, "aspects": []}) is None
    assert check({"product": "k", "rating": 9, "aspects": []}) == "$.rating: Input should be less than or equal to 5"
    assert (
        check({"product": "k", "rating": 3, "aspects": [{"aspect": 1}]})
        == "$.aspects[0].aspect: Input should be a valid string"
    )
