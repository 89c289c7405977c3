"""The operator SIGKILLed at random moments while models come up and jobs flow.

Each kill lands somewhere in a reconcile, a status write, or housekeeping. Afterwards:
every model is Ready with exactly one of each child, and every job succeeded exactly
once, on its first attempt (the operator's deaths cost no GPU time).
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

import pytest
from lightkube import Client
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import PersistentVolumeClaim, Service

from gptoss_operator.core import naming
from gptoss_sandbox.standin_engine import StandinEngine
from tests.cluster.job_helpers import SidecarProcess, create_job, wait_finished
from tests.cluster.model_helpers import create_model, wait_for_phase
from tests.conftest import ClusterUnderTest, OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.faults]

KILLS = 20


def test_operator_killed_twenty_times_loses_and_doubles_nothing(
    kube: Client,
    namespace: str,
    cluster: ClusterUnderTest,
    operator: OperatorProcess,
    tmp_path: Path,
) -> None:
    seed = random.randrange(1 << 30)
    print(f"random seed {seed}")
    rng = random.Random(seed)
    models = [f"k{i}" for i in range(4)]
    jobs: list[str] = []
    with StandinEngine(model="k0", token_delay=0.02) as engine:
        sidecar = SidecarProcess(
            cluster.kubeconfig, namespace, "k0", "steady", engine.url, tmp_path
        ).start()
        try:
            for kill in range(KILLS):
                if kill < len(models):
                    create_model(
                        kube, namespace, models[kill], source={"repo": "openai/gpt-oss-20b"}
                    )
                for _ in range(2):
                    name = f"j-{uuid.uuid4().hex[:8]}"
                    create_job(kube, namespace, name, "k0")
                    jobs.append(name)
                time.sleep(rng.uniform(0.2, 2.0))
                operator.stop(kill=True)
                time.sleep(rng.uniform(0.0, 0.5))
                operator.start()
            for model in models:
                wait_for_phase(kube, namespace, model, "Ready", timeout=120)
            statuses = {name: wait_finished(kube, namespace, name, timeout=120) for name in jobs}
        finally:
            sidecar.stop()
            if operator.process is None or operator.process.poll() is not None:
                operator.start()
    failed = {n: s.get("message") for n, s in statuses.items() if s["phase"] != "Succeeded"}
    assert not failed, failed
    rerun = {n: s["attempts"] for n, s in statuses.items() if s["attempts"] != 1}
    assert not rerun, f"jobs run more than once (seed {seed}): {rerun}"
    for model in models:
        labels = {naming.MODEL_LABEL: model}
        for kind in (Job, Deployment, Service, PersistentVolumeClaim):
            found = list(kube.list(kind, namespace=namespace, labels=labels))
            assert len(found) == 1, (model, kind.__name__, [o.metadata.name for o in found])
