"""GptOssModel: one gpt-oss model downloaded into a volume and served by vLLM."""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field, JsonValue, model_validator
from pydantic.config import JsonDict

from gptoss_operator.api.common import (
    NAMESPACE_PATTERN,
    ApiModel,
    Condition,
    SecretKeyRef,
    conditions_field,
)
from gptoss_operator.api.versions import DEFAULT_VLLM_IMAGE

KIND = "GptOssModel"
PLURAL = "gptossmodels"
SINGULAR = "gptossmodel"
SHORT_NAMES = ["gom"]

# Child objects are named "<model>-<suffix>"; the longest is the download Job,
# "<model>-dl-<8 hex>", which must stay a 63-character DNS label.
MAX_NAME_LENGTH = 50

DEFAULT_REPO = "openai/gpt-oss-120b"
DEFAULT_EXCLUDE_PATTERNS: list[JsonValue] = ["original/*", "metal/*"]

REPO_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$"
REVISION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$"
COMMIT_PATTERN = re.compile(r"^[0-9a-f]{40}$")
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
URL_PATTERN = r"^https?://[^\s/$.?#][^\s]*$"
IMAGE_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9._/:@-]*$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

_OPAQUE: JsonDict = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


class Phase(StrEnum):
    PENDING = "Pending"
    DOWNLOADING = "Downloading"
    STARTING = "Starting"
    READY = "Ready"
    SCALED_TO_ZERO = "ScaledToZero"
    FAILED = "Failed"


class Source(ApiModel):
    """Where the weights come from: a Hugging Face repo at a revision."""

    repo: str = Field(
        default=DEFAULT_REPO,
        pattern=REPO_PATTERN,
        description="Hugging Face repository, as owner/name.",
    )
    revision: str = Field(
        default="main",
        pattern=REVISION_PATTERN,
        description="Branch, tag or 40-character commit sha to download.",
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!self.contains('..') && !self.endsWith('/')",
                    "message": "revision must be a branch, tag or commit sha "
                    "(no '..', no trailing '/')",
                }
            ]
        },
    )
    endpoint: str | None = Field(
        default=None,
        max_length=2048,
        pattern=URL_PATTERN,
        description="Hugging Face-compatible mirror URL (HF_ENDPOINT); the public hub if unset.",
    )
    tokenSecretRef: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding a Hugging Face token, for gated or private repos. "
        "Used only once the Secret's owner shares it with the model (the ServiceAccount "
        "<model>-download may get it) and only for the endpoints its annotation "
        "gptoss.ai/token-endpoints lists (default: https://huggingface.co).",
    )
    excludePatterns: list[str] = Field(
        default_factory=lambda: ["original/*", "metal/*"],
        max_length=64,
        description="Glob patterns of repo files not to download. The default skips the "
        "original/ and metal/ copies of the weights, which vLLM does not load.",
        json_schema_extra={
            "default": DEFAULT_EXCLUDE_PATTERNS,
            "items": {"type": "string", "minLength": 1, "maxLength": 256},
        },
    )


class DeletionPolicy(StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


AccessMode = Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]


class Storage(ApiModel):
    """The PersistentVolumeClaim that holds the weights."""

    size: str | None = Field(
        default=None,
        max_length=64,
        pattern=QUANTITY_PATTERN,
        description="Claim size (a quantity such as 200Gi). Defaults to enough for the repo: "
        "150Gi for gpt-oss-120b, 40Gi for gpt-oss-20b, 200Gi otherwise; doubled when "
        "excludePatterns is empty.",
    )
    storageClassName: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="StorageClass of the claim; the cluster default if unset.",
    )
    accessModes: list[AccessMode] = Field(
        default_factory=lambda: list[AccessMode](["ReadWriteOnce"]),
        min_length=1,
        max_length=4,
        description="Access modes of the claim. Use ReadWriteMany or ReadOnlyMany to spread "
        "replicas over several nodes.",
        json_schema_extra={"default": ["ReadWriteOnce"]},
    )
    existingClaim: str | None = Field(
        default=None,
        max_length=253,
        pattern=DNS_SUBDOMAIN_PATTERN,
        description="Use this pre-filled claim instead of creating one; the download still "
        "runs but finds the files in place.",
    )
    deletionPolicy: DeletionPolicy = Field(
        default=DeletionPolicy.RETAIN,
        description="What happens to the claim the operator created when the model is "
        "deleted: Retain keeps it (and its weights, reused by a model of the same name), "
        "Delete removes it. A claim named by existingClaim is never deleted.",
    )


