"""A deep queue: 5,000 InferenceJobs created before their model exists, then the model
and two sidecars (the test stand-in for vLLM, zero token delay) come up.

Prints how long the queue took to submit and to drain, and the reliability figures:
jobs lost (not Succeeded), duplicate completions (an engine request beyond one per job),
and re-runs (attempts above 1).
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import plane_with_operator  # noqa: E402

from gptoss_operator.api.resources import GptOssModelResource, InferenceJobResource  # noqa: E402
from gptoss_operator.harmony import Harmony  # noqa: E402
from gptoss_sandbox.standin_engine import StandinEngine  # noqa: E402

NAMESPACE = "load"
JOBS = int(os.environ.get("GPTOSS_BENCH_JOBS", "5000"))
SIDECARS = 2


def job(index: int) -> object:
    return InferenceJobResource.from_dict({
        "apiVersion": "gptoss.ai/v1alpha1", "kind": "InferenceJob",
        "metadata": {"name": f"q{index:05d}"},
        "spec": {"modelRef": {"name": "m"}, "maxTokens": 64,
                 "messages": [{"role": "user", "content": f"question q{index:05d}"}]},
    })


def main() -> None:
    with plane_with_operator(NAMESPACE) as (cluster, kube), StandinEngine(model="m") as engine:
        started = time.monotonic()
        for index in range(JOBS):
            kube.create(job(index), namespace=NAMESPACE)
        submitted = time.monotonic() - started
        print(f"{JOBS} jobs created before their model in {submitted:.1f}s "
              f"({JOBS / submitted:.0f}/s)")
        kube.create(GptOssModelResource.from_dict({
            "apiVersion": "gptoss.ai/v1alpha1", "kind": "GptOssModel",
            "metadata": {"name": "m"}, "spec": {"source": {"repo": "openai/gpt-oss-20b"}}}),
            namespace=NAMESPACE)
        logs = Path(tempfile.mkdtemp())
        sidecars = [
            subprocess.Popen(
                [sys.executable, "-m", "gptoss_operator.cli.sidecar_main"],
                env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "GPTOSS_MODEL": "m",
                     "GPTOSS_NAMESPACE": NAMESPACE, "GPTOSS_POD_NAME": f"load-{i}",
                     "GPTOSS_ENGINE_URL": engine.url},
                stdout=open(logs / f"sidecar-{i}.log", "ab"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
            )
            for i in range(SIDECARS)
        ]
        try:
            ready_at = None
            while time.monotonic() - started < 3600:
                model = kube.get(GptOssModelResource, "m", namespace=NAMESPACE).to_dict()
                if ready_at is None and (model.get("status") or {}).get("phase") == "Ready":
                    ready_at = time.monotonic()
                finished = [
                    item.to_dict() for item in kube.list(InferenceJobResource, namespace=NAMESPACE)
                    if (item.to_dict().get("status") or {}).get("phase") in ("Succeeded", "Failed")
                ]
                if len(finished) == JOBS:
                    break
                time.sleep(2)
            drained = time.monotonic() - (ready_at or started)
        finally:
            for sidecar in sidecars:
                sidecar.terminate()
            for sidecar in sidecars:
                sidecar.wait(timeout=30)
        statuses = [
            (item.to_dict().get("status") or {})
            for item in kube.list(InferenceJobResource, namespace=NAMESPACE)
        ]
        succeeded = sum(s.get("phase") == "Succeeded" for s in statuses)
        reruns = sum(int(s.get("attempts") or 0) > 1 for s in statuses)
        harmony = Harmony()
        asked = collections.Counter()
        for request in engine.requests:
            text = harmony.decode(request["prompt"])
            asked[text[text.rindex("question q") + 9:][:6]] += 1
        duplicates = sum(count - 1 for count in asked.values() if count > 1)
        print(f"model Ready -> {succeeded}/{JOBS} Succeeded in {drained:.1f}s "
              f"({succeeded / drained:.0f} jobs/s, {SIDECARS} sidecars)")
        print(f"jobs lost: {JOBS - succeeded}; duplicate completions: {duplicates}; "
              f"re-runs: {reruns}; engine requests: {len(engine.requests)}")


if __name__ == "__main__":
    main()
