"""What a GptOssModel's status says, computed from what the operator observed.

Pure functions: given the objects the model owns, they return the phase, the
conditions (kstatus: Ready, Reconciling, Stalled; plus Downloaded and Serving) and the
Events worth emitting. The handler does the I/O around them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gptoss_operator.api.common import Condition, SecretKeyRef
from gptoss_operator.api.conditions import get_condition, set_condition
from gptoss_operator.api.model import AutoscalingStatus, DownloadStatus, GptOssModelStatus, Phase
from gptoss_operator.controllers.model.download_retry import RetryPlan, retry_hint
from gptoss_operator.core import naming

# Waiting reasons of a container that mean the pod will not start by itself.
IMAGE_PULL_REASONS = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
CRASH_REASONS = {
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


@dataclass
class Observed:
    """The model's children as last read from the apiserver."""

    generation: int
    digest: str
    claim: dict[str, Any] | None = None
    claim_warning: str | None = None
    claim_pending_too_long: bool = False
    claim_missing: bool = False
    # Why the claim could not grow to spec.storage.size, when it could not.
    claim_resize_error: str | None = None
    claim_resize_refused_now: bool = False
    job: dict[str, Any] | None = None
    download_retry: RetryPlan | None = None  # when a failed download runs again
    job_pods: list[dict[str, Any]] = field(default_factory=list)
    deployment: dict[str, Any] | None = None
    served_digest: str | None = None
    server_pods: list[dict[str, Any]] = field(default_factory=list)
    service: dict[str, Any] | None = None
    # Set by the autoscaler's policy (None: spec.serving.replicas): the pods wanted, why
    # there are none when there are none, whether it woke the model from zero, and its
    # status.autoscaling.
    replicas: int | None = None
    zero_message: str = "spec.serving.replicas is 0"
    waking: bool = False
    autoscaling: AutoscalingStatus | None = None
    # Why the operator stopped: an object with a child's name that is not the model's.
    name_in_use: str | None = None


@dataclass
class Verdict:
    """One aspect's state: status of its condition, a reason and a message."""

    ok: bool
    reason: str
    message: str
    stalled: bool = False


@dataclass
class Computed:
    status: GptOssModelStatus  # the fields to write: those set on it
    events: list[tuple[str, str, str]]  # (type Normal|Warning, reason, message)

    @property
    def patch(self) -> dict[str, Any]:
        """The status write, a JSON merge patch."""
        return self.status.to_patch()


def _job_condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for condition in job.get("status", {}).get("conditions", []) or []:
        if condition.get("type") == type_ and condition.get("status") == "True":
            return dict(condition)
    return None


def termination_message(pods: list[dict[str, Any]]) -> tuple[str | None, str | None]:
    """(reason, message) of the newest terminated download container, if any.

    gptoss-download writes a JSON object ``{"reason": ..., "message": ...}`` as its
    termination message; anything else is passed on as text.
    """
    newest: tuple[str, dict[str, Any]] | None = None
    for pod in pods:
        for status in pod.get("status", {}).get("containerStatuses", []) or []:
            terminated = (status.get("state") or {}).get("terminated") or (
                status.get("lastState") or {}
            ).get("terminated")
            if terminated and terminated.get("exitCode", 0) != 0:
                finished = terminated.get("finishedAt") or ""
                if newest is None or finished >= newest[0]:
                    newest = (finished, terminated)
    if newest is None:
        return None, None
    terminated = newest[1]
    text = (terminated.get("message") or "").strip()
    try:
        parsed = json.loads(text)
        if isinstance(parsed, dict):
            return parsed.get("reason"), parsed.get("message")
    except ValueError:
        pass
    return terminated.get("reason"), text or f"exit code {terminated.get('exitCode')}"


def waits_for_claim(scheduler_message: str) -> bool:
    """The scheduler is only waiting for the pod's claim (not yet created or bound).

    That heals itself, usually in seconds: the claim and the Job are created together. A
    claim that stays unbound is reported through its own grace period (ClaimPending).
    """
    text = scheduler_message.lower()
    return "persistentvolumeclaim" in text


