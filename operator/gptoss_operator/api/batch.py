"""InferenceBatch: a file of chat requests in OpenAI's batch format, run against a
GptOssModel by an Indexed Job, with the answers written to a file in the same format."""

from __future__ import annotations

import datetime
import hashlib
from enum import StrEnum
from typing import Any, Literal

from pydantic import Field, JsonValue, model_validator
from pydantic.config import JsonDict

from gptoss_operator.api.common import (
    ApiModel,
    Condition,
    LocalObjectReference,
    ModelReference,
    conditions_field,
)
from gptoss_operator.api.job import (
    BATCH_PRIORITY,
    MAX_PRIORITY,
    MAX_TOKENS_LIMIT,
    MIN_PRIORITY,
    AnalysisVisibility,
    ReasoningLevel,
)
from gptoss_operator.api.model import DNS_SUBDOMAIN_PATTERN, URL_PATTERN

KIND = "InferenceBatch"
PLURAL = "inferencebatches"
SINGULAR = "inferencebatch"
SHORT_NAMES = ["ib"]

# Children are "<batch>-shards" (the Indexed Job), "<batch>-merge" and
# "<batch>-batch-worker"; Job names end up in a 63-character label.
MAX_NAME_LENGTH = 50
MAX_SHARDS = 256

_OPAQUE: JsonDict = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}

# A path inside a volume: relative, no "..", no empty segment.
RELATIVE_PATH_PATTERN = r"^[A-Za-z0-9._-][A-Za-z0-9._/-]*$"
_PATH_RULES: list[JsonValue] = [
    {
        "rule": "!self.split('/').exists(s, s == '..' || s == '')",
        "message": "path must stay inside the volume: no '..' and no empty segment",
    }
]


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    MERGING = "Merging"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


FINISHED_PHASES = (Phase.SUCCEEDED.value, Phase.FAILED.value)


class VolumePath(ApiModel):
    """A path inside a PersistentVolumeClaim of the batch's namespace."""

    claimName: str = Field(
        min_length=1,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="The PersistentVolumeClaim.",
    )
    path: str = Field(
        min_length=1,
        max_length=1024,
        pattern=RELATIVE_PATH_PATTERN,
        description="Path inside the volume, relative to its root.",
        json_schema_extra={"x-kubernetes-validations": _PATH_RULES},
    )

    @model_validator(mode="after")
    def _inside_the_volume(self) -> VolumePath:
        if any(part in ("..", "") for part in self.path.split("/")):
            raise ValueError("path must stay inside the volume: no '..' and no empty segment")
        return self


class S3Location(ApiModel):
    """An object (input) or a key prefix (output) in an S3-compatible bucket."""

    bucket: str = Field(min_length=3, max_length=63, description="The bucket.")
    key: str = Field(
        min_length=1,
        max_length=1024,
        description="Object key of the input file; for the output, the prefix its files go under.",
    )
    endpoint: str | None = Field(
        default=None,
        max_length=2048,
        pattern=URL_PATTERN,
        description="URL of an S3-compatible service; AWS S3 if unset.",
    )
    region: str = Field(default="us-east-1", min_length=1, max_length=64)
    pathStyle: bool = Field(
        default=False,
        description="Address the bucket in the path (most S3-compatible services need it).",
    )
    credentialsSecretRef: LocalObjectReference | None = Field(
        default=None,
        description="Secret with the keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "(and optionally AWS_SESSION_TOKEN), given to the workers' pods only. Its author "
        "must be allowed to get it.",
    )
    credentials: Literal["ambient"] | None = Field(
        default=None,
        description="ambient: no Secret, the pods' own cloud identity signs the requests "
        "(for example a web identity on EKS); the admin may forbid it. Set either this or "
        "credentialsSecretRef.",
    )


_ONE_CREDENTIAL: list[JsonValue] = [
    {
        "rule": "has(self.credentialsSecretRef) != has(self.credentials)",
        "message": "set credentialsSecretRef, or credentials: ambient to sign with the pods' "
        "own cloud identity (not both)",
        "fieldPath": ".credentials",
        "reason": "FieldValueRequired",
    }
]


class ConfigMapFile(ApiModel):
    """A small input file kept in a ConfigMap (up to about 1 MiB)."""

    name: str = Field(min_length=1, max_length=253, description="The ConfigMap.")
    key: str = Field(default="input.jsonl", min_length=1, max_length=253)


_ONE_OF_INPUT: list[JsonValue] = [
    {
        "rule": "[has(self.volume), has(self.s3), has(self.configMap)].filter(x, x).size() == 1",
        "message": "set exactly one of volume, s3 and configMap",
        "reason": "FieldValueInvalid",
    }
]
_ONE_OF_OUTPUT: list[JsonValue] = [
    {
        "rule": "[has(self.volume), has(self.s3)].filter(x, x).size() == 1",
        "message": "set exactly one of volume and s3",
        "reason": "FieldValueInvalid",
    }
]


