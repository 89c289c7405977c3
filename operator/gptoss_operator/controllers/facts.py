"""What the operator's controllers remember of each GptOssModel and InferenceJob, read
from their watch events (kopf indexes): small facts shared by the job housekeeping, the
autoscaler and the indexes, so a pass over thousands of jobs costs no API reads.

Readers of live objects: a field they do not know is ignored, one they cannot read is
treated as absent.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from gptoss_operator.api.job import Phase, model_key_of
from gptoss_operator.api.job_status import charged_attempts
from gptoss_operator.api.json_schema import spec_problem
from gptoss_operator.api.model import Access, Autoscaling
from gptoss_operator.api.model import Phase as ModelPhase
from gptoss_operator.core.fair_share import read_access

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobFacts:
    """What the operator remembers of one InferenceJob."""

    namespace: str
    name: str
    model: str
    resource_version: str
    generation: int | None
    phase: str
    scheduled_reason: str | None
    worker: str | None
    attempts: int
    charged_attempts: int
    backoff_limit: int
    created: str | None
    active_deadline_seconds: int | None
    ttl_seconds_after_finished: int | None
    completion_time: str | None
    status: Mapping[str, Any]
    has_status: bool
    # Why the spec cannot run, beyond what the apiserver checks (None: it can).
    spec_problem: str | None = None
    # The model's namespace (modelRef.namespace; this job's own when it names none).
    model_namespace: str = ""
    # Tokens a finished job used.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    max_tokens: int = 256
    priority: int = 0

    @property
    def model_key(self) -> tuple[str, str]:
        """(namespace, name) of the job's model."""
        return (self.model_namespace, self.model)

    @property
    def lease_token(self) -> tuple[Any, ...]:
        return lease_token({**self.status, "worker": self.worker, "attempts": self.attempts})

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> JobFacts:
        metadata = body.get("metadata") or {}
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        scheduled = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Scheduled"), None
        )
        model_namespace, model = model_key_of(body)
        usage = status.get("usage") or {}
        return cls(
            namespace=str(metadata.get("namespace", "")),
            name=str(metadata.get("name", "")),
            model=model,
            model_namespace=model_namespace,
            resource_version=str(metadata.get("resourceVersion", "")),
            generation=metadata.get("generation"),
            phase=str(status.get("phase") or Phase.PENDING.value),
            scheduled_reason=scheduled.get("reason") if scheduled else None,
            worker=status.get("worker"),
            attempts=int(status.get("attempts") or 0),
            charged_attempts=charged_attempts(status),
            backoff_limit=int(spec.get("backoffLimit", 3)),
            created=metadata.get("creationTimestamp"),
            active_deadline_seconds=spec.get("activeDeadlineSeconds"),
            ttl_seconds_after_finished=spec.get("ttlSecondsAfterFinished"),
            completion_time=status.get("completionTime"),
            status={
                key: status[key]
                for key in ("conditions", "lease", "startTime", "message")
                if key in status
            },
            has_status=bool(body.get("status")),
            spec_problem=spec_problem(spec) if not status.get("phase") else None,
            prompt_tokens=int(usage.get("promptTokens") or 0),
            completion_tokens=int(usage.get("completionTokens") or 0),
            total_tokens=int(usage.get("totalTokens") or 0),
            max_tokens=int(spec.get("maxTokens") or 256),
            priority=int(spec.get("priority") or 0),
        )


@dataclass(frozen=True)
class BatchFacts:
    """What the operator remembers of one unfinished InferenceBatch."""

    namespace: str
    name: str
    demand: int  # requests it keeps at the engine (see controllers.batch.status)
    priority: int
    key_sha256: str | None  # of its gateway key, once it has one

    @classmethod
    def from_body(cls, body: Mapping[str, Any], demand: int) -> BatchFacts:
        metadata = body.get("metadata") or {}
        spec = body.get("spec") or {}
        key = (body.get("status") or {}).get("gatewayKey") or {}
        priority = spec.get("priority")
        digest = key.get("sha256") if isinstance(key, Mapping) else None
        return cls(
            namespace=str(metadata.get("namespace") or ""),
            name=str(metadata.get("name") or ""),
            demand=demand,
            priority=priority if isinstance(priority, int) else 0,
            key_sha256=digest if isinstance(digest, str) else None,
        )

    def gateway_entry(self) -> dict[str, Any]:
        """Its entry in the model's status.batches (once it has a key)."""
        return {
            "namespace": self.namespace,
            "name": self.name,
            "keySHA256": self.key_sha256,
            "priority": self.priority,
        }


