"""The operator's decisions about InferenceJobs (pure)."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from gptoss_operator.api.model import Access
from gptoss_operator.controllers.facts import (
    BatchFacts,
    JobFacts,
    ModelFacts,
    queue_counts,
    tenant_counts,
)
from gptoss_operator.controllers.job.janitor import JobJanitor, LeaseClock, decide, status_patch
from gptoss_operator.controllers.quota import plan_quota

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)


def _ago(seconds: float) -> str:
    return (NOW - datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _facts(status: dict[str, Any] | None = None, **spec: Any) -> JobFacts:
    return JobFacts.from_body(
        {
            "metadata": {
                "name": "j",
                "namespace": "ns",
                "resourceVersion": "7",
                "generation": 1,
                "creationTimestamp": _ago(100),
            },
            "spec": {"modelRef": {"name": "m"}, "messages": [], "backoffLimit": 2, **spec},
            "status": status or {},
        }
    )


def test_pending_job_says_why_it_waits() -> None:
    missing = decide(_facts(), None, NOW)
    assert missing is not None
    assert missing.reason == "ModelNotFound"
    assert missing.status is not None
    assert missing.status["phase"] == "Pending"
    waiting = decide(_facts(), "Downloading", NOW)
    assert waiting is not None
    assert waiting.reason == "WaitingForModel"
    # Waiting for a worker of a serving model tells nothing new: no write (#23, defect
    # 10); a job that said its model was not ready says it is queued once it is.
    assert decide(_facts(), "Ready", NOW) is None
    was_waiting = _facts(
        {
            "phase": "Pending",
            "conditions": [{"type": "Scheduled", "status": "True", "reason": "WaitingForModel"}],
        }
    )
    queued = decide(was_waiting, "Ready", NOW)
    assert queued is not None
    assert queued.reason == "Queued"
    already = _facts(
        {
            "phase": "Pending",
            "conditions": [{"type": "Scheduled", "status": "True", "reason": "Queued"}],
        }
    )
    assert decide(already, "Ready", NOW) is None


def test_deadline_fails_a_queued_job() -> None:
    action = decide(_facts(activeDeadlineSeconds=60), None, NOW)
    assert action is not None
    assert action.reason == "DeadlineExceeded"
    assert action.status is not None
    assert action.status["phase"] == "Failed"
    assert decide(_facts(activeDeadlineSeconds=600), "Ready", NOW) is None


def _running(renewed: float, attempts: int) -> dict[str, Any]:
    return {
        "phase": "Running",
        "worker": "pod-a",
        "attempts": attempts,
        "lease": {"holder": "pod-a", "renewTime": _ago(renewed), "durationSeconds": 30},
    }


def test_lost_worker_requeues_then_fails() -> None:
    assert decide(_facts(_running(5, 1)), "Ready", NOW, lease_age=5) is None
    assert decide(_facts(_running(60, 1)), "Ready", NOW, lease_age=None) is None
    requeued = decide(_facts(_running(60, 1)), "Ready", NOW, lease_age=31)
    assert requeued is not None
    assert requeued.reason == "WorkerLost"
    assert requeued.status is not None
    assert requeued.status["phase"] == "Pending"
    assert requeued.remove == ("lease",)
    exhausted = decide(_facts(_running(60, 3)), "Ready", NOW, lease_age=31)
    assert exhausted is not None
    assert exhausted.reason == "BackoffLimitExceeded"


def test_ttl_deletes_finished_jobs() -> None:
    done = {"phase": "Succeeded", "completionTime": _ago(30)}
    assert decide(_facts(done, ttlSecondsAfterFinished=60), "Ready", NOW) is None
    action = decide(_facts(done, ttlSecondsAfterFinished=10), "Ready", NOW)
    assert action is not None
    assert action.kind == "delete"
    assert decide(_facts(done), "Ready", NOW) is None


def test_patch_is_guarded_by_resource_version() -> None:
    facts = _facts(_running(60, 1))
    action = decide(facts, "Ready", NOW, lease_age=60)
    assert action is not None
    ops = status_patch(facts, action)
    assert ops[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "7"}
    assert {"op": "remove", "path": "/status/lease"} in ops


def test_queue_counts() -> None:
    jobs = [_facts(), _facts(_running(1, 1)), _facts({"phase": "Succeeded"})]
    assert queue_counts(jobs) == {("ns", "m"): {"pending": 1, "running": 1}}


def test_requeue_reasons_are_kept_while_the_job_waits() -> None:
    for reason in ("WorkerLost", "WorkerShutdown"):
        requeued = _facts(
            {
                "phase": "Pending",
                "conditions": [{"type": "Scheduled", "status": "False", "reason": reason}],
            }
        )
        assert decide(requeued, "Ready", NOW) is None
        waiting = decide(requeued, "Starting", NOW)
        assert waiting is not None
        assert waiting.reason == "WaitingForModel"


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_lease_ages_by_the_judges_clock_not_the_renewers() -> None:
    clock = _Clock()
    leases = LeaseClock(clock)
    # A sidecar whose clock is an hour behind: its renewals look an hour old.
    behind = _facts(_running(3600, 1))
    assert leases.age(behind) == 0.0
    clock.now += 20
    assert leases.age(behind) == 20.0
    renewed = _facts({**_running(3595, 1)})
    assert leases.age(renewed) == 0.0, "a changed renewTime is a renewal, whatever it says"
    # A sidecar whose clock is an hour ahead, then dies: its lease stops changing.
    ahead = _facts(_running(-3600, 1))
    leases.age(ahead)
    clock.now += 31
    assert leases.age(ahead) == 31.0
    action = decide(ahead, "Ready", NOW, leases.age(ahead))
    assert action is not None
    assert action.reason == "WorkerLost"


def test_a_new_attempt_restarts_the_lease_age() -> None:
    clock = _Clock()
    leases = LeaseClock(clock)
    first = _facts(_running(0, 1))
    leases.age(first)
    clock.now += 25
    second = _facts(_running(0, 2))  # same renewTime string, next attempt
    assert leases.age(second) == 0.0
    leases.keep_only([])
    assert leases.age(second) == 0.0, "forgotten jobs start over"


def test_a_model_with_a_ready_replica_takes_jobs() -> None:
    assert ModelFacts.from_status({"phase": "Starting", "readyReplicas": 1}).queue_phase == "Ready"
    assert ModelFacts.from_status({"phase": "Starting", "readyReplicas": 0}).queue_phase == (
        "Starting"
    )
    assert ModelFacts.from_status({"phase": "Failed", "readyReplicas": 2}).queue_phase == "Failed"
    assert ModelFacts.from_status({}).queue_phase == "Pending"


def _model(phase: str, serving_reason: str | None = None, autoscaled: bool = True) -> ModelFacts:
    spec: dict[str, Any] = {"serving": {"autoscaling": {"minReplicas": 0, "maxReplicas": 2}}}
    conditions = [{"type": "Serving", "status": "False", "reason": serving_reason or phase}]
    return ModelFacts.from_body(
        {
            "metadata": {"uid": "u1"},
            "spec": spec if autoscaled else {},
            "status": {"phase": phase, "readyReplicas": 0, "replicas": 0, "conditions": conditions},
        }
    )


def test_a_job_for_a_model_at_zero_says_it_is_waking() -> None:
    at_zero = _model("ScaledToZero")
    assert at_zero.autoscaling is not None
    assert at_zero.autoscaling.maxReplicas == 2
    assert at_zero.uid == "u1"
    assert at_zero.queue_phase == "Waking"
    assert _model("Starting", "Waking").queue_phase == "Waking"
    assert _model("Starting", "Starting").queue_phase == "Starting"
    waking = decide(_facts(), at_zero.queue_phase, NOW)
    assert waking is not None
    assert waking.reason == "ModelWaking"
    assert waking.status is not None
    assert waking.status["phase"] == "Pending"
    assert "waking from zero" in waking.status["conditions"][0]["message"]
    # Waking takes as long as vLLM takes to load; the job's own deadline still holds.
    late = decide(_facts(activeDeadlineSeconds=60), at_zero.queue_phase, NOW)
    assert late is not None
    assert late.reason == "DeadlineExceeded"


def test_a_model_scaled_to_zero_by_hand_does_not_wake() -> None:
    """Without a policy nobody wakes it: the job waits and says why."""
    by_hand = _model("ScaledToZero", autoscaled=False)
    assert by_hand.queue_phase == "ScaledToZero"
    waiting = decide(_facts(), by_hand.queue_phase, NOW)
    assert waiting is not None
    assert waiting.reason == "WaitingForModel"


def test_an_unreadable_policy_is_ignored_not_fatal() -> None:
    facts = ModelFacts.from_body({"spec": {"serving": {"autoscaling": {"minReplicas": 1}}}})
    assert facts.autoscaling is None


class _RecordingClient:
    """Stands in for the apiserver client: records the janitor's writes."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, Any]] = []

    async def patch(self, resource: Any, name: str, body: Any, **_: Any) -> None:
        self.patches.append((name, body))


