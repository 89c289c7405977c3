"""A GptOssModel brought up the way a cluster would, with the real parts this machine has.

The operator creates the download Job and the Deployment on the local control plane; the
test then runs what their containers describe: ``gptoss-download`` with the Job's
environment (fetching a tiny checkpoint from a Hugging Face-compatible endpoint with the
real huggingface_hub client into a folder that plays the volume), real vLLM (CPU build)
with the Deployment's ``vllm serve`` arguments on that folder, and ``gptoss-sidecar`` with
the sidecar container's environment. Only the pods themselves are kwok's.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightkube import Client
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Secret

from gptoss_operator import naming
from gptoss_sandbox import pod_sandbox
from gptoss_sandbox.fake_hub import FakeHub
from gptoss_sandbox.real_engine import VllmServer
from tests.cluster.job_helpers import SidecarProcess
from tests.cluster.model_helpers import MANUAL, create_model, finish_pod, pods, wait_for_phase
from tests.conftest import ClusterUnderTest
from tests.support import wait_for


def _resolve_env(
    container: dict[str, Any], namespace: str, pod: str, kube: Client | None = None
) -> dict[str, str]:
    """A container's environment as the kubelet would give it (fieldRefs and Secret
    keys resolved)."""
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        secret = (item.get("valueFrom") or {}).get("secretKeyRef")
        if secret and kube is not None:
            data = kube.get(Secret, secret["name"], namespace=namespace).data or {}
            env[item["name"]] = base64.b64decode(data[secret["key"]]).decode()
            continue
        field = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if field == "metadata.namespace":
            env[item["name"]] = namespace
        elif field == "metadata.name":
            env[item["name"]] = pod
        else:
            raise AssertionError(f"the test cannot resolve env {item}")
    return env


def _volume_path(value: str, volume: Path) -> str:
    if value == naming.VOLUME_MOUNT or value.startswith(naming.VOLUME_MOUNT + "/"):
        return str(volume / Path(value).relative_to(naming.VOLUME_MOUNT))
    return value


@dataclass
class Deployed:
    model: str
    namespace: str
    vllm: VllmServer
    sidecar: SidecarProcess
    vllm_args: list[str]
    volume: Path
    download_termination: dict[str, Any]
    vllm_start_seconds: float
    api_key: str  # from the model's API key Secret, as the pod got it


def deploy(
    kube: Client,
    cluster: ClusterUnderTest,
    namespace: str,
    model: str,
    hub: FakeHub,
    repo: str,
    work: Path,
    **spec: Any,
) -> Deployed:
    """Create the model, run its download, serve it, and start its sidecar."""
    create_model(
        kube,
        namespace,
        model,
        source={"repo": repo, "endpoint": hub.url},
        download={"podAnnotations": MANUAL},
        **spec,
    )
    volume = work / "volume"
    volume.mkdir(parents=True)
    selector = {naming.MODEL_LABEL: model}
    job = wait_for(
        lambda: next(iter(kube.list(Job, namespace=namespace, labels=selector)), None),
        timeout=60,
        message="the download Job",
    )
    container = job.to_dict()["spec"]["template"]["spec"]["containers"][0]
    download_pod = wait_for(
        lambda: next(
            iter(pods(kube, namespace, {**selector, "job-name": job.metadata.name})), None
        ),
        timeout=60,
        message="the download pod",
    )
    env = {k: _volume_path(v, volume) for k, v in _resolve_env(container, namespace, "").items()}
    assert container["command"] == ["gptoss-download"]
    result = subprocess.run(
        [sys.executable, "-m", "gptoss_operator.cli.download_main"],
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("HF_")},
            **env,
            "KUBECONFIG": str(cluster.kubeconfig),
            "GPTOSS_TERMINATION_LOG": str(work / "termination-log"),
            "HOME": str(work),
        },
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    finish_pod(kube, namespace, download_pod, exit_code=0)
    wait_for_phase(kube, namespace, model, "Ready", timeout=120)

    deployment = kube.get(Deployment, naming.deployment_name(model), namespace=namespace)
    pod_spec = deployment.to_dict()["spec"]["template"]["spec"]
    engine, sidecar = pod_spec["containers"]
    server_pod = pods(kube, namespace, naming.server_selector(model))[0].metadata.name
    # Run as the pod would (uid 10001, read-only root, the volume at /data, emptyDirs)
    # where this machine allows it (root); otherwise as this user with paths moved.
    engine_env = _resolve_env(engine, namespace, server_pod, kube)
    if pod_sandbox.available():
        vllm = VllmServer.as_pod(pod_spec, volume, env=engine_env, log_path=work / "vllm.log")
    else:
        vllm = VllmServer.from_deployment(
            engine["args"], volume, env=engine_env, log_path=work / "vllm.log"
        )
    vllm.start()
    try:
        started = vllm.wait_healthy(timeout=600)
    except BaseException:
        vllm.stop()
        raise
    sidecar_env = _resolve_env(sidecar, namespace, server_pod, kube)
    assert sidecar_env["GPTOSS_ENGINE_URL"] == f"http://127.0.0.1:{naming.ENGINE_PORT}"
    worker = SidecarProcess(
        cluster.kubeconfig,
        namespace,
        sidecar_env["GPTOSS_MODEL"],
        sidecar_env["GPTOSS_POD_NAME"],
        vllm.url,
        work,
        GPTOSS_CONCURRENCY=sidecar_env["GPTOSS_CONCURRENCY"],
        GPTOSS_ENGINE_API_KEY=sidecar_env["GPTOSS_ENGINE_API_KEY"],
    ).start()
    termination = json.loads((work / "termination-log").read_text())
    return Deployed(
        model,
        namespace,
        vllm,
        worker,
        list(engine["args"]),
        volume,
        termination,
        started,
        engine_env["VLLM_API_KEY"],
    )
