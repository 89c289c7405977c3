"""The kubelet's part for the sidecar container of a model's vLLM pods.

kwok plays the kubelet for pod status but runs no container. ``PodSidecars`` runs a real
``gptoss-sidecar`` process for each ready vLLM pod of one model, with the pod's name as
its worker name and the concurrency the operator gave the pod's sidecar container, and
sends it SIGTERM as soon as its pod is being deleted or gone, as the kubelet does
when a Deployment scales down. Every sidecar talks to one engine (the stand-in).
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from lightkube import Client
from lightkube.resources.core_v1 import Pod

from gptoss_operator.core import naming
from tests.cluster.job_helpers import SidecarProcess


def _ready(pod: Pod) -> bool:
    status = pod.status
    conditions = (status.conditions if status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def _concurrency(pod: Pod) -> str:
    containers = pod.spec.containers if pod.spec else []
    sidecar = next(c for c in containers if c.name == "sidecar")
    return next(e.value for e in sidecar.env or [] if e.name == "GPTOSS_CONCURRENCY" and e.value)


class PodSidecars:
    def __init__(
        self,
        kube: Client,
        kubeconfig: Path,
        namespace: str,
        model: str,
        engine_url: str,
        log_dir: Path,
        poll_seconds: float = 0.2,
    ) -> None:
        self.kube = kube
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.model = model
        self.engine_url = engine_url
        self.log_dir = log_dir
        self.poll_seconds = poll_seconds
        self.running: dict[str, SidecarProcess] = {}
        self.stopped: list[SidecarProcess] = []
        self.started_for: list[str] = []  # pod names, in order
        self.terminated_for: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.errors: list[str] = []

    def start(self) -> PodSidecars:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self._sync()
            except Exception as error:  # keep playing the kubelet; report at the end
                self.errors.append(repr(error))

    def _sync(self) -> None:
        pods = {
            pod.metadata.name: pod
            for pod in self.kube.list(
                Pod,
                namespace=self.namespace,
                labels=dict[str, Any](naming.server_selector(self.model)),
            )
            if pod.metadata and pod.metadata.name
        }
        for name, process in list(self.running.items()):
            pod = pods.get(name)
            if pod is None or (pod.metadata and pod.metadata.deletionTimestamp):
                if process.process is not None and process.process.poll() is None:
                    process.process.send_signal(signal.SIGTERM)
                self.terminated_for.append(name)
                self.stopped.append(self.running.pop(name))
        for name, pod in pods.items():
            if name in self.running or name in self.terminated_for:
                continue
            if pod.metadata and pod.metadata.deletionTimestamp:
                continue
            if not _ready(pod):
                continue
            sidecar = SidecarProcess(
                self.kubeconfig,
                self.namespace,
                self.model,
                name,
                self.engine_url,
                self.log_dir,
                GPTOSS_CONCURRENCY=_concurrency(pod),
            )
            self.running[name] = sidecar.start()
            self.started_for.append(name)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for process in [*self.running.values(), *self.stopped]:
            process.stop()

    def log_tail(self) -> str:
        return "\n".join(
            f"--- {p.worker}\n{p.log_tail(15)}" for p in [*self.stopped, *self.running.values()]
        )
