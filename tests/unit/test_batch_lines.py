"""OpenAI's batch format: input lines read into requests or named errors, output lines."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gptoss_operator.api.batch import RequestDefaults
from gptoss_operator.engine.harmony import ToolCall
from gptoss_operator.workers.batch.lines import (
    Answer,
    LineError,
    LineRequest,
    answer_record,
    failure_record,
    invalid_line_record,
    parse_line,
)
from gptoss_operator.workers.batch.parts import LineSet, decode_rows, encode_row
from gptoss_operator.workers.batch.storage import split_lines

DEFAULTS = RequestDefaults(maxTokens=100, temperature=0.5, reasoningLevel="low")
NAMES = {"gpt-oss-20b", "openai/gpt-oss-20b"}


def line(body: dict[str, Any], **top: Any) -> bytes:
    record = {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": body}
    return json.dumps(record | top).encode()


def parse(raw: bytes, number: int = 7) -> LineRequest | LineError | None:
    return parse_line(number, raw, DEFAULTS, NAMES)


def test_a_full_line_becomes_a_request_and_defaults_fill_the_rest() -> None:
    request = parse(
        line(
            {
                "model": "gpt-oss-20b",
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "Hi "},
                            {"type": "text", "text": "there"},
                        ],
                    },
                ],
                "max_completion_tokens": 64,
                "top_p": 0.9,
                "reasoning_effort": "high",
            }
        )
    )
    assert isinstance(request, LineRequest)
    assert request.line == 7
    assert request.custom_id == "r1"
    chat = request.chat
    assert [(m.role, m.content) for m in chat.messages] == [
        ("system", "Be brief."),
        ("user", "Hi there"),
    ]
    assert (chat.max_tokens, chat.top_p, chat.reasoning_level) == (64, 0.9, "high")
    assert chat.temperature == 0.5  # from the defaults

    bare = parse(line({"messages": [{"role": "user", "content": "x"}], "max_tokens": 9}))
    assert isinstance(bare, LineRequest)
    b = bare.chat
    assert (b.max_tokens, b.temperature, b.top_p, b.reasoning_level) == (
        9,
        0.5,
        None,
        "low",
    )


@pytest.mark.parametrize(
    ("raw", "code", "names"),
    [
        (b"{not json", "invalid_json", "not JSON"),
        (b"[1, 2]", "invalid_request", "not a JSON object"),
        (
            line({"messages": [{"role": "user", "content": "x"}]}, custom_id=""),
            "missing_custom_id",
            "custom_id",
        ),
        (
            line({"messages": [{"role": "user", "content": "x"}]}, url="/v1/embeddings"),
            "invalid_url",
            "url must be",
        ),
        (
            line({"messages": [{"role": "user", "content": "x"}]}, method="GET"),
            "invalid_method",
            "method",
        ),
        (
            line({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}),
            "model_mismatch",
            "body.model 'gpt-4o'",
        ),
        (line({"messages": []}), "invalid_messages", "body.messages"),
        (
            line({"messages": [{"role": "robot", "content": "x"}]}),
            "invalid_messages",
            "body.messages[0].role",
        ),
        (
            line({"messages": [{"role": "tool", "content": "x"}]}),
            "invalid_messages",
            "body.messages[0].tool_call_id",
        ),
        (
            line({"messages": [{"role": "tool", "content": "x", "tool_call_id": "c9"}]}),
            "invalid_messages",
            "answers no tool call",
        ),
        (
            line(
                {
                    "messages": [
                        {"role": "user", "content": "x"},
                        {"role": "assistant", "content": "y"},
                    ]
                }
            ),
            "invalid_messages",
            "last message",
        ),
        (
            line({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "unsupported",
            "only text parts",
        ),
        (
            line({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web"}]}),
            "unsupported",
            "body.tools[0]",
        ),
        (
            line(
                {
                    "messages": [{"role": "user", "content": "x"}],
                    "tools": [{"type": "function", "function": {"name": "a b"}}],
                }
            ),
            "invalid_value",
            "body.tools[0].function.name",
        ),
        (
            line(
                {
                    "messages": [{"role": "user", "content": "x"}],
                    "tools": [
                        {"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}
                    ],
                }
            ),
            "invalid_value",
            "body.tools[0].function.parameters is not a JSON schema",
        ),
        (
            line(
                {
                    "messages": [{"role": "user", "content": "x"}],
                    "tools": [{"type": "function", "function": {"name": "f"}}],
                    "tool_choice": {"type": "function", "function": {"name": "g"}},
                }
            ),
            "invalid_value",
            "body.tool_choice names 'g'",
        ),
        (
            line({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}),
            "invalid_value",
            "body.tools is empty",
        ),
        (
            line(
                {
                    "messages": [{"role": "user", "content": "x"}],
                    "response_format": {"type": "json_schema", "json_schema": {"name": "r"}},
                }
            ),
            "invalid_value",
            "body.response_format.json_schema.schema must be a JSON object",
        ),
        (
            line(
                {
                    "messages": [{"role": "user", "content": "x"}],
                    "response_format": {"type": "yaml"},
                }
            ),
            "invalid_value",
            "body.response_format.type",
        ),
        (line({"messages": [{"role": "user", "content": "x"}], "n": 2}), "unsupported", "body.n"),
        (
            line({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
            "invalid_value",
            "body.max_completion_tokens",
        ),
        (
            line({"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
            "invalid_value",
            "body.temperature",
        ),
        (
            line({"messages": [{"role": "user", "content": "x"}], "top_p": 0}),
            "invalid_value",
            "body.top_p",
        ),
        (
            line({"messages": [{"role": "user", "content": "x"}], "reasoning_effort": "minimal"}),
            "invalid_value",
            "reasoning_effort",
        ),
    ],
)
def test_a_bad_line_is_an_error_naming_the_line_and_the_field(
    raw: bytes, code: str, names: str
) -> None:
    error = parse(raw)
    assert isinstance(error, LineError)
    assert error.code == code
    assert error.line == 7
    assert error.message.startswith("line 7")
    assert names in error.message


def test_a_blank_line_is_skipped() -> None:
    assert parse(b"") is None
    assert parse(b"   \t") is None


def test_an_answer_is_a_chat_completion_with_the_reasoning_beside_the_content() -> None:
    request = parse(line({"messages": [{"role": "user", "content": "x"}]}))
    assert isinstance(request, LineRequest)
    record = answer_record(
        request,
        Answer("Paris.", "The capital...", "", "stop", 20, 5),
        batch_uid="0b9e2f1c-aaaa-bbbb-cccc-1234",
        model="gpt-oss-20b",
        created=1700000000,
    )
    assert record["custom_id"] == "r1"
    assert record["id"] == "batch_req_0b9e2f1caaaa_7"
    assert record["error"] is None
    response = record["response"]
    assert response["status_code"] == 200
    body = response["body"]
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Paris.",
        "reasoning": "The capital...",
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}

    failed = failure_record(request, 400, "PromptTooLong", "too long", batch_uid="u")
    assert failed["response"]["status_code"] == 400
    assert failed["response"]["body"]["error"]["code"] == "PromptTooLong"

    invalid = parse(b"{oops", 3)
    assert isinstance(invalid, LineError)
    shown = invalid_line_record(invalid, batch_uid="u")
    assert shown["response"] is None
    assert shown["error"]["line"] == 3
    assert shown["error"]["code"] == "invalid_json"


WEATHER_LINE = {
    "messages": [
        {"role": "system", "content": "Use the tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "reasoning": "Need it.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"t": 20}'},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather now.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "report", "schema": {"type": "object"}, "description": "A report."},
    },
}


def test_a_line_with_tools_a_tool_loop_and_a_schema_is_read_whole() -> None:
    request = parse(line(WEATHER_LINE))
    assert isinstance(request, LineRequest)
    chat = request.chat
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "tool"]
    call = chat.messages[2].tool_calls[0]
    assert (call.id, call.name, call.arguments) == ("call_1", "get_weather", '{"city":"Paris"}')
    assert chat.messages[2].analysis == "Need it."
    assert chat.messages[3].tool_call_id == "call_1"
    assert [(t.name, t.description) for t in chat.tools] == [("get_weather", "Weather now.")]
    assert chat.tool_choice == "get_weather"
    assert chat.response_format is not None
    assert (chat.response_format.type, chat.response_format.name) == ("json_schema", "report")
    assert chat.answer_schema == {"type": "object"}
    assert chat.sampling([200002]).structured_outputs is not None, "the named call is enforced"


def test_answers_with_tool_calls_are_openai_chat_completions() -> None:
    """Every output line is what OpenAI's own SDK types read: a call in OpenAI's shape,
    and a plain answer."""
    from openai.types.chat import ChatCompletion

    request = parse(line(WEATHER_LINE))
    assert isinstance(request, LineRequest)
    calls = (ToolCall("call_x_0", "get_weather", '{"city":"Lyon"}'),)
    called = answer_record(
        request,
        Answer("", "Need Lyon.", "", "tool_calls", 20, 5, tool_calls=calls),
        batch_uid="u",
        model="gpt-oss-20b",
        created=1700000000,
    )
    answered = answer_record(
        request,
        Answer("Sunny.", "", "", "stop", 20, 5),
        batch_uid="u",
        model="gpt-oss-20b",
        created=1700000000,
    )
    completion = ChatCompletion.model_validate(called["response"]["body"])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [sdk_call] = choice.message.tool_calls or []
    assert sdk_call.type == "function"
    assert (sdk_call.id, sdk_call.function.name) == ("call_x_0", "get_weather")
    assert json.loads(sdk_call.function.arguments) == {"city": "Lyon"}
    plain = ChatCompletion.model_validate(answered["response"]["body"])
    assert plain.choices[0].message.content == "Sunny."
    assert plain.choices[0].message.tool_calls is None


def test_rows_round_trip_and_the_line_set_marks_each_line_once() -> None:
    rows = encode_row(12, True, {"a": "é\ttab"}, 3, 4) + encode_row(5, False, {"b": 1})
    decoded = list(decode_rows(rows))
    assert [(r.line, r.ok, r.prompt_tokens, r.completion_tokens) for r in decoded] == [
        (12, True, 3, 4),
        (5, False, 0, 0),
    ]
    assert json.loads(decoded[0].record) == {"a": "é\ttab"}
    seen = LineSet()
    assert seen.add(10_000_000)
    assert not seen.add(10_000_000)
    assert 10_000_000 in seen
    assert 9_999_999 not in seen
    assert 1 not in seen


def test_lines_split_on_newlines_across_chunks() -> None:
    chunks = [b'{"a":1}\r\n{"b"', b':2}\n\n{"c":3}']
    assert list(split_lines(iter(chunks))) == [b'{"a":1}', b'{"b":2}', b"", b'{"c":3}']
