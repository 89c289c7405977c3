"""Structured outputs: what constrains gpt-oss's output, and whether an answer obeys.

The engine's grammar must leave harmony alone: the analysis stays free text, and only
the message that matters is constrained (the final answer to a ``json_schema``, the
arguments of a required tool call to the function's parameters). ``structural_tag``
builds that grammar for vLLM's structured outputs (xgrammar's structural tag, sent as
JSON on the completions request); it mirrors the tag vLLM's chat path builds for
gpt-oss, so the completions endpoint constrains as the chat endpoint would.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from jsonschema import Draft202012Validator

from gptoss_operator.engine.harmony import FunctionTool, ResponseFormat

# Each way the model may open the message that holds a JSON value: "<|constrain|>json" or
# a bare "json" content type (gpt-oss writes both).
_JSON_TYPES = (" json", " <|constrain|>json")
# A constrained message ends at <|end|>, or at a stop token (<|return|>, <|call|>): xgrammar
# cannot name stop tokens, and "" lets the grammar end where one may come.
_END = ["<|end|>", ""]
_CHANNELS = ("<|channel|>commentary", "<|channel|>analysis", "<|channel|>final")
# A call names its recipient in the role part of the header, or after the channel.
_CALL_BEGINS = (
    " to=functions.{name}{channel}{kind}<|message|>",
    "{channel} to=functions.{name}{kind}<|message|>",
)
_ANY_TEXT: dict[str, Any] = {"type": "any_text"}


def answer_problem(text: str, schema: Mapping[str, Any]) -> tuple[Any, str | None]:
    """(the parsed value, None) when ``text`` is JSON that ``schema`` accepts; else
    (None or the value, why not)."""
    try:
        value = json.loads(text)
    except ValueError as error:
        return None, f"the answer is not JSON ({error})"
    errors = sorted(Draft202012Validator(dict(schema)).iter_errors(value), key=str)
    if errors:
        first = errors[0]
        where = "/".join(str(part) for part in first.absolute_path) or "the top level"
        return value, f"the answer does not match the schema at {where}: {first.message}"
    return value, None


def _tag(begin: str, content: Mapping[str, Any]) -> dict[str, Any]:
    return {"type": "tag", "begin": begin, "content": dict(content), "end": _END}


def _json_schema(schema: Mapping[str, Any] | None) -> dict[str, Any]:
    """Content that is JSON matching ``schema`` (None: any JSON value)."""
    return {"type": "json_schema", "json_schema": dict(schema) if schema is not None else True}


def _optional_message(channel: str) -> dict[str, Any]:
    """An optional free-text message on ``channel``, then the next message's start."""
    return {
        "type": "optional",
        "content": {
            "type": "sequence",
            "elements": [
                {
                    "type": "tag",
                    "begin": f"<|channel|>{channel}<|message|>",
                    "content": _ANY_TEXT,
                    "end": "<|end|>",
                },
                {"type": "const_string", "value": "<|start|>assistant"},
            ],
        },
    }


def _structural_tag(elements: list[dict[str, Any]], *, commentary: bool) -> dict[str, Any]:
    messages = [_optional_message("analysis")]
    if commentary:
        messages.append(_optional_message("commentary"))
    content = elements[0] if len(elements) == 1 else {"type": "or", "elements": elements}
    return {
        "type": "structural_tag",
        "format": {"type": "sequence", "elements": [*messages, content]},
    }


def final_answer_tag(format_: ResponseFormat) -> dict[str, Any]:
    """Analysis free, then a final answer that is JSON (matching the schema, if any)."""
    schema = format_.schema if format_.type == "json_schema" else {"type": "object"}
    answers = [
        _tag(f"<|channel|>final{kind}<|message|>", _json_schema(schema)) for kind in _JSON_TYPES
    ]
    return _structural_tag(answers, commentary=False)


def tool_call_tag(tools: Sequence[FunctionTool]) -> dict[str, Any]:
    """Analysis and a preamble free, then a call of one of ``tools`` with arguments that
    match its parameters."""
    calls = [
        _tag(
            begin.format(name=tool.name, kind=kind, channel=channel), _json_schema(tool.parameters)
        )
        for tool in tools
        for begin in _CALL_BEGINS
        for kind in _JSON_TYPES
        for channel in _CHANNELS
    ]
    return _structural_tag(calls, commentary=True)


def structured_outputs(
    tools: Sequence[FunctionTool], tool_choice: str, response_format: ResponseFormat | None
) -> dict[str, Any] | None:
    """vLLM's ``structured_outputs`` for a request, or None when nothing is constrained.

    ``tool_choice`` ``required`` or a function's name: the output must call a tool (that
    one). Else a ``json_schema`` or ``json_object`` format: the final answer must be JSON.
    """
    if tools and tool_choice not in ("auto", "none"):
        chosen = [tool for tool in tools if tool.name == tool_choice] or list(tools)
        tag = tool_call_tag(chosen)
    elif response_format is not None and response_format.type != "text":
        tag = final_answer_tag(response_format)
    else:
        return None
    return {"structural_tag": json.dumps(tag, separators=(",", ":"))}
