"""The benchmarks' world: a local control plane (kube-apiserver, etcd, controller-manager,
scheduler, kwok) with the CRDs, the chart's worker ClusterRoles and the operator, plus
sidecars and the stand-in engine started on demand, and /proc readings of every process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightkube import Client, KubeConfig, codecs  # noqa: E402
from lightkube.models.meta_v1 import ObjectMeta  # noqa: E402
from lightkube.resources.core_v1 import Namespace  # noqa: E402

from gptoss_operator.api.crdgen import all_crds  # noqa: E402
from gptoss_operator.api.resources import GptOssModelResource, InferenceJobResource  # noqa: E402
from gptoss_sandbox.cluster import LocalCluster, free_port, stop_process  # noqa: E402
from gptoss_sandbox.chart import worker_cluster_roles  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its own threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mb(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * PAGE_SIZE / 2**20


def job_manifest(name: str, model: str = "m", max_tokens: int = 64) -> Any:
    return InferenceJobResource.from_dict({
        "apiVersion": "gptoss.ai/v1alpha1", "kind": "InferenceJob", "metadata": {"name": name},
        "spec": {"modelRef": {"name": model}, "maxTokens": max_tokens,
                 "messages": [{"role": "user", "content": f"question {name}"}]},
    })


def model_manifest(name: str = "m", **spec: Any) -> Any:
    return GptOssModelResource.from_dict({
        "apiVersion": "gptoss.ai/v1alpha1", "kind": "GptOssModel", "metadata": {"name": name},
        "spec": {"source": {"repo": "openai/gpt-oss-20b"}, **spec}})


@dataclass
class Plane:
    cluster: LocalCluster
    kube: Client
    workdir: Path
    operator: subprocess.Popen[bytes] | None = None
    sidecars: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_operator(self, **env: str) -> None:
        log = open(self.workdir / "operator.log", "ab")  # noqa: SIM115
        self.operator = subprocess.Popen(
            [sys.executable, "-m", "gptoss_operator.cli.operator_main", "--liveness", ""],
            env={**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig),
                 "GPTOSS_METRICS_PORT": str(free_port()),
                 "GPTOSS_DOWNLOADER_CLUSTER_ROLE": "gptoss-downloader",
                 "GPTOSS_SIDECAR_CLUSTER_ROLE": "gptoss-sidecar", **env},
            stdout=log, stderr=subprocess.STDOUT,
        )

    def restart_operator(self, **env: str) -> None:
        if self.operator is not None:
            stop_process(self.operator, grace=20)
        self.start_operator(**env)

    def namespace(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.kube.create(Namespace(metadata=ObjectMeta(name=name)))
        return name

    def ready_model(self, namespace: str, name: str = "m", timeout: float = 120,
                    **spec: Any) -> None:
        self.kube.create(model_manifest(name, **spec), namespace=namespace)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.kube.get(GptOssModelResource, name, namespace=namespace).to_dict()
            if (model.get("status") or {}).get("phase") == "Ready":
                return
            time.sleep(0.2)
        raise TimeoutError(f"model {namespace}/{name} not Ready")

    def start_sidecars(self, namespace: str, count: int, engine_url: str,
                       concurrency: int = 64, model: str = "m") -> list[subprocess.Popen[bytes]]:
        started = []
        for index in range(count):
            log = open(self.workdir / f"sidecar-{namespace}-{index}.log", "ab")  # noqa: SIM115
            started.append(subprocess.Popen(
                [sys.executable, "-m", "gptoss_operator.cli.sidecar_main"],
                env={**os.environ, "KUBECONFIG": str(self.cluster.kubeconfig),
                     "GPTOSS_MODEL": model, "GPTOSS_NAMESPACE": namespace,
                     "GPTOSS_POD_NAME": f"bench-{namespace}-{index}",
                     "GPTOSS_ENGINE_URL": engine_url, "GPTOSS_CONCURRENCY": str(concurrency)},
                stdout=log, stderr=subprocess.STDOUT,
            ))
        self.sidecars += started
        return started

    def stop_sidecars(self, processes: list[subprocess.Popen[bytes]]) -> None:
        for process in processes:
            stop_process(process, grace=20)
            self.sidecars.remove(process)

    def pids(self) -> dict[str, int]:
        """The control plane's processes and the operator, by name."""
        found = {c.name: c.process.pid for c in self.cluster.components}
        if self.operator is not None:
            found["operator"] = self.operator.pid
        return found

    def apiserver_metrics(self) -> str:
        return str(self.cluster.request("GET", "/metrics"))


@contextmanager
def plane() -> Iterator[Plane]:
    workdir = Path(tempfile.mkdtemp(prefix="gptoss-bench-"))
    cluster = LocalCluster(workdir / "cluster", progress=lambda line: None).start(timeout=3600)
    world: Plane | None = None
    try:
        kube = Client(KubeConfig.from_file(str(cluster.kubeconfig)), field_manager="bench")
        for document in all_crds().values():
            kube.apply(codecs.from_dict(document), force=True)
        for role in worker_cluster_roles():
            kube.apply(codecs.from_dict(role), force=True)
        time.sleep(2)
        world = Plane(cluster, kube, workdir)
        world.start_operator()
        time.sleep(3)
        yield world
    finally:
        if world is not None:
            for process in list(world.sidecars):
                stop_process(process, grace=20)
            if world.operator is not None:
                stop_process(world.operator, grace=20)
        cluster.stop()
