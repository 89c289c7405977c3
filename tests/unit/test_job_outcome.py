"""What a generation means for its job: outputs from the real harmony parser, judged by the
pure outcome functions the sidecar uses."""

from __future__ import annotations

from typing import Any

import pytest

from gptoss_operator.api.job import Phase
from gptoss_operator.engine.harmony import CALL_TOKEN, RETURN_TOKEN, Harmony, ParsedOutput
from gptoss_operator.engine.outcome import Generation, generation_outcome, rejection_reason


@pytest.fixture(scope="module")
def harmony() -> Harmony:
    return Harmony()


def parse(harmony: Harmony, text: str, stop: int | None) -> ParsedOutput:
    parser = harmony.parser()
    parser.feed(harmony.encoding.encode(text, allowed_special="all"))
    return parser.finish(stop)


def judge(
    parsed: ParsedOutput,
    finish: str,
    *,
    max_tokens: int = 256,
    completion: int = 256,
    prompt: int = 100,
    max_model_len: int | None = 4096,
) -> tuple[Phase, str, str, str, dict[str, str]]:
    outcome = generation_outcome(
        Generation(parsed, finish, max_tokens, prompt, completion, max_model_len)
    )
    return outcome.phase, outcome.reason, outcome.message, outcome.finish_reason, outcome.texts


def test_garbage_cut_at_max_tokens_keeps_the_raw_text(harmony: Harmony) -> None:
    # The defect: non-harmony output stopped by the token limit used to Succeed with an
    # empty response and no rawOutput, losing the model's text.
    parsed = parse(harmony, "hello world this is not harmony", None)
    phase, reason, message, finish, texts = judge(parsed, "length", max_tokens=8, completion=8)
    assert texts["rawOutput"] == "hello world this is not harmony"
    assert (phase, reason, finish) == (Phase.SUCCEEDED, "TokenLimit", "length")
    assert "inside a message header" in message
    assert "rawOutput" in message


def test_long_garbage_cut_at_max_tokens_is_malformed_and_kept(harmony: Harmony) -> None:
    garbage = "lorem ipsum " * 60
    parsed = parse(harmony, garbage, None)
    phase, reason, message, finish, texts = judge(parsed, "length")
    assert texts["rawOutput"] == garbage
    assert (phase, reason, finish) == (Phase.FAILED, "MalformedOutput", "error")
    assert "not valid harmony" in message
    assert "generation stopped at maxTokens (256)" in message


def test_garbage_ended_by_a_stop_token_is_kept(harmony: Harmony) -> None:
    parsed = parse(harmony, "just words", RETURN_TOKEN)
    phase, reason, message, finish, texts = judge(parsed, "stop", completion=3)
    assert texts["rawOutput"] == "just words<|return|>"
    # The lenient parser reads the stray text as a message without a channel.
    assert texts["commentary"] == "just words"
    assert (phase, reason, finish) == (Phase.SUCCEEDED, "RecoveredMalformedOutput", "stop")
    assert "broke the harmony format" in message


def test_a_context_cut_names_the_context_not_max_tokens(harmony: Harmony) -> None:
    parsed = parse(harmony, "<|channel|>analysis<|message|>thinking hard", None)
    phase, reason, message, finish, texts = judge(
        parsed, "length", max_tokens=1000, completion=96, prompt=4000
    )
    assert (phase, reason, finish) == (Phase.SUCCEEDED, "ContextLimit", "length")
    assert "context window (prompt 4000 + output 96 = 4096 tokens of 4096)" in message
    assert "before maxTokens (1000)" in message
    assert "raise maxTokens" not in message
    assert texts["analysis"] == "thinking hard"
    assert "rawOutput" not in texts


def test_a_max_tokens_cut_inside_the_final_answer(harmony: Harmony) -> None:
    text = "<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>final<|message|>Par"
    phase, reason, message, finish, texts = judge(parse(harmony, text, None), "length")
    assert (phase, reason, finish) == (Phase.SUCCEEDED, "TokenLimit", "length")
    assert "inside the final answer" in message
    assert "raise maxTokens" in message
    assert texts["response"] == "Par"


def test_a_complete_answer(harmony: Harmony) -> None:
    text = "<|channel|>analysis<|message|>a<|end|><|start|>assistant<|channel|>final<|message|>B"
    phase, reason, message, finish, texts = judge(
        parse(harmony, text, RETURN_TOKEN), "stop", completion=20
    )
    assert (phase, reason, finish, message) == (
        Phase.SUCCEEDED,
        "Completed",
        "stop",
        "the model answered",
    )
    assert texts == {"response": "B", "analysis": "a", "commentary": ""}


def test_a_tool_call_says_so(harmony: Harmony) -> None:
    text = "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{}"
    phase, reason, message, _, texts = judge(
        parse(harmony, text, CALL_TOKEN), "stop", completion=20
    )
    assert (phase, reason) == (Phase.SUCCEEDED, "ToolCalls")
    assert "f(" in message
    assert texts["commentary"] == "", "#26: a call is a call, not commentary text"


