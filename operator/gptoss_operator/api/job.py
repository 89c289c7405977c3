"""InferenceJob: one chat request run against a GptOssModel."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Literal

from pydantic import ConfigDict, Field, JsonValue, model_validator
from pydantic.config import JsonDict

from gptoss_operator.api.common import (
    ApiModel,
    Condition,
    ModelReference,
    conditions_field,
)

KIND = "InferenceJob"
PLURAL = "inferencejobs"
SINGULAR = "inferencejob"
SHORT_NAMES = ["ij"]

MAX_NAME_LENGTH = 63
MAX_MESSAGES = 256
MAX_CONTENT_LENGTH = 131072
MAX_TOKENS_LIMIT = 131072
MAX_TOOLS = 128
MAX_TOOL_CALLS = 32
MAX_ID_LENGTH = 128
# OpenAI's rule for function and response format names.
FUNCTION_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
# toolChoice's own values: no function may be named so.
TOOL_CHOICES = ("auto", "none", "required")

_OPAQUE: JsonDict = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


# The phases a job never leaves.
FINISHED_PHASES = (Phase.SUCCEEDED.value, Phase.FAILED.value)


Role = Literal["system", "developer", "user", "assistant", "tool"]
ReasoningLevel = Literal["low", "medium", "high"]
FinishReason = Literal["stop", "length", "tool_calls", "error"]
AnalysisVisibility = Literal["keep", "drop"]


class ToolCall(ApiModel):
    id: str = Field(
        min_length=1,
        max_length=MAX_ID_LENGTH,
        description="The call's id: the tool message with the result names it.",
    )
    name: str = Field(
        max_length=64, pattern=FUNCTION_NAME_PATTERN, description="The function called."
    )
    arguments: str = Field(
        max_length=MAX_CONTENT_LENGTH,
        description="The arguments as JSON text, as the model wrote them.",
    )


_MESSAGE_RULES: list[JsonValue] = [
    {
        "rule": "self.role == 'tool' ? has(self.toolCallId) : !has(self.toolCallId)",
        "message": "toolCallId: a tool message names the call it answers, and only a tool "
        "message has one",
        "fieldPath": ".toolCallId",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "!has(self.name) || self.role == 'tool'",
        "message": "name: only a tool message names its function",
        "fieldPath": ".name",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "!has(self.toolCalls) || self.role == 'assistant'",
        "message": "toolCalls: only an assistant message makes tool calls",
        "fieldPath": ".toolCalls",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "!has(self.analysis) || self.role == 'assistant'",
        "message": "analysis: only an assistant message has one",
        "fieldPath": ".analysis",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "self.role == 'tool' ? has(self.content) : "
        "(has(self.content) && size(self.content) > 0) || "
        "(self.role == 'assistant' && has(self.toolCalls) && size(self.toolCalls) > 0)",
        "message": "content: a message needs text (an assistant message may make tool calls "
        "instead; a tool message's result may be empty)",
        "fieldPath": ".content",
        "reason": "FieldValueRequired",
    },
]


_MESSAGE_RULES_TEXT = [str(rule["message"]) for rule in _MESSAGE_RULES if isinstance(rule, dict)]


class Message(ApiModel):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _MESSAGE_RULES})

    role: Role = Field(description="system, developer, user, assistant or tool.")
    content: str | None = Field(
        default=None,
        max_length=MAX_CONTENT_LENGTH,
        description="The message text; for a tool message, the tool's result.",
    )
    toolCalls: list[ToolCall] | None = Field(
        default=None,
        max_length=MAX_TOOL_CALLS,
        description="assistant: the function calls it made (from a job's status.toolCalls).",
    )
    analysis: str | None = Field(
        default=None,
        max_length=MAX_CONTENT_LENGTH,
        description="assistant: the analysis that preceded its tool calls (the job's "
        "status.analysis). Sent back while the tool loop lasts, as gpt-oss expects; "
        "analysis before a later final answer is dropped.",
    )
    toolCallId: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_ID_LENGTH,
        description="tool: the id of the call whose result this is.",
    )
    name: str | None = Field(
        default=None,
        max_length=64,
        pattern=FUNCTION_NAME_PATTERN,
        description="tool: the function's name (found from the call when left out).",
    )

    @model_validator(mode="after")
    def _fields_of_its_role(self) -> Message:
        """The _MESSAGE_RULES, for readers that parse without the apiserver."""
        if (self.role == "tool") != (self.toolCallId is not None):
            raise ValueError(_MESSAGE_RULES_TEXT[0])
        for field, role in (
            ("name", "tool"),
            ("toolCalls", "assistant"),
            ("analysis", "assistant"),
        ):
            if getattr(self, field) is not None and self.role != role:
                raise ValueError(
                    _MESSAGE_RULES_TEXT[{"name": 1, "toolCalls": 2, "analysis": 3}[field]]
                )
        has_text = bool(self.content)
        if self.role == "tool" and self.content is None:
            raise ValueError(_MESSAGE_RULES_TEXT[4])
        if (
            self.role != "tool"
            and not has_text
            and not (self.role == "assistant" and self.toolCalls)
        ):
            raise ValueError(_MESSAGE_RULES_TEXT[4])
        return self


_FUNCTION_RULES: list[JsonValue] = [
    {
        "rule": "!(self.name in " + str(list(TOOL_CHOICES)) + ")",
        "message": "name: auto, none and required are toolChoice's own values",
        "fieldPath": ".name",
        "reason": "FieldValueInvalid",
    },
]


class FunctionTool(ApiModel):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": _FUNCTION_RULES})

    name: str = Field(
        max_length=64, pattern=FUNCTION_NAME_PATTERN, description="The function's name."
    )
    description: str | None = Field(
        default=None, max_length=MAX_CONTENT_LENGTH, description="What it does, for the model."
    )
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="Its arguments, as a JSON schema (an object).",
        json_schema_extra=_OPAQUE,
    )

    @model_validator(mode="after")
    def _not_a_tool_choice(self) -> FunctionTool:
        if self.name in TOOL_CHOICES:
            raise ValueError("name: auto, none and required are toolChoice's own values")
        return self


class JsonSchemaFormat(ApiModel):
    name: str = Field(
        max_length=64, pattern=FUNCTION_NAME_PATTERN, description="The format's name."
    )
    description: str | None = Field(
        default=None,
        max_length=MAX_CONTENT_LENGTH,
        description="What the answer is, for the model.",
    )
    schema_: dict[str, Any] = Field(
        alias="schema",
        description="The JSON schema the answer must match.",
        json_schema_extra=_OPAQUE,
    )
    strict: bool = Field(
        default=True,
        description="Constrain generation so the answer matches (the final answer only; "
        "the analysis stays free). false: the schema is only described to the model, and "
        "the answer is still checked.",
    )


_RESPONSE_FORMAT_RULES: list[JsonValue] = [
    {
        "rule": "self.type == 'json_schema' ? has(self.jsonSchema) : !has(self.jsonSchema)",
        "message": "jsonSchema: given exactly when type is json_schema",
        "fieldPath": ".jsonSchema",
        "reason": "FieldValueInvalid",
    },
]


class ResponseFormat(ApiModel):
    type: Literal["text", "json_object", "json_schema"] = Field(
        default="text",
        description="text, json_object (the final answer is a JSON object) or json_schema "
        "(it matches jsonSchema.schema).",
    )
    jsonSchema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_with_its_type(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.jsonSchema is not None):
            raise ValueError("jsonSchema: given exactly when type is json_schema")
        return self


# spec.priority's range, and a batch's default: interactive work (0) goes first.
MIN_PRIORITY = -1000
MAX_PRIORITY = 1000
BATCH_PRIORITY = -10


class InferenceJobSpec(ApiModel):
    modelRef: ModelReference = Field(
        description="The GptOssModel that answers the request: in this namespace, or in "
        "the one named."
    )
    messages: list[Message] = Field(
        min_length=1,
        max_length=MAX_MESSAGES,
        description="The conversation; the last message is the user's, or a tool's result.",
    )
    tools: list[FunctionTool] | None = Field(
        default=None,
        max_length=MAX_TOOLS,
        # Keyed by name: the apiserver refuses a name given twice.
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Functions the model may call: a call ends the job with "
        "finishReason tool_calls and status.toolCalls.",
    )
    toolChoice: str | None = Field(
        default=None,
        max_length=64,
        description="auto (the default: call or answer), none (answer), required (call "
        "one of tools) or the name of the function to call.",
    )
    responseFormat: ResponseFormat | None = Field(
        default=None,
        description="The final answer's format: text, a JSON object, or JSON that matches "
        "a schema (status.responseJSON holds it, parsed).",
        json_schema_extra={"x-kubernetes-validations": _RESPONSE_FORMAT_RULES},
    )
    analysis: AnalysisVisibility = Field(
        default="keep",
        description="keep: the analysis channel goes to status.analysis; drop: it is "
        "never stored (gpt-oss's raw reasoning is not meant for end users).",
    )
    maxTokens: int = Field(
        default=256,
        ge=1,
        le=MAX_TOKENS_LIMIT,
        description="Most tokens to generate, reasoning included.",
    )
    temperature: float = Field(default=0.7, ge=0, le=2, description="Sampling temperature.")
    topP: float | None = Field(default=None, gt=0, le=1, description="Nucleus sampling mass.")
    reasoningLevel: ReasoningLevel = Field(
        default="medium", description="Reasoning effort: low, medium or high."
    )
    priority: int = Field(
        default=0,
        ge=MIN_PRIORITY,
        le=MAX_PRIORITY,
        description="Higher runs first: the sidecars claim higher priorities first, and "
        "vLLM starts a higher priority's requests ahead of waiting lower ones, and preempts "
        "lower ones first when its KV cache runs short (the model's "
        "serving.schedulingPolicy: priority). InferenceBatches default to "
        f"{BATCH_PRIORITY}, below interactive jobs.",
    )
    activeDeadlineSeconds: int | None = Field(
        default=None,
        ge=1,
        le=604800,
        description="Fail the job when it has not finished this long after creation.",
    )
    backoffLimit: int = Field(
        default=3, ge=0, le=100, description="Retries after engine errors or lost workers."
    )
    ttlSecondsAfterFinished: int | None = Field(
        default=None, ge=0, description="Delete the job this long after it finished."
    )

    @model_validator(mode="after")
    def _last_message_from_user(self) -> InferenceJobSpec:
        if self.messages and self.messages[-1].role not in ("user", "tool"):
            raise ValueError("messages: the last message must have role 'user' or 'tool'")
        names = [tool.name for tool in self.tools or []]
        if len(set(names)) != len(names):
            raise ValueError("tools: each function name may appear once")
        choice = self.toolChoice
        if (
            choice is not None
            and choice not in ("auto", "none")
            and (not names or (choice != "required" and choice not in names))
        ):
            raise ValueError(
                "toolChoice must be auto, none, required (with tools) or the name of a "
                "function in tools"
            )
        return self


class Usage(ApiModel):
    promptTokens: int = Field(default=0, ge=0)
    completionTokens: int = Field(default=0, ge=0)
    totalTokens: int = Field(default=0, ge=0)


class Lease(ApiModel):
    holder: str = Field(description="The worker (pod) running the attempt.")
    acquireTime: datetime.datetime
    renewTime: datetime.datetime
    durationSeconds: int = Field(ge=1)


class OutputRef(ApiModel):
    """Where the full text lives when it does not fit in status."""

    configMapName: str = Field(description="ConfigMap owned by the job (the first one).")
    configMapNames: list[str] = Field(
        default_factory=list,
        description=(
            "Every ConfigMap holding the texts, in order; a text larger than one ConfigMap "
            "continues under the same key in the next."
        ),
    )
    keys: list[str] = Field(default_factory=list, description="Keys holding full texts.")


class InferenceJobStatus(ApiModel):
    phase: Phase | None = Field(default=None, description="Pending, Running, Succeeded or Failed.")
    observedGeneration: int | None = Field(default=None, ge=0)
    conditions: list[Condition] = conditions_field(
        "Complete and Failed (as in batch/v1 Job), Ready, Reconciling, Stalled, Scheduled."
    )
    response: str | None = Field(default=None, description="The final-channel answer.")
    responseJSON: Any = Field(
        default=None,
        description="The answer parsed, when responseFormat asks for JSON and it matches.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    toolCalls: list[ToolCall] | None = Field(
        default=None,
        description="The function calls the model made (finishReason tool_calls): run "
        "them, and send their results in a new job.",
    )
    analysis: str | None = Field(default=None, description="The analysis-channel reasoning.")
    commentary: str | None = Field(default=None, description="The commentary channel.")
    reasoningLevel: ReasoningLevel | None = None
    finishReason: FinishReason | None = None
    usage: Usage | None = None
    startTime: datetime.datetime | None = None
    completionTime: datetime.datetime | None = None
    duration: str | None = Field(default=None, description="completionTime - startTime.")
    timeToFirstTokenSeconds: float | None = Field(default=None, ge=0)
    tokensPerSecond: float | None = Field(default=None, ge=0)
    attempts: int | None = Field(default=None, ge=0, description="Attempts started.")
    voidedAttempts: int | None = Field(
        default=None,
        ge=0,
        description="Attempts the platform cut short (the engine went down or aborted the "
        "request, the request was lost, the worker stopped), so they do not count against "
        "backoffLimit.",
    )
    worker: str | None = Field(default=None, description="Pod that ran the last attempt.")
    lease: Lease | None = None
    message: str | None = Field(default=None, description="Human-readable state.")
    outputRef: OutputRef | None = None
    rawOutput: str | None = Field(
        default=None, description="Undecoded model output, kept when harmony parsing failed."
    )
    kopf: dict[str, Any] | None = Field(
        default=None,
        description="Bookkeeping of the operator framework.",
        json_schema_extra=_OPAQUE,
    )


class InferenceJob(ApiModel):
    apiVersion: str | None = None
    kind: str | None = None
    metadata: dict[str, Any] | None = None
    spec: InferenceJobSpec
    status: InferenceJobStatus | None = None


SPEC_RULES = [
    {
        "rule": "self == oldSelf",
        "message": "spec is immutable: create a new InferenceJob instead",
        "reason": "FieldValueForbidden",
    },
    {
        "rule": "self.messages[size(self.messages) - 1].role in ['user', 'tool']",
        "message": "the last message must have role 'user' or 'tool'",
        "fieldPath": ".messages",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "!has(self.toolChoice) || self.toolChoice in ['auto', 'none'] || "
        "(has(self.tools) && size(self.tools) > 0 && (self.toolChoice == 'required' || "
        "self.tools.exists(t, t.name == self.toolChoice)))",
        "message": "toolChoice must be auto, none, required (with tools) or the name of a "
        "function in tools",
        "fieldPath": ".toolChoice",
        "reason": "FieldValueInvalid",
    },
]

ROOT_RULES = [
    {
        "rule": f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
        "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters",
        "reason": "FieldValueInvalid",
    },
]


def model_key_of(body: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of the GptOssModel a live InferenceJob or InferenceBatch names:
    its modelRef's namespace, or the object's own when it names none."""
    reference = (body.get("spec") or {}).get("modelRef") or {}
    own = (body.get("metadata") or {}).get("namespace") or ""
    return str(reference.get("namespace") or own), str(reference.get("name") or "")


# Server-side filters: each sidecar watches only its model's jobs.
SELECTABLE_FIELDS = [".spec.modelRef.name", ".spec.modelRef.namespace", ".status.phase"]

PRINTER_COLUMNS = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.modelRef.name"},
    {
        "name": "Model Namespace",
        "type": "string",
        "jsonPath": ".spec.modelRef.namespace",
        "priority": 1,
    },
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Reasoning", "type": "string", "jsonPath": ".spec.reasoningLevel"},
    {"name": "Tokens", "type": "integer", "jsonPath": ".status.usage.totalTokens"},
    {"name": "Duration", "type": "string", "jsonPath": ".status.duration"},
    {"name": "Finish", "type": "string", "jsonPath": ".status.finishReason", "priority": 1},
    {"name": "Worker", "type": "string", "jsonPath": ".status.worker", "priority": 1},
    {"name": "Priority", "type": "integer", "jsonPath": ".spec.priority", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
