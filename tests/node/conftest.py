"""Fixtures of the real node tier: the product as pods under a real kubelet.

The session's cluster has one node, the real one (``gptoss_sandbox.node``): containerd and
runc run our images, built here (``gptoss_sandbox.images``) and imported under the
references the chart and the models use. The chart is installed with helm as a user would,
and its operator pod serves every namespace. The namespaces enforce the restricted Pod
Security level, so every pod of the tier is admitted under it.

Only the GPUs are fake (a device plugin advertises them); vLLM is its CPU build.
"""

from __future__ import annotations

import base64
import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from lightkube import Client, codecs
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import (
    Namespace,
    PersistentVolume,
    PersistentVolumeClaim,
    Pod,
    Secret,
)
from tests.cluster.model_helpers import create_model, status_of, wait_for_phase
from tests.conftest import ClusterUnderTest
from tests.support import wait_for

from gptoss_operator.core import naming
from gptoss_sandbox import binaries, images, node
from gptoss_sandbox.chart import CHART, helm
from gptoss_sandbox.fake_hub import FakeHub
from gptoss_sandbox.images import ImageArchive
from gptoss_sandbox.node import HOST_IP, RealNode
from gptoss_sandbox.real_engine import build_tiny_checkpoint, checkpoint_files

RELEASE = "gptoss"
OPERATOR_NAMESPACE = "gptoss-system"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
TINY_REPO = "openai/gpt-oss-20b"
MODEL = "tiny"
SERVING = "serving"
MAX_MODEL_LEN = 1024


@pytest.fixture(scope="session")
def real_node(cluster: ClusterUnderTest) -> RealNode:
    assert cluster.local is not None, "the node tier runs on the local cluster"
    assert cluster.local.node is not None, "no real node"
    return cluster.local.node


@pytest.fixture(scope="session")
def product_image(real_node: RealNode) -> ImageArchive:
    image = images.ensure_product_image(print)
    real_node.import_image(image)
    return image


@pytest.fixture(scope="session")
def vllm_image(real_node: RealNode) -> ImageArchive:
    image = images.ensure_vllm_image(print)
    real_node.import_image(image)
    return image


def restricted_namespace(kube: Client, name: str) -> None:
    kube.create(Namespace(metadata=ObjectMeta(name=name, labels=dict(RESTRICTED))))


def pod_ready(pod: Pod) -> bool:
    conditions = (pod.status.conditions if pod.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


@dataclass(frozen=True)
class ChartRelease:
    namespace: str
    operator_pod: Pod
    install_seconds: float


@pytest.fixture(scope="session")
def chart_release(
    cluster: ClusterUnderTest,
    kube: Client,
    product_image: ImageArchive,
    tmp_path_factory: pytest.TempPathFactory,
) -> ChartRelease:
    """``helm install`` of the chart, unchanged, into a restricted namespace; returns once
    the operator's pod is Ready."""
    restricted_namespace(kube, OPERATOR_NAMESPACE)
    values = tmp_path_factory.mktemp("chart") / "values.yaml"
    # Short resyncs keep the tier quick, and batches may use the S3 server this machine
    # runs at the node's link address; everything else is the chart's default.
    values.write_text(
        yaml.safe_dump(
            {
                "resyncSeconds": 5,
                "authorScope": {"s3": {"allowedEndpoints": [f"http://{HOST_IP}"]}},
            }
        )
    )
    started = time.monotonic()
    helm(
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        OPERATOR_NAMESPACE,
        "--values",
        str(values),
        kubeconfig=cluster.kubeconfig,
    )

    def operator_ready() -> Pod | None:
        pods = kube.list(
            Pod, namespace=OPERATOR_NAMESPACE, labels={"app.kubernetes.io/instance": RELEASE}
        )
        return next((pod for pod in pods if pod_ready(pod)), None)

    pod = wait_for(operator_ready, timeout=300, interval=1, message="the operator pod Ready")
    assert product_image.reference in {c.image for c in pod.spec.containers}
    return ChartRelease(OPERATOR_NAMESPACE, pod, time.monotonic() - started)


@pytest.fixture
def node_namespace(kube: Client) -> Iterator[str]:
    """A fresh namespace that enforces the restricted Pod Security level."""
    name = f"n-{uuid.uuid4().hex[:10]}"
    restricted_namespace(kube, name)
    try:
        yield name
    finally:
        kube.delete(Namespace, name)


@dataclass(frozen=True)
class HubService:
    hub: FakeHub
    endpoint: str  # the in-cluster URL, through a Service


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "scripted", "scripted")
    return checkpoint_files(folder)


@pytest.fixture(scope="session")
def hub_service(
    kube: Client, real_node: RealNode, tiny_checkpoint: dict[str, bytes]
) -> Iterator[HubService]:
    """A Hugging Face-compatible endpoint on this machine, reached by pods through a
    Service without selector (``hub.kube-public.svc``) whose endpoint is the machine's end
    of the node's link."""
    del real_node
    hub = FakeHub(host=HOST_IP).start()
    hub.add_repo(TINY_REPO, tiny_checkpoint)
    port = int(hub.url.rsplit(":", 1)[1])
    for document in node.service_to_machine("hub", "kube-public", port):
        kube.apply(codecs.from_dict(document), field_manager="gptoss-tests", force=True)
    try:
        yield HubService(hub, "http://hub.kube-public.svc.cluster.local")
    finally:
        hub.stop()