def lease_token(status: Mapping[str, Any]) -> tuple[Any, ...]:
    """What changes when a lease is renewed, claimed again or retried in place."""
    lease = status.get("lease") or {}
    return (
        status.get("worker"),
        int(status.get("attempts") or 0),
        lease.get("renewTime"),
        lease.get("acquireTime"),
    )


def _autoscaling(value: Any) -> Autoscaling | None:
    """The policy, or None when there is none (or it cannot be read: the apiserver holds
    it to the schema, so only a CRD older than the reader gets here)."""
    if not value:
        return None
    try:
        return Autoscaling.model_validate(value)
    except ValidationError:
        log.warning("ignoring an unreadable spec.serving.autoscaling: %s", value)
        return None


def _access(value: Any) -> tuple[str, ...] | None:
    """spec.access.namespaces, or None when it lists none (or cannot be read)."""
    namespaces = value.get("namespaces") if isinstance(value, Mapping) else None
    if not isinstance(namespaces, list):
        return None
    return tuple(str(namespace) for namespace in namespaces)


# What a job sees of a model at zero pods that its autoscaler will wake for the queue.
WAKING = "Waking"


@dataclass(frozen=True)
class ModelFacts:
    """What the operator remembers of one GptOssModel."""

    phase: str
    ready_replicas: int = 0
    replicas: int | None = None  # status.replicas: the pods the operator last asked for
    uid: str = ""
    autoscaling: Autoscaling | None = None
    concurrency: int = 64
    serving_reason: str | None = None
    # spec.access.namespaces: the other namespaces it serves (None: any).
    access: tuple[str, ...] | None = None
    # spec.access: its tenants, their weights and limits.
    policy: Access = field(default_factory=Access)

    def serves(self, namespace: str, own: str) -> bool:
        """Whether its spec.access lets jobs of ``namespace`` use it (``own``: its own)."""
        return namespace == own or self.access is None or namespace in self.access

    @classmethod
    def from_status(cls, status: Mapping[str, Any]) -> ModelFacts:
        serving: Mapping[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Serving"), {}
        )
        replicas = status.get("replicas")
        return cls(
            str(status.get("phase") or ModelPhase.PENDING.value),
            int(status.get("readyReplicas") or 0),
            int(replicas) if replicas is not None else None,
            serving_reason=serving.get("reason"),
        )

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ModelFacts:
        spec = body.get("spec") or {}
        serving = spec.get("serving") or {}
        facts = cls.from_status(body.get("status") or {})
        return replace(
            facts,
            uid=str((body.get("metadata") or {}).get("uid", "")),
            autoscaling=_autoscaling(serving.get("autoscaling")),
            concurrency=int((spec.get("sidecar") or {}).get("concurrency", 64)),
            access=_access(spec.get("access")),
            policy=read_access(spec.get("access")),
        )

    @property
    def queue_phase(self) -> str:
        """The phase as its jobs see it: a model Starting while some replica is ready
        (one of N restarting, a rollout) still takes jobs; one at zero pods that its
        autoscaler wakes for them, or woke and is loading, is Waking."""
        if self.ready_replicas > 0 and self.phase == ModelPhase.STARTING.value:
            return ModelPhase.READY.value
        at_zero = self.phase == ModelPhase.SCALED_TO_ZERO.value
        if (
            self.autoscaling
            and not self.ready_replicas
            and (at_zero or self.serving_reason == WAKING)
        ):
            return WAKING
        return self.phase


def tenant_counts(
    jobs: Iterable[JobFacts],
) -> dict[tuple[str, str], dict[str, dict[str, int]]]:
    """{model: {namespace: {"pending": n, "running": n}}} of the unfinished jobs."""
    counts: dict[tuple[str, str], dict[str, dict[str, int]]] = {}
    for job in jobs:
        if job.phase in (Phase.PENDING.value, Phase.RUNNING.value):
            tenant = counts.setdefault(job.model_key, {}).setdefault(
                job.namespace, {"pending": 0, "running": 0}
            )
            tenant[job.phase.lower()] += 1
    return counts


def queue_counts(jobs: Iterable[JobFacts]) -> dict[tuple[str, str], dict[str, int]]:
    counts: dict[tuple[str, str], Counter[str]] = {}
    for job in jobs:
        counts.setdefault(job.model_key, Counter())[job.phase] += 1
    return {
        key: {"pending": counter[Phase.PENDING.value], "running": counter[Phase.RUNNING.value]}
        for key, counter in counts.items()
    }
