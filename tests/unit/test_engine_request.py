"""An InferenceJob and a batch line asking the same thing are the same request to the
engine: the same prompt, the same grammar, the same checks on the answer."""

from __future__ import annotations

import datetime
import json
from typing import Any

import pytest

from gptoss_operator.api.batch import RequestDefaults
from gptoss_operator.api.job import InferenceJobSpec
from gptoss_operator.engine.harmony import Harmony, ResponseFormat
from gptoss_operator.engine.render import render_request
from gptoss_operator.engine.request import ChatRequest, from_job_spec
from gptoss_operator.workers.batch.lines import LineRequest, parse_line
from tests.harmony_corpus import CORPUS

DAY = datetime.date(2026, 1, 2)


def job_spec(body: dict[str, Any]) -> InferenceJobSpec:
    """The InferenceJob a client writes for a chat completion body."""
    messages = []
    for message in body["messages"]:
        converted: dict[str, Any] = {"role": message["role"]}
        if message.get("content") is not None:
            converted["content"] = message["content"]
        if message.get("reasoning"):
            converted["analysis"] = message["reasoning"]
        if message.get("tool_call_id"):
            converted["toolCallId"] = message["tool_call_id"]
        if message.get("tool_calls"):
            converted["toolCalls"] = [
                {
                    "id": c["id"],
                    "name": c["function"]["name"],
                    "arguments": c["function"]["arguments"],
                }
                for c in message["tool_calls"]
            ]
        messages.append(converted)
    tools = [
        {k: v for k, v in tool["function"].items() if k in ("name", "description", "parameters")}
        for tool in body.get("tools") or []
    ]
    spec: dict[str, Any] = {"modelRef": {"name": "m"}, "messages": messages}
    if tools:
        spec["tools"] = tools
    if "reasoning_effort" in body:
        spec["reasoningLevel"] = body["reasoning_effort"]
    return InferenceJobSpec.model_validate(spec)


def line_request(body: dict[str, Any]) -> ChatRequest:
    line = {"custom_id": "c", "url": "/v1/chat/completions", "body": body}
    parsed = parse_line(1, json.dumps(line).encode(), RequestDefaults(), {"m"})
    assert isinstance(parsed, LineRequest), parsed
    return parsed.chat


@pytest.fixture(scope="module")
def harmony() -> Harmony:
    return Harmony()


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_a_job_renders_as_the_same_batch_line(harmony: Harmony, name: str) -> None:
    body = CORPUS[name]
    job = from_job_spec(job_spec(body))
    line = line_request(body)
    assert job.messages == line.messages
    assert render_request(harmony, job, DAY) == render_request(harmony, line, DAY)


SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


def test_a_response_format_is_described_at_the_end_of_the_developer_message(
    harmony: Harmony,
) -> None:
    spec = InferenceJobSpec.model_validate(
        {
            "modelRef": {"name": "m"},
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "ok?"},
            ],
            "tools": [{"name": "f"}],
            "responseFormat": {
                "type": "json_schema",
                "jsonSchema": {"name": "verdict", "description": "Is it ok.", "schema": SCHEMA},
            },
        }
    )
    request = from_job_spec(spec)
    text = harmony.decode(render_request(harmony, request, DAY))
    developer = text.split("<|start|>developer<|message|>")[1].split("<|end|>")[0]
    assert developer.startswith("# Instructions\n\nBe brief.\n\n# Tools\n\n## functions")
    assert developer.endswith(
        "\n\n# Response Formats\n\n## verdict\n\n// Is it ok.\n"
        '{"type":"object","properties":{"ok":{"type":"boolean"}},"required":["ok"]}'
    )
    alone = harmony.decode(
        harmony.render(
            request.messages[1:],
            "low",
            DAY,
            response_format=ResponseFormat("json_schema", "v", None, {"type": "object"}),
        )
    )
    assert (
        '<|start|>developer<|message|># Response Formats\n\n## v\n\n{"type":"object"}<|end|>'
        in alone
    )


def test_what_a_job_asks_of_the_answer() -> None:
    def spec(**extra: Any) -> ChatRequest:
        return from_job_spec(
            InferenceJobSpec.model_validate(
                {"modelRef": {"name": "m"}, "messages": [{"role": "user", "content": "q"}], **extra}
            )
        )

    plain = spec()
    assert (plain.answer_schema, plain.sampling([1]).structured_outputs) == (None, None)
    assert plain.keep_analysis
    strict = spec(
        responseFormat={"type": "json_schema", "jsonSchema": {"name": "v", "schema": SCHEMA}}
    )
    assert strict.answer_schema == SCHEMA
    assert strict.sampling([1]).structured_outputs is not None
    loose = spec(
        responseFormat={
            "type": "json_schema",
            "jsonSchema": {"name": "v", "schema": SCHEMA, "strict": False},
        }
    )
    assert loose.answer_schema == SCHEMA, "checked all the same"
    assert loose.sampling([1]).structured_outputs is None, "described, not enforced"
    assert spec(responseFormat={"type": "json_object"}).answer_schema == {"type": "object"}
    assert not spec(analysis="drop").keep_analysis
    named = spec(tools=[{"name": "f"}, {"name": "g"}], toolChoice="g")
    sent = named.sampling([1]).structured_outputs
    assert sent is not None
    assert "to=functions.g" in sent["structural_tag"]
    assert "to=functions.f" not in sent["structural_tag"]


def test_a_priority_goes_to_vllm_reversed_and_only_to_an_engine_that_schedules_by_it() -> None:
    from gptoss_operator.engine.client import EngineClient

    spec = InferenceJobSpec.model_validate(
        {"modelRef": {"name": "m"}, "messages": [{"role": "user", "content": "hi"}], "priority": 5}
    )
    assert spec.priority == 5
    request = from_job_spec(spec)
    client = EngineClient("http://127.0.0.1:1", "m")
    urgent = client.request_body([1, 2], request.sampling([3], spec.priority))
    assert urgent["priority"] == -5, "vLLM runs lower values first"
    assert "priority" not in client.request_body([1, 2], request.sampling([3]))
    default = InferenceJobSpec.model_validate(
        {"modelRef": {"name": "m"}, "messages": [{"role": "user", "content": "hi"}]}
    )
    assert default.priority == 0
