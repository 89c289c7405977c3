"""A stand-in for the kubelet of InferenceBatch pods, for the batch scale benchmark only.

The tests run batch pods on the real node (tests/node/test_node_batches.py). The
benchmark measures the product's own overhead on 100,000 lines against an instant engine
on this machine, which the node's pods cannot be pointed at (they reach a model through
its Service, whose pods would be a real vLLM). So here, for the kwok plane's batch pods
(kwok leaves them alone), ``BatchPods`` plays their kubelet: for each scheduled pod it
resolves the container's environment as the kubelet does (values, the pod's fields,
Secret keys; a missing Secret leaves the container waiting with
CreateContainerConfigError), runs the real ``gptoss-batch`` with the batch identity's
token, and reports Running, then Succeeded or Failed with the exit code and termination
message. A pod being deleted gets SIGTERM. What only cluster DNS and volume mounts would
give is mapped: the engine URL to the stand-in's, claim mount paths to host folders, a
ConfigMap input to a file.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from lightkube import ApiError, Client
from lightkube.operators import exists
from lightkube.resources.core_v1 import ConfigMap, Pod, Secret

from gptoss_operator.core import naming
from gptoss_operator.builders.batch import CONFIGMAP_ROOT, VOLUMES_ROOT
from tests.cluster.model_helpers import finish_pod, running_pod, waiting_pod


class BatchPods:
    def __init__(
        self,
        kube: Client,
        namespace: str,
        kubeconfig: Path,
        engine_url: str,
        volumes: dict[str, Path],
        log_dir: Path,
        poll_seconds: float = 0.2,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.engine_url = engine_url
        self.volumes = volumes
        self.log_dir = log_dir
        self.poll_seconds = poll_seconds
        self.processes: dict[str, tuple[subprocess.Popen[bytes], Path, Any]] = {}
        self.finished: dict[str, int] = {}  # pod name -> exit code
        self.started: list[str] = []
        self.signalled: set[str] = set()
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> BatchPods:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for process, _, _ in self.processes.values():
            if process.poll() is None:
                process.kill()

    def log_of(self, pod: str) -> str:
        path = self.log_dir / f"{pod}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self._step()
            except Exception as error:  # keep playing the kubelet; report at the end
                self.errors.append(repr(error))

    def _step(self) -> None:
        present = {}
        for pod in self.kube.list(
            Pod, namespace=self.namespace, labels={naming.BATCH_LABEL: exists()}
        ):
            name = pod.metadata.name
            present[name] = pod
            if pod.metadata.deletionTimestamp is not None:
                self._signal(name)
                continue
            if name in self.processes or name in self.finished:
                continue
            if pod.spec.nodeName and (pod.status is None or pod.status.phase == "Pending"):
                self._start(pod)
        for name in list(self.processes):
            process, termination, log = self.processes[name]
            code = process.poll()
            if code is None:
                if name not in present:
                    self._signal(name)
                continue
            log.close()
            del self.processes[name]
            self.finished[name] = code
            if name in present:
                message = termination.read_text() if termination.exists() else ""
                finish_pod(
                    self.kube, self.namespace, present[name], exit_code=code, message=message
                )

    def _signal(self, name: str) -> None:
        """SIGTERM once, as the kubelet does when a pod is deleted."""
        entry = self.processes.get(name)
        if entry is not None and entry[0].poll() is None and name not in self.signalled:
            self.signalled.add(name)
            entry[0].send_signal(signal.SIGTERM)

    # ------------------------------------------------------------------ a pod
    def _start(self, pod: Pod) -> None:
        container = pod.spec.containers[0]
        try:
            env = self._env(pod, container)
        except _Waiting as waiting:
            waiting_pod(self.kube, self.namespace, pod, "CreateContainerConfigError", str(waiting))
            return
        termination = Path(tempfile.mkdtemp(prefix="termination-")) / "log"
        env["GPTOSS_TERMINATION_LOG"] = str(termination)
        log = open(self.log_dir / f"{pod.metadata.name}.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "gptoss_operator.cli.batch_main", *container.command[1:]],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.processes[pod.metadata.name] = (process, termination, log)
        self.started.append(pod.metadata.name)
        running_pod(self.kube, self.namespace, pod)

    def _env(self, pod: Pod, container: Any) -> dict[str, str]:
        env: dict[str, str] = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
            "KUBECONFIG": str(self.kubeconfig),
            "TIKTOKEN_ENCODINGS_BASE": os.environ.get("TIKTOKEN_ENCODINGS_BASE", ""),
        }
        for var in container.env or []:
            if var.value is not None:
                env[var.name] = var.value
            elif var.valueFrom.fieldRef is not None:
                env[var.name] = _field(pod, var.valueFrom.fieldRef.fieldPath)
            elif var.valueFrom.secretKeyRef is not None:
                ref = var.valueFrom.secretKeyRef
                value = self._secret(ref.name, ref.key)
                if value is None and not ref.optional:
                    raise _Waiting(f'secret "{ref.name}" not found')
                if value is not None:
                    env[var.name] = value
        env["GPTOSS_BATCH_PLAN"] = self._mapped_plan(env["GPTOSS_BATCH_PLAN"], pod)
        return {k: v for k, v in env.items() if v}

    def _secret(self, name: str, key: str) -> str | None:
        try:
            secret = self.kube.get(Secret, name, namespace=self.namespace)
        except ApiError as error:
            if error.status.code == 404:
                return None
            raise
        data = (secret.data or {}).get(key)
        return base64.b64decode(data).decode() if data is not None else None

    def _mapped_plan(self, raw: str, pod: Pod) -> str:
        plan = json.loads(raw)
        plan["engineUrl"] = self.engine_url
        for side in ("input", "output"):
            path = plan[side].get("path")
            if path and path.startswith(VOLUMES_ROOT + "/"):
                claim, _, rest = path[len(VOLUMES_ROOT) + 1 :].partition("/")
                plan[side]["path"] = str(self.volumes[claim] / rest)
            elif path and path.startswith(CONFIGMAP_ROOT + "/"):
                plan[side]["path"] = self._config_map_file(pod)
        return json.dumps(plan)

    def _config_map_file(self, pod: Pod) -> str:
        volume = next(v for v in pod.spec.volumes if v.configMap is not None)
        source = volume.configMap
        config_map = self.kube.get(ConfigMap, source.name, namespace=self.namespace)
        key = source.items[0].key
        path = Path(tempfile.mkdtemp(prefix="configmap-")) / "input.jsonl"
        path.write_text((config_map.data or {})[key])
        return str(path)


def _field(pod: Pod, path: str) -> str:
    """A downward API field: the pod's name, or one of its labels or annotations (the
    Job controller gives JOB_COMPLETION_INDEX as a label reference)."""
    if path == "metadata.name":
        return str(pod.metadata.name)
    for kind in ("labels", "annotations"):
        prefix = f"metadata.{kind}['"
        if path.startswith(prefix) and path.endswith("']"):
            return str((getattr(pod.metadata, kind) or {}).get(path[len(prefix) : -2], ""))
    raise AssertionError(f"no kubelet stand-in for field {path}")


class _Waiting(Exception):
    """The container cannot be created yet (what the kubelet reports as waiting)."""
