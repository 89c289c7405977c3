"""Fair share and limits among a model's tenants, as one sidecar's claim order applies
them: a simulated engine runs the jobs the sidecar picks, each for as long as its tokens
take, and every job event goes through the sidecar's watch handler as the apiserver would
send it."""

from __future__ import annotations

import datetime
import heapq
from typing import Any

import pydantic
import pytest

from gptoss_operator.api.model import Access
from gptoss_operator.controllers.facts import JobFacts, ModelFacts
from gptoss_operator.controllers.quota import plan_quota
from gptoss_operator.core.fair_share import (
    HALF_LIFE_SECONDS,
    ShareLedger,
    TenantLimits,
    fair_order,
    over_limit,
)
from gptoss_operator.workers.sidecar.worker import Sidecar, SidecarConfig

EPOCH = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)


def _stamp(seconds: float) -> str:
    return (EPOCH + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _job(namespace: str, index: int, max_tokens: int, created: float = 0.0) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"j{index:05d}",
            "namespace": namespace,
            "creationTimestamp": _stamp(created),
        },
        "spec": {"modelRef": {"name": "m", "namespace": "models"}, "maxTokens": max_tokens},
        "status": {"phase": "Pending"},
    }


class Simulation:
    """One sidecar with ``slots`` slots over an engine that makes ``rate`` tokens a
    second per job, and the operator's pass that reserves the slots of tenants with a
    maxJobsInFlight before each pick."""

    def __init__(self, access: dict[str, Any], slots: int = 4, rate: float = 100.0) -> None:
        self.now = 0.0
        config = SidecarConfig(model="m", namespace="models", worker="pod-a")
        self.sidecar = Sidecar(
            config,
            None,  # type: ignore[arg-type]
            clock=lambda: self.now,
            wall=lambda: EPOCH.timestamp() + self.now,
        )
        self.access = Access.model_validate(access)
        self.sidecar.set_access(self.access)
        self.slots, self.rate = slots, rate
        self.running: list[tuple[float, str, dict[str, Any]]] = []  # (ends at, key, job)
        self.done: list[tuple[float, str, int]] = []  # (at, namespace, tokens)
        self.most_in_flight: dict[str, int] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.count = 0

    def submit(self, namespace: str, jobs: int, tokens: int) -> list[str]:
        names = []
        for _ in range(jobs):
            self.count += 1
            job = _job(namespace, self.count, tokens, self.now)
            self.sidecar._observe("ADDED", job)
            self.jobs[f"{namespace}/{job['metadata']['name']}"] = job
            names.append(job["metadata"]["name"])
        return names

    def operator_pass(self) -> None:
        """The operator's reservations (controllers.quota), sent as the watch would."""
        facts = [JobFacts.from_body(job) for job in self.jobs.values()]
        model = ModelFacts("Ready", 1, policy=self.access)
        wall = EPOCH + datetime.timedelta(seconds=self.now)
        for namespace, name in plan_quota(facts, lambda key: model, wall).reserve:
            key = f"{namespace}/{name}"
            scheduled = {"type": "Scheduled", "status": "True", "reason": "QuotaReserved"}
            self.jobs[key] = {
                **self.jobs[key],
                "status": {"phase": "Pending", "conditions": [scheduled]},
            }
            self.sidecar._observe("MODIFIED", self.jobs[key])

    def fill(self) -> None:
        while len(self.running) < self.slots:
            self.operator_pass()
            picked = self.sidecar._next_pending()
            if picked is None:
                return
            namespace = picked["metadata"]["namespace"]
            key = f"{namespace}/{picked['metadata']['name']}"
            job = self.jobs[key]
            tokens = int(job["spec"]["maxTokens"])
            running = {**job, "status": {"phase": "Running", "worker": "pod-a"}}
            self.jobs[key] = running
            self.sidecar._observe("MODIFIED", running)
            heapq.heappush(self.running, (self.now + tokens / self.rate, key, running))
            tenant = self.sidecar.tenant_of(namespace)
            in_flight = sum(
                1
                for _, _, j in self.running
                if self.sidecar.tenant_of(j["metadata"]["namespace"]) == tenant
            )
            self.most_in_flight[tenant] = max(self.most_in_flight.get(tenant, 0), in_flight)

    def run_until(self, end: float) -> None:
        """Run the jobs, filling each slot that frees, and the sidecar's dispatch loop
        waking when a tenant's minute frees (Sidecar._rate_at)."""
        self.fill()
        while True:
            ends = self.running[0][0] if self.running else None
            rate_at = self.sidecar._rate_at
            if rate_at is not None and rate_at <= end and (ends is None or rate_at < ends):
                self.now = rate_at
                self.fill()
                continue
            if ends is None or ends > end:
                break
            self.now, _, job = heapq.heappop(self.running)
            tokens = int(job["spec"]["maxTokens"])
            finished = {
                **job,
                "status": {
                    "phase": "Succeeded",
                    "completionTime": _stamp(self.now),
                    "usage": {"totalTokens": tokens},
                },
            }
            self.jobs[f"{job['metadata']['namespace']}/{job['metadata']['name']}"] = finished
            self.sidecar._observe("MODIFIED", finished)
            self.done.append((self.now, job["metadata"]["namespace"], tokens))
            self.fill()
        self.now = end

    def tokens(self, namespace: str, start: float, end: float) -> int:
        return sum(t for at, ns, t in self.done if ns == namespace and start <= at < end)