class Download(ApiModel):
    """How the download Job runs."""

    image: str | None = Field(
        default=None,
        max_length=512,
        pattern=IMAGE_PATTERN,
        description="Image with the gptoss-download entrypoint; the operator's default if unset.",
    )
    backoffLimit: int = Field(
        default=4, ge=0, le=100, description="Retries of the download Job before it fails."
    )
    stallTimeoutSeconds: int = Field(
        default=300,
        ge=10,
        le=86400,
        description="An attempt that receives no bytes for this long ends so the Job retries.",
    )
    activeDeadlineSeconds: int | None = Field(
        default=None, ge=60, description="Upper bound on the whole download Job."
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Resources of the download container."
    )
    podAnnotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations added to the download pods."
    )
    podLabels: dict[str, str] = Field(
        default_factory=dict, description="Labels added to the download pods."
    )


class ResourceRequirements(ApiModel):
    """Compute resources, as in a container's ``resources``."""

    limits: dict[str, str | int] | None = Field(
        default=None,
        json_schema_extra={
            "additionalProperties": {"x-kubernetes-int-or-string": True},
        },
    )
    requests: dict[str, str | int] | None = Field(
        default=None,
        json_schema_extra={
            "additionalProperties": {"x-kubernetes-int-or-string": True},
        },
    )


Download.model_rebuild()


class Autoscaling(ApiModel):
    """Replicas that follow the model's queue: its Pending and Running InferenceJobs, and
    the requests vLLM itself is working on or holding."""

    minReplicas: int = Field(
        default=1,
        ge=0,
        le=1024,
        description="Fewest vLLM pods. 0 lets the model scale to zero once idle "
        "(scaleToZeroAfterSeconds); a new InferenceJob wakes it.",
    )
    maxReplicas: int = Field(ge=1, le=1024, description="Most vLLM pods.")
    targetInFlightPerReplica: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Work in flight (queued and running InferenceJobs, or vLLM's own running "
        "and waiting requests, whichever is larger) each pod should carry. Unset: "
        "spec.sidecar.concurrency.",
    )
    scaleUpStabilizationSeconds: int = Field(
        default=0,
        ge=0,
        le=3600,
        description="Scale up only to the smallest count wanted over this window (0: at once).",
    )
    scaleDownStabilizationSeconds: int = Field(
        default=300,
        ge=0,
        le=86400,
        description="Scale down only to the largest count wanted over this window: a short "
        "lull does not remove a pod that takes minutes to load.",
    )
    scaleToZeroAfterSeconds: int = Field(
        default=900,
        ge=0,
        le=604800,
        description="With minReplicas 0: how long the model must have had no work at all "
        "before its last pod is removed.",
    )

    def target(self, concurrency: int) -> int:
        return self.targetInFlightPerReplica or concurrency


_AUTOSCALING_RULES: list[JsonValue] = [
    {
        "rule": "self.minReplicas <= self.maxReplicas",
        "message": "minReplicas must not exceed maxReplicas",
        "fieldPath": ".minReplicas",
        "reason": "FieldValueInvalid",
    }
]


