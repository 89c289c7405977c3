"""OpenAI's batch format: input lines read into requests or named errors, output lines."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gptoss_operator.api.batch import RequestDefaults
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
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "Be brief."),
        ("user", "Hi there"),
    ]
    assert (request.max_tokens, request.top_p, request.reasoning_level) == (64, 0.9, "high")
    assert request.temperature == 0.5  # from the defaults

    bare = parse(line({"messages": [{"role": "user", "content": "x"}], "max_tokens": 9}))
    assert isinstance(bare, LineRequest)
    assert (bare.max_tokens, bare.temperature, bare.top_p, bare.reasoning_level) == (
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
            line({"messages": [{"role": "tool", "content": "x"}]}),
            "invalid_messages",
            "body.messages[0].role",
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
            line({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}),
            "unsupported",
            "body.tools",
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