class _CountingJanitor(JobJanitor):
    """A janitor that counts its passes over every job."""

    passes = 0

    async def tick(self) -> None:
        self.passes += 1
        await super().tick()


def _janitor(
    client: _RecordingClient,
    jobs: dict[tuple[str, str], list[JobFacts]],
    clock: _Clock,
    wall_clock: Callable[[], datetime.datetime] = lambda: NOW,
    model_phase: str = "Ready",
) -> _CountingJanitor:
    """A janitor over ``jobs`` for model ns/m, in ``model_phase`` with one replica."""
    models = {("ns", "m"): [ModelFacts(model_phase, 1)]}
    return _CountingJanitor(client, jobs, models, clock=clock, wall_clock=wall_clock)  # type: ignore[arg-type]


def _queued(name: str, **spec: Any) -> JobFacts:
    facts = _facts(
        {
            "phase": "Pending",
            "conditions": [{"type": "Scheduled", "status": "True", "reason": "Queued"}],
        },
        **spec,
    )
    return replace(facts, name=name)


def test_a_waiting_queue_costs_no_passes_until_something_changes() -> None:
    clock = _Clock()
    jobs = {("ns", "m"): [_queued(f"j{i}") for i in range(1000)]}
    janitor = _janitor(_RecordingClient(), jobs, clock)

    async def scenario() -> None:
        await janitor.step()
        assert janitor.passes == 1
        for _ in range(20):
            clock.now += 1
            await janitor.step()
        assert janitor.passes == 1, "nothing changed, nothing falls due"
        janitor.touch()
        await janitor.step()
        assert janitor.passes == 2
        clock.now += janitor.full_pass_seconds
        await janitor.step()
        assert janitor.passes == 3, "a full pass now and then, whatever happens"

    asyncio.run(scenario())


