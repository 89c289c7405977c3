"""What a finished generation means for its InferenceJob: phase, reason, message, texts.

Pure functions: the worker reports what the engine returned and what the parser made of
it; this module decides. Two rules hold throughout: output that did not parse is kept
(``rawOutput``) whatever the finish reason, and the message names the real cause of a cut
(maxTokens, or the model's context window), never one for the other.
"""

from __future__ import annotations

from dataclasses import dataclass

from gptoss_operator.api.job import Phase
from gptoss_operator.engine.harmony import ParsedOutput


@dataclass(frozen=True)
class Generation:
    """One completed engine call, as the worker observed it."""

    parsed: ParsedOutput
    finish_reason: str  # the engine's: "stop" or "length"
    max_tokens: int
    prompt_tokens: int
    completion_tokens: int
    max_model_len: int | None  # the engine's context window, when known


@dataclass(frozen=True)
class Outcome:
    phase: Phase
    reason: str
    message: str
    finish_reason: str  # for status.finishReason: stop, length or error
    texts: dict[str, str]  # response, analysis, commentary and, when kept, rawOutput


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


def _texts(parsed: ParsedOutput) -> dict[str, str]:
    texts = {
        "response": parsed.response,
        "analysis": parsed.analysis,
        "commentary": parsed.commentary,
    }
    if parsed.raw_text is not None:
        texts["rawOutput"] = parsed.raw_text
    return texts


def generation_outcome(g: Generation) -> Outcome:
    parsed = g.parsed
    texts = _texts(parsed)
    cut = g.finish_reason == "length"
    reason, where, advice = _cut_cause(g) if cut else ("Completed", "", "")
    stopped = f"; generation stopped at {where}" if cut else ""
    if parsed.recovered and not parsed.has_text:
        return Outcome(
            Phase.FAILED,
            "MalformedOutput",
            f"the model output is not valid harmony ({parsed.error}){stopped}; the raw text "
            "is in status.rawOutput",
            "error",
            texts,
        )
    if parsed.recovered:
        return Outcome(
            Phase.SUCCEEDED,
            "RecoveredMalformedOutput",
            f"the output broke the harmony format ({parsed.error}){stopped}; recovered what "
            "could be parsed, the raw text is in status.rawOutput",
            "length" if cut else "stop",
            texts,
        )
    if cut:
        if parsed.reached_final:
            message = f"stopped at {where} inside the final answer, which is cut short: {advice}"
        elif parsed.cut_in_header and not parsed.has_text:
            message = (
                f"stopped at {where} inside a message header, before any text: {advice}; "
                "the raw output is in status.rawOutput"
            )
        else:
            message = (
                f"stopped at {where} before the final answer (still reasoning): response is "
                f"empty; {advice}"
            )
        return Outcome(Phase.SUCCEEDED, reason, message, "length", texts)
    if not parsed.reached_final and parsed.commentary:
        message = "the model ended with a tool call (in status.commentary), not a final answer"
    else:
        message = "the model answered"
    return Outcome(Phase.SUCCEEDED, "Completed", message, "stop", texts)


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
