"""Helpers for GptOssModel tests: create models, read status, play the kubelet."""

from __future__ import annotations

import datetime
from typing import Any

from lightkube import ApiError, Client
from lightkube.resources.core_v1 import Event, Pod
from lightkube.types import PatchType

from gptoss_operator.api.resources import GptOssModelResource
from tests.support import wait_for

MANUAL = {"sandbox.gptoss.ai/kubelet": "manual"}


def model_manifest(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "gptoss.ai/v1alpha1",
        "kind": "GptOssModel",
        "metadata": {"name": name},
        "spec": spec,
    }


def create_model(kube: Client, namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    created = kube.create(
        GptOssModelResource.from_dict(model_manifest(name, **spec)), namespace=namespace
    )
    return dict(created.to_dict())


def get_model(kube: Client, namespace: str, name: str) -> dict[str, Any]:
    return dict(kube.get(GptOssModelResource, name, namespace=namespace).to_dict())


def status_of(kube: Client, namespace: str, name: str) -> dict[str, Any]:
    return dict(get_model(kube, namespace, name).get("status") or {})


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    for item in status.get("conditions") or []:
        if item["type"] == type_:
            return dict(item)
    return {}


def wait_for_phase(
    kube: Client, namespace: str, name: str, phase: str, timeout: float = 60
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        status = status_of(kube, namespace, name)
        return status if status.get("phase") == phase else None

    return wait_for(reached, timeout=timeout, message=f"{name} phase {phase}")


def wait_for_condition(
    kube: Client,
    namespace: str,
    name: str,
    type_: str,
    reason: str,
    timeout: float = 60,
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        status = status_of(kube, namespace, name)
        found = condition(status, type_)
        assert found, f"no {type_} condition yet"
        assert found.get("reason") == reason, f"{type_} is {found}"
        return status

    return wait_for(reached, timeout=timeout, message=f"{name} {type_}={reason}")


def events_for(kube: Client, namespace: str, name: str) -> list[dict[str, Any]]:
    return [
        dict(event.to_dict())
        for event in kube.list(
            Event,
            namespace=namespace,
            fields={"involvedObject.kind": "GptOssModel", "involvedObject.name": name},
        )
    ]


def wait_for_event(
    kube: Client, namespace: str, name: str, reason: str, timeout: float = 60
) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        for event in events_for(kube, namespace, name):
            if event.get("reason") == reason:
                return event
        return None

    return wait_for(found, timeout=timeout, message=f"Event {reason} on {name}")


def pods(kube: Client, namespace: str, labels: dict[str, str]) -> list[Any]:
    return list(kube.list(Pod, namespace=namespace, labels=dict[str, Any](labels)))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_pod_status(kube: Client, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Play the kubelet for a pod kwok leaves alone (annotated manual)."""
    for _ in range(5):
        try:
            kube.patch(
                Pod.Status,
                name,
                {"status": status},
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )
            return
        except ApiError as error:
            if error.status.code != 409:
                raise


def finish_pod(
    kube: Client,
    namespace: str,
    pod: Any,
    *,
    exit_code: int,
    message: str = "",
) -> None:
    now = _now()
    container = pod.spec.containers[0]
    set_pod_status(
        kube,
        namespace,
        pod.metadata.name,
        {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "startTime": now,
            "conditions": [
                {"type": "Ready", "status": "False", "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            ],
            "containerStatuses": [
                {
                    "name": container.name,
                    "image": container.image,
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "reason": "Completed" if exit_code == 0 else "Error",
                            "message": message,
                            "startedAt": now,
                            "finishedAt": now,
                        }
                    },
                }
            ],
        },
    )


def running_pod(kube: Client, namespace: str, pod: Any) -> None:
    """Every container running and ready, as a kubelet reports a healthy vLLM pod."""
    now = _now()
    set_pod_status(
        kube,
        namespace,
        pod.metadata.name,
        {
            "phase": "Running",
            "startTime": now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
            ],
            "containerStatuses": [
                {
                    "name": container.name,
                    "image": container.image,
                    "imageID": "",
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "state": {"running": {"startedAt": now}},
                }
                for container in pod.spec.containers
            ],
        },
    )


def waiting_pod(kube: Client, namespace: str, pod: Any, reason: str, message: str) -> None:
    now = _now()
    statuses = []
    for index, container in enumerate(pod.spec.containers):
        state: dict[str, Any] = (
            {"waiting": {"reason": reason, "message": message}}
            if index == 0
            else {"running": {"startedAt": now}}
        )
        entry: dict[str, Any] = {
            "name": container.name,
            "image": container.image,
            "imageID": "",
            "ready": False,
            "restartCount": 3 if reason == "CrashLoopBackOff" else 0,
            "state": state,
        }
        if reason == "CrashLoopBackOff" and index == 0:
            entry["lastState"] = {
                "terminated": {
                    "exitCode": 1,
                    "reason": "Error",
                    "message": "torch.OutOfMemoryError: CUDA out of memory",
                    "startedAt": now,
                    "finishedAt": now,
                }
            }
        statuses.append(entry)
    set_pod_status(
        kube,
        namespace,
        pod.metadata.name,
        {
            "phase": "Pending" if reason != "CrashLoopBackOff" else "Running",
            "startTime": now,
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": "False", "lastTransitionTime": now},
            ],
            "containerStatuses": statuses,
        },
    )


def patch_model(
    kube: Client, namespace: str, name: str, body: dict[str, Any], *, status: bool = False
) -> None:
    """JSON merge patch of a GptOssModel (or its status subresource)."""
    resource = GptOssModelResource.Status if status else GptOssModelResource
    kube.patch(resource, name, body, namespace=namespace, patch_type=PatchType.MERGE)