class BatchInput(ApiModel):
    volume: VolumePath | None = Field(default=None, description="A file on a volume.")
    s3: S3Location | None = Field(
        default=None,
        description="An object in a bucket.",
        json_schema_extra={"x-kubernetes-validations": _ONE_CREDENTIAL},
    )
    configMap: ConfigMapFile | None = Field(default=None, description="A ConfigMap key.")

    @model_validator(mode="after")
    def _exactly_one(self) -> BatchInput:
        if sum(x is not None for x in (self.volume, self.s3, self.configMap)) != 1:
            raise ValueError("input: set exactly one of volume, s3 and configMap")
        return self


class BatchOutput(ApiModel):
    volume: VolumePath | None = Field(
        default=None, description="A folder on a volume (created if missing)."
    )
    s3: S3Location | None = Field(
        default=None,
        description="A key prefix in a bucket.",
        json_schema_extra={"x-kubernetes-validations": _ONE_CREDENTIAL},
    )
    overwrite: bool = Field(
        default=False,
        description="A folder another batch wrote (or files no batch claims) is refused "
        "(OutputInUse) and left as it is. true: this batch deletes those files and writes "
        "its own.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> BatchOutput:
        if sum(x is not None for x in (self.volume, self.s3)) != 1:
            raise ValueError("output: set exactly one of volume and s3")
        return self


class RequestDefaults(ApiModel):
    """What a line's body leaves out."""

    maxTokens: int = Field(
        default=256,
        ge=1,
        le=MAX_TOKENS_LIMIT,
        description="Most tokens to generate, reasoning included (max_completion_tokens).",
    )
    temperature: float = Field(default=0.7, ge=0, le=2)
    topP: float | None = Field(default=None, gt=0, le=1)
    reasoningLevel: ReasoningLevel = Field(default="medium", description="reasoning_effort.")
    analysis: AnalysisVisibility = Field(
        default="keep",
        description="keep: the analysis channel goes to each output line's message.reasoning; "
        "drop: it is never written (gpt-oss's raw reasoning is not meant for end users).",
    )


class ResourceList(ApiModel):
    cpu: str | None = None
    memory: str | None = None


class WorkerResources(ApiModel):
    requests: ResourceList | None = None
    limits: ResourceList | None = None


class InferenceBatchSpec(ApiModel):
    modelRef: ModelReference = Field(
        description="The GptOssModel that answers the requests: in this namespace, or in "
        "the one named. The shards run here and reach the model through its sidecars' "
        "gateway, with a key of the batch's own."
    )
    input: BatchInput = Field(
        description="The requests: JSONL in OpenAI's batch input format, one "
        '{"custom_id", "method": "POST", "url": "/v1/chat/completions", "body"} per line.',
        json_schema_extra={"x-kubernetes-validations": _ONE_OF_INPUT},
    )
    output: BatchOutput = Field(
        description="Where output.jsonl (answers) and errors.jsonl (failed lines) go, in "
        "OpenAI's batch output format.",
        json_schema_extra={"x-kubernetes-validations": _ONE_OF_OUTPUT},
    )
    defaults: RequestDefaults = Field(
        default_factory=RequestDefaults,
        description="Request fields a line's body leaves out.",
        json_schema_extra={"default": {}},
    )
    priority: int = Field(
        default=BATCH_PRIORITY,
        ge=MIN_PRIORITY,
        le=MAX_PRIORITY,
        description="Of every line's request; higher runs first (see InferenceJob's "
        "spec.priority). The default is below interactive jobs' 0, so a batch takes the "
        "capacity they leave.",
    )
    shards: int = Field(
        default=4,
        ge=1,
        le=MAX_SHARDS,
        description="How many parts the input is split into: one index of the Indexed Job "
        "each (line n belongs to shard n mod shards).",
    )
    parallelism: int | None = Field(
        default=None,
        ge=1,
        le=MAX_SHARDS,
        description="Shards running at once (default: all of them).",
    )
    requestsPerShard: int = Field(
        default=32,
        ge=1,
        le=1024,
        description="Requests each shard keeps in flight, so the engine can batch them. "
        "Lowered when the running shards together would hold more than the engine admits "
        "(vLLM's max-num-seqs less the sidecar's concurrency, times the model's replicas or "
        "its autoscaling maxReplicas); one at least.",
    )
    maxLineAttempts: int = Field(
        default=3,
        ge=1,
        le=20,
        description="Tries of a line the engine answers with an error; a line cut short "
        "because the engine went away is retried without counting.",
    )
    backoffLimitPerIndex: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Restarts of a shard's pod after it crashed; evictions and preemptions "
        "do not count.",
    )
    activeDeadlineSeconds: int | None = Field(
        default=None,
        ge=1,
        description="Fail the batch when it has not finished this long after its start.",
    )
    ttlSecondsAfterFinished: int | None = Field(
        default=None, ge=0, description="Delete the batch this long after it finished."
    )
    workerResources: WorkerResources | None = Field(
        default=None, description="Resources of each shard's worker container."
    )

    @model_validator(mode="after")
    def _parallelism_within_shards(self) -> InferenceBatchSpec:
        if self.parallelism is not None and self.parallelism > self.shards:
            raise ValueError("parallelism must not exceed shards")
        return self


