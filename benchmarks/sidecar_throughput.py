"""Sidecar overhead with an instant engine (the test stand-in for vLLM, zero token delay):
create -> Succeeded latency one job at a time (p50/p99), then jobs per second sustained by
one sidecar with 500 jobs submitted at once."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import plane_with_operator, summary  # noqa: E402
from lightkube import Client  # noqa: E402

from gptoss_operator.api.resources import GptOssModelResource, InferenceJobResource  # noqa: E402
from gptoss_sandbox.standin_engine import StandinEngine  # noqa: E402

NAMESPACE = "bench"
SERIAL = 100
BULK = 500


def job(name: str) -> object:
    return InferenceJobResource.from_dict({
        "apiVersion": "gptoss.ai/v1alpha1", "kind": "InferenceJob", "metadata": {"name": name},
        "spec": {"modelRef": {"name": "m"}, "maxTokens": 64,
                 "messages": [{"role": "user", "content": f"question {name}"}]},
    })


def phase(kube: Client, name: str) -> str | None:
    status = kube.get(InferenceJobResource, name, namespace=NAMESPACE).to_dict().get("status")
    return (status or {}).get("phase")


def main() -> None:
    with plane_with_operator(NAMESPACE) as (cluster, kube), StandinEngine(model="m") as engine:
        kube.create(GptOssModelResource.from_dict({
            "apiVersion": "gptoss.ai/v1alpha1", "kind": "GptOssModel",
            "metadata": {"name": "m"}, "spec": {}}), namespace=NAMESPACE)
        log = open(Path(tempfile.mkdtemp()) / "sidecar.log", "ab")  # noqa: SIM115
        sidecar = subprocess.Popen(
            [sys.executable, "-m", "gptoss_operator.cli.sidecar_main"],
            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "GPTOSS_MODEL": "m",
                 "GPTOSS_NAMESPACE": NAMESPACE, "GPTOSS_POD_NAME": "bench-sidecar",
                 "GPTOSS_ENGINE_URL": engine.url},
            stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            time.sleep(3)
            latencies = []
            watcher = Client(kube.config, field_manager="bench")
            for index in range(SERIAL):
                name = f"s{index:03d}"
                started = time.monotonic()
                kube.create(job(name), namespace=NAMESPACE)
                for _, obj in watcher.watch(InferenceJobResource, namespace=NAMESPACE,
                                            fields={"metadata.name": name}):
                    if (obj.to_dict().get("status") or {}).get("phase") in ("Succeeded",
                                                                            "Failed"):
                        break
                latencies.append(time.monotonic() - started)
            print(summary("create -> Succeeded, one job at a time", latencies))

            started = time.monotonic()
            for index in range(BULK):
                kube.create(job(f"b{index:03d}"), namespace=NAMESPACE)
            submitted = time.monotonic() - started
            done = 0
            while done < BULK and time.monotonic() - started < 600:
                items = list(kube.list(InferenceJobResource, namespace=NAMESPACE,
                                       fields={"status.phase": "Succeeded"}))
                done = len([i for i in items if i.metadata.name.startswith("b")])
                time.sleep(0.5)
            elapsed = time.monotonic() - started
            print(f"bulk: {BULK} jobs submitted in {submitted:.1f}s, all Succeeded after "
                  f"{elapsed:.1f}s = {done / elapsed:.1f} jobs/s sustained by one sidecar "
                  f"(engine requests: {engine.requests_served})")
        finally:
            sidecar.terminate()
            sidecar.wait(timeout=20)


if __name__ == "__main__":
    main()
