"""Our harmony prompts are the token ids vLLM itself renders for the same request.

The corpus is chat completion requests as clients send them (system and developer
messages, multi-turn, tools, tool calls and their results, every reasoning level,
unicode). Our side reads each as a batch line (the product's own parser) and renders it;
vLLM's side is the pinned vLLM's chat path for gpt-oss, run in the engine venv
(``gptoss_sandbox/vllm_harmony_render.py``). Where the two differ, one renderer is wrong,
and ``DIFFERENCES`` says which and checks that the difference is exactly that one.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from gptoss_operator.api.batch import RequestDefaults
from gptoss_operator.engine.harmony import Harmony
from gptoss_operator.engine.render import render_request
from gptoss_operator.workers.batch.lines import LineRequest, parse_line
from gptoss_sandbox import vllm_harmony_render
from gptoss_sandbox.engine_venv import EngineVenv
from tests.harmony_corpus import CORPUS

pytestmark = pytest.mark.engine

DAY = datetime.date(2026, 1, 2)
# vLLM 0.32 renders a tool result's header as "functions.NAME<|channel|>commentary
# to=assistant" (its oss-harmony 0.0.11 moved the recipient behind the channel). The
# harmony guide, and gpt-oss's training format, put it after the author:
# "functions.NAME to=assistant<|channel|>commentary". vLLM's renderer is wrong here (it
# already rewrites the assistant's own tool-call headers back to the trained form).
_VLLM_TOOL_HEADER = re.compile(
    r"<\|start\|>(functions\.[\w-]+)<\|channel\|>commentary to=assistant"
)


def _trained_tool_headers(text: str) -> str:
    return _VLLM_TOOL_HEADER.sub(r"<|start|>\1 to=assistant<|channel|>commentary", text)


# vLLM renders an assistant turn's preamble (commentary) before its analysis. The model
# writes them the other way round (harmony guide, "Preambles": analysis, then the
# commentary preamble, then the call), so the history must keep that order: vLLM's
# renderer is wrong here.
_VLLM_PREAMBLE_FIRST = re.compile(
    r"(<\|start\|>assistant<\|channel\|>commentary<\|message\|>[^<]*<\|end\|>)"
    r"(<\|start\|>assistant<\|channel\|>analysis<\|message\|>[^<]*<\|end\|>)"
)


def _analysis_first(text: str) -> str:
    return _VLLM_PREAMBLE_FIRST.sub(r"\2\1", _trained_tool_headers(text))


WITH_TOOL_RESULTS = (
    "tool call then result",
    "analysis before the call kept",
    "preamble before the call",
    "two calls, two results",
    "tool loop, then a new turn",
    "unicode tool result",
)
# The requests vLLM renders wrongly, and what vLLM's text becomes once its mistake is
# undone: ours must then be that text exactly.
DIFFERENCES: dict[str, Callable[[str], str]] = {
    **dict.fromkeys(WITH_TOOL_RESULTS, _trained_tool_headers),
    "analysis and preamble before the call": _analysis_first,
}


@pytest.fixture(scope="module")
def harmony() -> Harmony:
    return Harmony()


@pytest.fixture(scope="module")
def vllm_prompts(engine_venv: EngineVenv) -> dict[str, Any]:
    return dict(engine_venv.run_json(vllm_harmony_render.__file__, CORPUS, DAY.isoformat()))


def _ours(harmony: Harmony, name: str) -> list[int]:
    line = {"custom_id": name, "url": "/v1/chat/completions", "body": CORPUS[name]}
    request = parse_line(1, json.dumps(line).encode(), RequestDefaults(), {"m"})
    assert isinstance(request, LineRequest), request
    return render_request(harmony, request.chat, DAY)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_our_prompt_is_the_one_vllm_renders(
    harmony: Harmony, vllm_prompts: dict[str, Any], name: str
) -> None:
    theirs = vllm_prompts[name]
    assert isinstance(theirs, list), f"vLLM could not render {name!r}: {theirs}"
    ours = _ours(harmony, name)
    if name not in DIFFERENCES:
        assert ours == theirs, (
            f"our renderer differs from vLLM's on {name!r}:\n"
            f"ours: {harmony.decode(ours)!r}\nvLLM: {harmony.decode(theirs)!r}"
        )
        return
    assert ours != theirs, f"vLLM now renders {name!r} as we do: drop it from DIFFERENCES"
    fixed = DIFFERENCES[name](harmony.decode(theirs))
    assert harmony.decode(ours) == fixed, "we differ from vLLM by more than its known mistake"


def test_the_corpus_covers_what_the_issue_lists() -> None:
    roles = {m["role"] for body in CORPUS.values() for m in body["messages"]}
    assert roles == {"system", "developer", "user", "assistant", "tool"}
    levels = {body.get("reasoning_effort", "medium") for body in CORPUS.values()}
    assert levels == {"low", "medium", "high"}
    assert len(CORPUS) - len(DIFFERENCES) >= len(CORPUS) // 2, "mostly identical, not excused"