def test_two_flooding_tenants_share_the_tokens_by_weight_whatever_their_jobs_sizes() -> None:
    """Weights 1 and 3; the lighter tenant's jobs are four times the size of the other's:
    over a minute of contention each tenant's share of the tokens is within 10% of its
    weight's share."""
    sim = Simulation(
        {
            "tenants": [
                {"name": "light", "namespaces": ["team-a"], "weight": 1},
                {"name": "heavy", "namespaces": ["team-b"], "weight": 3},
            ]
        }
    )
    sim.submit("team-a", 2000, tokens=400)
    sim.submit("team-b", 2000, tokens=100)
    sim.run_until(120.0)
    a, b = sim.tokens("team-a", 60, 120), sim.tokens("team-b", 60, 120)
    share_a = a / (a + b)
    assert abs(share_a - 0.25) <= 0.025, (a, b)
    assert abs((1 - share_a) - 0.75) <= 0.075, (a, b)


def test_without_tenants_namespaces_share_alike_and_the_oldest_job_does_not_decide() -> None:
    """10,000 queued jobs of one team, created first, do not starve another's ten."""
    sim = Simulation({})
    sim.submit("flood", 10000, tokens=100)
    sim.now = 1.0
    few = sim.submit("few", 10, tokens=100)
    sim.run_until(30.0)
    finished = {ns for _, ns, _ in sim.done}
    assert finished == {"flood", "few"}
    few_done = [at for at, ns, _ in sim.done if ns == "few"]
    assert len(few_done) == len(few)
    # Alike: the ten are through within the time twenty jobs take on four slots, plus one.
    assert max(few_done) <= 1.0 + 20 / 4 * 1.0 + 1.0, few_done


def test_a_third_tenants_single_job_waits_no_longer_than_one_fair_turn() -> None:
    sim = Simulation(
        {
            "tenants": [
                {"name": "light", "namespaces": ["team-a"], "weight": 1},
                {"name": "heavy", "namespaces": ["team-b"], "weight": 3},
            ]
        }
    )
    sim.submit("team-a", 500, tokens=400)
    sim.submit("team-b", 500, tokens=100)
    sim.run_until(60.0)
    sim.submit("team-c", 1, tokens=100)
    started = sim.now
    sim.run_until(120.0)
    (done,) = [at for at, ns, _ in sim.done if ns == "team-c"]
    # It takes the first slot that frees (a 400-token job frees one within 4 s) and runs
    # 1 s.
    assert done - started <= 400 / 100 + 100 / 100, done - started


def test_a_tenant_at_its_jobs_in_flight_waits_and_the_others_take_the_slots() -> None:
    sim = Simulation(
        {"tenants": [{"name": "capped", "namespaces": ["team-a"], "maxJobsInFlight": 2}]},
        slots=8,
    )
    sim.submit("team-a", 50, tokens=100)
    sim.run_until(0.0)
    assert len(sim.running) == 2
    assert "maxJobsInFlight 2" in sim.sidecar.over_limit["capped"]
    sim.submit("team-b", 50, tokens=100)
    sim.run_until(60.0)
    assert sim.most_in_flight["capped"] == 2
    assert sim.most_in_flight["team-b"] == 6
    assert len([1 for _, ns, _ in sim.done if ns == "team-a"]) == 50