class Serving(ApiModel):
    """The vLLM Deployment that serves the model."""

    image: str | None = Field(
        default=None,
        max_length=512,
        pattern=IMAGE_PATTERN,
        description="vLLM OpenAI-compatible server image. Unset: the operator's pinned "
        f"default ({DEFAULT_VLLM_IMAGE}, set by the chart's defaults.vllmImage).",
    )
    replicas: int = Field(
        default=1,
        ge=0,
        le=1024,
        description="Number of vLLM pods (what kubectl scale sets). Ignored while autoscaling "
        "is set: the operator then owns the count.",
    )
    autoscaling: Autoscaling | None = Field(
        default=None,
        description="Let the operator set the number of vLLM pods from the model's queue.",
        json_schema_extra={"x-kubernetes-validations": _AUTOSCALING_RULES},
    )
    gpusPerReplica: int = Field(default=1, ge=1, le=16, description="GPUs each pod requests.")
    gpuResourceName: str = Field(
        default="nvidia.com/gpu",
        max_length=253,
        description="Extended resource name of the GPUs.",
    )
    tensorParallelSize: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="vLLM --tensor-parallel-size; defaults to gpusPerReplica. GPUs beyond it "
        "run as data-parallel ranks (--data-parallel-size gpusPerReplica/tensorParallelSize).",
    )
    gpuProfile: Literal["H100-80GB", "H200-141GB", "Generic"] = Field(
        default="H100-80GB",
        description="The GPU the replicas run on; picks vLLM's gpt-oss recipe settings "
        "(batched tokens, memory utilization, CUDA graph sizes). Generic: vLLM's defaults.",
    )
    gpuMemoryUtilization: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="vLLM --gpu-memory-utilization. Unset: 0.95 for gpt-oss-120b on one H100 "
        "80GB, 0.9 at tensorParallelSize 2 there, else vLLM's default.",
    )
    maxNumBatchedTokens: int | None = Field(
        default=None,
        ge=1,
        le=1048576,
        description="vLLM --max-num-batched-tokens. Unset: 1024 for gpt-oss-120b on one H100 "
        "80GB, else 8192 (the recipe).",
    )
    maxModelLen: int | None = Field(
        default=None,
        ge=1,
        le=1048576,
        description="vLLM --max-model-len: the context window, prompt and output together. "
        "Unset: 131072, gpt-oss's native window.",
    )
    schedulingPolicy: Literal["priority", "fcfs"] = Field(
        default="priority",
        description="vLLM --scheduling-policy. priority: requests run by their job's or "
        "batch's spec.priority (batches below interactive jobs), first come first served "
        "within one; fcfs: in arrival order, priorities ignored.",
    )
    extraArgs: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Extra arguments appended to `vllm serve`.",
        json_schema_extra={"items": {"type": "string", "maxLength": 1024}},
    )
    env: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=128,
        description="Extra environment variables of the vLLM container (EnvVar objects).",
        json_schema_extra={"items": {**_OPAQUE, "required": ["name"]}},
    )
    resources: ResourceRequirements | None = Field(
        default=None,
        description="Extra resources of the vLLM container; GPUs come from gpusPerReplica.",
    )
    nodeSelector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the vLLM pods must match."
    )
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=64,
        description="Tolerations of the vLLM pods (Toleration objects).",
        json_schema_extra={"items": _OPAQUE},
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="Affinity of the vLLM pods (an Affinity object).",
        json_schema_extra=_OPAQUE,
    )
    priorityClassName: str | None = Field(
        default=None, max_length=253, description="PriorityClass of the vLLM pods."
    )
    startupTimeoutSeconds: int = Field(
        default=2700,
        ge=60,
        le=86400,
        description="How long vLLM may take to load the weights before the pod restarts "
        "(the startup probe's budget).",
    )
    podAnnotations: dict[str, str] = Field(
        default_factory=dict, description="Annotations added to the vLLM pods."
    )
    podLabels: dict[str, str] = Field(
        default_factory=dict, description="Labels added to the vLLM pods."
    )
    shmSize: str = Field(
        default="16Gi",
        max_length=64,
        pattern=QUANTITY_PATTERN,
        description="Size of the memory-backed /dev/shm.",
    )
    apiKeySecretRef: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the API key vLLM requires on /v1 (clients send it as "
        "a Bearer token). Unset: the operator creates the Secret <model>-api-key (key token) "
        "with a random key, owned by the model.",
    )
    scratchSize: str = Field(
        default="8Gi",
        max_length=64,
        pattern=QUANTITY_PATTERN,
        description="Size of the engine's scratch space (an emptyDir at /tmp, also its "
        "home and compile caches: its root filesystem is read-only).",
    )

    def effective_tensor_parallel_size(self) -> int:
        return self.tensorParallelSize or self.gpusPerReplica


