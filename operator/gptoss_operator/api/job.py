"""InferenceJob: one chat request run against a GptOssModel."""

from __future__ import annotations

import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic.config import JsonDict

from gptoss_operator.api.common import (
    ApiModel,
    Condition,
    LocalObjectReference,
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

_OPAQUE: JsonDict = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


# The phases a job never leaves.
FINISHED_PHASES = (Phase.SUCCEEDED.value, Phase.FAILED.value)


Role = Literal["system", "developer", "user", "assistant"]
ReasoningLevel = Literal["low", "medium", "high"]
FinishReason = Literal["stop", "length", "error"]


class Message(ApiModel):
    role: Role = Field(description="system, developer, user or assistant.")
    content: str = Field(
        min_length=1,
        max_length=MAX_CONTENT_LENGTH,
        description="The message text.",
    )


class InferenceJobSpec(ApiModel):
    modelRef: LocalObjectReference = Field(
        description="The GptOssModel, in this namespace, that answers the request."
    )
    messages: list[Message] = Field(
        min_length=1,
        max_length=MAX_MESSAGES,
        description="The conversation; the last message must be from the user.",
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
        if self.messages and self.messages[-1].role != "user":
            raise ValueError("messages: the last message must have role 'user'")
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
        "rule": "self.messages[size(self.messages) - 1].role == 'user'",
        "message": "the last message must have role 'user'",
        "fieldPath": ".messages",
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

# Server-side filters: each sidecar watches only its model's jobs.
SELECTABLE_FIELDS = [".spec.modelRef.name", ".status.phase"]

PRINTER_COLUMNS = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.modelRef.name"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Reasoning", "type": "string", "jsonPath": ".spec.reasoningLevel"},
    {"name": "Tokens", "type": "integer", "jsonPath": ".status.usage.totalTokens"},
    {"name": "Duration", "type": "string", "jsonPath": ".status.duration"},
    {"name": "Finish", "type": "string", "jsonPath": ".status.finishReason", "priority": 1},
    {"name": "Worker", "type": "string", "jsonPath": ".status.worker", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
