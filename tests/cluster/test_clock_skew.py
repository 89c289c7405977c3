"""Clocks that disagree cause no false requeue and hide no dead worker.

The sidecar runs under libfaketime, its wall clock 90 s off the operator's, so every
renewTime it writes is 90 s in the past (or future) by the operator's clock. It reaches
the apiserver through the fault proxy (no faults) because TLS certificates are judged by
the client's clock. Leases are 6 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libfaketime
import pytest
from lightkube import Client

from gptoss_sandbox.fault_proxy import FaultProxy
from gptoss_sandbox.standin_engine import StandinEngine
from tests.cluster.job_helpers import (
    SidecarProcess,
    condition,
    create_job,
    job_status,
)
from tests.cluster.model_helpers import create_model, wait_for_phase
from tests.conftest import ClusterUnderTest, OperatorProcess
from tests.support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.faults]


def skewed_env(offset: str) -> dict[str, str]:
    """Environment that runs a process with its wall clock moved by ``offset``."""
    _, env = libfaketime.get_reload_information()
    library = Path(env["LD_LIBRARY_PATH"]) / env["LD_PRELOAD"]
    return {"LD_PRELOAD": str(library), "DONT_FAKE_MONOTONIC": "1", "FAKETIME": offset}


def test_skewed_env_moves_the_wall_clock() -> None:
    probe = [sys.executable, "-c", "import time; print(time.time())"]
    here = float(subprocess.check_output(probe, text=True))
    env = {**os.environ, **skewed_env("-90s")}
    there = float(subprocess.check_output(probe, env=env, text=True))
    assert 85 < here - there < 95


@pytest.fixture
def engine(
    kube: Client, operator: OperatorProcess, namespace: str
) -> Iterator[tuple[StandinEngine, str]]:
    del operator
    create_model(kube, namespace, "m", source={"repo": "openai/gpt-oss-20b"})
    wait_for_phase(kube, namespace, "m", "Ready")
    standin = StandinEngine(model="m")
    url = standin.start_in_thread()
    yield standin, url
    standin.stop_in_thread()


@pytest.fixture
def proxy(cluster: ClusterUnderTest) -> Iterator[FaultProxy]:
    with FaultProxy(cluster.kubeconfig) as started:
        yield started


def _sidecar(
    proxy: FaultProxy, namespace: str, url: str, logs: Path, offset: str
) -> SidecarProcess:
    kubeconfig = proxy.kubeconfig(logs / "through-proxy.kubeconfig")
    worker = f"skewed-{uuid.uuid4().hex[:6]}"
    return SidecarProcess(kubeconfig, namespace, "m", worker, url, logs, **skewed_env(offset))


def test_a_sidecar_clock_behind_causes_no_requeue(
    kube: Client,
    namespace: str,
    engine: tuple[StandinEngine, str],
    proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    standin, url = engine
    standin.token_delay = 0.4  # ~12 s of generation: two lease durations
    sidecar = _sidecar(proxy, namespace, url, tmp_path, "-90s").start()
    phases: list[str] = []

    def finished() -> dict[str, Any] | None:
        status = job_status(kube, namespace, "slow")
        phase = status.get("phase", "Pending")
        if not phases or phases[-1] != phase:
            phases.append(phase)
        return status if phase in ("Succeeded", "Failed") else None

    try:
        create_job(kube, namespace, "slow", "m")
        status = wait_for(finished, timeout=60, interval=0.1, message="the job to finish")
    finally:
        sidecar.stop()
    assert status["phase"] == "Succeeded", (status.get("message"), sidecar.log_tail())
    assert phases[phases.index("Running") :] == ["Running", "Succeeded"], (
        "requeued although the sidecar kept renewing"
    )
    assert status["attempts"] == 1


def test_a_dead_sidecar_with_a_clock_ahead_is_noticed(
    kube: Client,
    namespace: str,
    engine: tuple[StandinEngine, str],
    proxy: FaultProxy,
    tmp_path: Path,
) -> None:
    standin, url = engine
    standin.token_delay = 1.0
    sidecar = _sidecar(proxy, namespace, url, tmp_path, "+90s").start()
    try:
        create_job(kube, namespace, "orphan", "m")
        wait_for(
            lambda: job_status(kube, namespace, "orphan").get("phase") == "Running",
            timeout=30,
            message="the job running on the skewed sidecar",
        )
    finally:
        sidecar.stop(kill=True)
    # Its last renewTime is 90 s in the future; the lease still lapses 6 s after it
    # stopped changing.
    status = wait_for(
        lambda: (s := job_status(kube, namespace, "orphan")).get("phase") == "Pending" and s,
        timeout=20,
        message="the orphaned job requeued within a few lease durations",
    )
    assert condition(status, "Scheduled")["reason"] == "WorkerLost"
