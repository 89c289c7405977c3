"""One model, many teams (#27): a job names a model of another namespace; RBAC's verb
`use` on the model decides who may (the chart's model-use policy, checked by the
apiserver); the model's spec.access narrows which namespaces it serves; its sidecar,
running with its own ServiceAccount's token, serves the tenants' jobs through the
RoleBindings the operator makes while a tenant has jobs and removes once it has none.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from lightkube import Client, KubeConfig, codecs
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Secret, ServiceAccount
from lightkube.resources.rbac_authorization_v1 import Role, RoleBinding
from lightkube.types import PatchType

from gptoss_operator.api.resources import (
    GptOssModelResource,
    InferenceBatchResource,
    InferenceJobResource,
)
from gptoss_operator.builders import rbac
from gptoss_operator.core import naming
from gptoss_operator.engine.client import EngineClient, SamplingParams, Usage
from gptoss_sandbox.chart import helm
from gptoss_sandbox.cluster import free_port
from gptoss_sandbox.standin_engine import StandinEngine
from tests.cluster.chart_helpers import (
    apiserver_refusal,
    dry_run_refusal,
    install,
    token_kubeconfig,
)
from tests.cluster.job_helpers import (
    SidecarProcess,
    condition,
    job_manifest,
    job_status,
    ready_model_namespace,
    wait_finished,
)
from tests.cluster.model_helpers import status_of
from tests.conftest import ClusterUnderTest, OperatorProcess
from tests.support import wait_for

pytestmark = pytest.mark.cluster

MODEL = "shared"


@dataclass
class Platform:
    """A model in the platform's namespace, three teams' namespaces, the chart's
    policies installed, and the model's sidecar running as its ServiceAccount."""

    kube: Client
    cluster: ClusterUnderTest
    platform: str
    teams: tuple[str, str, str]
    fullname: str  # the chart's operator: its ServiceAccount and roles are named so
    system: str
    engine: StandinEngine
    sidecar: SidecarProcess
    sidecar_client: Client
    configs: Path


@pytest.fixture(scope="module")
def platform(
    kube: Client,
    cluster: ClusterUnderTest,
    operator: OperatorProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Platform]:
    del operator
    suffix = uuid.uuid4().hex[:6]
    system = f"t-tsys-{suffix}"
    teams = (f"t-team-a-{suffix}", f"t-team-b-{suffix}", f"t-team-c-{suffix}")
    for name in (system, *teams):
        kube.create(Namespace(metadata=ObjectMeta(name=name)))
    release = f"ten{suffix}"
    fullname = install(cluster, release, system)
    platform = ready_model_namespace(kube, "t-plat", MODEL)
    configs = tmp_path_factory.mktemp("tenancy")
    account = f"{MODEL}-sidecar"
    wait_for(
        lambda: kube.get(ServiceAccount, account, namespace=platform),
        timeout=30,
        message="the sidecar's ServiceAccount",
    )
    config = token_kubeconfig(cluster, kube, platform, account, configs / "sidecar.kubeconfig")
    engine = StandinEngine(model=MODEL)
    url = engine.start_in_thread()
    sidecar = SidecarProcess(config, platform, MODEL, "shared-pod", url, configs).start()
    sidecar_client = Client(KubeConfig.from_file(str(config)), field_manager="tenancy-test")
    try:
        yield Platform(
            kube,
            cluster,
            platform,
            teams,
            fullname,
            system,
            engine,
            sidecar,
            sidecar_client,
            configs,
        )
    finally:
        sidecar.stop()
        engine.stop_in_thread()
        helm("uninstall", release, "--namespace", system, kubeconfig=cluster.kubeconfig)
        for name in (system, platform, *teams):
            kube.delete(Namespace, name)
        print(f"sidecar log: {sidecar.log_path}")


def shared_job(name: str, **spec: Any) -> InferenceJobResource:
    manifest = job_manifest(name, MODEL, "What is recursion?", **spec)
    return InferenceJobResource.from_dict(manifest)


def the_shared_model(platform: Platform) -> dict[str, str]:
    return {"name": MODEL, "namespace": platform.platform}


