"""kube-apiserver stopped for 20 s (etcd kept) and started again while jobs flow.

The operator, two sidecars and the stand-in engine run throughout. While the apiserver
is down nobody can write: leases cannot be renewed, answers cannot be saved. Afterwards
the watches recover, every job succeeds exactly once on its first attempt, and jobs
created after the outage are picked up within 30 s.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from lightkube import Client

from gptoss_sandbox.standin_engine import StandinEngine
from tests.cluster.job_helpers import (
    SidecarProcess,
    create_job,
    job_status,
    ready_model_namespace,
    wait_finished,
)
from tests.conftest import ClusterUnderTest, OperatorProcess
from tests.support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.faults]


def test_an_apiserver_outage_loses_and_repeats_nothing(
    kube: Client,
    cluster: ClusterUnderTest,
    operator: OperatorProcess,
    tmp_path: Path,
) -> None:
    del operator
    if cluster.local is None:
        pytest.skip("stops the local control plane's apiserver")
    namespace = ready_model_namespace(kube, "t-out")
    with StandinEngine(model="m", token_delay=0.2) as engine:
        sidecars = [
            SidecarProcess(cluster.kubeconfig, namespace, "m", f"out-{i}", engine.url, tmp_path)
            for i in range(2)
        ]
        for sidecar in sidecars:
            sidecar.start()
        try:
            before = [f"b-{uuid.uuid4().hex[:6]}" for _ in range(12)]
            for name in before:
                create_job(kube, namespace, name, "m")
            wait_for(
                lambda: (
                    sum(job_status(kube, namespace, n).get("phase") == "Running" for n in before)
                    >= 4
                ),
                timeout=30,
                message="jobs running when the apiserver stops",
            )
            cluster.local.restart("kube-apiserver", down_seconds=20)
            back = time.monotonic()
            after = [f"a-{uuid.uuid4().hex[:6]}" for _ in range(4)]
            for name in after:
                create_job(kube, namespace, name, "m")
            wait_for(
                lambda: any(
                    job_status(kube, namespace, n).get("phase") in ("Running", "Succeeded")
                    for n in after
                ),
                timeout=45,
                message="a job created after the outage taken",
            )
            taken_after = time.monotonic() - back
            statuses = {n: wait_finished(kube, namespace, n, timeout=120) for n in before + after}
        finally:
            for sidecar in sidecars:
                sidecar.stop()
    print(f"first post-outage job taken {taken_after:.1f}s after the apiserver was back")
    failed = {n: s.get("message") for n, s in statuses.items() if s["phase"] != "Succeeded"}
    assert not failed, failed
    rerun = {n: s["attempts"] for n, s in statuses.items() if s["attempts"] != 1}
    assert not rerun, f"run again because of the outage: {rerun}"
    assert all(s["response"] == "Stand-in answer to: What is recursion?" for s in statuses.values())
    assert taken_after < 30
