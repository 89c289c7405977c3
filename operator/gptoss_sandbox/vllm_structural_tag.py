"""The structural tags the installed vLLM builds for gpt-oss's structured outputs.

Runs under the engine venv's python (it imports ``vllm`` and ``xgrammar``), by path:
``python vllm_structural_tag.py < cases.json``. The input is a JSON object of named cases,
each ``{"response_format": ...}`` (a chat completion's) or ``{"tools": [...],
"tool_choice": "required" | "forced"}``; the output, the same names, each the tag as
vLLM's chat path for gpt-oss builds it (``vllm/parser/harmony.py``), as JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def response_format_tag(response_format: dict[str, Any]) -> Any:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.parser.harmony import _adjust_output_format

    request = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": response_format,
        }
    )
    adjusted = _adjust_output_format(request)
    assert adjusted.structured_outputs is not None
    return json.loads(adjusted.structured_outputs.structural_tag)


def tool_tag(tools: list[dict[str, Any]], tool_choice: str) -> Any:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionToolsParam
    from vllm.parser.harmony import get_harmony_structural_tag

    params = [ChatCompletionToolsParam.model_validate(tool) for tool in tools]
    tag = get_harmony_structural_tag(params, [], tool_choice, True)
    return tag.model_dump()


def main() -> int:
    cases = json.load(sys.stdin)
    results: dict[str, Any] = {}
    for name, case in cases.items():
        try:
            if "response_format" in case:
                results[name] = response_format_tag(case["response_format"])
            else:
                results[name] = tool_tag(case["tools"], case["tool_choice"])
        except Exception as error:  # reported per case: the caller says which failed
            results[name] = {"error": f"{type(error).__name__}: {error}"}
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
