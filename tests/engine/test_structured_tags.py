"""The grammars we send with a request are the ones vLLM's chat path builds for gpt-oss.

We call vLLM's completions endpoint, where vLLM adds no harmony-aware grammar of its own;
so the structural tags (analysis free, then the constrained message) are ours to build.
Each one here must equal what the pinned vLLM builds for the same chat request
(``gptoss_sandbox/vllm_structural_tag.py``), up to xgrammar's defaults.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gptoss_operator.engine import structured
from gptoss_operator.engine.harmony import FunctionTool, ResponseFormat
from gptoss_sandbox import vllm_structural_tag
from gptoss_sandbox.engine_venv import EngineVenv

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
# name: (what vLLM is given, what we build)
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "json_schema": (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "r", "schema": ANSWER},
            }
        },
        structured.final_answer_tag(ResponseFormat("json_schema", "r", None, ANSWER)),
    ),
    "json_object": (
        {"response_format": {"type": "json_object"}},
        structured.final_answer_tag(ResponseFormat("json_object")),
    ),
    "tool_choice required": (
        {"tools": TOOLS, "tool_choice": "required"},
        structured.tool_call_tag(
            [FunctionTool("get_weather", "d", WEATHER), FunctionTool("get_time")]
        ),
    ),
    "a named function": (
        {"tools": TOOLS[1:], "tool_choice": "forced"},
        structured.tool_call_tag([FunctionTool("get_time")]),
    ),
}
# xgrammar's defaults, which vLLM's dump spells out and ours leaves implicit.
DEFAULTS: dict[str, Any] = {
    "excludes": [],
    "max_tokens": None,
    "max_chars": None,
    "style": "json",
    "any_order": False,
    "max_whitespace_cnt": None,
}


def _explicit(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: _explicit(item)
            for key, item in value.items()
            if not (key in DEFAULTS and item == DEFAULTS[key])
        }
    if isinstance(value, list):
        return [_explicit(item) for item in value]
    return value


@pytest.fixture(scope="module")
def vllm_tags(engine_venv: EngineVenv) -> dict[str, Any]:
    cases = {name: case for name, (case, _) in CASES.items()}
    return dict(engine_venv.run_json(vllm_structural_tag.__file__, cases))


@pytest.mark.parametrize("name", sorted(CASES))
def test_our_tag_is_the_one_vllm_builds(vllm_tags: dict[str, Any], name: str) -> None:
    theirs = vllm_tags[name]
    assert "error" not in theirs, theirs
    assert _explicit(CASES[name][1]) == _explicit(theirs)


def test_a_request_sends_its_tag_as_vllm_reads_it() -> None:
    tools = (FunctionTool("get_time"),)
    sent = structured.structured_outputs(tools, "get_time", None)
    assert sent is not None
    assert set(sent) == {"structural_tag"}
    assert json.loads(sent["structural_tag"]) == structured.tool_call_tag(tools)
    assert structured.structured_outputs((), "auto", None) is None
    assert structured.structured_outputs((), "auto", ResponseFormat("text")) is None
