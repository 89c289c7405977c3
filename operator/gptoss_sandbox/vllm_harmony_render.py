"""Prompt token ids as the installed vLLM renders a gpt-oss chat completion request.

Runs under the engine venv's python (it imports ``vllm`` and the harmony library vLLM
depends on), by path: ``python vllm_harmony_render.py DATE < requests.json``. The input is
a JSON object of named chat completion request bodies (``messages``, ``tools``,
``reasoning_effort``); the output, a JSON object of the same names, each the prompt token
ids or the error vLLM raised. It calls the functions vLLM's own chat path calls for
gpt-oss (``vllm/renderers/online_renderer.py``, ``_make_request_with_harmony``), with the
conversation's start date pinned to DATE, as ``VLLM_SYSTEM_START_DATE`` does for the server.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def render(body: dict[str, Any]) -> list[int]:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionToolsParam
    from vllm.entrypoints.openai.parser.harmony_utils import (
        build_harmony_preamble,
        extract_instructions_from_messages,
        parse_chat_inputs_to_harmony_messages,
        render_for_completion,
    )

    tools = [ChatCompletionToolsParam.model_validate(tool) for tool in body.get("tools") or []]
    instructions, rest = extract_instructions_from_messages(body["messages"])
    messages = build_harmony_preamble(
        instructions=instructions,
        tools=tools or None,
        reasoning_effort=body.get("reasoning_effort", "medium"),
        with_custom_tools=True,
    )
    messages += parse_chat_inputs_to_harmony_messages(rest)
    return list(render_for_completion(messages))


def main() -> int:
    os.environ["VLLM_SYSTEM_START_DATE"] = sys.argv[1]
    requests = json.load(sys.stdin)
    results: dict[str, Any] = {}
    for name, body in requests.items():
        try:
            results[name] = render(body)
        except Exception as error:  # reported per request: the caller says which failed
            results[name] = {"error": f"{type(error).__name__}: {error}"}
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