def kubectl(cluster: ClusterUnderTest, *args: str) -> subprocess.CompletedProcess[str]:
    tools = binaries.cached_binaries()
    assert tools is not None
    return subprocess.run(
        [str(tools.kubectl), "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def server_pods(kube: Client) -> list[Pod]:
    return list(kube.list(Pod, namespace=SERVING, labels=naming.server_selector(MODEL)))


@dataclass(frozen=True)
class ServedModel:
    pod: Pod
    ready_seconds: float


@pytest.fixture(scope="session")
def served_model(
    kube: Client, chart_release: ChartRelease, vllm_image: ImageArchive, hub_service: HubService
) -> ServedModel:
    """The tiny model in namespace ``SERVING`` (restricted), served on the real node by
    the chart's operator: created, downloaded by its Job's pod, Ready."""
    del chart_release
    restricted_namespace(kube, SERVING)
    started = time.monotonic()
    create_model(
        kube,
        SERVING,
        MODEL,
        **node.model_spec(vllm_image.reference, TINY_REPO, hub_service.endpoint, MAX_MODEL_LEN),
    )
    wait_for_phase(kube, SERVING, MODEL, "Ready", timeout=900)
    ready = time.monotonic() - started
    pods = server_pods(kube)
    assert len(pods) == 1
    return ServedModel(pods[0], ready)


@contextlib.contextmanager
def own_model(
    kube: Client,
    image: ImageArchive,
    hub_service: HubService,
    checkpoint: Path,
    model: str,
    repo: str,
) -> Iterator[str]:
    """``checkpoint`` served as ``model`` (from ``repo`` on the hub), Ready in a namespace
    of its own: its name. The namespace is deleted after (its vLLM takes a core)."""
    hub_service.hub.add_repo(repo, checkpoint_files(checkpoint))
    namespace = f"{model}-{uuid.uuid4().hex[:6]}"
    restricted_namespace(kube, namespace)
    spec = node.model_spec(image.reference, repo, hub_service.endpoint, 2048)
    create_model(kube, namespace, model, **spec)
    try:
        try:
            # Under the tests' own timeout (600 s), so that a model that never comes up
            # says why.
            wait_for_phase(kube, namespace, model, "Ready", timeout=480)
        except AssertionError as error:
            pods = {
                pod.metadata.name: pod.status.to_dict() if pod.status else None
                for pod in kube.list(Pod, namespace=namespace)
            }
            status = status_of(kube, namespace, model)
            raise AssertionError(f"{error}; model status {status}; pods {pods}") from error
        yield namespace
    finally:
        kube.delete(Namespace, namespace)


def engine_url(kube: Client, namespace: str = SERVING, model: str = MODEL) -> str:
    """vLLM's own port on the model's pod (the machine routes to the node's pods)."""
    (pod,) = kube.list(Pod, namespace=namespace, labels=naming.server_selector(model))
    return f"http://{pod.status.podIP}:{naming.ENGINE_PORT}"


def engine_api_key(kube: Client, namespace: str = SERVING, model: str = MODEL) -> str:
    secret = kube.get(Secret, naming.api_key_secret_name(model), namespace=namespace)
    return base64.b64decode(secret.data["token"]).decode()


def engine_metric(kube: Client, metric: str, namespace: str = SERVING, model: str = MODEL) -> float:
    """One of vLLM's own metrics, summed over its labels."""
    text = httpx.get(f"{engine_url(kube, namespace, model)}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(metric + "{")
    )


def engine_successes(kube: Client, namespace: str = SERVING, model: str = MODEL) -> float:
    """vLLM's own count of the requests it finished."""
    return engine_metric(kube, "vllm:request_success_total", namespace, model)


def container_log(cluster: ClusterUnderTest, namespace: str, pod: str, container: str) -> str:
    """What the kubelet kept of a container's output."""
    shown = kubectl(cluster, "logs", "-n", namespace, pod, "-c", container)
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def claim_folder(kube: Client, namespace: str, claim: str) -> Path:
    """Where a claim's files are, once it is bound: its local volume's folder on the node."""
    name = wait_for(
        lambda: kube.get(PersistentVolumeClaim, claim, namespace=namespace).spec.volumeName,
        timeout=60,
        message=f"claim {claim} bound",
    )
    volume = kube.get(PersistentVolume, name)
    return Path(volume.spec.local.path)


# The tier's modules in the order a user meets what they test: the install and the model's
# pod first (its steady run sees a fresh pod), then jobs, faults, batches, a saturated
# engine, a second model.
MODULE_ORDER = (
    "test_node_serving",
    "test_node_engine",
    "test_node_work",
    "test_node_batches",
    "test_node_busy_engine",
    "test_node_failures",
    "test_node_malformed",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        return MODULE_ORDER.index(module) if module in MODULE_ORDER else -1

    items.sort(key=rank)
