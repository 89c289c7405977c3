"""Fixtures: one real control plane per test session, a fresh namespace per test.

By default the session starts the local control plane (etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok with fake GPU nodes). A session of the
real node tier (``-m node``) starts a real node too (kubelet, containerd, our images)
and installs the chart, whose operator then serves every namespace: so that tier runs
in a session of its own, without the operator process the other tiers start. With
``GPTOSS_TEST_USE_EXISTING_CLUSTER=1`` the tests run against the cluster that
``KUBECONFIG`` names instead (kind, k3d or a real one).
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lightkube import Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace

from gptoss_sandbox.cluster import LocalCluster, free_port, stop_process


@dataclass
class ClusterUnderTest:
    kubeconfig: Path
    local: LocalCluster | None

    def client(self) -> Client:
        return Client(KubeConfig.from_file(str(self.kubeconfig)), field_manager="gptoss-tests")


def use_existing_cluster() -> bool:
    return os.environ.get("GPTOSS_TEST_USE_EXISTING_CLUSTER", "") in ("1", "true", "yes")


REAL_NODE_GPUS = 4


@pytest.hookimpl(trylast=True)  # after -m and -k have deselected
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    del config
    node = [item for item in items if item.get_closest_marker("node")]
    others = [item for item in items if item.get_closest_marker("cluster") and item not in node]
    if node and others:
        raise pytest.UsageError(
            "the real node tier runs in a session of its own (its chart-installed operator "
            "serves every namespace): run `pytest -m node` and `pytest -m 'not node'`"
        )


def _session_wants_real_node(session: pytest.Session) -> bool:
    return any(item.get_closest_marker("node") for item in session.items)


@pytest.fixture(scope="session")
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ClusterUnderTest]:
    if use_existing_cluster():
        kubeconfig = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config"))
        yield ClusterUnderTest(Path(kubeconfig.split(os.pathsep)[0]), None)
        return
    real_node = _session_wants_real_node(request.session)
    local = LocalCluster(
        tmp_path_factory.mktemp("cluster"),
        # The real node tier's pods (the download Job's too) must land on the real node.
        nodes=[] if real_node else None,
        progress=print,
        real_node_gpus=REAL_NODE_GPUS if real_node else None,
    )
    local.start(timeout=3600)
    try:
        yield ClusterUnderTest(local.kubeconfig, local)
    finally:
        local.stop()


@pytest.fixture(scope="session")
def kube(cluster: ClusterUnderTest) -> Client:
    return cluster.client()


@pytest.fixture
def namespace(kube: Client) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:10]}"
    kube.create(Namespace(metadata=ObjectMeta(name=name, labels={"gptoss-tests": "true"})))
    try:
        yield name
    finally:
        kube.delete(Namespace, name)


@pytest.fixture(scope="session")
def crds(kube: Client) -> list[str]:
    """Install the generated CRDs (server-side apply) and wait until they are Established."""
    from lightkube import codecs
    from lightkube.resources.apiextensions_v1 import CustomResourceDefinition

    from gptoss_operator.api.crdgen import all_crds
    from gptoss_sandbox.chart import worker_cluster_roles
    from tests.support import wait_for

    names = []
    for document in all_crds().values():
        kube.apply(codecs.from_dict(document), force=True)
        names.append(document["metadata"]["name"])
    # The workers' ClusterRoles under the names an operator uses outside the chart.
    for role in worker_cluster_roles():
        kube.apply(codecs.from_dict(role), force=True)

    def established() -> bool:
        for name in names:
            crd = kube.get(CustomResourceDefinition, name)
            conditions = {c.type: c.status for c in (crd.status.conditions or [])}
            assert conditions.get("NonStructuralSchema") != "True", name
            if conditions.get("Established") != "True":
                return False
        return True

    wait_for(established, timeout=30, message="gptoss CRDs Established")
    return names


class OperatorProcess:
    """`gptoss-operator` running as a real process against the test cluster."""

    def __init__(self, kubeconfig: Path, log_path: Path, env: dict[str, str]) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, extra_args: list[str] | None = None) -> None:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), **self.env}
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gptoss_operator.cli.operator_main",
                "--liveness",
                "",
                *(extra_args or []),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def metrics(self) -> dict[str, float]:
        """Its /metrics, series (name and labels) to value."""
        port = self.env["GPTOSS_METRICS_PORT"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line and not line.startswith("#")
        }

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None:
            return
        stop_process(self.process, kill=kill, grace=20)
        self.process = None

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="session")
def operator(
    cluster: ClusterUnderTest, crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    del crds
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    process = OperatorProcess(
        cluster.kubeconfig,
        log_path,
        {
            "GPTOSS_RESYNC_SECONDS": "3",
            "GPTOSS_AUTOSCALE_SECONDS": "1",
            "GPTOSS_CLAIM_PENDING_GRACE": "5",
            "GPTOSS_IMAGE": "registry.example/gptoss-operator:test",
            "GPTOSS_METRICS_PORT": str(free_port()),
        },
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()
        print(f"operator log: {log_path}")