def test_rejections_name_the_context_window_when_the_prompt_is_too_long() -> None:
    reason, message = rejection_reason("too long", prompt_tokens=5000, max_model_len=4096)
    assert reason == "PromptTooLong"
    assert "5000 tokens" in message
    assert "(max-model-len) is 4096" in message
    assert "too long" in message
    assert rejection_reason("bad", 10, 4096) == ("EngineRejected", "bad")
    assert rejection_reason("bad", 10, None) == ("EngineRejected", "bad")


def _outcome(harmony: Harmony, text: str, stop: int | None, finish: str, **extra: object) -> Any:
    parsed = parse(harmony, text, stop)
    return generation_outcome(Generation(parsed, finish, 256, 100, 40, 4096, **extra))  # type: ignore[arg-type]


CALL = (
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>"
)


def test_a_tool_call_is_returned_with_its_id_name_and_arguments(harmony: Harmony) -> None:
    text = f'<|channel|>analysis<|message|>Need it.<|end|>{CALL}{{"city": "Paris"}}'
    outcome = _outcome(harmony, text, CALL_TOKEN, "stop", call_id_prefix="call_ab_1")
    assert outcome.phase is Phase.SUCCEEDED
    assert (outcome.reason, outcome.finish_reason) == ("ToolCalls", "tool_calls")
    assert [(c.id, c.name, c.arguments) for c in outcome.tool_calls] == [
        ("call_ab_1_0", "get_weather", '{"city": "Paris"}')
    ]
    assert outcome.texts["analysis"] == "Need it."
    assert 'get_weather({"city": "Paris"})' in outcome.message


def test_arguments_that_are_not_json_are_kept_and_said(harmony: Harmony) -> None:
    outcome = _outcome(
        harmony, CALL[len("<|start|>assistant") :] + "{city: Paris", CALL_TOKEN, "stop"
    )
    assert outcome.phase is Phase.SUCCEEDED, "the call is the model's answer: nothing is lost"
    assert outcome.reason == "InvalidToolArguments"
    assert outcome.tool_calls[0].arguments == "{city: Paris"
    assert "call_0 (get_weather) are not valid JSON" in outcome.message


SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "temperature": {"type": "number"}},
    "required": ["city", "temperature"],
}
FINAL = "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>"


def test_a_json_answer_that_matches_is_parsed(harmony: Harmony) -> None:
    text = FINAL + '{"city": "Paris", "temperature": 21.5}'
    outcome = _outcome(harmony, text, RETURN_TOKEN, "stop", answer_schema=SCHEMA)
    assert (outcome.phase, outcome.reason) == (Phase.SUCCEEDED, "Completed")
    assert outcome.answer_json == ({"city": "Paris", "temperature": 21.5},)


@pytest.mark.parametrize(
    ("answer", "says"),
    [
        ("Paris, 21 degrees", "the answer is not JSON"),
        ('{"city": "Paris"}', "does not match the schema at the top level: 'temperature'"),
        ('{"city": 3, "temperature": 1}', "does not match the schema at city"),
    ],
)
def test_a_json_answer_that_does_not_match_fails_and_is_kept(
    harmony: Harmony, answer: str, says: str
) -> None:
    outcome = _outcome(harmony, FINAL + answer, RETURN_TOKEN, "stop", answer_schema=SCHEMA)
    assert (outcome.phase, outcome.reason) == (Phase.FAILED, "ResponseMismatch")
    assert says in outcome.message
    assert outcome.texts["response"] == answer, "nothing is lost"
    assert outcome.answer_json == ()


def test_a_json_answer_cut_short_says_where_it_stopped(harmony: Harmony) -> None:
    parsed = parse(harmony, FINAL + '{"city": "Par', None)
    outcome = generation_outcome(
        Generation(parsed, "length", 40, 100, 40, 4096, answer_schema=SCHEMA)
    )
    assert (outcome.phase, outcome.reason) == (Phase.FAILED, "TokenLimit")
    assert "the JSON answer is incomplete" in outcome.message


def test_dropped_analysis_is_never_in_the_texts(harmony: Harmony) -> None:
    kept = _outcome(harmony, FINAL + "Hi", RETURN_TOKEN, "stop")
    dropped = _outcome(harmony, FINAL + "Hi", RETURN_TOKEN, "stop", keep_analysis=False)
    assert kept.texts["analysis"] == "Think."
    assert dropped.texts["analysis"] == ""
    garbage = _outcome(
        harmony, "not harmony at all " * 10, RETURN_TOKEN, "stop", keep_analysis=False
    )
    assert "rawOutput" not in garbage.texts, "the raw text holds the analysis"
    assert "not kept" in garbage.message
