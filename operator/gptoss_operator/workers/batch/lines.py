"""OpenAI's batch file format: reading an input line, writing output and error lines.

Pure functions. An input line is ``{"custom_id", "method": "POST", "url":
"/v1/chat/completions", "body": {...}}``; the body is a chat completion request, of which
``messages``, ``max_completion_tokens`` (or ``max_tokens``), ``temperature``, ``top_p``
and ``reasoning_effort`` are used and the batch's defaults fill what it leaves out.

A line that cannot be run (not JSON, a missing field, another model, an unsupported
feature) becomes a ``LineError`` naming what is wrong: it goes to the error file under its
line number and never stops the batch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from gptoss_operator.api.batch import RequestDefaults
from gptoss_operator.api.job import MAX_TOKENS_LIMIT
from gptoss_operator.engine.harmony import ChatMessage, ReasoningLevel

CHAT_COMPLETIONS_URL = "/v1/chat/completions"
ROLES = ("system", "developer", "user", "assistant")
LEVELS: tuple[ReasoningLevel, ...] = ("low", "medium", "high")
# Body fields that change what is asked for and that this engine path does not do: an
# answer without them would look right and be wrong, so such a line is refused.
UNSUPPORTED = ("tools", "functions", "tool_choice", "response_format", "logprobs", "stream")
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
    messages: tuple[ChatMessage, ...]
    max_tokens: int
    temperature: float
    top_p: float | None
    reasoning_level: ReasoningLevel


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
    return LineRequest(
        line=number,
        custom_id=custom_id,
        messages=_messages(body.get("messages")),
        max_tokens=int(max_tokens),
        temperature=float(temperature),
        top_p=None if top_p is None else float(top_p),
        reasoning_level=level,
    )


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
                f"{where}.role must be system, developer, user or assistant, not {role!r}",
                f"{where}.role",
            )
        messages.append(ChatMessage(role, _text(item.get("content"), f"{where}.content")))
    if messages[-1].role != "user":
        raise _Invalid(
            "invalid_messages", "the last message must have role 'user'", "body.messages"
        )
    return tuple(messages)


def _text(content: Any, where: str) -> str:
    """A message's text: a string, or a list of text parts joined."""
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
    if not text:
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
    finish_reason: str  # stop or length
    prompt_tokens: int
    completion_tokens: int


def answer_record(
    request: LineRequest, answer: Answer, *, batch_uid: str, model: str, created: int
) -> dict[str, Any]:
    """The output line of an answered request: a chat completion in OpenAI's shape, the
    final channel as ``content`` and the analysis channel as ``reasoning``."""
    rid = request_id(batch_uid, request.line)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": answer.content,
        "reasoning": answer.reasoning or None,
    }
    if answer.commentary:
        message["commentary"] = answer.commentary
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
