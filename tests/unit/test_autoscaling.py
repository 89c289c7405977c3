"""The autoscaler's decision: bursts, lulls, slow starts, idling to zero and waking."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from pydantic import ValidationError

from gptoss_operator.api.model import Autoscaling, GptOssModelSpec
from gptoss_operator.controllers.autoscale.decision import (
    SCALED_DOWN,
    SCALED_TO_ZERO,
    SCALED_UP,
    WOKEN,
    Load,
    Sample,
    decide,
    initial_replicas,
    record,
    wanted,
)

POLICY = Autoscaling(
    minReplicas=0,
    maxReplicas=4,
    targetInFlightPerReplica=10,
    scaleUpStabilizationSeconds=0,
    scaleDownStabilizationSeconds=60,
    scaleToZeroAfterSeconds=300,
)


class Simulation:
    """Feeds a load per second through record() and decide() and applies each decision,
    as the operator's loop does."""

    def __init__(self, policy: Autoscaling = POLICY, replicas: int = 1) -> None:
        self.policy = policy
        self.replicas = replicas
        self.history: list[Sample] = []
        self.now = 0.0
        self.decisions: list[tuple[float, int, str]] = []

    def run(self, seconds: int, load: Load) -> int:
        for _ in range(seconds):
            record(self.history, Sample(self.now, load), keep_seconds=400)
            decision = decide(self.policy, 10, self.history, self.replicas, self.now, since=0.0)
            if decision is not None:
                self.replicas = decision.replicas
                self.decisions.append((self.now, decision.replicas, decision.reason))
            self.now += 1
        return self.replicas


def test_wanted_is_work_over_target_within_bounds() -> None:
    assert wanted(POLICY, 10, Load(pending=0)) == 1  # never zero: that takes the idle time
    assert wanted(POLICY, 10, Load(pending=10)) == 1
    assert wanted(POLICY, 10, Load(pending=11)) == 2
    assert wanted(POLICY, 10, Load(pending=5, running=20)) == 3
    assert wanted(POLICY, 10, Load(pending=1000)) == 4


def test_engine_load_counts_when_larger_than_running_jobs() -> None:
    """Clients calling the endpoint directly load vLLM without any InferenceJob; the jobs
    a sidecar runs are the same requests vLLM reports, so the two are not added."""
    assert Load(pending=2, running=5, engine=30).in_flight == 32
    assert Load(pending=2, running=5, engine=3).in_flight == 7
    assert Load(pending=2, running=5, engine=None).in_flight == 7


def test_a_burst_scales_up_at_once_to_the_maximum() -> None:
    sim = Simulation(replicas=1)
    assert sim.run(1, Load(pending=500)) == 4
    assert sim.decisions == [(0.0, 4, SCALED_UP)]


def test_scale_up_waits_for_its_window_and_ignores_a_shorter_spike() -> None:
    policy = POLICY.model_copy(update={"scaleUpStabilizationSeconds": 10})
    sim = Simulation(policy, replicas=1)
    sim.run(5, Load(pending=40))  # a 5 s spike
    assert sim.run(30, Load(pending=5)) == 1
    assert sim.decisions == []
    sim.run(9, Load(pending=40))
    assert sim.replicas == 1, "not before the load has lasted the window"
    assert sim.run(2, Load(pending=40)) == 4


def test_a_lull_shorter_than_the_down_window_removes_no_pod() -> None:
    """Flapping: load that comes and goes every 30 s keeps its pods (a pod takes minutes
    to load the weights again)."""
    sim = Simulation(replicas=1)
    for _ in range(10):
        sim.run(30, Load(running=35))
        sim.run(30, Load(running=2))
    assert sim.replicas == 4
    assert sim.decisions == [(0.0, 4, SCALED_UP)]


def test_scale_down_follows_the_largest_need_of_the_window() -> None:
    sim = Simulation(replicas=1)
    sim.run(10, Load(running=40))
    sim.run(59, Load(running=15))
    assert sim.replicas == 4
    sim.run(2, Load(running=15))
    assert sim.replicas == 2
    assert sim.decisions[-1][1:] == (2, SCALED_DOWN)