def test_a_deadline_falling_due_brings_a_pass_without_any_event() -> None:
    clock = _Clock()
    client = _RecordingClient()
    # Created 100 s ago with a 101 s deadline: due in about a second.
    jobs = {("ns", "m"): [_queued("late", activeDeadlineSeconds=101)]}
    janitor = _janitor(
        client, jobs, clock, lambda: NOW + datetime.timedelta(seconds=clock.now - 1000.0)
    )

    async def scenario() -> None:
        await janitor.step()
        assert [name for name, _ in client.patches] == ["m"], "the model's queue only"
        clock.now += 0.2
        await janitor.step()
        assert janitor.passes == 1
        clock.now += 0.9
        await janitor.step()
        assert janitor.passes == 2
        assert [name for name, _ in client.patches] == ["m", "late"]

    asyncio.run(scenario())


def test_a_job_waiting_for_a_worker_of_a_serving_model_is_never_written() -> None:
    """#23, defect 10: waiting is free. 10,000 jobs queued for a serving model cost no
    write each (the model's status.queue counts them); problems are said at once."""
    for age in (1, 6, 3600):
        assert decide(replace(_facts(), created=_ago(age)), "Ready", NOW) is None
    missing = decide(replace(_facts(), created=_ago(1)), None, NOW)
    assert missing is not None
    assert missing.reason == "ModelNotFound"


