"""OpenAI's batch file format: reading an input line, writing output and error lines.

Pure functions. An input line is ``{"custom_id", "method": "POST", "url":
"/v1/chat/completions", "body": {...}}``; the body is a chat completion request, of which
``messages`` (tool calls and tool results included), ``tools``, ``tool_choice``,
``response_format``, ``max_completion_tokens`` (or ``max_tokens``), ``temperature``,
``top_p`` and ``reasoning_effort`` are used and the batch's defaults fill what it leaves out.

A line that cannot be run (not JSON, a missing field, another model, an unsupported
feature) becomes a ``LineError`` naming what is wrong: it goes to the error file under its
line number and never stops the batch.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from gptoss_operator.api.batch import RequestDefaults
from gptoss_operator.api.job import MAX_TOKENS_LIMIT
from gptoss_operator.api.json_schema import schema_problem
from gptoss_operator.engine.harmony import (
    ChatMessage,
    FunctionTool,
    ReasoningLevel,
    ResponseFormat,
    ToolCall,
)
from gptoss_operator.engine.request import ChatRequest

CHAT_COMPLETIONS_URL = "/v1/chat/completions"
ROLES = ("system", "developer", "user", "assistant", "tool")
LEVELS: tuple[ReasoningLevel, ...] = ("low", "medium", "high")
TOOL_CHOICES = ("auto", "none", "required")
FUNCTION_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
# Body fields that change what is asked for and that this engine path does not do: an
# answer without them would look right and be wrong, so such a line is refused.
UNSUPPORTED = ("functions", "function_call", "logprobs", "stream")
# Far above any request that fits gpt-oss's 131,072-token window, even JSON-escaped; a
# longer line is an error line, and the reader never holds more than this of it.
MAX_LINE_BYTES = 4 * 2**20


@dataclass(frozen=True)
class OversizedLine:
    """In place of a line longer than MAX_LINE_BYTES: its size, not its bytes."""

    size: int


@dataclass(frozen=True)
class LineRequest:
    line: int  # 1-based number of the line in the input file
    custom_id: str
    chat: ChatRequest


@dataclass(frozen=True)
class LineError:
    line: int
    custom_id: str | None
    code: str
    message: str
    param: str | None = None


class _Invalid(Exception):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


def parse_line(
    number: int,
    raw: bytes | OversizedLine,
    defaults: RequestDefaults,
    model_names: Collection[str],
) -> LineRequest | LineError | None:
    """The request on one input line; None for a blank line (skipped, as OpenAI does).
    Whatever the line holds, it returns: hostile input is an error line, never an
    exception that would stop the shard."""
    if isinstance(raw, OversizedLine):
        return LineError(
            number,
            None,
            "line_too_long",
            f"line {number} is {raw.size} bytes long; a line may have at most "
            f"{MAX_LINE_BYTES} bytes",
        )
    if not raw.strip():
        return None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        return LineError(number, None, "invalid_json", f"line {number} is not JSON: {error}")
    except RecursionError:
        return LineError(number, None, "invalid_json", f"line {number} is nested too deeply")
    custom_id = data.get("custom_id") if isinstance(data, dict) else None
    if not isinstance(custom_id, str) or not custom_id:
        custom_id = None
    try:
        if not isinstance(data, dict):
            raise _Invalid("invalid_request", "the line is not a JSON object")
        if custom_id is None:
            raise _Invalid("missing_custom_id", "custom_id must be a non-empty string", "custom_id")
        return _request(number, custom_id, data, defaults, model_names)
    except _Invalid as invalid:
        return LineError(
            number, custom_id, invalid.code, f"line {number}: {invalid.message}", invalid.param
        )


def _request(
    number: int,
    custom_id: str,
    data: dict[str, Any],
    defaults: RequestDefaults,
    model_names: Collection[str],
) -> LineRequest:
    method = data.get("method", "POST")
    if method != "POST":
        raise _Invalid("invalid_method", f"method must be POST, not {method!r}", "method")
    url = data.get("url")
    if url != CHAT_COMPLETIONS_URL:
        raise _Invalid("invalid_url", f"url must be {CHAT_COMPLETIONS_URL}, not {url!r}", "url")
    body = data.get("body")
    if not isinstance(body, dict):
        raise _Invalid("invalid_body", "body must be a JSON object", "body")
    model = body.get("model")
    if model is not None and (not isinstance(model, str) or model not in model_names):
        names = ", ".join(sorted(model_names))
        raise _Invalid(
            "model_mismatch",
            f"body.model {model!r} is not the batch's model (one of: {names})",
            "body.model",
        )
    for key in UNSUPPORTED:
        if body.get(key) not in (None, False, [], {}):
            raise _Invalid("unsupported", f"body.{key} is not supported in batches", key)
    n = body.get("n", 1)
    if n != 1:
        raise _Invalid("unsupported", "body.n must be 1", "body.n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens", defaults.maxTokens))
    max_tokens = _number(max_tokens, "body.max_completion_tokens", int, 1, MAX_TOKENS_LIMIT)
    temperature = _number(
        body.get("temperature", defaults.temperature), "body.temperature", float, 0, 2
    )
    top_p = body.get("top_p", defaults.topP)
    if top_p is not None:
        top_p = _number(top_p, "body.top_p", float, 0, 1)
        if top_p == 0:
            raise _Invalid("invalid_value", "body.top_p must be above 0", "body.top_p")
    level = body.get("reasoning_effort", defaults.reasoningLevel)
    if level not in LEVELS:
        raise _Invalid(
            "invalid_value",
            f"body.reasoning_effort must be low, medium or high, not {level!r}",
            "body.reasoning_effort",
        )
    tools = _tools(body.get("tools"))
    chat = ChatRequest(
        messages=_messages(body.get("messages")),
        reasoning_level=level,
        max_tokens=int(max_tokens),
        temperature=float(temperature),
        top_p=None if top_p is None else float(top_p),
        tools=tools,
        tool_choice=_tool_choice(body.get("tool_choice"), tools),
        response_format=_response_format(body.get("response_format")),
        keep_analysis=defaults.analysis == "keep",
    )
    return LineRequest(line=number, custom_id=custom_id, chat=chat)


def _tools(value: Any) -> tuple[FunctionTool, ...]:
    if value in (None, []):
        return ()
    if not isinstance(value, list):
        raise _Invalid("invalid_value", "body.tools must be a list", "body.tools")
    tools = []
    for i, item in enumerate(value):
        where = f"body.tools[{i}]"
        if not isinstance(item, dict) or item.get("type") != "function":
            raise _Invalid("unsupported", f"{where}: only function tools are supported", where)
        function = item.get("function")
        if not isinstance(function, dict):
            raise _Invalid("invalid_value", f"{where}.function must be an object", where)
        name = _function_name(function.get("name"), f"{where}.function.name")
        description = function.get("description") or ""
        if not isinstance(description, str):
            raise _Invalid("invalid_value", f"{where}.function.description must be a string", where)
        parameters = function.get("parameters")
        if parameters is not None and (problem := schema_problem(parameters)):
            raise _Invalid("invalid_value", f"{where}.function.parameters {problem}", where)
        tools.append(FunctionTool(name, description, parameters))
    names = [tool.name for tool in tools]
    if len(set(names)) != len(names):
        raise _Invalid("invalid_value", "body.tools names a function twice", "body.tools")
    return tuple(tools)


def _function_name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not FUNCTION_NAME.match(value):
        raise _Invalid(
            "invalid_value", f"{where} must be 1 to 64 letters, digits, '_' or '-'", where
        )
    return value


def _tool_choice(value: Any, tools: tuple[FunctionTool, ...]) -> str:
    if value is None:
        return "auto"
    if isinstance(value, dict) and value.get("type") == "function":
        function = value.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if name not in {tool.name for tool in tools}:
            raise _Invalid(
                "invalid_value",
                f"body.tool_choice names {name!r}, which is not in body.tools",
                "body.tool_choice",
            )
        return str(name)
    if value not in TOOL_CHOICES:
        raise _Invalid(
            "invalid_value",
            "body.tool_choice must be auto, none, required or a function",
            "body.tool_choice",
        )
    if value == "required" and not tools:
        raise _Invalid(
            "invalid_value", "body.tool_choice is required but body.tools is empty", "body.tools"
        )
    return str(value)


def _response_format(value: Any) -> ResponseFormat | None:
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind in ("text", "json_object"):
        return ResponseFormat(kind)
    if kind != "json_schema":
        raise _Invalid(
            "invalid_value",
            "body.response_format.type must be text, json_object or json_schema",
            "body.response_format",
        )
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise _Invalid(
            "invalid_value",
            "body.response_format.json_schema must be an object",
            "body.response_format.json_schema",
        )
    where = "body.response_format.json_schema"
    name = _function_name(spec.get("name"), f"{where}.name")
    schema = spec.get("schema")
    if problem := schema_problem(schema):
        raise _Invalid("invalid_value", f"{where}.schema {problem}", f"{where}.schema")
    description = spec.get("description")
    if description is not None and not isinstance(description, str):
        raise _Invalid("invalid_value", f"{where}.description must be a string", where)
    return ResponseFormat("json_schema", name, description, schema)


def _number(value: Any, name: str, kind: type, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid("invalid_value", f"{name} must be a number", name)
    if not math.isfinite(value):
        raise _Invalid("invalid_value", f"{name} must be a finite number", name)
    if kind is int and value != int(value):
        raise _Invalid("invalid_value", f"{name} must be a whole number", name)
    if not low <= value <= high:
        raise _Invalid("invalid_value", f"{name} must be between {low:g} and {high:g}", name)
    return float(value)


def _messages(value: Any) -> tuple[ChatMessage, ...]:
    if not isinstance(value, list) or not value:
        raise _Invalid("invalid_messages", "body.messages must be a non-empty list", "messages")
    messages = []
    for i, item in enumerate(value):
        where = f"body.messages[{i}]"
        if not isinstance(item, dict):
            raise _Invalid("invalid_messages", f"{where} must be an object", where)
        role = item.get("role")
        if role not in ROLES:
            raise _Invalid(
                "invalid_messages",
                f"{where}.role must be system, developer, user, assistant or tool, not {role!r}",
                f"{where}.role",
            )
        messages.append(_message(role, item, where))
    if messages[-1].role not in ("user", "tool"):
        raise _Invalid(
            "invalid_messages",
            "the last message must have role 'user' or 'tool'",
            "body.messages",
        )
    calls = {call.id for message in messages for call in message.tool_calls}
    for i, message in enumerate(messages):
        if message.role == "tool" and message.tool_call_id not in calls:
            raise _Invalid(
                "invalid_messages",
                f"body.messages[{i}].tool_call_id {message.tool_call_id!r} answers no "
                "tool call of an earlier assistant message",
                f"body.messages[{i}].tool_call_id",
            )
    return tuple(messages)


def _message(role: Any, item: dict[str, Any], where: str) -> ChatMessage:
    if role == "tool":
        call_id = item.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise _Invalid(
                "invalid_messages",
                f"{where}.tool_call_id must name the call this message answers",
                f"{where}.tool_call_id",
            )
        content = _text(item.get("content"), f"{where}.content", empty=True)
        return ChatMessage("tool", content, tool_call_id=call_id)
    if role != "assistant":
        return ChatMessage(role, _text(item.get("content"), f"{where}.content"))
    reasoning = item.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, str):
        raise _Invalid("invalid_messages", f"{where}.reasoning must be a string", where)
    if not item.get("tool_calls"):
        text = _text(item.get("content"), f"{where}.content")
        return ChatMessage("assistant", text, analysis=reasoning or None)
    calls = item["tool_calls"]
    if not isinstance(calls, list):
        raise _Invalid("invalid_messages", f"{where}.tool_calls must be a list", where)
    parsed = []
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(call.get("id"), str):
            raise _Invalid("invalid_messages", f"{at} must have an id and a function", at)
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):
            raise _Invalid("invalid_messages", f"{at}.function.arguments must be a string", at)
        name = _function_name(function.get("name"), f"{at}.function.name")
        parsed.append(ToolCall(call["id"], name, arguments))
    preamble = item.get("content")
    text = "" if preamble in (None, "") else _text(preamble, f"{where}.content")
    return ChatMessage("assistant", text, tool_calls=tuple(parsed), analysis=reasoning or None)


def _text(content: Any, where: str, *, empty: bool = False) -> str:
    """A message's text: a string, or a list of text parts joined (not empty, unless
    ``empty``)."""
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _Invalid("unsupported", f"{where}[{j}]: only text parts are supported", where)
            if not isinstance(part.get("text"), str):
                raise _Invalid("invalid_messages", f"{where}[{j}].text must be a string", where)
            parts.append(part["text"])
        text = "".join(parts)
    else:
        raise _Invalid("invalid_messages", f"{where} must be a string or a list of parts", where)
    if not text and not empty:
        raise _Invalid("invalid_messages", f"{where} is empty", where)
    return text


# ---------------------------------------------------------------- output lines
def request_id(batch_uid: str, line: int) -> str:
    """The same id for a line whatever attempt answered it."""
    return f"batch_req_{batch_uid.replace('-', '')[:12]}_{line}"


@dataclass(frozen=True)
class Answer:
    """A generation's result for one line, as the output file shows it."""

    content: str
    reasoning: str
    commentary: str
    finish_reason: str  # stop, length or tool_calls
    prompt_tokens: int
    completion_tokens: int
    tool_calls: tuple[ToolCall, ...] = ()