def test_slow_start_asks_for_no_more_pods() -> None:
    """Pods that load for minutes leave the queue where it is; the count wanted depends on
    the work, not on how many pods are ready, so it does not grow meanwhile."""
    sim = Simulation(replicas=1)
    sim.run(600, Load(pending=25, running=0))
    assert sim.replicas == 3
    assert [d[1] for d in sim.decisions] == [3]


def test_idle_model_scales_to_zero_after_the_idle_time_only() -> None:
    sim = Simulation(replicas=2)
    sim.run(5, Load(running=3))
    sim.run(299, Load())
    assert sim.replicas == 1, "scaled down after the window, but not yet idle long enough"
    sim.run(2, Load())
    assert sim.replicas == 0
    assert sim.decisions[-1][1:] == (0, SCALED_TO_ZERO)
    assert sim.run(600, Load()) == 0


def test_any_work_resets_the_idle_time() -> None:
    sim = Simulation(replicas=1)
    for _ in range(5):
        sim.run(200, Load())
        sim.run(1, Load(pending=1))
    assert sim.replicas == 1


def test_one_job_wakes_a_model_at_zero() -> None:
    sim = Simulation(replicas=0)
    assert sim.run(10, Load()) == 0
    assert sim.run(1, Load(pending=1)) == 1
    assert sim.decisions == [(10.0, 1, WOKEN)]


def test_a_batch_wakes_a_model_and_keeps_it_up_while_it_runs() -> None:
    """A batch's shards keep requests at the engine: that is work like queued jobs, and
    the engine's own count of the same requests is not added to it."""
    assert Load(batch=64, engine=60).in_flight == 64
    assert Load(pending=1, running=2, batch=64, engine=100).in_flight == 101
    sim = Simulation(replicas=0)
    assert sim.run(1, Load(batch=25)) == 3
    assert sim.decisions[-1][2] == WOKEN
    assert sim.run(2000, Load(batch=5, engine=5)) == 1  # down to what it needs, never zero
    assert sim.run(901, Load()) == 0


def test_a_burst_at_zero_wakes_as_many_pods_as_it_needs() -> None:
    sim = Simulation(replicas=0)
    assert sim.run(1, Load(pending=25)) == 3


def test_min_and_max_replicas_are_held() -> None:
    policy = POLICY.model_copy(update={"minReplicas": 2, "maxReplicas": 3})
    assert Simulation(policy, replicas=0).run(1, Load()) == 2
    assert Simulation(policy, replicas=1).run(1, Load()) == 2
    assert Simulation(policy, replicas=6).run(1, Load()) == 3  # maxReplicas was lowered
    sim = Simulation(policy, replicas=2)
    assert sim.run(1000, Load()) == 2, "never below minReplicas, never to zero"


def test_a_fresh_history_allows_no_scale_down() -> None:
    """After an operator restart nothing is known of the load before: the windows count
    from then."""
    history = [Sample(100.0, Load())]
    assert decide(POLICY, 10, history, 3, now=100.0, since=100.0) is None
    assert decide(POLICY, 10, history, 3, now=159.0, since=100.0) is None
    decision = decide(POLICY, 10, history, 3, now=160.0, since=100.0)
    assert decision is not None
    assert decision.replicas == 1
    assert decide(POLICY, 10, history, 1, now=399.0, since=100.0) is None
    decision = decide(POLICY, 10, history, 1, now=400.0, since=100.0)
    assert decision is not None
    assert decision.reason == SCALED_TO_ZERO


