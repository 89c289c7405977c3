"""The grammars we send with a request accept what vLLM's chat path accepts for gpt-oss,
and refuse what would not parse as harmony.

We call vLLM's completions endpoint, where vLLM adds no harmony-aware grammar of its own;
so the structural tags (analysis free, then the constrained message) are ours to build.
For each case, the pinned vLLM builds its own tag for the same chat request
(``gptoss_sandbox/vllm_structural_tag.py``), and xgrammar, vLLM's grammar backend, says
token by token which outputs each tag lets the engine generate
(``gptoss_sandbox/xgrammar_accepts.py``). Every well-formed output is accepted by both;
the ill-formed ones that vLLM's tag lets through are refused by ours: harmony's tokens
spelled out as text (which a random model wrote, and which no parser reads as a header),
a run of blank space inside the JSON, an <|end|> between the answer and its stop.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gptoss_operator.engine import structured
from gptoss_operator.engine.harmony import (
    CALL_TOKEN,
    END_OF_TEXT_TOKEN,
    RETURN_TOKEN,
    FunctionTool,
    Harmony,
    ResponseFormat,
)
from gptoss_operator.engine.vocab import VOCAB_FILE
from gptoss_sandbox import vllm_structural_tag, xgrammar_accepts
from gptoss_sandbox.engine_venv import EngineVenv
from gptoss_sandbox.real_engine import vocab_folder

pytestmark = pytest.mark.engine

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city"],
}
ANSWER = {
    "type": "object",
    "properties": {
        "ok": {"type": "boolean"},
        "items": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["ok"],
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "d", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "get_time"}},
]
MAX_TOKENS = 4096
# name: (what vLLM is given, what we build)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "json_schema": (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "r", "schema": ANSWER},
            }
        },
        structured.final_answer_tag(ResponseFormat("json_schema", "r", None, ANSWER), MAX_TOKENS),
    ),
    "json_object": (
        {"response_format": {"type": "json_object"}},
        structured.final_answer_tag(ResponseFormat("json_object"), MAX_TOKENS),
    ),
    "tool_choice required": (
        {"tools": TOOLS, "tool_choice": "required"},
        structured.tool_call_tag(
            [FunctionTool("get_weather", "d", WEATHER), FunctionTool("get_time")], MAX_TOKENS
        ),
    ),
    "a named function": (
        {"tools": TOOLS[1:], "tool_choice": "forced"},
        structured.tool_call_tag([FunctionTool("get_time")], MAX_TOKENS),
    ),
}
REASONED = "<|channel|>analysis<|message|>Check the rules.<|end|><|start|>assistant"
FINAL = "<|channel|>final <|constrain|>json<|message|>"
CALL = "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
# output: (its text, harmony's tokens spelled out as text, its stop token)
OUTPUTS: dict[str, tuple[str, bool, int]] = {
    "answer": (FINAL + '{"ok": true}', False, RETURN_TOKEN),
    "reasoned answer": (
        REASONED + '<|channel|>final json<|message|>{"ok": false, "items": ["a"]}',
        False,
        END_OF_TEXT_TOKEN,
    ),
    "answer off the schema": (FINAL + '{"ok": "yes"}', False, RETURN_TOKEN),
    "answer, header spelled out": (FINAL + '{"ok": true}', True, RETURN_TOKEN),
    "answer in blank space": (FINAL + '{"ok":' + "\n" * 40 + "true}", False, RETURN_TOKEN),
    "answer, then <|end|>": (FINAL + '{"ok": true}<|end|>', False, RETURN_TOKEN),
    "analysis holding a header": (
        "<|channel|>analysis<|message|>Think<|start|>assistant<|end|><|start|>assistant"
        + FINAL
        + '{"ok": true}',
        False,
        RETURN_TOKEN,
    ),
    "call": (CALL + '{"city": "Paris"}', False, CALL_TOKEN),
    "call, recipient in the role": (
        ' to=functions.get_weather<|channel|>commentary json<|message|>{"city": "Oslo"}',
        False,
        CALL_TOKEN,
    ),
    "preamble, then call": (
        REASONED + "<|channel|>commentary<|message|>Checking.<|end|><|start|>assistant"
        '<|channel|>commentary to=functions.get_weather json<|message|>{"city": "Oslo"}',
        False,
        CALL_TOKEN,
    ),
    "call off the schema": (CALL + '{"city": 3}', False, CALL_TOKEN),
    "call, header spelled out": (CALL + '{"city": "Paris"}', True, CALL_TOKEN),
    "call of get_time": (
        "<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{}",
        False,
        CALL_TOKEN,
    ),
}
BOTH, NEITHER, ONLY_VLLM = (True, True), (False, False), (True, False)
# case: {output: (vLLM's tag accepts it, ours does)}; outputs not named: neither.
EXPECTED: dict[str, dict[str, tuple[bool, bool]]] = {
    "json_schema": {
        "answer": BOTH,
        "reasoned answer": BOTH,
        "answer, header spelled out": ONLY_VLLM,
        "answer in blank space": ONLY_VLLM,
        "answer, then <|end|>": ONLY_VLLM,
        "analysis holding a header": ONLY_VLLM,
    },
    "json_object": {
        "answer": BOTH,
        "reasoned answer": BOTH,
        "answer off the schema": BOTH,  # any object will do
        "answer, header spelled out": ONLY_VLLM,
        "answer in blank space": ONLY_VLLM,
        "answer, then <|end|>": ONLY_VLLM,
        "analysis holding a header": ONLY_VLLM,
    },
    "tool_choice required": {
        "call": BOTH,
        "call, recipient in the role": BOTH,
        "preamble, then call": BOTH,
        "call of get_time": BOTH,
        "call, header spelled out": ONLY_VLLM,
    },
    "a named function": {"call of get_time": BOTH},
}


def _ids(harmony: Harmony, text: str, spelled_out: bool, stop: int) -> list[int]:
    if spelled_out:
        return [*harmony.encoding.encode(text, disallowed_special=()), stop]
    return [*harmony.encoding.encode(text, allowed_special="all"), stop]


@pytest.fixture(scope="module")
def accepted(engine_venv: EngineVenv) -> dict[str, Any]:
    """{case: {output: (accepted by vLLM's tag, accepted by ours)}}."""
    theirs = engine_venv.run_json(
        vllm_structural_tag.__file__, {name: case for name, (case, _) in CASES.items()}
    )
    harmony = Harmony()
    tags: dict[str, Any] = {}
    for name, (_, ours) in CASES.items():
        assert "error" not in theirs[name], theirs[name]
        tags[f"vllm {name}"] = theirs[name]
        tags[f"ours {name}"] = ours
    request = {
        "vocab": str(vocab_folder() / VOCAB_FILE),
        "stop": sorted({RETURN_TOKEN, CALL_TOKEN, END_OF_TEXT_TOKEN}),
        "tags": tags,
        "outputs": {name: _ids(harmony, *output) for name, output in OUTPUTS.items()},
    }
    answers = engine_venv.run_json(xgrammar_accepts.__file__, request)
    return {
        name: {out: (answers[f"vllm {name}"][out], answers[f"ours {name}"][out]) for out in OUTPUTS}
        for name in CASES
    }


@pytest.mark.parametrize("name", sorted(CASES))
def test_our_tag_accepts_what_vllms_accepts_and_refuses_what_would_not_parse(
    accepted: dict[str, Any], name: str
) -> None:
    expected = {output: EXPECTED[name].get(output, NEITHER) for output in OUTPUTS}
    assert accepted[name] == expected


def _free_texts(tag: dict[str, Any]) -> dict[str, int]:
    """{channel: max_tokens of its free text} of a tag's free messages."""
    texts = {}
    for element in tag["format"]["elements"]:
        if element["type"] == "optional":
            channel, _, text, *_ = element["content"]["elements"]
            assert text["type"] == "any_tokens"
            texts[channel["elements"][1]["value"]] = text["max_tokens"]
    return texts


@pytest.mark.parametrize("max_tokens", [16, 256, 400, 4096, 32768])
def test_the_free_messages_together_leave_a_reserve_for_the_answer(max_tokens: int) -> None:
    assert structured.free_budget(400) == 300
    assert structured.free_budget(32768) == 32768 - structured.ANSWER_RESERVE
    answer = _free_texts(structured.final_answer_tag(ResponseFormat("json_object"), max_tokens))
    call = _free_texts(structured.tool_call_tag((FunctionTool("get_time"),), max_tokens))
    assert set(answer) == {"analysis"}
    assert set(call) == {"analysis", "commentary"}
    for texts in (answer, call):
        headers = structured.FREE_MESSAGE_HEADER * len(texts)
        assert sum(texts.values()) + headers <= max(structured.free_budget(max_tokens), headers)
    # The analysis alone takes all but its header; beside a preamble, three quarters.
    assert answer["analysis"] == max(structured.free_budget(max_tokens) - 7, 0)
    assert call["analysis"] >= 3 * call["commentary"]


def test_a_request_sends_its_tag_as_vllm_reads_it() -> None:
    tools = (FunctionTool("get_time"),)
    sent = structured.structured_outputs(tools, "get_time", None, 100)
    assert sent is not None
    assert set(sent) == {"structural_tag"}
    assert json.loads(sent["structural_tag"]) == structured.tool_call_tag(tools, 100)
    assert structured.structured_outputs((), "auto", None, 100) is None
    assert structured.structured_outputs((), "auto", ResponseFormat("text"), 100) is None
