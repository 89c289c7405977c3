"""One chat request, whoever asks it (an InferenceJob, a batch line), as the engine layer
runs it: what to render, how to sample, what the output must be."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gptoss_operator.api.job import InferenceJobSpec, Message
from gptoss_operator.engine.client import SamplingParams
from gptoss_operator.engine.harmony import (
    ChatMessage,
    FunctionTool,
    ReasoningLevel,
    ResponseFormat,
    ToolCall,
)
from gptoss_operator.engine.structured import structured_outputs

# What a json_object answer must be.
ANY_OBJECT: Mapping[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class ChatRequest:
    messages: tuple[ChatMessage, ...]
    reasoning_level: ReasoningLevel
    max_tokens: int
    temperature: float
    top_p: float | None = None
    tools: tuple[FunctionTool, ...] = ()
    tool_choice: str = "auto"  # auto, none, required or a tool's name
    response_format: ResponseFormat | None = None
    # Constrain generation to the response format (else it is described, then checked).
    strict: bool = True
    keep_analysis: bool = True

    @property
    def answer_schema(self) -> Mapping[str, Any] | None:
        """The schema the final answer must match, or None (text)."""
        format_ = self.response_format
        if format_ is None or format_.type == "text":
            return None
        return format_.schema if format_.type == "json_schema" and format_.schema else ANY_OBJECT

    def sampling(
        self, stop_token_ids: Sequence[int], priority: int | None = None
    ) -> SamplingParams:
        """``priority``: the job's or batch's spec.priority, for an engine that schedules
        by priority (None: one that does not)."""
        constrained = self.response_format if self.strict else None
        return SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop_token_ids=list(stop_token_ids),
            structured_outputs=structured_outputs(
                self.tools, self.tool_choice, constrained, self.max_tokens
            ),
            priority=None if priority is None else engine_priority(priority),
        )


def engine_priority(priority: int) -> int:
    """vLLM's priority for an API priority: vLLM runs lower values first, the API (as
    Kubernetes' PriorityClasses) higher ones."""
    return -priority


def from_job_spec(spec: InferenceJobSpec) -> ChatRequest:
    format_ = spec.responseFormat
    response_format: ResponseFormat | None = None
    strict = True
    if format_ is not None and format_.jsonSchema is not None:
        schema = format_.jsonSchema
        response_format = ResponseFormat(
            "json_schema", schema.name, schema.description, schema.schema_
        )
        strict = schema.strict
    elif format_ is not None:
        response_format = ResponseFormat(format_.type)
    return ChatRequest(
        messages=tuple(_message(m) for m in spec.messages),
        reasoning_level=spec.reasoningLevel,
        max_tokens=spec.maxTokens,
        temperature=spec.temperature,
        top_p=spec.topP,
        tools=tuple(
            FunctionTool(tool.name, tool.description or "", tool.parameters)
            for tool in spec.tools or []
        ),
        tool_choice=spec.toolChoice or "auto",
        response_format=response_format,
        strict=strict,
        keep_analysis=spec.analysis == "keep",
    )


def _message(message: Message) -> ChatMessage:
    return ChatMessage(
        message.role,
        message.content or "",
        tool_calls=tuple(
            ToolCall(call.id, call.name, call.arguments) for call in message.toolCalls or []
        ),
        analysis=message.analysis,
        tool_call_id=message.toolCallId,
        name=message.name,
    )
