"""Structured outputs: what constrains gpt-oss's output, and whether an answer obeys.

The engine's grammar must leave harmony alone: the analysis stays free text, and only
the message that matters is constrained (the final answer to a ``json_schema``, the
arguments of a required tool call to the function's parameters). ``structured_outputs``
builds that grammar for vLLM's structured outputs (an xgrammar structural tag, sent as
JSON on the completions request). It accepts the messages vLLM's chat path accepts for
gpt-oss (the same channels, headers and content types, in the same order), and is
stricter in three ways, so that a constrained answer is reached, parses and ends:

* harmony's own tokens (``<|channel|>``, ``<|message|>``, ...) are required as those
  tokens, not as text that spells them: a header spelled out in text is no header, and
  the message would not parse; free text holds none of them;
* the free messages before the constrained one, together, may take all of ``maxTokens``
  but a reserve (``free_budget``); a model still reasoning then must close its analysis
  and answer, instead of running out of tokens with no answer. An answer that fits the
  reserve is never cut short;
* whitespace between JSON tokens is bounded (``JSON_WHITESPACE``), so a model cannot
  spend its tokens on blank space inside the value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from jsonschema import Draft202012Validator

from gptoss_operator.engine.harmony import SPECIAL_TOKENS, FunctionTool, ResponseFormat

# Consecutive whitespace characters allowed between JSON tokens: a document pretty-printed
# with two spaces, nested 7 deep, needs a newline and 14 spaces.
JSON_WHITESPACE = 16
# What the free messages leave of maxTokens for the constrained one: a quarter, at most this.
ANSWER_RESERVE = 1024
# The tokens a free message takes besides its text: <|channel|>, the channel's name (one or
# two tokens), <|message|>, <|end|>, <|start|>, "assistant".
FREE_MESSAGE_HEADER = 7
_CHANNELS = ("commentary", "analysis", "final")


def free_budget(max_tokens: int) -> int:
    """The tokens the free messages (the analysis, a preamble) may take of ``max_tokens``,
    together, headers included."""
    return max_tokens - min(max_tokens // 4, ANSWER_RESERVE)


def free_text_budgets(max_tokens: int, *, preamble: bool) -> dict[str, int]:
    """{channel: the tokens of text its free message may hold}: the free budget less the
    messages' headers; a preamble (commentary) gets a quarter of it, the analysis the rest."""
    channels = ("analysis", "commentary") if preamble else ("analysis",)
    text = max(free_budget(max_tokens) - FREE_MESSAGE_HEADER * len(channels), 0)
    commentary = text // 4 if preamble else 0
    budgets = {"analysis": text - commentary}
    if preamble:
        budgets["commentary"] = commentary
    return budgets


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


def _token(name: str) -> dict[str, Any]:
    """One of harmony's special tokens, by id (vLLM checks a tag without the vocab)."""
    return {"type": "token", "token": SPECIAL_TOKENS[name]}


def _text(value: str) -> dict[str, Any]:
    return {"type": "const_string", "value": value}


def _sequence(*elements: dict[str, Any]) -> dict[str, Any]:
    return {"type": "sequence", "elements": list(elements)}


def _one_of(elements: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return elements[0] if len(elements) == 1 else {"type": "or", "elements": list(elements)}


def _channel(name: str) -> dict[str, Any]:
    return _sequence(_token("<|channel|>"), _text(name))


# Each way the model may say that a message holds JSON: "<|constrain|>json" or a bare
# "json" content type (gpt-oss writes both).
_JSON_TYPE = _one_of(
    [_text(" json"), _sequence(_text(" "), _token("<|constrain|>"), _text("json"))]
)


def _json_message(header: dict[str, Any], schema: Mapping[str, Any] | bool) -> dict[str, Any]:
    """A message whose text is JSON matching ``schema``. It ends where the grammar does,
    at the stop token vLLM then allows (<|return|> after an answer, <|call|> after a call,
    as harmony ends them); an <|end|> there would leave the output without its stop."""
    value = {
        "type": "json_schema",
        "json_schema": dict(schema) if isinstance(schema, Mapping) else schema,
        "max_whitespace_cnt": JSON_WHITESPACE,
    }
    return _sequence(header, _JSON_TYPE, _token("<|message|>"), value)


def _free_message(channel: str, budget: int) -> dict[str, Any]:
    """An optional message of free text on ``channel``, then the next message's start."""
    # Free text holds none of harmony's named tokens.
    text = {
        "type": "any_tokens",
        "exclude_tokens": sorted(SPECIAL_TOKENS.values()),
        "max_tokens": budget,
    }
    message = _sequence(
        _channel(channel),
        _token("<|message|>"),
        text,
        _token("<|end|>"),
        _token("<|start|>"),
        _text("assistant"),
    )
    return {"type": "optional", "content": message}


def _structural_tag(
    constrained: Sequence[dict[str, Any]], max_tokens: int, *, preamble: bool
) -> dict[str, Any]:
    budgets = free_text_budgets(max_tokens, preamble=preamble)
    messages = [_free_message(channel, budget) for channel, budget in budgets.items()]
    return {
        "type": "structural_tag",
        "format": _sequence(*messages, _one_of(constrained)),
    }


def final_answer_tag(format_: ResponseFormat, max_tokens: int) -> dict[str, Any]:
    """Analysis free, then a final answer that is JSON (matching the schema, if any)."""
    schema = format_.schema if format_.type == "json_schema" else {"type": "object"}
    answer = _json_message(_channel("final"), schema or True)
    return _structural_tag([answer], max_tokens, preamble=False)


def tool_call_tag(tools: Sequence[FunctionTool], max_tokens: int) -> dict[str, Any]:
    """Analysis and a preamble free, then a call of one of ``tools`` with arguments that
    match its parameters. A call names its recipient in the role part of the header, or
    after the channel."""
    calls = [
        _json_message(header, tool.parameters if tool.parameters is not None else True)
        for tool in tools
        for channel in _CHANNELS
        for header in (
            _sequence(_text(f" to=functions.{tool.name}"), _channel(channel)),
            _sequence(_channel(channel), _text(f" to=functions.{tool.name}")),
        )
    ]
    return _structural_tag(calls, max_tokens, preamble=True)


def structured_outputs(
    tools: Sequence[FunctionTool],
    tool_choice: str,
    response_format: ResponseFormat | None,
    max_tokens: int,
) -> dict[str, Any] | None:
    """vLLM's ``structured_outputs`` for a request, or None when nothing is constrained.

    ``tool_choice`` ``required`` or a function's name: the output must call a tool (that
    one). Else a ``json_schema`` or ``json_object`` format: the final answer must be JSON.
    """
    if tools and tool_choice not in ("auto", "none"):
        chosen = [tool for tool in tools if tool.name == tool_choice] or list(tools)
        tag = tool_call_tag(chosen, max_tokens)
    elif response_format is not None and response_format.type != "text":
        tag = final_answer_tag(response_format, max_tokens)
    else:
        return None
    return {"structural_tag": json.dumps(tag, separators=(",", ":"))}
