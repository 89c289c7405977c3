"""Function calling and structured answers against real vLLM on the real node: a
scripted tiny checkpoint (``tools``) that calls ``get_weather``, then answers from the
result once the conversation carries the call.

Job by job, a client runs the tool loop: the first job ends with the call (name and
arguments exactly as the model wrote them, ``<|call|>`` arriving as a stop token), the
second, carrying the call and the tool's result, is answered. A batch holds the same
steps and a line with a response format; the openai SDK's own types parse every output
line.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from openai.types.chat import ChatCompletion
from tests.cluster.job_helpers import condition, create_job, wait_finished
from tests.node.conftest import ChartRelease, HubService, claim_folder, own_model
from tests.node.test_node_batches import (
    create_batch,
    read_jsonl,
    wait_batch_finished,
)

from gptoss_sandbox.images import ImageArchive
from gptoss_sandbox.real_engine import build_tiny_checkpoint
from gptoss_sandbox.tiny_gptoss import TOOL_ANSWER, TOOL_ARGUMENTS, TOOL_NAME

pytestmark = [pytest.mark.cluster, pytest.mark.node]

AGENT = "agent"
AGENT_REPO = "openai/gpt-oss-agent"
WEATHER = {
    "name": TOOL_NAME,
    "description": "The weather now.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
ASK = {"role": "user", "content": "What is the weather in Paris?"}
RESULT = '{"sky": "clear"}'


@pytest.fixture(scope="module")
def agent(
    kube: Client,
    chart_release: ChartRelease,
    vllm_image: ImageArchive,
    hub_service: HubService,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """The tool-calling model, Ready in a namespace of its own."""
    del chart_release
    checkpoint = build_tiny_checkpoint(tmp_path_factory.mktemp("agent") / "tools", "tools")
    with own_model(kube, vllm_image, hub_service, checkpoint, AGENT, AGENT_REPO) as namespace:
        yield namespace


def _name() -> str:
    return f"j-{uuid.uuid4().hex[:8]}"


def _called(kube: Client, namespace: str, **spec: Any) -> dict[str, Any]:
    name = _name()
    create_job(kube, namespace, name, AGENT, messages=[ASK], tools=[WEATHER], **spec)
    status = wait_finished(kube, namespace, name, timeout=300)
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["finishReason"] == "tool_calls"
    assert condition(status, "Complete")["reason"] == "ToolCalls"
    assert not status.get("response")
    assert not status.get("commentary"), "a call is not commentary text"
    [call] = status["toolCalls"]
    assert (call["name"], call["arguments"]) == (TOOL_NAME, TOOL_ARGUMENTS)
    return dict(call)


def test_a_tool_loop_runs_job_by_job_on_real_vllm(kube: Client, agent: str) -> None:
    call = _called(kube, agent)
    assert call["id"].startswith("call_")
    answer = _name()
    create_job(
        kube,
        agent,
        answer,
        AGENT,
        tools=[WEATHER],
        messages=[
            ASK,
            {"role": "assistant", "toolCalls": [call]},
            {"role": "tool", "toolCallId": call["id"], "name": TOOL_NAME, "content": RESULT},
        ],
    )
    status = wait_finished(kube, agent, answer, timeout=300)
    assert status["phase"] == "Succeeded", status.get("message")
    assert (status["finishReason"], status["response"]) == ("stop", TOOL_ANSWER)
    assert "toolCalls" not in status


@pytest.mark.parametrize("choice", ["required", TOOL_NAME])
def test_a_required_call_is_enforced_by_the_grammar_and_made(
    kube: Client, agent: str, choice: str
) -> None:
    """The structural tag goes to vLLM with the request; the model's call passes it."""
    _called(kube, agent, toolChoice=choice, temperature=1.0)


def _line(custom_id: str, **body: Any) -> str:
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


VERDICT = {
    "type": "object",
    "properties": {"sky": {"enum": ["clear", "rain"]}},
    "required": ["sky"],
    "additionalProperties": False,
}


def test_a_batch_with_tools_and_a_response_format_answers_in_openais_shape(
    kube: Client, agent: str
) -> None:
    tools = [{"type": "function", "function": WEATHER}]
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": TOOL_NAME, "arguments": TOOL_ARGUMENTS},
    }
    lines = [
        _line("ask", messages=[ASK], tools=tools),
        _line(
            "named",
            messages=[ASK],
            tools=tools,
            tool_choice={"type": "function", "function": {"name": TOOL_NAME}},
        ),
        _line(
            "answer",
            tools=tools,
            messages=[
                ASK,
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "call_1", "content": RESULT},
            ],
        ),
        _line(
            "verdict",
            messages=[ASK],
            max_completion_tokens=200,
            temperature=1.0,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "verdict", "schema": VERDICT, "strict": True},
            },
        ),
    ]
    create_batch(kube, "tools", lines, namespace=agent, model=AGENT, shards=1)
    status = wait_batch_finished(kube, "tools", namespace=agent)
    assert status["phase"] == "Succeeded", status
    assert status["counts"]["succeeded"] == 4, status["counts"]
    folder: Path = claim_folder(kube, agent, "tools-out") / "out"
    lines_out = {line["custom_id"]: line for line in read_jsonl(folder / "output.jsonl")}
    assert set(lines_out) == {"ask", "named", "answer", "verdict"}
    answers = {
        custom_id: ChatCompletion.model_validate(line["response"]["body"])
        for custom_id, line in lines_out.items()
    }
    for custom_id in ("ask", "named"):
        (choice,) = answers[custom_id].choices
        assert choice.finish_reason == "tool_calls"
        (made,) = choice.message.tool_calls or []
        assert made.type == "function"
        assert (made.function.name, made.function.arguments) == (TOOL_NAME, TOOL_ARGUMENTS)
    (answered,) = answers["answer"].choices
    assert (answered.finish_reason, answered.message.content) == ("stop", TOOL_ANSWER)
    assert not answered.message.tool_calls
    (verdict,) = answers["verdict"].choices
    assert verdict.finish_reason == "stop", verdict
    assert json.loads(verdict.message.content or "") in ({"sky": "clear"}, {"sky": "rain"})
