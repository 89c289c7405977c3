"""An apiserver that errs costs no job and no answer.

The sidecar talks to the apiserver through the fault proxy, which answers chosen requests
with 429/500/503, or forwards a request and then drops its answer. The operator talks to
the apiserver directly (its janitor would requeue a job whose lease truly lapsed). The
engine is the stand-in. Every test checks that its faults were actually injected.
"""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from lightkube import Client
from lightkube.resources.core_v1 import Namespace

from gptoss_sandbox.cluster import free_port
from gptoss_sandbox.fault_proxy import Fault, FaultProxy
from gptoss_sandbox.standin_engine import StandinEngine
from tests.cluster.job_helpers import (
    SidecarProcess,
    condition,
    create_job,
    job_status,
    ready_model_namespace,
    wait_finished,
)
from tests.conftest import ClusterUnderTest, OperatorProcess
from tests.support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.faults]

JOB_STATUS = r"/inferencejobs/[^/]+/status$"
ANSWER = "Stand-in answer to: What is recursion?"


@dataclass
class Faulty:
    kube: Client
    namespace: str
    engine: StandinEngine
    proxy: FaultProxy
    sidecar: SidecarProcess
    health_url: str


@pytest.fixture(scope="module")
def faulty(
    kube: Client,
    cluster: ClusterUnderTest,
    operator: OperatorProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Faulty]:
    del operator
    namespace = ready_model_namespace(kube, "t-af")
    engine = StandinEngine(model="m")
    url = engine.start_in_thread()
    logs = tmp_path_factory.mktemp("faults")
    proxy = FaultProxy(cluster.kubeconfig).start()
    kubeconfig = proxy.kubeconfig(Path(logs) / "through-proxy.kubeconfig")
    health = free_port()
    sidecar = SidecarProcess(
        kubeconfig,
        namespace,
        "m",
        "sidecar-f",
        url,
        logs,
        GPTOSS_RESYNC_SECONDS="2",
        GPTOSS_HEALTH_PORT=str(health),
    ).start()
    try:
        yield Faulty(kube, namespace, engine, proxy, sidecar, f"http://127.0.0.1:{health}")
    finally:
        sidecar.stop()
        proxy.stop()
        engine.stop_in_thread()
        kube.delete(Namespace, namespace)
        print(f"sidecar logs: {logs}")