def test_a_tenant_over_its_tokens_per_minute_starts_nothing_until_the_minute_frees() -> None:
    sim = Simulation(
        {"tenants": [{"name": "metered", "namespaces": ["team-a"], "tokensPerMinute": 1000}]},
    )
    sim.submit("team-a", 100, tokens=100)
    sim.run_until(59.0)
    # Four at a time: after ten it is at 1,000 tokens and starts nothing more, but the
    # two in flight as it got there still finish.
    first_minute = sim.tokens("team-a", 0, 59)
    assert 1000 <= first_minute <= 1000 + 3 * 100, first_minute
    assert "tokensPerMinute 1000" in sim.sidecar.over_limit["metered"]
    assert sim.sidecar._rate_at is not None
    sim.run_until(125.0)
    assert sim.tokens("team-a", 59, 125) >= 1000


def test_use_decays_so_a_tenant_is_not_owed_for_long_ago() -> None:
    ledger = ShareLedger()
    ledger.finished("a/1", "a", 10000, at=0.0, now=0.0)
    assert ledger.usage("a", now=HALF_LIFE_SECONDS) == 5000
    ledger.finished("a/1", "a", 10000, at=0.0, now=HALF_LIFE_SECONDS)  # counted once
    assert ledger.usage("a", now=2 * HALF_LIFE_SECONDS) == 2500
    ledger.finished("b/1", "b", 3000, at=2 * HALF_LIFE_SECONDS, now=2 * HALF_LIFE_SECONDS)
    assert fair_order(ledger, ["a", "b"], {}, 2 * HALF_LIFE_SECONDS) == ["a", "b"]
    assert fair_order(ledger, ["a", "b"], {"b": 2}, 2 * HALF_LIFE_SECONDS) == ["b", "a"]


def test_running_jobs_count_toward_their_tenant_until_they_end() -> None:
    ledger = ShareLedger()
    ledger.running("a/1", "a", 300)
    ledger.running("a/1", "a", 999)  # a renewal: the first guess stays
    assert ledger.usage("a", 0) == 300
    assert ledger.in_flight("a") == 1
    assert over_limit(ledger, "a", TenantLimits(max_jobs_in_flight=1), 0) is not None
    assert ledger.stopped("a/1")
    assert not ledger.stopped("a/1")
    assert over_limit(ledger, "a", TenantLimits(max_jobs_in_flight=1), 0) is None


def test_a_namespace_in_two_tenants_is_refused_naming_both() -> None:
    with pytest.raises(pydantic.ValidationError, match="team-a is in tenants x and y"):
        Access.model_validate(
            {
                "tenants": [
                    {"name": "x", "namespaces": ["team-a"]},
                    {"name": "y", "namespaces": ["team-b", "team-a"]},
                ]
            }
        )
    access = Access.model_validate({"tenants": [{"name": "x", "namespaces": ["a", "b"]}]})
    assert access.tenant_of("b").name == "x"
    assert access.tenant_of("c").name == "c"


def test_a_limited_tenants_job_is_claimed_only_once_the_operator_reserved_it_a_slot() -> None:
    """The in-flight limit holds across replicas because no sidecar takes such a job on
    its own count: the operator, one writer, hands out the slots."""
    sim = Simulation(
        {"tenants": [{"name": "capped", "namespaces": ["team-a"], "maxJobsInFlight": 5}]}
    )
    sim.submit("team-a", 3, tokens=100)
    assert sim.sidecar._next_pending() is None, "nothing reserved yet"
    key = "team-a/j00002"
    scheduled = {"type": "Scheduled", "status": "True", "reason": "QuotaReserved"}
    sim.sidecar._observe(
        "MODIFIED", {**sim.jobs[key], "status": {"phase": "Pending", "conditions": [scheduled]}}
    )
    picked = sim.sidecar._next_pending()
    assert picked is not None
    assert picked["metadata"]["name"] == "j00002"
    assert sim.sidecar._next_pending() is None
    assert len(sim.sidecar.pending) == 2, "the others still wait their reservation"