class Sidecar(ApiModel):
    """The harmony sidecar that runs InferenceJobs inside each vLLM pod."""

    image: str | None = Field(
        default=None,
        max_length=512,
        pattern=IMAGE_PATTERN,
        description="Image with the gptoss-sidecar entrypoint; the operator's default if unset.",
    )
    concurrency: int = Field(
        default=64, ge=1, le=4096, description="InferenceJobs in flight per pod."
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Resources of the sidecar container."
    )


_SERVING_RULES: list[JsonValue] = [
    {
        "rule": "!has(self.tensorParallelSize) || (self.tensorParallelSize <= "
        "self.gpusPerReplica && self.gpusPerReplica % self.tensorParallelSize == 0)",
        "message": "tensorParallelSize must divide gpusPerReplica",
        "fieldPath": ".tensorParallelSize",
        "reason": "FieldValueInvalid",
    }
]

_STORAGE_RULES: list[JsonValue] = [
    {
        "rule": "!has(self.existingClaim) || (!has(self.size) && !has(self.storageClassName))",
        "message": "existingClaim cannot be combined with size or storageClassName",
        "fieldPath": ".existingClaim",
        "reason": "FieldValueForbidden",
    }
]


Namespace = Annotated[str, Field(min_length=1, max_length=63, pattern=NAMESPACE_PATTERN)]
MAX_ACCESS_NAMESPACES = 256


