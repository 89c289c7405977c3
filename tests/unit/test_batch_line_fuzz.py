"""Hostile batch input: whatever bytes or JSON a line holds, it becomes a request, an
error line or nothing (blank), never an exception that would stop its shard; and a line
longer than the cap is an error line of its own, read without holding it whole."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptoss_operator.api.batch import RequestDefaults
from gptoss_operator.workers.batch.lines import (
    MAX_LINE_BYTES,
    LineError,
    LineRequest,
    OversizedLine,
    invalid_line_record,
    parse_line,
)
from gptoss_operator.workers.batch.storage import split_lines

DEFAULTS = RequestDefaults()
NAMES = {"gpt-oss-20b", "openai/gpt-oss-20b"}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
FIELDS = (
    "model",
    "messages",
    "max_completion_tokens",
    "max_tokens",
    "temperature",
    "top_p",
    "reasoning_effort",
    "n",
    "tools",
    "stream",
)


def valid_body() -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


@st.composite
def near_valid_lines(draw: st.DrawFn) -> bytes:
    """A valid line with some fields replaced by arbitrary JSON: the parser's checks,
    not only its JSON decoding, see hostile values."""
    body = valid_body()
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        body[field] = draw(json_values)
    record: dict[str, Any] = {
        "custom_id": draw(st.one_of(st.just("r1"), json_values)),
        "method": draw(st.one_of(st.just("POST"), json_values)),
        "url": "/v1/chat/completions",
        "body": draw(st.one_of(st.just(body), json_values)),
    }
    return json.dumps(record, allow_nan=True).encode()


def check(raw: bytes) -> None:
    parsed = parse_line(3, raw, DEFAULTS, NAMES)
    assert parsed is None or isinstance(parsed, LineRequest | LineError)
    if isinstance(parsed, LineError):
        json.dumps(invalid_line_record(parsed, batch_uid="u-1"), allow_nan=False)
        assert parsed.message.startswith("line 3")


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_stop_the_parser(raw: bytes) -> None:
    check(raw)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_arbitrary_json_never_stops_the_parser(value: Any) -> None:
    check(json.dumps(value, allow_nan=True).encode())


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(near_valid_lines())
def test_hostile_fields_of_a_request_become_error_lines(raw: bytes) -> None:
    check(raw)


def test_the_inputs_that_broke_the_parser_are_error_lines() -> None:
    """Found by reading and fuzzing: each raised out of parse_line before."""
    cases = {
        b"[" * 100_000 + b"]" * 100_000: "invalid_json",  # nesting beyond the recursion limit
        json.dumps({"custom_id": "a", "url": "/v1/chat/completions",
                    "body": {**valid_body(), "max_tokens": 1e999}}).encode(): "invalid_value",
        b'{"custom_id": "a", "url": "/v1/chat/completions", "body": '
        b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": NaN}}': "invalid_value",
        json.dumps({"custom_id": "a", "url": "/v1/chat/completions",
                    "body": {**valid_body(), "model": {"name": "x"}}}).encode(): "model_mismatch",
    }  # fmt: skip
    for raw, code in cases.items():
        parsed = parse_line(5, raw, DEFAULTS, NAMES)
        assert isinstance(parsed, LineError), raw[:80]
        assert parsed.code == code, parsed


def test_a_line_over_the_cap_is_an_error_of_its_own_and_its_neighbours_are_read() -> None:
    long_line = b"x" * (MAX_LINE_BYTES + 10)
    good = b'{"custom_id": "a"}'
    # Chunks far smaller than the line: it is never held whole.
    stream = good + b"\n" + long_line + b"\r\n" + good + b"\n" + b"y" * (MAX_LINE_BYTES + 1)
    chunks = [stream[i : i + 65536] for i in range(0, len(stream), 65536)]
    lines = list(split_lines(iter(chunks)))
    assert lines[0] == good
    assert isinstance(lines[1], OversizedLine)
    assert lines[1].size == MAX_LINE_BYTES + 11, "its size, its CR included"
    assert lines[2] == good
    assert isinstance(lines[3], OversizedLine)
    assert len(lines) == 4
    error = parse_line(2, lines[1], DEFAULTS, NAMES)
    assert isinstance(error, LineError)
    assert error.code == "line_too_long"
    assert error.message == (
        f"line 2 is {MAX_LINE_BYTES + 11} bytes long; a line may have at most "
        f"{MAX_LINE_BYTES} bytes"
    )
    # A line of exactly the cap is read.
    exact = b"z" * MAX_LINE_BYTES
    assert list(split_lines(iter([exact[:100], exact[100:] + b"\n"]))) == [exact]