def pod_problem(pods: list[dict[str, Any]]) -> Verdict | None:
    """The first reason a pod cannot run: unschedulable, image pull error, crash loop."""
    for pod in pods:
        status = pod.get("status", {})
        for condition in status.get("conditions", []) or []:
            if (
                condition.get("type") == "PodScheduled"
                and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"
            ):
                message = condition.get("message", "no node fits the pod")
                if waits_for_claim(message):
                    return Verdict(
                        False, "WaitingForClaim", f"pod {_name(pod)} waits for its claim: {message}"
                    )
                return Verdict(False, "Unschedulable", f"pod {_name(pod)}: {message}", True)
        for container in status.get("containerStatuses", []) or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in IMAGE_PULL_REASONS:
                message = waiting.get("message") or f"cannot pull {container.get('image')}"
                return Verdict(
                    False,
                    "ImagePullError",
                    f"pod {_name(pod)} {container['name']}: {message}",
                    True,
                )
            if reason in CRASH_REASONS:
                last = (container.get("lastState") or {}).get("terminated") or {}
                detail = (last.get("message") or waiting.get("message") or "").strip()
                exit_code = last.get("exitCode")
                message = f"pod {_name(pod)} container {container['name']} is in {reason}"
                if exit_code is not None:
                    message += f" (exit code {exit_code})"
                if detail:
                    message += f": {detail[-2000:]}"
                return Verdict(False, "CrashLoop", message, True)
    return None


def _name(obj: dict[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("name", "?"))


def download_verdict(observed: Observed) -> Verdict:
    if observed.claim_missing:
        return Verdict(
            False,
            "ClaimNotFound",
            "the claim named by spec.storage.existingClaim does not exist",
            True,
        )
    job = observed.job
    if job is not None and _job_condition(job, "Complete"):
        return Verdict(True, "Downloaded", "the weights are on the volume")
    if job is not None and (failed := _job_condition(job, "Failed")):
        reason, message = termination_message(observed.job_pods)
        detail = message or failed.get("message") or "the download Job failed"
        if observed.claim_resize_error:
            detail += f"; {observed.claim_resize_error}"
        detail += retry_hint(observed.download_retry)
        return Verdict(False, reason or "DownloadFailed", detail, True)
    claim = observed.claim
    if claim is not None and claim.get("status", {}).get("phase") != "Bound":
        if observed.claim_warning:
            return Verdict(
                False,
                "ClaimPending",
                f"claim {_name(claim)} is not bound: {observed.claim_warning}",
                True,
            )
        if observed.claim_pending_too_long:
            return Verdict(False, "ClaimPending", f"claim {_name(claim)} is not bound yet", True)
    if job is None:
        return Verdict(False, "DownloadPending", "creating the download Job")
    problem = pod_problem(observed.job_pods)
    if problem is not None:
        return problem
    reason, message = termination_message(observed.job_pods)
    if reason:
        return Verdict(False, "DownloadRetrying", f"attempt failed ({reason}): {message}")
    return Verdict(False, "Downloading", "downloading the weights")


def serving_verdict(observed: Observed, replicas: int) -> Verdict:
    deployment = observed.deployment
    if deployment is None:
        return Verdict(False, "WaitingForDownload", "the server starts once the download is done")
    if replicas == 0:
        return Verdict(False, "ScaledToZero", observed.zero_message)
    status = deployment.get("status", {})
    ready = status.get("readyReplicas", 0) or 0
    updated = status.get("updatedReplicas", 0) or 0
    current = status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 0)
    if current and ready >= replicas and updated >= replicas:
        return Verdict(True, "Available", f"{ready}/{replicas} vLLM pods ready")
    problem = pod_problem(observed.server_pods)
    if problem is not None:
        return problem
    for condition in status.get("conditions", []) or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == (
            "ProgressDeadlineExceeded"
        ):
            return Verdict(False, "ProgressDeadlineExceeded", condition.get("message", ""), True)
    loading = f"{ready}/{replicas} vLLM pods ready; vLLM is loading the weights"
    if observed.waking and ready == 0:
        return Verdict(False, "Waking", f"woken from zero for its queue; {loading}")
    return Verdict(False, "Starting", loading)