def test_a_pass_over_a_deep_queue_for_a_serving_model_writes_only_the_count() -> None:
    clock = _Clock()
    client = _RecordingClient()
    waiting = [replace(_facts(), name=f"j{i}") for i in range(10_000)]
    janitor = _janitor(client, {("ns", "m"): waiting}, clock)
    asyncio.run(janitor.step())
    assert [name for name, _ in client.patches] == ["m"]
    assert client.patches[0][1] == {
        "status": {
            "queue": {"pending": 10_000, "running": 0},
            "tenants": [{"namespace": "ns", "tenant": "ns", "pending": 10_000, "running": 0}],
            "batches": [],
        }
    }


def test_a_deep_queue_is_counted_before_its_jobs_are_marked() -> None:
    """Thousands of jobs arriving at once for a model that cannot serve them all fall due
    for their mark (why they wait) together. The model's status.queue counts them first:
    it is one write, and waiting behind thousands of marks would leave it wrong for a
    minute. Later counts come out while the marks are still being written."""
    clock = _Clock()
    client = _RecordingClient()
    waiting = [replace(_facts({"phase": "Pending"}), name=f"j{i}") for i in range(400)]
    jobs = {("ns", "m"): waiting}
    janitor = _janitor(client, jobs, clock, model_phase="Downloading")

    async def patch(resource: Any, name: str, body: Any, **_: Any) -> None:
        client.patches.append((name, body))
        if name == "j99":
            jobs[("ns", "m")] = waiting[:-50]  # 50 jobs are deleted meanwhile
        clock.now += 0.01  # a write takes 10 ms

    client.patch = patch  # type: ignore[method-assign]
    asyncio.run(janitor.step())
    names = [name for name, _ in client.patches]
    assert names[0] == "m"
    assert client.patches[0][1]["status"]["queue"] == {"pending": 400, "running": 0}
    recounts = [body["status"]["queue"] for name, body in client.patches[1:] if name == "m"]
    assert {"pending": 350, "running": 0} in recounts
    assert len(recounts) <= 5, "recounted about once a second, not after every mark"
    assert sorted(n for n in names if n != "m") == sorted(f"j{i}" for i in range(400))


def test_a_queued_job_whose_schema_is_not_one_fails_naming_the_field() -> None:
    """#26: the apiserver holds a schema to be an object; whether it is a JSON schema only
    the operator can tell, and it does before the job waits for a model."""
    bad = _facts(
        tools=[
            {"name": "f", "parameters": {"type": "object"}},
            {"name": "g", "parameters": {"type": 7}},
        ]
    )
    action = decide(bad, None, NOW)
    assert action is not None
    assert action.reason == "InvalidSpec"
    assert action.status is not None
    assert action.status["phase"] == "Failed"
    assert action.status["message"].startswith("spec.tools[1].parameters is not a JSON schema")
    schema = _facts(
        responseFormat={
            "type": "json_schema",
            "jsonSchema": {"name": "r", "schema": {"required": "x"}},
        }
    )
    refused = decide(schema, "Ready", NOW)
    assert refused is not None
    assert refused.status is not None
    assert "spec.responseFormat.jsonSchema.schema is not a JSON schema" in refused.status["message"]
    good = _facts(tools=[{"name": "f", "parameters": {"type": "object"}}])
    assert decide(good, "Ready", NOW) is None


def _tenant_job(namespace: str, phase: str = "Pending", model_namespace: str = "p") -> JobFacts:
    facts = _facts({"phase": phase}, modelRef={"name": "m", "namespace": model_namespace})
    return replace(facts, namespace=namespace, name=f"j-{namespace}-{phase}")


def test_a_job_names_a_model_of_another_namespace() -> None:
    facts = _tenant_job("team-a")
    assert facts.model_key == ("p", "m")
    assert _facts().model_key == ("ns", "m"), "no namespace: the job's own"
    missing = decide(facts, None, NOW)
    assert missing is not None
    assert missing.status is not None
    assert "does not exist in namespace p" in missing.status["message"]
    assert queue_counts([facts]) == {("p", "m"): {"pending": 1, "running": 0}}