MAX_TENANTS = 32
MAX_TENANT_NAMESPACES = 32
MAX_WEIGHT = 1000
TENANT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class Tenant(ApiModel):
    """A team: one or more namespaces that share one fair share and one set of limits."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=TENANT_NAME_PATTERN,
        description="The tenant's name, as usage and metrics report it.",
    )
    namespaces: list[Namespace] = Field(
        min_length=1,
        max_length=MAX_TENANT_NAMESPACES,
        description="Its namespaces. A namespace in no tenant is a tenant of its own, of "
        "weight 1 and without limits.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    weight: int = Field(
        default=1,
        ge=1,
        le=MAX_WEIGHT,
        description="Its share of the model under contention, in tokens, relative to the "
        "other tenants' weights.",
    )
    maxJobsInFlight: int | None = Field(
        default=None,
        ge=1,
        le=10000,
        description="At most this many of its InferenceJobs run at once, across all "
        "replicas: the operator reserves a slot for each before a worker may take it "
        "(reason QuotaReserved); the others wait (reason QuotaExceeded). Absent: no limit.",
    )
    tokensPerMinute: int | None = Field(
        default=None,
        ge=1,
        description="Its InferenceJobs start no new job while the jobs it finished in the "
        "last minute used this many tokens (prompt and completion); they wait (reason "
        "QuotaExceeded). Absent: no limit.",
    )


_ACCESS_RULES: list[JsonValue] = [
    {
        "rule": "!has(self.tenants) || self.tenants.all(a, self.tenants.all(b, "
        "a.name == b.name || !a.namespaces.exists(n, n in b.namespaces)))",
        "message": "a namespace may belong to one tenant only",
        "fieldPath": ".tenants",
        "reason": "FieldValueInvalid",
    }
]


class Access(ApiModel):
    namespaces: list[Namespace] | None = Field(
        default=None,
        max_length=MAX_ACCESS_NAMESPACES,
        description="The namespaces, besides the model's own, whose InferenceJobs it "
        "serves; absent: any namespace. Their requesters need RBAC's `use` on the model "
        "as well.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    tenants: list[Tenant] | None = Field(
        default=None,
        max_length=MAX_TENANTS,
        description="Teams of namespaces with a weight and limits each. The model's "
        "capacity is shared among the tenants with work waiting, by weight, in tokens.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )

    @model_validator(mode="after")
    def _one_tenant_per_namespace(self) -> Access:
        seen: dict[str, str] = {}
        for tenant in self.tenants or []:
            for namespace in tenant.namespaces:
                if seen.setdefault(namespace, tenant.name) != tenant.name:
                    raise ValueError(
                        f"access.tenants: namespace {namespace} is in tenants "
                        f"{seen[namespace]} and {tenant.name}; a namespace may belong to "
                        "one tenant only"
                    )
        return self

    def tenant_of(self, namespace: str) -> Tenant:
        """The tenant a namespace's jobs count against: its group's, else its own."""
        for tenant in self.tenants or []:
            if namespace in tenant.namespaces:
                return tenant
        return Tenant(name=namespace, namespaces=[namespace])


class GptOssModelSpec(ApiModel):
    source: Source = Field(
        default_factory=Source,
        description="The Hugging Face repo to download.",
        json_schema_extra={"default": {}},
    )
    storage: Storage = Field(
        default_factory=Storage,
        description="The volume holding the weights.",
        json_schema_extra={"default": {}, "x-kubernetes-validations": _STORAGE_RULES},
    )
    download: Download = Field(
        default_factory=Download,
        description="The download Job.",
        json_schema_extra={"default": {}},
    )
    serving: Serving = Field(
        default_factory=Serving,
        description="The vLLM Deployment.",
        json_schema_extra={"default": {}, "x-kubernetes-validations": _SERVING_RULES},
    )
    sidecar: Sidecar = Field(
        default_factory=Sidecar,
        description="The InferenceJob sidecar.",
        json_schema_extra={"default": {}},
    )
    access: Access = Field(
        default_factory=Access,
        description="Who besides the model's namespace may use it, and the tenants' "
        "shares and limits.",
        json_schema_extra={"default": {}, "x-kubernetes-validations": _ACCESS_RULES},
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> GptOssModelSpec:
        tp = self.serving.tensorParallelSize
        gpus = self.serving.gpusPerReplica
        if tp is not None and (tp > gpus or gpus % tp):
            raise ValueError("serving.tensorParallelSize must divide serving.gpusPerReplica")
        scaling = self.serving.autoscaling
        if scaling is not None and scaling.minReplicas > scaling.maxReplicas:
            raise ValueError("serving.autoscaling.minReplicas must not exceed maxReplicas")
        storage = self.storage
        if storage.existingClaim and (storage.size or storage.storageClassName):
            raise ValueError(
                "storage.existingClaim cannot be combined with size or storageClassName"
            )
        return self


class DownloadStatus(ApiModel):
    bytesDone: int | None = Field(default=None, ge=0, description="Bytes on the volume.")
    bytesTotal: int | None = Field(default=None, ge=0, description="Bytes to download.")
    percent: int | None = Field(default=None, ge=0, le=100, description="Progress, 0-100.")
    filesDone: int | None = Field(default=None, ge=0)
    filesTotal: int | None = Field(default=None, ge=0)
    resolvedRevision: str | None = Field(default=None, description="Commit sha downloaded.")
    startedAt: datetime.datetime | None = None
    completedAt: datetime.datetime | None = None
    attempt: int | None = Field(default=None, ge=0, description="Attempt of the download Job.")
    message: str | None = Field(default=None, description="Last word from the downloader.")


class QueueStatus(ApiModel):
    pending: int = Field(default=0, ge=0, description="InferenceJobs waiting for a worker.")
    running: int = Field(default=0, ge=0, description="InferenceJobs running now.")


class TenantStatus(ApiModel):
    namespace: str = Field(description="A namespace whose InferenceJobs use the model.")
    tenant: str | None = Field(
        default=None, description="The tenant it counts against (spec.access.tenants)."
    )
    pending: int = Field(default=0, ge=0, description="Its jobs waiting for a worker.")
    running: int = Field(default=0, ge=0, description="Its jobs running now.")


class GatewayBatch(ApiModel):
    """An unfinished InferenceBatch the model's gateway answers, and how it knows the
    batch's shards: by the hash of their key."""

    namespace: str = Field(description="The batch's namespace.")
    name: str = Field(description="The batch's name.")
    keySHA256: str = Field(description="SHA-256 of the batch's gateway key, in hex.")
    priority: int = Field(default=0, description="The batch's spec.priority.")