def account_client(platform: Platform, namespace: str, account: str) -> Client:
    kube = platform.kube
    kube.create(ServiceAccount(metadata=ObjectMeta(name=account, namespace=namespace)))
    path = platform.configs / f"{namespace}-{account}.kubeconfig"
    config = token_kubeconfig(platform.cluster, kube, namespace, account, path)
    return Client(KubeConfig.from_file(str(config)), field_manager="tenancy-test")


def grant(kube: Client, namespace: str, name: str, rules: list[dict[str, Any]], who: str) -> None:
    """A Role of ``rules`` in ``namespace``, bound to the ServiceAccount ``who``
    (namespace/name)."""
    kube.create(
        Role.from_dict({"metadata": {"name": name, "namespace": namespace}, "rules": rules})
    )
    account_namespace, account = who.split("/")
    kube.create(
        RoleBinding.from_dict(
            {
                "metadata": {"name": name, "namespace": namespace},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [
                    {"kind": "ServiceAccount", "name": account, "namespace": account_namespace}
                ],
            }
        )
    )


def tenant_binding(platform: Platform, namespace: str) -> RoleBinding | None:
    name = rbac.tenant_binding_name(platform.platform, MODEL)
    found = [
        b for b in platform.kube.list(RoleBinding, namespace=namespace) if b.metadata.name == name
    ]
    return found[0] if found else None


def tenants(platform: Platform) -> list[str]:
    listed = status_of(platform.kube, platform.platform, MODEL).get("tenants") or []
    return [tenant["namespace"] for tenant in listed]


def set_access(platform: Platform, namespaces: list[str] | None) -> None:
    patch_access(platform, {"namespaces": namespaces})


def patch_access(platform: Platform, access: dict[str, Any]) -> None:
    """Merge ``access`` into the shared model's spec.access (None removes a field)."""
    platform.kube.patch(
        GptOssModelResource,
        MODEL,
        {"spec": {"access": access}},
        namespace=platform.platform,
        patch_type=PatchType.MERGE,
    )


def test_using_another_namespaces_model_takes_the_verb_use_on_it(platform: Platform) -> None:
    """A team member who may create InferenceJobs in the team's namespace, but holds no
    `use` on the platform's model, is refused with the field and the permission named;
    one granted `use` on that model (resourceNames) is admitted, for that model only."""
    kube, team = platform.kube, platform.teams[0]
    author = [
        {
            "apiGroups": ["gptoss.ai"],
            "resources": ["inferencejobs", "inferencebatches"],
            "verbs": ["create"],
        },
        # What a batch's author must reach themselves (the authorScope policies).
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "update"]},
    ]
    alice = account_client(platform, team, "alice")
    bob = account_client(platform, team, "bob")
    for who in ("alice", "bob"):
        grant(kube, team, f"{who}-author", author, f"{team}/{who}")
    use = [
        {
            "apiGroups": ["gptoss.ai"],
            "resources": ["gptossmodels"],
            "verbs": ["use"],
            "resourceNames": [MODEL],
        }
    ]
    grant(kube, platform.platform, "bob-uses-shared", use, f"{team}/bob")

    def refusal(client: Client, model: dict[str, str]) -> str | None:
        return dry_run_refusal(client, shared_job("j", modelRef=model), namespace=team)

    shared = the_shared_model(platform)
    refused = wait_for(
        lambda: refusal(alice, shared), timeout=30, message="the model-use policy in effect"
    )
    assert refused.startswith("403 "), refused
    assert (
        f"spec.modelRef: system:serviceaccount:{team}:alice may not use GptOssModel "
        f'{platform.platform}/{MODEL}: it needs the verb "use" on gptossmodels '
        f"(resourceNames: {MODEL}) in namespace {platform.platform}"
    ) in refused
    assert refusal(bob, shared) is None
    other = refusal(bob, {"name": "other", "namespace": platform.platform})
    assert other is not None, "resourceNames hold"
    assert "may not use GptOssModel" in other
    # Within its own namespace, the right to create jobs is the right to use its models.
    assert refusal(alice, {"name": MODEL}) is None
    assert refusal(alice, {"name": MODEL, "namespace": team}) is None

    # The same for a batch.
    def batch_refusal(client: Client, model: dict[str, str]) -> str | None:
        batch = InferenceBatchResource(
            metadata=ObjectMeta(name="b", namespace=team),
            spec={
                "modelRef": model,
                "input": {"configMap": {"name": "lines"}},
                "output": {"volume": {"claimName": "out", "path": "o"}},
            },
        )
        return dry_run_refusal(client, batch, namespace=team)

    refused_batch = batch_refusal(alice, shared)
    assert refused_batch is not None
    assert f"spec.modelRef: system:serviceaccount:{team}:alice may not use" in refused_batch
    assert batch_refusal(bob, shared) is None
    assert batch_refusal(alice, {"name": MODEL}) is None