def test_a_job_the_models_access_leaves_out_waits_saying_so() -> None:
    denied = decide(_tenant_job("team-b"), "Ready", NOW, access_denied=True)
    assert denied is not None
    assert denied.reason == "AccessDenied"
    assert denied.status is not None
    assert denied.status["phase"] == "Pending", "it waits: access may be granted later"
    assert denied.status["message"].startswith(
        "spec.modelRef: GptOssModel p/m does not serve namespace team-b"
    )
    assert ModelFacts("Ready", access=("team-a",)).serves("p", "p"), "its own, always"
    assert ModelFacts("Ready", access=("team-a",)).serves("team-a", "p")
    assert not ModelFacts("Ready", access=("team-a",)).serves("team-b", "p")
    assert ModelFacts("Ready").serves("team-b", "p"), "no access list: RBAC alone decides"


class _RecordingTenants:
    """Records, among the client's writes, what the janitor asks to bind and unbind."""

    def __init__(self, client: _RecordingClient) -> None:
        self.client = client

    async def bind(self, wanted: dict[tuple[str, str], set[str]]) -> set[tuple[Any, str]]:
        self.client.patches.append(("<bind>", wanted))
        return set()

    async def unbind(self, wanted: dict[tuple[str, str], set[str]]) -> None:
        self.client.patches.append(("<unbind>", wanted))


def test_a_models_tenants_are_the_namespaces_it_serves_with_unfinished_jobs() -> None:
    jobs = [
        _tenant_job("p"),
        _tenant_job("team-a"),
        _tenant_job("team-a", "Running"),
        _tenant_job("team-b"),  # left out by spec.access
        _tenant_job("team-c", "Succeeded"),  # nothing unfinished
    ]
    assert tenant_counts(jobs)[("p", "m")] == {
        "p": {"pending": 1, "running": 0},
        "team-a": {"pending": 1, "running": 1},
        "team-b": {"pending": 1, "running": 0},
    }
    client = _RecordingClient()
    tenants = _RecordingTenants(client)
    janitor = JobJanitor(
        client,  # type: ignore[arg-type]
        {("p", "m"): jobs},
        {("p", "m"): [ModelFacts("Ready", 1, access=("team-a",))]},
        clock=_Clock(),
        wall_clock=lambda: NOW,
        tenants=tenants,  # type: ignore[arg-type]
    )
    asyncio.run(janitor.step())
    model_patch = next(body for name, body in client.patches if name == "m")
    assert model_patch["status"]["tenants"] == [
        {"namespace": "p", "tenant": "p", "pending": 1, "running": 0},
        {"namespace": "team-a", "tenant": "team-a", "pending": 1, "running": 1},
    ]
    wanted = {("p", "m"): {"p", "team-a"}}
    assert client.patches[:3] == [("<bind>", wanted), ("m", model_patch), ("<unbind>", wanted)]
    assert {str(body) for name, body in client.patches if name.startswith("<")} == {str(wanted)}
    marked = [name for name, _ in client.patches if name not in ("m", "<bind>", "<unbind>")]
    assert marked == ["j-team-b-Pending"], "the namespace left out is told why it waits"


def _finished(namespace: str, index: int, tokens: int, seconds_ago: float) -> JobFacts:
    done = NOW - datetime.timedelta(seconds=seconds_ago)
    facts = replace(_tenant_job(namespace, "Succeeded"), name=f"done-{index}")
    return replace(facts, total_tokens=tokens, completion_time=done.strftime("%Y-%m-%dT%H:%M:%SZ"))