class AutoscalingStatus(ApiModel):
    desiredReplicas: int | None = Field(
        default=None, ge=0, description="vLLM pods the autoscaler wants now."
    )
    lastScaleTime: datetime.datetime | None = Field(
        default=None, description="When the autoscaler last changed the count."
    )
    lastScaleReason: str | None = Field(
        default=None, description="ScaledUp, ScaledDown, ScaledToZero or Woken."
    )
    lastScaleMessage: str | None = Field(default=None, description="Why, with the figures.")


class GptOssModelStatus(ApiModel):
    phase: Phase | None = Field(
        default=None,
        description="Pending, Downloading, Starting, Ready, ScaledToZero (no pods on purpose) "
        "or Failed.",
    )
    observedGeneration: int | None = Field(default=None, ge=0)
    conditions: list[Condition] = conditions_field(
        "Ready, Reconciling, Stalled, Downloaded and Serving."
    )
    download: DownloadStatus | None = None
    replicas: int | None = Field(default=None, ge=0, description="vLLM pods wanted.")
    readyReplicas: int | None = Field(default=None, ge=0, description="vLLM pods ready.")
    readySummary: str | None = Field(default=None, description="readyReplicas/replicas.")
    endpoint: str | None = Field(
        default=None, description="In-cluster URL of the OpenAI-compatible API."
    )
    servedModelName: str | None = Field(default=None, description="Model name vLLM serves.")
    apiKeySecretRef: SecretKeyRef | None = Field(
        default=None,
        description="Where the endpoint's API key is (the Secret and key; never the key).",
    )
    claimName: str | None = Field(default=None, description="Claim holding the weights.")
    selector: str | None = Field(
        default=None, description="Label selector of the vLLM pods (for the scale subresource)."
    )
    queue: QueueStatus | None = None
    tenants: list[TenantStatus] | None = Field(
        default=None,
        description="The namespaces with unfinished InferenceJobs for the model (its own "
        "among them); the workers serve these.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["namespace"],
        },
    )
    batches: list[GatewayBatch] | None = Field(
        default=None,
        description="The unfinished InferenceBatches the model answers (from any namespace "
        "its spec.access allows), whose shards its sidecars' gateway admits.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["namespace", "name"],
        },
    )
    autoscaling: AutoscalingStatus | None = None
    kopf: dict[str, Any] | None = Field(
        default=None,
        description="Bookkeeping of the operator framework.",
        json_schema_extra=_OPAQUE,
    )


class GptOssModel(ApiModel):
    """The whole object, as the CRD's root schema describes it."""

    apiVersion: str | None = None
    kind: str | None = None
    metadata: dict[str, Any] | None = None
    spec: GptOssModelSpec = Field(default_factory=GptOssModelSpec)
    status: GptOssModelStatus | None = None


ROOT_RULES = [
    {
        "rule": f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
        "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters: "
        "the names of the model's Job, Deployment and Service derive from it",
        "reason": "FieldValueInvalid",
    },
    {
        "rule": "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
        "message": "metadata.name must be a DNS-1035 label (lowercase letters, digits and "
        "'-', starting with a letter): it names the model's Service",
        "reason": "FieldValueInvalid",
    },
]

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {
        "name": "Progress",
        "type": "integer",
        "jsonPath": ".status.download.percent",
        "description": "Download progress in percent",
    },
    {"name": "Ready", "type": "string", "jsonPath": ".status.readySummary"},
    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 0},
    {"name": "Repo", "type": "string", "jsonPath": ".spec.source.repo", "priority": 1},
    {
        "name": "Queued",
        "type": "integer",
        "jsonPath": ".status.queue.pending",
        "description": "InferenceJobs waiting for a worker",
        "priority": 1,
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def tenant_namespaces(body: Mapping[str, Any]) -> list[str]:
    """The namespaces a live model's status lists as its tenants (entries it cannot read
    are skipped)."""
    tenants = (body.get("status") or {}).get("tenants") or []
    return [
        str(tenant["namespace"])
        for tenant in tenants
        if isinstance(tenant, Mapping) and tenant.get("namespace")
    ]