def test_a_teams_jobs_run_on_the_shared_model_through_a_binding_that_comes_and_goes(
    platform: Platform,
) -> None:
    kube = platform.kube
    team_a, team_b = platform.teams[0], platform.teams[1]
    platform.sidecar.stop()  # the jobs wait while the binding and status are checked
    try:
        for team in (team_a, team_b):
            for index in range(3):
                job = shared_job(f"j{index}", modelRef=the_shared_model(platform))
                kube.create(job, namespace=team)
        wait_for(
            lambda: tenant_binding(platform, team_a) and tenant_binding(platform, team_b),
            timeout=30,
            message="the sidecar bound in both teams' namespaces",
        )
        binding = tenant_binding(platform, team_a)
        assert binding is not None
        assert binding.roleRef.name == "gptoss-sidecar-tenant"
        assert [(s.kind, s.namespace, s.name) for s in binding.subjects or []] == [
            ("ServiceAccount", platform.platform, f"{MODEL}-sidecar")
        ]
        wait_for(
            lambda: tenants(platform) == sorted([team_a, team_b]),
            timeout=30,
            message="the teams listed as the model's tenants",
        )
        listed = status_of(kube, platform.platform, MODEL)["tenants"]
        assert {t["namespace"]: t["pending"] for t in listed} == {team_a: 3, team_b: 3}
        assert tenant_binding(platform, platform.teams[2]) is None, "no jobs, no binding"
    finally:
        platform.sidecar.start()
    for team in (team_a, team_b):
        for index in range(3):
            status = wait_finished(kube, team, f"j{index}", timeout=60)
            assert status["phase"] == "Succeeded", status.get("message")
            assert status["response"], status
            assert status["worker"] == "shared-pod"
    wait_for(
        lambda: (
            tenant_binding(platform, team_a) is None and tenant_binding(platform, team_b) is None
        ),
        timeout=30,
        message="the bindings removed once the teams have no unfinished jobs",
    )
    assert wait_for(lambda: tenants(platform) == [] or None, timeout=30) is True


def test_spec_access_leaves_a_namespace_waiting_until_it_is_listed(platform: Platform) -> None:
    kube = platform.kube
    team_a, team_c = platform.teams[0], platform.teams[2]
    set_access(platform, [team_a])
    try:
        kube.create(shared_job("late", modelRef=the_shared_model(platform)), namespace=team_c)

        def told() -> dict[str, Any] | None:
            status = job_status(kube, team_c, "late")
            return (
                status if condition(status, "Scheduled").get("reason") == "AccessDenied" else None
            )

        status = wait_for(told, timeout=30, message="the job told why it waits")
        assert status["phase"] == "Pending"
        assert status["message"] == (
            f"spec.modelRef: GptOssModel {platform.platform}/{MODEL} does not serve namespace "
            f"{team_c} (its spec.access.namespaces); the job waits until it does"
        )
        assert tenant_binding(platform, team_c) is None
        assert team_c not in tenants(platform)
        set_access(platform, [team_a, team_c])
        done = wait_finished(kube, team_c, "late", timeout=60)
        assert done["phase"] == "Succeeded", done.get("message")
    finally:
        set_access(platform, None)