def test_the_jobs_of_a_tenant_at_a_limit_wait_saying_which_and_are_not_rewritten() -> None:
    policy = Access.model_validate(
        {
            "tenants": [
                {"name": "search", "namespaces": ["team-a", "team-a2"], "maxJobsInFlight": 2},
                {"name": "ads", "namespaces": ["team-b"], "tokensPerMinute": 1000},
            ]
        }
    )
    model = ModelFacts("Ready", 1, policy=policy)
    jobs = [
        _tenant_job("team-a", "Running"),
        replace(_tenant_job("team-a2", "Running"), name="other"),
        _tenant_job("team-a"),
        _finished("team-b", 1, 600, seconds_ago=10),
        _finished("team-b", 2, 600, seconds_ago=30),
        _finished("team-b", 3, 5000, seconds_ago=61),  # out of the minute
        _tenant_job("team-b"),
        _tenant_job("team-c"),  # no tenant group: no limit
    ]
    plan = plan_quota(jobs, lambda key: model, NOW)
    assert plan.reserve == set()
    reasons = plan.held
    assert reasons == {
        (("p", "m"), "search"): "tenant search has 2 jobs in flight, its limit (maxJobsInFlight 2)",
        (("p", "m"), "ads"): "tenant ads used 1200 tokens in the last minute, its limit "
        "(tokensPerMinute 1000)",
    }
    held = decide(jobs[2], "Ready", NOW, over_quota=reasons[(("p", "m"), "search")])
    assert held is not None
    assert held.status is not None
    assert held.reason == "QuotaExceeded"
    assert held.status["phase"] == "Pending", "it waits, never fails"
    assert held.status["message"].endswith("(maxJobsInFlight 2); the job waits for its turn")
    # Under the limit again for a moment (a job ended): no write until a worker claims it.
    marked = replace(jobs[2], scheduled_reason="QuotaExceeded")
    assert decide(marked, "Ready", NOW) is None
    later = NOW + datetime.timedelta(seconds=31)
    assert plan_quota(jobs[3:], lambda key: model, later).held == {}


def test_the_operator_reserves_a_limited_tenants_slots_highest_priority_and_oldest_first() -> None:
    """maxJobsInFlight across every sidecar: a job of the tenant is claimable once the
    operator (one writer) reserved it a slot; no more than the limit run or hold one."""
    policy = Access.model_validate(
        {"tenants": [{"name": "search", "namespaces": ["team-a"], "maxJobsInFlight": 3}]}
    )
    model = ModelFacts("Ready", 1, policy=policy)

    def waiting(name: str, created: str, priority: int = 0) -> JobFacts:
        job = replace(_tenant_job("team-a"), name=name, created=created, priority=priority)
        return job

    jobs = [
        replace(_tenant_job("team-a", "Running"), name="running"),
        waiting("old", "2026-01-01T10:00:00Z"),
        waiting("new", "2026-01-01T11:00:00Z"),
        waiting("urgent", "2026-01-01T11:30:00Z", priority=5),
        waiting("newest", "2026-01-01T11:45:00Z"),
    ]
    plan = plan_quota(jobs, lambda key: model, NOW)
    assert plan.reserve == {("team-a", "urgent"), ("team-a", "old")}
    assert plan.waits(jobs[2], model) == (
        "tenant search has 3 jobs in flight, its limit (maxJobsInFlight 3)"
    )
    reserved = decide(jobs[3], "Ready", NOW, reserve=True)
    assert reserved is not None
    assert reserved.status is not None
    assert reserved.reason == "QuotaReserved"
    (scheduled,) = [c for c in reserved.status["conditions"] if c["type"] == "Scheduled"]
    assert scheduled["status"] == "True", "nothing holds it back"
    # Once written (or while the write is not in the index yet) a reservation holds its
    # slot: the next pass reserves nothing more.
    shown = [*jobs[:3], replace(jobs[3], scheduled_reason="QuotaReserved"), jobs[4]]
    again = plan_quota(shown, lambda key: model, NOW, reserving={("team-a", "old")})
    assert again.reserve == set()
    held = replace(jobs[1], scheduled_reason="QuotaReserved")
    assert decide(held, "Ready", NOW, over_quota="full") is None, "its slot stays its own"


