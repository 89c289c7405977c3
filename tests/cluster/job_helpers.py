"""Helpers for InferenceJob tests: sidecar processes, the stand-in engine, job polling."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from lightkube import Client

from gptoss_operator.api.resources import InferenceJobResource
from gptoss_sandbox.cluster import stop_process
from tests.support import wait_for


class SidecarProcess:
    """`gptoss-sidecar` as a real process, as it runs in a vLLM pod."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        model: str,
        worker: str,
        engine_url: str,
        log_dir: Path,
        **env: str,
    ) -> None:
        self.worker = worker
        self.log_path = log_dir / f"sidecar-{worker}.log"
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "GPTOSS_MODEL": model,
            "GPTOSS_NAMESPACE": namespace,
            "GPTOSS_POD_NAME": worker,
            "GPTOSS_ENGINE_URL": engine_url,
            "GPTOSS_LEASE_SECONDS": "6",
            "GPTOSS_HEARTBEAT_SECONDS": "1",
            "GPTOSS_RETRY_BASE_SECONDS": "0.2",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SidecarProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gptoss_operator.cli.sidecar_main"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        return self

    def stop(self, *, kill: bool = False) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        stop_process(self.process, kill=kill)

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def ready_model_namespace(kube: Client, prefix: str, model: str = "m") -> str:
    """A new namespace holding a Ready GptOssModel (kwok plays its pods)."""
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import Namespace

    from tests.cluster.model_helpers import create_model, wait_for_phase

    namespace = f"{prefix}-{uuid.uuid4().hex[:8]}"
    kube.create(Namespace(metadata=ObjectMeta(name=namespace)))
    create_model(kube, namespace, model, source={"repo": "openai/gpt-oss-20b"})
    wait_for_phase(kube, namespace, model, "Ready")
    return namespace


def job_manifest(
    name: str, model: str, question: str = "What is recursion?", **spec: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "modelRef": {"name": model},
        "messages": [{"role": "user", "content": question}],
    }
    body.update(spec)
    return {
        "apiVersion": "gptoss.ai/v1alpha1",
        "kind": "InferenceJob",
        "metadata": {"name": name},
        "spec": body,
    }


def create_job(
    kube: Client,
    namespace: str,
    name: str,
    model: str,
    question: str = "What is recursion?",
    **spec: Any,
) -> None:
    kube.create(
        InferenceJobResource.from_dict(job_manifest(name, model, question, **spec)),
        namespace=namespace,
    )


def job_status(kube: Client, namespace: str, name: str) -> dict[str, Any]:
    job = kube.get(InferenceJobResource, name, namespace=namespace)
    return dict(job.to_dict().get("status") or {})


def wait_finished(kube: Client, namespace: str, name: str, timeout: float = 60) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        status = job_status(kube, namespace, name)
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    return wait_for(finished, timeout=timeout, message=f"job {name} to finish")


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((dict(c) for c in status.get("conditions") or [] if c["type"] == type_), {})


def gptoss_ask(
    kubeconfig: Path, namespace: str, model: str, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the ``gptoss ask`` CLI as a user would."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gptoss_operator.cli.user_main",
            "ask",
            *("--model", model, "--namespace", namespace, "--kubeconfig", str(kubeconfig)),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