def test_the_sidecar_writes_in_a_tenants_namespace_only_what_names_its_model(
    platform: Platform,
) -> None:
    """The worker-scope policy in a tenant's namespace: the sidecar bound there may write
    the status of jobs that name its model (with its namespace) and their output
    ConfigMaps labelled with both, not a job of a local model of the same name."""
    kube, team = platform.kube, platform.teams[1]
    platform.sidecar.stop()
    try:
        kube.create(shared_job("held", modelRef=the_shared_model(platform)), namespace=team)
        kube.create(shared_job("local", modelRef={"name": MODEL}), namespace=team)
        wait_for(lambda: tenant_binding(platform, team), timeout=30, message="the binding")
        as_sidecar = platform.sidecar_client

        def patch_status(name: str) -> str | None:
            return apiserver_refusal(
                lambda: as_sidecar.patch(
                    InferenceJobResource.Status,
                    name,
                    {"status": {"message": "x"}},
                    namespace=team,
                    patch_type=PatchType.MERGE,
                    dry_run=True,
                )
            )

        assert wait_for(lambda: patch_status("held") is None or None, timeout=30) is True
        local = patch_status("local")
        assert local is not None
        assert local.startswith("403 "), local
        assert f"is a worker of GptOssModel {MODEL}" in local

        def output(labels: dict[str, str]) -> str | None:
            job = kube.get(InferenceJobResource, "held", namespace=team)
            manifest = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": "held-output-a1",
                    "namespace": team,
                    "labels": labels,
                    "ownerReferences": [
                        {
                            "apiVersion": "gptoss.ai/v1alpha1",
                            "kind": "InferenceJob",
                            "name": "held",
                            "uid": job.metadata.uid,
                        }
                    ],
                },
                "data": {"response": "x"},
            }
            return dry_run_refusal(as_sidecar, codecs.from_dict(manifest))

        both = {"gptoss.ai/model": MODEL, "gptoss.ai/model-namespace": platform.platform}
        assert output(both) is None
        assert output({"gptoss.ai/model": MODEL}) is not None, "a local model's, by its labels"
        kube.delete(InferenceJobResource, "local", namespace=team)
    finally:
        platform.sidecar.start()
    assert wait_finished(kube, team, "held", timeout=60)["phase"] == "Succeeded"


def test_the_operators_token_binds_in_a_tenants_namespace_only_the_tenant_role(
    platform: Platform,
) -> None:
    """The operator-bindings policy for the chart's operator: a tenant's binding carries
    no owner (none can be of another namespace), so its labels are checked instead: the
    tenant role, to the sidecar of the model the labels name, and nothing else."""
    kube, team = platform.kube, platform.teams[2]
    account = platform.fullname
    path = platform.configs / "operator.kubeconfig"
    config = token_kubeconfig(platform.cluster, kube, platform.system, account, path)
    as_operator = Client(KubeConfig.from_file(str(config)), field_manager="tenancy-test")
    tenant_role = f"{platform.fullname}-sidecar-tenant"
    wanted = rbac.tenant_binding(MODEL, platform.platform, team, tenant_role)

    def refusal(change: dict[str, Any]) -> str | None:
        manifest = {**wanted, **change}
        return dry_run_refusal(as_operator, codecs.from_dict(manifest))

    assert wait_for(lambda: refusal({}) is None or None, timeout=30) is True
    someone_else = refusal(
        {"subjects": [{"kind": "ServiceAccount", "name": "alice", "namespace": team}]}
    )
    assert someone_else is not None
    assert "binds only " + tenant_role in someone_else
    sidecar_role = {**wanted["roleRef"], "name": f"{platform.fullname}-sidecar"}
    broader = refusal({"roleRef": sidecar_role})
    assert broader is not None
    assert "binds only " + tenant_role in broader
    # The identity of the model's batch shards there: the batch workers' role, to that
    # identity only.
    batch_role = f"{platform.fullname}-batch-worker"
    _account, shards = rbac.tenant_batch_identity(MODEL, platform.platform, team, batch_role)
    assert dry_run_refusal(as_operator, codecs.from_dict(shards)) is None
    for change in (
        {"subjects": [{"kind": "ServiceAccount", "name": "alice", "namespace": team}]},
        {"roleRef": {**shards["roleRef"], "name": f"{platform.fullname}-sidecar"}},
    ):
        other = dry_run_refusal(as_operator, codecs.from_dict({**shards, **change}))
        assert other is not None
        assert "batch identity there" in other


