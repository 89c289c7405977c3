"""A model's pods failing on the real node, reported as the kubelet reports them: an
image no registry serves, a vLLM that exits at start (crash loop), a download of a repo
the hub does not have. The waiting reasons, back-offs, termination messages and log
fallbacks are the kubelet's own; the operator turns them into a condition and an Event.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import ConfigMap, Namespace
from tests.cluster.model_helpers import (
    condition,
    create_model,
    pods,
    wait_for_condition,
    wait_for_event,
    wait_for_phase,
)
from tests.node.conftest import (
    TINY_REPO,
    ChartRelease,
    HubService,
    restricted_namespace,
)
from tests.support import wait_for

from gptoss_operator.api.resources import InferenceBatchResource
from gptoss_operator.core import naming
from gptoss_sandbox import node
from gptoss_sandbox.images import ImageArchive

pytestmark = [pytest.mark.cluster, pytest.mark.node]


@pytest.fixture
def failing_namespace(kube: Client, chart_release: ChartRelease) -> Iterator[str]:
    del chart_release
    name = f"fail-{uuid.uuid4().hex[:6]}"
    restricted_namespace(kube, name)
    try:
        yield name
    finally:
        kube.delete(Namespace, name)


def test_an_image_no_registry_serves_is_an_image_pull_error(
    kube: Client, failing_namespace: str, hub_service: HubService
) -> None:
    missing = "localhost/gptoss-sandbox/missing:1"
    create_model(
        kube, failing_namespace, "noimage",
        **node.model_spec(missing, TINY_REPO, hub_service.endpoint),
    )  # fmt: skip
    status = wait_for_condition(
        kube, failing_namespace, "noimage", "Serving", "ImagePullError", timeout=600
    )
    message = condition(status, "Serving")["message"]
    assert missing in message, message
    assert condition(status, "Stalled")["status"] == "True"
    event = wait_for_event(kube, failing_namespace, "noimage", "ImagePullError")
    assert event["type"] == "Warning"
    assert missing in event["message"]


def test_a_vllm_that_exits_at_start_is_a_crash_loop_with_its_own_words(
    kube: Client, failing_namespace: str, hub_service: HubService, vllm_image: ImageArchive
) -> None:
    """A context longer than the checkpoint's: vLLM refuses it and exits; the kubelet
    restarts it with back-off and keeps its last lines as the termination message."""
    spec = node.model_spec(vllm_image.reference, TINY_REPO, hub_service.endpoint, 1_048_576)
    create_model(kube, failing_namespace, "toolong", **spec)
    status = wait_for_condition(
        kube, failing_namespace, "toolong", "Serving", "CrashLoop", timeout=600
    )
    message = condition(status, "Serving")["message"]
    assert "container vllm is in CrashLoopBackOff (exit code 1)" in message, message
    assert "max_model_len" in message, message  # vLLM's own explanation, from its log
    assert condition(status, "Stalled")["status"] == "True"
    assert status["phase"] != "Ready"
    assert wait_for_event(kube, failing_namespace, "toolong", "CrashLoop")["type"] == "Warning"

    # A batch of this model waits for an engine that serves, saying so, and starts no
    # shard that would wait for one while its deadline runs (#23, defect 6).
    kube.create(
        ConfigMap(
            metadata=ObjectMeta(name="lines", namespace=failing_namespace),
            data={"input.jsonl": json.dumps({"custom_id": "a", "body": {"messages": []}})},
        )
    )
    kube.create(
        InferenceBatchResource(
            metadata=ObjectMeta(name="early", namespace=failing_namespace),
            spec={
                "modelRef": {"name": "toolong"},
                "input": {"configMap": {"name": "lines"}},
                "output": {"volume": {"claimName": "results", "path": "out"}},
            },
        )
    )

    def waiting() -> dict[str, Any] | None:
        batch = kube.get(InferenceBatchResource, "early", namespace=failing_namespace)
        status = dict(batch.to_dict().get("status") or {})
        return (
            status if condition(status, "Reconciling").get("reason") == "WaitingForEngine" else None
        )

    batch = wait_for(waiting, timeout=60, message="the batch WaitingForEngine")
    assert batch["phase"] == "Pending"
    assert not list(
        kube.list(Job, namespace=failing_namespace, labels={naming.BATCH_LABEL: "early"})
    )


def test_a_repo_the_hub_does_not_have_fails_the_download_with_its_reason(
    kube: Client, failing_namespace: str, hub_service: HubService, vllm_image: ImageArchive
) -> None:
    spec = node.model_spec(vllm_image.reference, "openai/gpt-oss-gone", hub_service.endpoint)
    create_model(kube, failing_namespace, "gone", **spec)
    status = wait_for_phase(kube, failing_namespace, "gone", "Failed", timeout=300)
    # The Hub answers 401, not 404, for a repo it does not have (it will not tell a
    # missing repo from a private one); the hub here does the same.
    downloaded = condition(status, "Downloaded")
    assert downloaded["reason"] == "Unauthorized", downloaded
    assert "repository openai/gpt-oss-gone not found, or private" in downloaded["message"]
    assert condition(status, "Stalled")["status"] == "True"
    assert wait_for_event(kube, failing_namespace, "gone", "Unauthorized")["type"] == "Warning"
    # The kubelet carried the downloader's termination message; the pod failure policy
    # ended the Job at once.
    (download,) = pods(kube, failing_namespace, {naming.MODEL_LABEL: "gone"})
    (state,) = download.status.containerStatuses
    assert json.loads(state.state.terminated.message)["reason"] == "Unauthorized"
    (job,) = kube.list(Job, namespace=failing_namespace, labels={naming.MODEL_LABEL: "gone"})
    assert job.status.failed == 1
