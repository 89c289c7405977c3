"""An engine that goes away and comes back fails no job.

vLLM restarts (a liveness kill, CUDA out of memory, a node hiccup) take minutes for a big
model; the sidecar must not spend the jobs' backoffLimit on them. Here the engine is the
stand-in (so it can stop mid-generation at a chosen moment), stopped while jobs stream,
kept down far longer than the sidecar's whole retry backoff, then started again on the
same address. The real-vLLM version of this is in the engine tier.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from lightkube import Client

from gptoss_sandbox.cluster import free_port
from gptoss_sandbox.standin_engine import StandinEngine
from tests.cluster.job_helpers import (
    SidecarProcess,
    condition,
    create_job,
    job_status,
    wait_finished,
)
from tests.cluster.model_helpers import create_model, wait_for_phase
from tests.conftest import ClusterUnderTest, OperatorProcess
from tests.support import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.faults]


def test_an_engine_restart_mid_generation_fails_no_job(
    kube: Client,
    cluster: ClusterUnderTest,
    operator: OperatorProcess,
    namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    del operator
    create_model(kube, namespace, "m", source={"repo": "openai/gpt-oss-20b"})
    wait_for_phase(kube, namespace, "m", "Ready")
    port = free_port()
    engine = StandinEngine(model="m", port=port, token_delay=0.5)
    url = engine.start_in_thread()
    logs = tmp_path_factory.mktemp("restart")
    # Retries back off 0.2 + 0.4 + 0.8 s: the whole backoffLimit would be spent in 1.4 s.
    sidecar = SidecarProcess(cluster.kubeconfig, namespace, "m", "sidecar-r", url, logs).start()
    names = [f"j-{uuid.uuid4().hex[:8]}" for _ in range(6)]
    try:
        for name in names:
            create_job(kube, namespace, name, "m")
        wait_for(
            lambda: all(job_status(kube, namespace, n).get("phase") == "Running" for n in names),
            timeout=30,
            message="every job streaming",
        )
        engine.stop_in_thread()

        def handed_back() -> dict[str, Any] | None:
            statuses = {name: job_status(kube, namespace, name) for name in names}
            assert not [n for n, s in statuses.items() if s.get("phase") == "Failed"], statuses
            reasons = {condition(s, "Scheduled").get("reason") for s in statuses.values()}
            return statuses if reasons == {"EngineUnavailable"} else None

        statuses = wait_for(handed_back, timeout=30, message="every job handed back")
        assert {s.get("phase") for s in statuses.values()} == {"Pending"}
        engine = StandinEngine(model="m", port=port, token_delay=0.01)
        engine.start_in_thread()
        for name in names:
            status = wait_finished(kube, namespace, name, timeout=60)
            assert status["phase"] == "Succeeded", (name, status.get("message"), sidecar.log_tail())
            assert status["voidedAttempts"] == 1
            assert status["attempts"] == 2
    finally:
        sidecar.stop()
        engine.stop_in_thread()


def test_a_graceful_engine_shutdown_mid_generation_fails_no_job(
    kube: Client,
    cluster: ClusterUnderTest,
    operator: OperatorProcess,
    namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """vLLM stopped with SIGTERM aborts its in-flight requests: the stream ends normally,
    with finish_reason "abort", not with a broken connection. That is the engine going
    away, not an answer: the job is handed back, not failed as malformed output."""
    del operator
    create_model(kube, namespace, "m", source={"repo": "openai/gpt-oss-20b"})
    wait_for_phase(kube, namespace, "m", "Ready")
    engine = StandinEngine(model="m", port=free_port())
    engine.restart_seconds = 3.0
    engine.fault_after_tokens = 5
    engine.fail_next = ["shutdown"]
    url = engine.start_in_thread()
    logs = tmp_path_factory.mktemp("shutdown")
    sidecar = SidecarProcess(cluster.kubeconfig, namespace, "m", "sidecar-s", url, logs).start()
    name = f"j-{uuid.uuid4().hex[:8]}"
    try:
        create_job(kube, namespace, name, "m")
        status = wait_finished(kube, namespace, name, timeout=60)
        assert status["phase"] == "Succeeded", (status.get("message"), sidecar.log_tail())
        assert status["response"].startswith("Stand-in answer to:")
        assert (status["attempts"], status["voidedAttempts"]) == (2, 1)
        assert engine.requests_served == 2
    finally:
        sidecar.stop()
        engine.stop_in_thread()


def test_an_api_key_the_engine_refuses_fails_no_job(
    kube: Client,
    cluster: ClusterUnderTest,
    operator: OperatorProcess,
    namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A sidecar whose key the engine refuses (the Secret was replaced and only the engine
    restarted) takes no job while refused, and the job runs once the keys agree: the
    platform's mistake is never the job's."""
    del operator
    create_model(kube, namespace, "k", source={"repo": "openai/gpt-oss-20b"})
    wait_for_phase(kube, namespace, "k", "Ready")
    engine = StandinEngine(model="k", token_delay=0.01)
    engine.api_key = "the-engines-key"
    url = engine.start_in_thread()
    logs = tmp_path_factory.mktemp("api-key")
    sidecar = SidecarProcess(
        cluster.kubeconfig,
        namespace,
        "k",
        "sidecar-k",
        url,
        logs,
        GPTOSS_ENGINE_API_KEY="an-old-key",
    ).start()
    name = f"j-{uuid.uuid4().hex[:8]}"
    try:
        create_job(kube, namespace, name, "k")
        # The sidecar has tried the engine and said why it takes no job.
        wait_for(
            lambda: "refuses this sidecar's API key" in sidecar.log_tail(),
            timeout=30,
            message="the refused key logged",
        )
        # Unclaimed: a job waiting for a worker of a serving model has no status written.
        status = job_status(kube, namespace, name)
        assert "phase" not in status, status
        assert "worker" not in status, status
        assert engine.requests_served == 0, "no job reached the engine with a refused key"
        assert "refuses this sidecar's API key" in sidecar.log_tail()
        engine.api_key = "an-old-key"  # the keys agree again
        status = wait_finished(kube, namespace, name, timeout=60)
        assert status["phase"] == "Succeeded", (status.get("message"), sidecar.log_tail())
        assert status["attempts"] == 1
    finally:
        sidecar.stop()
        engine.stop_in_thread()