class RunningWatch:
    """The most jobs of ``namespace`` seen Running at once, from a watch (every change in
    the order the apiserver made it), in a thread of its own."""

    def __init__(self, kube: Client, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self.running: set[str] = set()
        self.most = 0
        self.reasons: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)

    def _follow(self) -> None:
        for event, job in self.kube.watch(InferenceJobResource, namespace=self.namespace):
            body = job.to_dict()
            name, status = body["metadata"]["name"], body.get("status") or {}
            if event != "DELETED" and status.get("phase") == "Running":
                self.running.add(name)
            else:
                self.running.discard(name)
            self.most = max(self.most, len(self.running))
            self.reasons.add(str(condition(status, "Scheduled").get("reason")))
            if self._stop.is_set():
                return

    def __enter__(self) -> RunningWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def submit(kube: Client, namespace: str, model: dict[str, str], count: int, prefix: str) -> None:
    for index in range(count):
        kube.create(
            shared_job(f"{prefix}-{index:04d}", modelRef=model, maxTokens=64),
            namespace=namespace,
        )


def tokens_between(kube: Client, namespace: str, start: float, end: float) -> int:
    total = 0
    for job in kube.list(InferenceJobResource, namespace=namespace):
        status = job.to_dict().get("status") or {}
        done = status.get("completionTime")
        if status.get("phase") == "Succeeded" and done:
            at = datetime.datetime.fromisoformat(done.replace("Z", "+00:00")).timestamp()
            if start <= at < end:
                total += int(status["usage"]["totalTokens"])
    return total


def run_seconds(kube: Client, namespace: str) -> float:
    """The longest a succeeded job of ``namespace`` ran (to the second)."""
    longest = 0.0
    for job in kube.list(InferenceJobResource, namespace=namespace):
        status = job.to_dict().get("status") or {}
        if status.get("phase") == "Succeeded":
            begun, done = (
                datetime.datetime.fromisoformat(status[k].replace("Z", "+00:00"))
                for k in ("startTime", "completionTime")
            )
            longest = max(longest, (done - begun).total_seconds())
    return longest