def answer_record(
    request: LineRequest, answer: Answer, *, batch_uid: str, model: str, created: int
) -> dict[str, Any]:
    """The output line of an answered request: a chat completion in OpenAI's shape, the
    final channel as ``content`` and the analysis channel as ``reasoning``."""
    rid = request_id(batch_uid, request.line)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": answer.content or (None if answer.tool_calls else ""),
        "reasoning": answer.reasoning or None,
    }
    if answer.commentary:
        message["commentary"] = answer.commentary
    if answer.tool_calls:
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in answer.tool_calls
        ]
    usage = {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }
    return {
        "id": rid,
        "custom_id": request.custom_id,
        "response": {
            "status_code": 200,
            "request_id": rid,
            "body": {
                "id": f"chatcmpl-{rid}",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": answer.finish_reason,
                    }
                ],
                "usage": usage,
            },
        },
        "error": None,
    }


def failure_record(
    request: LineRequest, status_code: int, code: str, message: str, *, batch_uid: str
) -> dict[str, Any]:
    """The error-file line of a request the engine or the parser could not answer."""
    rid = request_id(batch_uid, request.line)
    error_type = "invalid_request_error" if status_code < 500 else "server_error"
    return {
        "id": rid,
        "custom_id": request.custom_id,
        "response": {
            "status_code": status_code,
            "request_id": rid,
            "body": {
                "error": {"message": message, "type": error_type, "param": None, "code": code}
            },
        },
        "error": None,
    }


def invalid_line_record(error: LineError, *, batch_uid: str) -> dict[str, Any]:
    """The error-file line of an input line that could not be read as a request."""
    return {
        "id": request_id(batch_uid, error.line),
        "custom_id": error.custom_id,
        "response": None,
        "error": {
            "code": error.code,
            "message": error.message,
            "param": error.param,
            "line": error.line,
        },
    }
