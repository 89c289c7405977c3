"""What a finished generation means for its InferenceJob: phase, reason, message, texts.

Pure functions: the worker reports what the engine returned and what the parser made of
it; this module decides. Rules that hold throughout: output that did not parse is kept
(``rawOutput``) whatever the finish reason, unless the request keeps no analysis (the raw
text holds it); the message names the real cause of a cut (maxTokens, or the model's
context window), never one for the other; tool calls are returned as the model wrote
them, arguments that are not JSON included; an answer asked for as JSON is checked
before the job succeeds, and kept whatever the check says.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gptoss_operator.api.job import Phase
from gptoss_operator.engine.harmony import ParsedOutput, ToolCall
from gptoss_operator.engine.structured import answer_problem


@dataclass(frozen=True)
class Generation:
    """One completed engine call, as the worker observed it."""

    parsed: ParsedOutput
    finish_reason: str  # the engine's: "stop" or "length"
    max_tokens: int
    prompt_tokens: int
    completion_tokens: int
    max_model_len: int | None  # the engine's context window, when known
    # The JSON schema the answer must match (json_object: any object), or None.
    answer_schema: Mapping[str, Any] | None = None
    keep_analysis: bool = True
    call_id_prefix: str = "call"  # tool call ids are PREFIX_N


@dataclass(frozen=True)
class Outcome:
    phase: Phase
    reason: str
    message: str
    finish_reason: str  # for status.finishReason: stop, length, tool_calls or error
    texts: dict[str, str]  # response, analysis, commentary and, when kept, rawOutput
    tool_calls: tuple[ToolCall, ...] = ()
    # The answer parsed, when it had to be JSON and is: (value,) (a JSON null is a value).
    answer_json: tuple[Any, ...] = field(default=())


def _cut_by_context(g: Generation) -> bool:
    """A length finish before maxTokens was reached: the context window filled up."""
    return g.finish_reason == "length" and g.completion_tokens < g.max_tokens


def _cut_cause(g: Generation) -> tuple[str, str, str]:
    """(reason, where generation stopped, what to do) for a length finish."""
    if _cut_by_context(g):
        total = g.prompt_tokens + g.completion_tokens
        limit = f" of {g.max_model_len}" if g.max_model_len else ""
        return (
            "ContextLimit",
            f"the model's context window (prompt {g.prompt_tokens} + output "
            f"{g.completion_tokens} = {total} tokens{limit}) before maxTokens ({g.max_tokens})",
            "shorten the conversation or raise the model's serving.maxModelLen",
        )
    return "TokenLimit", f"maxTokens ({g.max_tokens})", "raise maxTokens"


def _texts(parsed: ParsedOutput, keep_analysis: bool) -> dict[str, str]:
    texts = {
        "response": parsed.response,
        "analysis": parsed.analysis if keep_analysis else "",
        "commentary": parsed.commentary,
    }
    if parsed.raw_text is not None and keep_analysis:
        texts["rawOutput"] = parsed.raw_text
    return texts


def generation_outcome(g: Generation) -> Outcome:
    """The outcome of the text (``_text_outcome``), then of the calls or the JSON."""
    outcome = _text_outcome(g)
    calls = tuple(
        ToolCall(f"{g.call_id_prefix}_{index}", name, arguments)
        for index, (name, arguments) in enumerate(g.parsed.tool_calls)
    )
    if calls and outcome.finish_reason == "stop":
        return _called(outcome, calls)
    if calls:
        return _replace(outcome, tool_calls=calls)
    if g.answer_schema is not None and outcome.phase is Phase.SUCCEEDED:
        return _checked(outcome, g)
    return outcome


def _replace(outcome: Outcome, **changes: Any) -> Outcome:
    return Outcome(**{**outcome.__dict__, **changes})


def _called(outcome: Outcome, calls: tuple[ToolCall, ...]) -> Outcome:
    listed = ", ".join(f"{call.name}({call.arguments[:80]})" for call in calls)
    unreadable = [call for call in calls if not _is_json(call.arguments)]
    if unreadable:
        which = ", ".join(f"{call.id} ({call.name})" for call in unreadable)
        return _replace(
            outcome,
            reason="InvalidToolArguments",
            message=f"the model called {listed}; the arguments of {which} are not valid "
            "JSON, kept as written in status.toolCalls",
            finish_reason="tool_calls",
            tool_calls=calls,
        )
    return _replace(
        outcome,
        reason="ToolCalls",
        message=f"the model called {listed}: run the calls in status.toolCalls and send "
        "their results (role tool, toolCallId) in a new job",
        finish_reason="tool_calls",
        tool_calls=calls,
    )


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _checked(outcome: Outcome, g: Generation) -> Outcome:
    """An answer that must be JSON (matching a schema): its value, or why it fails."""
    assert g.answer_schema is not None
    value, problem = answer_problem(g.parsed.response, g.answer_schema)
    if problem is None:
        return _replace(outcome, answer_json=(value,))
    if outcome.finish_reason == "length":
        reason, message = outcome.reason, f"{outcome.message}; the JSON answer is incomplete"
    else:
        reason = "ResponseMismatch"
        message = f"{problem}; the answer is in status.response"
    return _replace(outcome, phase=Phase.FAILED, reason=reason, message=message)


def _text_outcome(g: Generation) -> Outcome:
    parsed = g.parsed
    texts = _texts(parsed, g.keep_analysis)
    cut = g.finish_reason == "length"
    reason, where, advice = _cut_cause(g) if cut else ("Completed", "", "")
    stopped = f"; generation stopped at {where}" if cut else ""
    if parsed.recovered and not parsed.has_text:
        return Outcome(
            Phase.FAILED,
            "MalformedOutput",
            f"the model output is not valid harmony ({parsed.error}){stopped}; " + _raw_kept(g),
            "error",
            texts,
        )
    if parsed.recovered:
        return Outcome(
            Phase.SUCCEEDED,
            "RecoveredMalformedOutput",
            f"the output broke the harmony format ({parsed.error}){stopped}; recovered what "
            f"could be parsed, {_raw_kept(g)}",
            "length" if cut else "stop",
            texts,
        )
    if cut:
        if parsed.reached_final:
            message = f"stopped at {where} inside the final answer, which is cut short: {advice}"
        elif parsed.cut_in_header and not parsed.has_text:
            message = (
                f"stopped at {where} inside a message header, before any text: {advice}; "
                + _raw_kept(g)
            )
        else:
            message = (
                f"stopped at {where} before the final answer (still reasoning): response is "
                f"empty; {advice}"
            )
        return Outcome(Phase.SUCCEEDED, reason, message, "length", texts)
    return Outcome(Phase.SUCCEEDED, "Completed", "the model answered", "stop", texts)


def _raw_kept(g: Generation) -> str:
    if g.keep_analysis:
        return "the raw text is in status.rawOutput"
    return "the raw text is not kept (it holds the analysis, and spec.analysis is drop)"


def rejection_reason(
    engine_message: str, prompt_tokens: int, max_model_len: int | None
) -> tuple[str, str]:
    """(reason, message) for a request the engine refused outright."""
    if max_model_len is not None and prompt_tokens >= max_model_len:
        return (
            "PromptTooLong",
            f"the prompt is {prompt_tokens} tokens, and the model's context window "
            f"(max-model-len) is {max_model_len}: shorten the conversation or raise "
            f"serving.maxModelLen (engine: {engine_message})",
        )
    return "EngineRejected", engine_message