class Counts(ApiModel):
    total: int | None = Field(default=None, ge=0, description="Lines in the input.")
    succeeded: int = Field(default=0, ge=0, description="Lines answered (in output.jsonl).")
    failed: int = Field(default=0, ge=0, description="Lines that failed (in errors.jsonl).")
    inFlight: int = Field(default=0, ge=0, description="Requests at the engine now.")


class Usage(ApiModel):
    promptTokens: int = Field(default=0, ge=0)
    completionTokens: int = Field(default=0, ge=0)
    totalTokens: int = Field(default=0, ge=0)


class ShardProgress(ApiModel):
    """One shard's figures, written by its worker (at most every few seconds)."""

    total: int | None = Field(default=None, ge=0, description="Lines of the shard.")
    succeeded: int = Field(default=0, ge=0)
    failed: int = Field(default=0, ge=0)
    inFlight: int = Field(default=0, ge=0)
    promptTokens: int = Field(default=0, ge=0)
    completionTokens: int = Field(default=0, ge=0)
    done: bool = Field(default=False, description="Every line of the shard is written.")
    worker: str | None = Field(default=None, description="The pod running the shard.")
    updateTime: datetime.datetime | None = None


class OutputFiles(ApiModel):
    results: str | None = Field(default=None, description="URL of output.jsonl.")
    errors: str | None = Field(default=None, description="URL of errors.jsonl.")


def gateway_key_sha256(key: str) -> str:
    """What the operator records of a batch's gateway key, and the gateway compares."""
    return hashlib.sha256(key.encode()).hexdigest()


class GatewayKey(ApiModel):
    """The batch's key to the model's gateway: the operator puts it in a Secret of the
    batch's namespace for the shards, and shows the model's sidecars only its hash."""

    secret: str = Field(description="The Secret holding the key (in the batch's namespace).")
    sha256: str = Field(pattern="^[0-9a-f]{64}$", description="SHA-256 of the key, in hex.")


class InferenceBatchStatus(ApiModel):
    phase: Phase | None = Field(
        default=None, description="Pending, Running, Merging, Succeeded or Failed."
    )
    observedGeneration: int | None = Field(default=None, ge=0)
    conditions: list[Condition] = conditions_field(
        "Complete and Failed (as in batch/v1 Job), Ready, Reconciling and Stalled."
    )
    counts: Counts | None = None
    percent: int | None = Field(default=None, ge=0, le=100, description="Lines done, 0-100.")
    usage: Usage | None = None
    linesPerSecond: float | None = Field(default=None, ge=0, description="Since the start.")
    outputTokensPerSecond: float | None = Field(default=None, ge=0, description="Since the start.")
    estimatedTimeLeft: str | None = Field(
        default=None, description="At the rate so far, e.g. 1h20m."
    )
    startTime: datetime.datetime | None = None
    completionTime: datetime.datetime | None = None
    duration: str | None = Field(default=None, description="completionTime - startTime.")
    output: OutputFiles | None = None
    shards: dict[str, ShardProgress] | None = Field(
        default=None, description="Each shard's progress, by index."
    )
    message: str | None = Field(default=None, description="Human-readable state.")
    gatewayKey: GatewayKey | None = Field(
        default=None, description="The key its shards present to the model's gateway."
    )
    kopf: dict[str, Any] | None = Field(
        default=None,
        description="Bookkeeping of the operator framework.",
        json_schema_extra=_OPAQUE,
    )


class InferenceBatch(ApiModel):
    apiVersion: str | None = None
    kind: str | None = None
    metadata: dict[str, Any] | None = None
    spec: InferenceBatchSpec
    status: InferenceBatchStatus | None = None


SPEC_RULES = [
    {
        "rule": "self == oldSelf",
        "message": "spec is immutable: create a new InferenceBatch instead",
        "reason": "FieldValueForbidden",
    },
    {
        "rule": "!has(self.parallelism) || self.parallelism <= self.shards",
        "message": "parallelism must not exceed shards",
        "fieldPath": ".parallelism",
        "reason": "FieldValueInvalid",
    },
]

ROOT_RULES = [
    {
        "rule": f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
        "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters: "
        "the names of the batch's Jobs derive from it",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        "message": "metadata.name must be a DNS-1035 label (lowercase letters, digits and "
        "'-', starting with a letter): it names the batch's Jobs",
        "reason": "FieldValueInvalid",
    },
]

PRINTER_COLUMNS = [
    {"name": "Model", "type": "string", "jsonPath": ".spec.modelRef.name"},
    {
        "name": "Model Namespace",
        "type": "string",
        "jsonPath": ".spec.modelRef.namespace",
        "priority": 1,
    },
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Percent", "type": "integer", "jsonPath": ".status.percent"},
    {"name": "Succeeded", "type": "integer", "jsonPath": ".status.counts.succeeded"},
    {"name": "Failed", "type": "integer", "jsonPath": ".status.counts.failed"},
    {"name": "Total", "type": "integer", "jsonPath": ".status.counts.total"},
    {"name": "Left", "type": "string", "jsonPath": ".status.estimatedTimeLeft"},
    {"name": "Duration", "type": "string", "jsonPath": ".status.duration", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