def phases(kube: Client, namespace: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for job in kube.list(InferenceJobResource, namespace=namespace):
        phase = (job.to_dict().get("status") or {}).get("phase") or "Pending"
        found[phase] = found.get(phase, 0) + 1
    return found


def light_and_heavy(light: str, heavy: str) -> list[dict[str, Any]]:
    """Tenants "light" (weight 1) and "heavy" (weight 3) of one namespace each."""
    return [
        {"name": "light", "namespaces": [light], "weight": 1},
        {"name": "heavy", "namespaces": [heavy], "weight": 3},
    ]


def test_tenants_share_the_model_by_weight_and_one_at_its_limit_waits(
    platform: Platform, operator: OperatorProcess
) -> None:
    """Two tenants of weights 1 and 3 flood the model (two sidecars of 4 slots each):
    over a minute of contention each one's share of the tokens is within 10% of its
    weight's. A third tenant limited to 2 jobs in flight never has more across both
    sidecars, none of its jobs fails, and its waiting jobs say why. A fourth namespace's
    single job, sent in the middle, waits no longer than one fair turn."""
    kube, model = platform.kube, the_shared_model(platform)
    light, heavy, capped = platform.teams
    patch_access(
        platform,
        {
            "namespaces": None,
            "tenants": [
                *light_and_heavy(light, heavy),
                {"name": "capped", "namespaces": [capped], "maxJobsInFlight": 2},
            ],
        },
    )
    # Two replicas' sidecars of four slots each, each job about a second and a half at the
    # engine: some 300 jobs finish in the minute measured, so one job is a third of a
    # percent of the share.
    platform.sidecar.stop()
    replicas = [
        SidecarProcess(
            platform.configs / "sidecar.kubeconfig",
            platform.platform,
            MODEL,
            f"shared-pod-{index}",
            platform.engine.url,
            platform.configs,
            GPTOSS_CONCURRENCY="4",
        )
        for index in range(2)
    ]
    platform.engine.token_delay = 0.05
    try:
        with RunningWatch(kube, capped) as watch:
            submit(kube, light, model, 250, "l")
            submit(kube, heavy, model, 600, "h")
            submit(kube, capped, model, 12, "c")
            for replica in replicas:
                replica.start()
            wait_for(
                lambda: phases(kube, heavy).get("Succeeded", 0) >= 4,
                timeout=60,
                message="the flood under way",
            )
            start = time.time() + 10  # the shares settle
            while time.time() < start + 20:
                time.sleep(1)
            lone = job_manifest("lone", MODEL, "What is recursion?", modelRef=model)
            kube.create(InferenceJobResource.from_dict(lone), namespace=platform.platform)
            while time.time() < start + 60:
                time.sleep(1)
            end = time.time()
            # Contention throughout: both still had work waiting at the minute's end.
            assert phases(kube, light).get("Pending", 0) > 0
            assert phases(kube, heavy).get("Pending", 0) > 0
            a = tokens_between(kube, light, start, end)
            b = tokens_between(kube, heavy, start, end)
            print(f"tokens in a minute: light {a}, heavy {b}, light's share {a / (a + b):.3f}")
            assert abs(a / (a + b) - 0.25) <= 0.025, (a, b)

            lone_status = wait_finished(kube, platform.platform, "lone", timeout=60)
            assert lone_status["phase"] == "Succeeded"
            lone_body = kube.get(InferenceJobResource, "lone", namespace=platform.platform)
            created = lone_body.metadata.creationTimestamp.timestamp()
            started = datetime.datetime.fromisoformat(
                lone_status["startTime"].replace("Z", "+00:00")
            ).timestamp()
            # One fair turn: the next slot to free (no later than the longest a flood
            # job ran) and the claim; timestamps are to the second.
            turn = max(run_seconds(kube, light), run_seconds(kube, heavy))
            print(f"the lone job waited {started - created:.0f}s; a turn is {turn:.0f}s")
            assert started - created <= turn + 2, (started - created, turn)

            for index in range(12):
                status = wait_finished(kube, capped, f"c-{index:04d}", timeout=120)
                assert status["phase"] == "Succeeded", status.get("message")
            assert watch.most == 2, watch.most
            assert "QuotaExceeded" in watch.reasons, watch.reasons

            # What each team used, as `gptoss usage` prints it from the jobs (the
            # sidecars stopped: the counts hold still).
            for replica in replicas:
                replica.stop()
            printed = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gptoss_operator.cli.user_main",
                    "usage",
                    "--model",
                    f"{platform.platform}/{MODEL}",
                    "--since",
                    "1h",
                    "-A",
                    "--kubeconfig",
                    str(platform.cluster.kubeconfig),
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            rows = {line.split()[1]: line.split() for line in printed.splitlines()[1:]}
            for tenant, namespace in (("light", light), ("heavy", heavy), ("capped", capped)):
                counts = phases(kube, namespace)  # the module's earlier jobs too
                expected = [tenant, namespace, str(counts["Succeeded"]), "0"]
                assert rows[namespace][:4] == expected, printed
            assert int(rows[heavy][2]) > int(rows[light][2]), printed

            # The operator's /metrics counted the same, by tenant and model.
            series = operator.metrics()
            model_labels = f'model="{MODEL}",namespace="{platform.platform}"'
            labels = f'job_namespace="{capped}",{model_labels}'  # as sorted in the output
            done = [  # this test's (the module's earlier jobs counted under the namespace)
                (job.to_dict().get("status") or {})
                for job in kube.list(InferenceJobResource, namespace=capped)
                if job.metadata.name.startswith("c-")
            ]
            assert series[
                f'gptoss_tenant_jobs_total{{{labels},phase="Succeeded",tenant="capped"}}'
            ] == len(done)
            completion = sum(int(s["usage"]["completionTokens"]) for s in done)
            assert (
                series[
                    f'gptoss_tenant_tokens_total{{job_namespace="{capped}",kind="completion",'
                    f'{model_labels},source="job",tenant="capped"}}'
                ]
                == completion
            )
    finally:
        for replica in replicas:
            replica.stop()
        platform.engine.token_delay = 0.0
        for namespace in (light, heavy, capped):
            kube.deletecollection(InferenceJobResource, namespace=namespace)
        patch_access(platform, {"tenants": None})
        platform.sidecar.start()
        print("sidecar logs:", *(replica.log_path for replica in replicas))


def gateway_batch(kube: Client, namespace: str, model: dict[str, str]) -> None:
    """A batch of the shared model; kwok's nodes hold its shards' pods, which run
    nothing: the test sends the lines to the gateway with the batch's key itself."""
    kube.create(
        InferenceBatchResource(
            metadata=ObjectMeta(name="flood", namespace=namespace),
            spec={
                "modelRef": model,
                "input": {"configMap": {"name": "lines"}},
                "output": {"volume": {"claimName": "out", "path": "o"}},
            },
        )
    )


def gateway_key(kube: Client, namespace: str) -> str:
    status = wait_for(
        lambda: batch_status(kube, namespace, "flood").get("gatewayKey"),
        timeout=60,
        message=f"the gateway key of {namespace}'s batch",
    )
    secret = kube.get(Secret, status["secret"], namespace=namespace)
    return base64.b64decode(secret.data[naming.GATEWAY_KEY_SECRET_KEY]).decode()


def batch_status(kube: Client, namespace: str, name: str) -> dict[str, Any]:
    found = kube.get(InferenceBatchResource, name, namespace=namespace).to_dict()
    return dict(found.get("status") or {})


def admits(url: str, key: str) -> bool:
    try:
        answer = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"})
    except httpx.TransportError:
        return False  # not listening yet
    return answer.status_code == 200


async def flood(
    url: str, key: str, max_tokens: int, lanes: int, until: float
) -> list[tuple[float, int]]:
    """``lanes`` lines in flight at once until ``until``: when each answered line ended
    (time.time()) and its tokens."""
    params = SamplingParams(max_tokens=max_tokens, temperature=1.0, top_p=None, stop_token_ids=[])
    # <|start|>user<|message|>hello<|end|><|start|>assistant
    prompt = [200006, 1428, 200008, 13225, 200007, 200006, 173781]
    client = EngineClient(url, MODEL, api_key=key, max_connections=lanes, through_service=True)
    ended: list[tuple[float, int]] = []

    async def lane() -> None:
        while time.time() < until:
            async for item in client.stream(prompt, params):
                if isinstance(item, Usage):
                    ended.append((time.time(), item.prompt_tokens + item.completion_tokens))

    try:
        await asyncio.gather(*(lane() for _ in range(lanes)))
    finally:
        await client.close()
    return ended


def test_batch_lines_share_the_gateway_by_weight(platform: Platform) -> None:
    """Two teams' batches of weights 1 and 3 flood a sidecar's gateway of four slots, the
    light team's lines four times the heavy's: over 40 s of contention, each team's
    share of the tokens answered is within 10% of its weight's."""
    kube, model = platform.kube, the_shared_model(platform)
    light, heavy, _ = platform.teams
    patch_access(platform, {"namespaces": None, "tenants": light_and_heavy(light, heavy)})
    port = free_port()
    gateway = SidecarProcess(
        platform.configs / "sidecar.kubeconfig",
        platform.platform,
        MODEL,
        "gateway-pod",
        platform.engine.url,
        platform.configs,
        GPTOSS_GATEWAY_PORT=str(port),
        GPTOSS_GATEWAY_SLOTS="4",
    )
    platform.engine.token_delay = 0.01
    platform.engine.answer_repeat = 50  # answers longer than any max_tokens here
    try:
        for namespace in (light, heavy):
            gateway_batch(kube, namespace, model)
        keys = {namespace: gateway_key(kube, namespace) for namespace in (light, heavy)}
        wait_for(
            lambda: len(status_of(kube, platform.platform, MODEL).get("batches") or []) == 2,
            timeout=60,
            message="both batches listed in the model's status",
        )
        gateway.start()
        url = f"http://127.0.0.1:{port}"
        wait_for(
            lambda: admits(url, keys[light]), timeout=60, message="the gateway admits the keys"
        )
        start = time.time() + 10  # the shares settle
        end = start + 40

        async def both() -> list[list[tuple[float, int]]]:
            return list(
                await asyncio.gather(
                    flood(url, keys[light], 160, 8, end), flood(url, keys[heavy], 40, 8, end)
                )
            )

        light_ends, heavy_ends = asyncio.run(both())

        def tokens(ends: list[tuple[float, int]]) -> int:
            return sum(count for at, count in ends if start <= at < end)

        a, b = tokens(light_ends), tokens(heavy_ends)
        print(f"gateway tokens in 40 s: light {a}, heavy {b}, light's share {a / (a + b):.3f}")
        assert abs(a / (a + b) - 0.25) <= 0.025, (a, b)
    finally:
        gateway.stop()
        platform.engine.token_delay = 0.0
        platform.engine.answer_repeat = 1
        for namespace in (light, heavy):
            kube.deletecollection(InferenceBatchResource, namespace=namespace)
        patch_access(platform, {"tenants": None})
        print("gateway log:", gateway.log_path)