def compute(
    observed: Observed,
    previous: dict[str, Any],
    *,
    name: str,
    namespace: str,
    replicas: int,
    api_key_secret: SecretKeyRef | None = None,
) -> Computed:
    if observed.name_in_use is not None:
        return _name_in_use(observed.generation, observed.name_in_use, previous)
    if observed.replicas is not None:
        replicas = observed.replicas
    download = download_verdict(observed)
    serving = serving_verdict(observed, replicas)
    generation = observed.generation
    if download.stalled and not download.ok:
        phase = Phase.FAILED if download.reason not in ("ClaimPending",) else Phase.PENDING
    elif not download.ok and observed.job is None and observed.deployment is None:
        phase = Phase.PENDING
    elif not download.ok:
        phase = Phase.DOWNLOADING
    elif serving.ok:
        phase = Phase.READY
    elif serving.reason == "ScaledToZero":
        phase = Phase.SCALED_TO_ZERO
    else:
        phase = Phase.STARTING
    if download.ok and observed.served_digest and observed.served_digest != observed.digest:
        phase = Phase.STARTING

    stalled = (download.stalled and not download.ok) or (download.ok and serving.stalled)
    # A model at zero pods on purpose is where it was asked to be: Ready (kstatus
    # Current), not Serving.
    ready = phase in (Phase.READY, Phase.SCALED_TO_ZERO)
    if ready:
        summary = Verdict(True, serving.reason, serving.message)
    elif stalled:
        worst = download if not download.ok else serving
        summary = Verdict(False, worst.reason, worst.message)
    else:
        current = download if not download.ok else serving
        summary = Verdict(False, current.reason, current.message)

    conditions: list[dict[str, Any]] = list(previous.get("conditions") or [])
    conditions = set_condition(
        conditions, "Downloaded", download.ok, download.reason, download.message, generation
    )
    conditions = set_condition(
        conditions, "Serving", serving.ok, serving.reason, serving.message, generation
    )
    conditions = set_condition(
        conditions, "Ready", ready, summary.reason, summary.message, generation
    )
    conditions = set_condition(
        conditions,
        "Reconciling",
        not ready and not stalled,
        summary.reason if not ready and not stalled else "Reconciled",
        summary.message if not ready and not stalled else "",
        generation,
    )
    conditions = set_condition(
        conditions,
        "Stalled",
        stalled,
        summary.reason if stalled else "Progressing" if not ready else "Reconciled",
        summary.message if stalled else "",
        generation,
    )

    deployment_status = (observed.deployment or {}).get("status", {})
    ready_replicas = int(deployment_status.get("readyReplicas", 0) or 0)
    status = GptOssModelStatus(
        phase=phase,
        observedGeneration=generation,
        conditions=[Condition.model_validate(c) for c in conditions],
        replicas=replicas,
        readyReplicas=ready_replicas,
        readySummary=f"{ready_replicas}/{replicas}",
        servedModelName=name,
        selector=naming.selector_string(naming.server_selector(name)),
        # None removes what an earlier policy left (a merge patch deletes null fields).
        autoscaling=observed.autoscaling,
    )
    if observed.claim is not None:
        status.claimName = _name(observed.claim)
    if observed.service is not None:
        status.endpoint = naming.endpoint_url(name, namespace)
    if api_key_secret is not None:
        status.apiKeySecretRef = api_key_secret
    if download.ok and observed.served_digest == observed.digest:
        status.download = DownloadStatus(percent=100)
    return Computed(status, _events(previous, conditions, phase))


NAME_IN_USE = "NameInUse"


def _name_in_use(generation: int, message: str, previous: dict[str, Any]) -> Computed:
    """Stalled until the name is free: what the model has is left as it is; Ready,
    Reconciling and Stalled say why, and a Warning when that is new."""
    conditions: list[dict[str, Any]] = list(previous.get("conditions") or [])
    conditions = set_condition(conditions, "Ready", False, NAME_IN_USE, message, generation)
    conditions = set_condition(conditions, "Reconciling", False, NAME_IN_USE, "", generation)
    conditions = set_condition(conditions, "Stalled", True, NAME_IN_USE, message, generation)
    status = GptOssModelStatus(
        phase=Phase(previous.get("phase") or Phase.PENDING.value),
        observedGeneration=generation,
        conditions=[Condition.model_validate(c) for c in conditions],
    )
    before = get_condition(previous.get("conditions"), "Stalled") or {}
    told = (before.get("reason"), before.get("message")) == (NAME_IN_USE, message)
    return Computed(status, [] if told else [("Warning", NAME_IN_USE, message)])


def _events(
    previous: dict[str, Any], conditions: list[dict[str, Any]], phase: Phase
) -> list[tuple[str, str, str]]:
    """Events for what changed: a new problem (Warning) or a reached milestone (Normal)."""
    events: list[tuple[str, str, str]] = []
    before = previous.get("conditions") or []
    for type_ in ("Downloaded", "Serving"):
        old = get_condition(before, type_) or {}
        new = get_condition(conditions, type_) or {}
        if (old.get("reason"), old.get("status")) == (new.get("reason"), new.get("status")):
            continue
        reason = new["reason"]
        if new["status"] == "True":
            events.append(("Normal", reason, new.get("message", "")))
        elif reason in {
            "Downloading",
            "DownloadPending",
            "Starting",
            "WaitingForDownload",
            "ScaledToZero",
            "Waking",
        }:
            continue
        else:
            events.append(("Warning", reason, new.get("message", "")))
    if previous.get("phase") != phase.value and phase in (Phase.READY, Phase.FAILED):
        kind = "Normal" if phase == Phase.READY else "Warning"
        events.append((kind, f"Phase{phase.value}", f"model is {phase.value}"))
    return events