def test_each_job_that_finishes_is_counted_once_by_tenant_and_model() -> None:
    from gptoss_operator.controllers.usage import UsageMeter
    from gptoss_operator.core import metrics

    def done(name: str, seconds_ago: float, phase: str = "Succeeded") -> JobFacts:
        at = (NOW - datetime.timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
        return replace(
            _tenant_job("team-a", phase),
            name=name,
            completion_time=at,
            prompt_tokens=10,
            completion_tokens=30,
            total_tokens=40,
        )

    meter = UsageMeter(NOW - datetime.timedelta(seconds=60))
    jobs = [done("before-start", 120), done("a", 30), done("b", 10, "Failed"), _tenant_job("x")]
    labels = {"namespace": "p", "model": "m", "tenant": "search", "job_namespace": "team-a"}

    def counter(name: str, **more: str) -> int:
        return metrics.COUNTERS[(name, tuple(sorted({**labels, **more}.items())))]

    tokens = counter("tenant_tokens", kind="completion", source="job")
    succeeded = counter("tenant_jobs", phase="Succeeded")
    assert meter.observe(jobs, lambda job: "search") == 2
    assert meter.observe(jobs, lambda job: "search") == 0, "each once"
    assert counter("tenant_tokens", kind="completion", source="job") - tokens == 60
    assert counter("tenant_jobs", phase="Succeeded") - succeeded == 1
    text = metrics.render({}, {})
    assert (
        'gptoss_tenant_tokens_total{job_namespace="team-a",kind="prompt",model="m",'
        'namespace="p",source="job",tenant="search"}' in text
    )
    # A job deleted and created again under its name, finishing later, is a new one.
    assert meter.observe([], lambda job: "search") == 0
    assert meter.observe([done("a", 5)], lambda job: "search") == 1


def test_a_finished_batch_counts_its_tokens_under_its_tenant() -> None:
    from gptoss_operator.controllers.usage import count_batch
    from gptoss_operator.core import metrics

    key = (
        "tenant_tokens",
        tuple(
            sorted(
                {
                    "namespace": "p",
                    "model": "m",
                    "tenant": "search",
                    "job_namespace": "p",
                    "kind": "completion",
                    "source": "batch",
                }.items()
            )
        ),
    )
    before = metrics.COUNTERS[key]
    count_batch(("p", "m"), "search", "p", {"promptTokens": 5, "completionTokens": 1234})
    assert metrics.COUNTERS[key] - before == 1234


class _RecordingBindings:
    """Stands in for the tenants' bindings: records what is wanted at each pass."""

    def __init__(self) -> None:
        self.bound: list[dict[tuple[str, str], set[str]]] = []
        self.kept: list[dict[tuple[str, str], set[str]]] = []

    async def bind(self, wanted: dict[tuple[str, str], set[str]]) -> set[Any]:
        self.bound.append(wanted)
        return set()

    async def unbind(self, wanted: dict[tuple[str, str], set[str]]) -> None:
        self.kept.append(wanted)


def test_the_models_status_lists_its_keyed_batches_and_their_shards_get_identities() -> None:
    """The gateway admits the shards of the batches the model's status lists (by their
    key's hash): a batch is listed once it has a key and leaves with its last entry; the
    shards of a batch in another namespace get an identity there while it is unfinished."""
    client = _RecordingClient()
    identities = _RecordingBindings()
    # The operator hands over its index of batches while it is empty (at its start).
    batches: dict[tuple[str, str], list[BatchFacts]] = {}
    janitor = JobJanitor(
        client,  # type: ignore[arg-type]
        {},
        {("ns", "m"): [ModelFacts("Ready", 1)]},
        clock=_Clock(),
        wall_clock=lambda: NOW,
        batches=batches,
        batch_identities=identities,  # type: ignore[arg-type]
    )
    batches[("ns", "m")] = [
        BatchFacts("ns", "local", demand=8, priority=-10, key_sha256="a" * 64),
        BatchFacts("team", "eval", demand=8, priority=-5, key_sha256="b" * 64),
        BatchFacts("other", "new", demand=8, priority=0, key_sha256=None),
    ]
    asyncio.run(janitor.step())
    assert client.patches == [
        (
            "m",
            {
                "status": {
                    "queue": {"pending": 0, "running": 0},
                    "tenants": [],
                    "batches": [
                        {
                            "namespace": "ns",
                            "name": "local",
                            "keySHA256": "a" * 64,
                            "priority": -10,
                        },
                        {
                            "namespace": "team",
                            "name": "eval",
                            "keySHA256": "b" * 64,
                            "priority": -5,
                        },
                    ],
                }
            },
        )
    ]
    # Both unfinished batches of other namespaces have their shards' identity (the one
    # without a key yet too: the reconciler makes it before the Jobs, this keeps it).
    assert identities.bound[-1] == identities.kept[-1] == {("ns", "m"): {"team", "other"}}
    batches[("ns", "m")] = []  # all finished
    janitor.touch()
    asyncio.run(janitor.step())
    assert client.patches[-1][1]["status"]["batches"] == []
    assert identities.kept[-1] == {("ns", "m"): set()}