@pytest.fixture(autouse=True)
def _reset(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "faulty" in request.fixturenames:
        faulty: Faulty = request.getfixturevalue("faulty")
        faulty.proxy.clear()
        faulty.engine.token_delay = 0.0


def _ran_once_and_succeeded(faulty: Faulty, name: str) -> dict[str, object]:
    status = wait_finished(faulty.kube, faulty.namespace, name, timeout=90)
    assert status["phase"] == "Succeeded", (status.get("message"), faulty.sidecar.log_tail())
    assert status["response"] == ANSWER
    assert status["attempts"] == 1, "the engine ran the job more than once"
    assert condition(status, "Complete")["reason"] == "Completed"
    return status


def test_errors_on_the_result_write_do_not_lose_the_answer(faulty: Faulty) -> None:
    name = f"j-{uuid.uuid4().hex[:8]}"
    final = [
        faulty.proxy.add(Fault("PATCH", JOB_STATUS, 500, body="completionTime", times=2)),
        faulty.proxy.add(
            Fault("PATCH", JOB_STATUS, 429, body="completionTime", times=1, retry_after=1)
        ),
    ]
    create_job(faulty.kube, faulty.namespace, name, "m")
    _ran_once_and_succeeded(faulty, name)
    assert [fault.hits for fault in final] == [2, 1]


def test_a_claim_applied_without_its_answer_runs_the_job_once(faulty: Faulty) -> None:
    name = f"j-{uuid.uuid4().hex[:8]}"
    lost = faulty.proxy.add(Fault("PATCH", JOB_STATUS, 0, body="acquireTime", forward=True))
    create_job(faulty.kube, faulty.namespace, name, "m")
    status = _ran_once_and_succeeded(faulty, name)
    assert lost.hits == 1
    assert condition(status, "Scheduled").get("reason") != "WorkerLost"


def test_renewals_refused_for_a_while_keep_the_lease(faulty: Faulty) -> None:
    # Leases last 6 s and renew every second: three refusals in a row leave 3 s to spare.
    faulty.engine.token_delay = 0.25  # ~7 s of generation
    name = f"j-{uuid.uuid4().hex[:8]}"
    refused = faulty.proxy.add(Fault("PATCH", JOB_STATUS, 503, body="renewTime", times=3))
    create_job(faulty.kube, faulty.namespace, name, "m")
    _ran_once_and_succeeded(faulty, name)
    assert refused.hits == 3


def test_every_write_refused_once_still_gives_one_result(faulty: Faulty) -> None:
    # The claim, renewals, result and Event each meet a 500 or a 429 once, in turn.
    faulty.proxy.add(Fault("PATCH", JOB_STATUS, 500, times=3))
    faulty.proxy.add(Fault("POST", r"/events$", 429, times=1, retry_after=1))
    faulty.proxy.add(Fault("GET", r"/inferencejobs", 503, times=2))
    names = [f"j-{uuid.uuid4().hex[:8]}" for _ in range(4)]
    for name in names:
        create_job(faulty.kube, faulty.namespace, name, "m")
    for name in names:
        _ran_once_and_succeeded(faulty, name)
    assert faulty.proxy.injected >= 4


def test_a_watch_gone_silent_is_noticed_and_restarted(faulty: Faulty) -> None:
    # Every watch delivers nothing from now on, without an error: a half-open connection.
    faulty.proxy.freeze_watches()
    name = f"j-{uuid.uuid4().hex[:8]}"
    create_job(faulty.kube, faulty.namespace, name, "m")
    # The sidecar lists every 2 s (GPTOSS_RESYNC_SECONDS): it finds the job anyway.
    _ran_once_and_succeeded(faulty, name)
    assert f"the watch of {faulty.namespace} missed 1 Pending job" in faulty.sidecar.log_tail(200)
    # The liveness endpoint answers (the loop turns) and reports what happened.
    with urllib.request.urlopen(f"{faulty.health_url}/healthz", timeout=5) as response:
        report = json.loads(response.read())
    assert report["watchRestarts"] >= 1
    assert report["engineReady"] is True
    assert report["secondsSinceLastList"] < 10


def test_a_claim_in_flight_at_shutdown_is_handed_back_at_once(
    kube: Client,
    cluster: ClusterUnderTest,
    operator: OperatorProcess,
    tmp_path: Path,
) -> None:
    del operator
    namespace = ready_model_namespace(kube, "t-cs")
    with StandinEngine(model="m") as engine, FaultProxy(cluster.kubeconfig) as proxy:
        # The claim reaches the apiserver; its answer takes 3 s to come back.
        late = proxy.add(
            Fault("PATCH", JOB_STATUS, None, body="acquireTime", forward=True, delay=3)
        )
        kubeconfig = proxy.kubeconfig(tmp_path / "through-proxy.kubeconfig")
        sidecar = SidecarProcess(
            kubeconfig, namespace, "m", "leaving", engine.url, tmp_path, GPTOSS_LEASE_SECONDS="60"
        ).start()
        try:
            create_job(kube, namespace, "caught", "m")
            wait_for(lambda: late.hits == 1, timeout=30, message="the claim in flight")
            stopped_at = time.monotonic()
            sidecar.stop()  # SIGTERM while the claim is answered
        finally:
            sidecar.stop(kill=True)
    status = wait_for(
        lambda: (s := job_status(kube, namespace, "caught")).get("phase") == "Pending" and s,
        timeout=20,
        message="the claimed job handed back",
    )
    assert time.monotonic() - stopped_at < 20, "handed back long before the 60 s lease"
    assert condition(status, "Scheduled")["reason"] == "WorkerShutdown"
    assert status["attempts"] == 1
    assert status["voidedAttempts"] == 1
    kube.delete(Namespace, namespace)