def test_history_keeps_changes_only_and_what_the_windows_reach() -> None:
    history: list[Sample] = []
    for second in range(1000):
        record(history, Sample(float(second), Load(pending=second // 100)), keep_seconds=250)
    assert [sample.load.pending for sample in history] == [7, 8, 9]
    assert history[0].at == 700.0


def test_first_deployment_starts_at_min_or_at_what_waits() -> None:
    assert initial_replicas(POLICY, 10, Load()) == 0
    assert initial_replicas(POLICY, 10, Load(pending=12)) == 2


def test_decisions_explain_themselves() -> None:
    history = [Sample(0.0, Load(pending=31, running=4))]
    decision = decide(POLICY, 10, history, 1, now=0.0, since=0.0)
    assert decision is not None
    assert decision.message == "1 → 4 replicas: 35 in flight (31 queued, 4 running), target 10 each"


def test_target_defaults_to_the_sidecar_concurrency() -> None:
    spec = GptOssModelSpec.model_validate(
        {"serving": {"autoscaling": {"maxReplicas": 2}}, "sidecar": {"concurrency": 16}}
    )
    assert spec.serving.autoscaling is not None
    assert spec.serving.autoscaling.target(spec.sidecar.concurrency) == 16
    assert spec.serving.autoscaling.minReplicas == 1


def test_min_above_max_is_refused() -> None:
    with pytest.raises(ValidationError, match="minReplicas must not exceed maxReplicas"):
        GptOssModelSpec.model_validate(
            {"serving": {"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}}
        )


def test_a_tenant_at_its_limit_adds_no_demand_the_others_do() -> None:
    """The load sums every tenant's jobs, except the queued jobs of a tenant at one of its
    limits: more replicas would not run them."""
    from dataclasses import replace

    from gptoss_operator.api.model import Access
    from gptoss_operator.controllers.autoscale.scaler import Autoscaler
    from gptoss_operator.controllers.facts import JobFacts, ModelFacts

    def job(namespace: str, index: int, phase: str = "Pending") -> JobFacts:
        body = {
            "metadata": {"namespace": namespace, "name": f"j{index}"},
            "spec": {"modelRef": {"name": "m", "namespace": "p"}},
            "status": {"phase": phase},
        }
        return JobFacts.from_body(body)

    capped = [job("team-a", 0, "Running"), *(job("team-a", i) for i in range(1, 6))]
    free = [job("team-b", 0, "Running"), *(job("team-b", i) for i in range(1, 4))]
    policy = Access.model_validate(
        {"tenants": [{"name": "a", "namespaces": ["team-a"], "maxJobsInFlight": 1}]}
    )
    models = {("p", "m"): [replace(ModelFacts("Ready", 1), policy=policy)]}

    async def emit(*_: object) -> None:
        return None

    scaler = Autoscaler({("p", "m"): capped + free}, models, 1.0, emit)
    assert scaler.load("p", "m") == Load(pending=3, running=2, engine=None, batch=0)
    models[("p", "m")] = [ModelFacts("Ready", 1)]  # no limits: everyone's queue counts
    assert scaler.load("p", "m") == Load(pending=8, running=2, engine=None, batch=0)


def test_batches_seen_after_the_start_count_as_load() -> None:
    """The operator hands the autoscaler its index of batches while that is still empty
    (no batch yet): the batches that come later count all the same, including one of
    another namespace (the index is keyed by the model)."""
    from gptoss_operator.controllers.autoscale.scaler import Autoscaler
    from gptoss_operator.controllers.facts import BatchFacts, ModelFacts

    async def emit(*_: object) -> None:
        return None

    batches: dict[tuple[str, str], list[BatchFacts]] = {}
    models = {("p", "m"): [ModelFacts("Ready", 1)]}
    scaler = Autoscaler({}, models, 1.0, emit, batches=batches)
    assert scaler.load("p", "m").batch == 0
    batches[("p", "m")] = [BatchFacts("team-a", "eval", 48, -10, None)]
    assert scaler.load("p", "m") == Load(pending=0, running=0, engine=None, batch=48)


def test_a_finished_batch_leaves_the_index_of_open_batches() -> None:
    """kopf keeps an object's earlier index entries when the index function returns None
    (only an empty mapping replaces them): a finished batch must be mapped to nothing,
    or its last demand and gateway key stay in the index (the autoscaler would keep its
    model up, the model's status would list it, and its key would still open the
    gateway)."""
    from gptoss_operator.controllers.batch.handlers import open_batches

    body: dict[str, Any] = {
        "metadata": {"namespace": "team-a", "name": "eval", "uid": "u"},
        "spec": {"modelRef": {"name": "m", "namespace": "p"}, "shards": 2, "priority": -10},
        "status": {"phase": "Running", "gatewayKey": {"secret": "s", "sha256": "a" * 64}},
    }

    def index(status: dict[str, Any]) -> object:
        body["status"] = status
        return asyncio.run(
            open_batches(namespace="team-a", body=kopf.Body(body), spec=body["spec"], status=status)
        )

    running = index(body["status"])
    assert isinstance(running, dict)
    assert list(running) == [("p", "m")]
    assert running[("p", "m")].key_sha256 == "a" * 64
    assert index({**body["status"], "phase": "Succeeded"}) == {}
    assert index({**body["status"], "phase": "Failed"}) == {}
