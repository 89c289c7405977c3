"""The Helm chart: lint, schema, server-side dry-run, a real install, and the operator
running with exactly the RBAC the chart grants."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Namespace, ServiceAccount
from lightkube.resources.networking_v1 import NetworkPolicy
from lightkube.resources.rbac_authorization_v1 import ClusterRole, Role

from gptoss_operator.api.versions import DEFAULT_VLLM_IMAGE
from gptoss_operator.core import naming
from gptoss_operator.core.settings import Settings
from gptoss_sandbox.chart import CHART, KUBE_VERSION, helm, render, worker_cluster_roles
from gptoss_sandbox.standin_engine import StandinEngine
from tests.cluster.chart_helpers import install, token_kubeconfig, tools
from tests.cluster.job_helpers import SidecarProcess, create_job, wait_finished
from tests.cluster.model_helpers import create_model, wait_for_phase
from tests.conftest import ClusterUnderTest, OperatorProcess
from tests.support import wait_for

pytestmark = pytest.mark.cluster


def test_helm_lint_is_clean() -> None:
    result = helm("lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION)
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("watchNamespaces[0]=Not_A_Namespace", "/watchNamespaces/0"),
        ("resyncSeconds=1", "/resyncSeconds"),
        ("serviceMonitor.interval=often", "/serviceMonitor/interval"),
        ("unknownValue=1", "unknownValue"),
        ("healthPort=80", "/healthPort"),
        ("image.digest=sha256:abc", "/image/digest"),
        ("authorScope.s3.allowedEndpoints[0]=ftp://x", "/authorScope/s3/allowedEndpoints/0"),
        ("authorScope.reservedArgs[0]=model", "/authorScope/reservedArgs/0"),
    ],
)
def test_values_schema_refuses_bad_values(value: str, message: str) -> None:
    result = helm(
        "template",
        "gptoss",
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        "--set",
        value,
        check=False,
    )
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


def test_rendered_objects_carry_recommended_labels_and_restricted_security() -> None:
    documents = render()
    kinds = sorted(doc["kind"] for doc in documents)
    assert kinds == sorted(
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRole",
            "ClusterRoleBinding",
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "ClusterRole",
            "Deployment",
            *["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"] * 6,
            "Service",
            "NetworkPolicy",
        ]
    )
    policies = sorted(
        d["metadata"]["name"] for d in documents if d["kind"] == "ValidatingAdmissionPolicy"
    )
    assert policies == [
        f"gptoss-gptoss-operator-{name}"
        for name in (
            "batch-author-scope",
            "model-author-scope",
            "model-use",
            "operator-bindings",
            "operator-scope",
            "worker-scope",
        )
    ]
    for doc in documents:
        labels = doc["metadata"]["labels"]
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
        ):
            assert key in labels, (doc["kind"], key)
    deployment = next(doc for doc in documents if doc["kind"] == "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["image"] == "ghcr.io/gptoss-operator/gptoss-operator:0.1.0"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["GPTOSS_VLLM_IMAGE"] == DEFAULT_VLLM_IMAGE


def test_namespaced_mode_grants_roles_only_in_listed_namespaces() -> None:
    documents = render("watchNamespaces={team-a,team-b}")
    roles = [d for d in documents if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    cluster_roles = [d for d in documents if d["kind"] == "ClusterRole"]
    assert sorted(r["metadata"]["name"] for r in cluster_roles) == [
        "gptoss-gptoss-operator-batch-worker",
        "gptoss-gptoss-operator-crds",
        "gptoss-gptoss-operator-downloader",
        "gptoss-gptoss-operator-sidecar",
        "gptoss-gptoss-operator-sidecar-tenant",
    ]
    assert not [
        d
        for d in documents
        if d["kind"] == "ClusterRoleBinding" and "crds" not in (d["metadata"]["name"])
    ], "the workers' ClusterRoles are bound per model, never cluster-wide"
    args = next(d for d in documents if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert "--namespace=team-a" in args
    assert "--namespace=team-b" in args


def _grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_each_worker_holds_only_its_own_rules() -> None:
    by_name = {d["metadata"]["name"]: d for d in render() if d["kind"] == "ClusterRole"}
    downloader = _grants(by_name["gptoss-gptoss-operator-downloader"]["rules"])
    sidecar = _grants(by_name["gptoss-gptoss-operator-sidecar"]["rules"])
    batch = _grants(by_name["gptoss-gptoss-operator-batch-worker"]["rules"])
    tenant = _grants(by_name["gptoss-gptoss-operator-sidecar-tenant"]["rules"])
    assert downloader == {
        ("gptoss.ai", "gptossmodels", "get"),
        ("gptoss.ai", "gptossmodels/status", "get"),
        ("gptoss.ai", "gptossmodels/status", "patch"),
    }
    models = {("gptoss.ai", "gptossmodels", verb) for verb in ("get", "list", "watch")}
    assert tenant == sidecar - models, "in a tenant's namespace, the sidecar reads no model"
    assert sidecar == {
        *models,
        ("gptoss.ai", "inferencejobs", "get"),
        ("gptoss.ai", "inferencejobs", "list"),
        ("gptoss.ai", "inferencejobs", "watch"),
        ("gptoss.ai", "inferencejobs/status", "get"),
        ("gptoss.ai", "inferencejobs/status", "patch"),
        ("", "configmaps", "create"),
        ("", "configmaps", "update"),
        ("", "configmaps", "delete"),
        ("", "events", "create"),
        ("", "events", "patch"),
        ("events.k8s.io", "events", "create"),
        ("events.k8s.io", "events", "patch"),
    }, "the sidecar never reads a ConfigMap or a Secret, nor writes a model"
    assert batch == {
        ("gptoss.ai", "inferencebatches", "get"),
        ("gptoss.ai", "inferencebatches/status", "get"),
        ("gptoss.ai", "inferencebatches/status", "patch"),
    }


def test_the_sandbox_installs_the_charts_worker_roles_under_the_operators_default_names() -> None:
    settings = Settings()
    roles = worker_cluster_roles()
    assert [r["metadata"]["name"] for r in roles] == [
        settings.downloader_cluster_role,
        settings.sidecar_cluster_role,
        settings.batch_worker_cluster_role,
        settings.sidecar_tenant_cluster_role,
    ]
    by_name = {d["metadata"]["name"]: d for d in render() if d["kind"] == "ClusterRole"}
    for role, chart_name in zip(
        roles,
        [
            "gptoss-gptoss-operator-downloader",
            "gptoss-gptoss-operator-sidecar",
            "gptoss-gptoss-operator-batch-worker",
            "gptoss-gptoss-operator-sidecar-tenant",
        ],
        strict=True,
    ):
        assert role["rules"] == by_name[chart_name]["rules"]


def test_only_the_workers_cluster_roles_may_be_bound() -> None:
    for values in ([], ["watchNamespaces={team-a}"]):
        documents = render(*values)
        env = {
            e["name"]: e["value"]
            for e in next(d for d in documents if d["kind"] == "Deployment")["spec"]["template"][
                "spec"
            ]["containers"][0]["env"]
        }
        assert env["GPTOSS_DOWNLOADER_CLUSTER_ROLE"] == "gptoss-gptoss-operator-downloader"
        assert env["GPTOSS_SIDECAR_CLUSTER_ROLE"] == "gptoss-gptoss-operator-sidecar"
        assert env["GPTOSS_BATCH_WORKER_CLUSTER_ROLE"] == "gptoss-gptoss-operator-batch-worker"
        assert env["GPTOSS_SIDECAR_TENANT_CLUSTER_ROLE"] == "gptoss-gptoss-operator-sidecar-tenant"
        operator_rules = [
            rule
            for d in documents
            if d["kind"] in ("Role", "ClusterRole")
            and d["metadata"]["name"] == "gptoss-gptoss-operator"
            for rule in d["rules"]
        ]
        binds = [r for r in operator_rules if "bind" in r["verbs"]]
        assert binds == [
            {
                "apiGroups": ["rbac.authorization.k8s.io"],
                "resources": ["clusterroles"],
                "verbs": ["bind"],
                "resourceNames": [
                    "gptoss-gptoss-operator-downloader",
                    "gptoss-gptoss-operator-sidecar",
                    "gptoss-gptoss-operator-sidecar-tenant",
                    "gptoss-gptoss-operator-batch-worker",
                ],
            }
        ]


def test_service_monitor_is_optional() -> None:
    assert not [d for d in render() if d["kind"] == "ServiceMonitor"]
    monitors = [d for d in render("serviceMonitor.enabled=true") if d["kind"] == "ServiceMonitor"]
    assert monitors[0]["spec"]["endpoints"][0]["path"] == "/metrics"


def test_chart_crds_are_the_generated_ones() -> None:
    from gptoss_operator.api.crdgen import all_crds
    from gptoss_operator.api.crdgen import render as render_crd

    for name, document in all_crds().items():
        assert (CHART / "crds" / name).read_text() == render_crd(document)


def test_template_applies_with_server_side_dry_run(
    cluster: ClusterUnderTest, crds: list[str], kube: Client
) -> None:
    del crds
    namespace = f"t-dry-{uuid.uuid4().hex[:6]}"
    kube.create(Namespace(metadata=ObjectMeta(name=namespace)))
    try:
        for values in ([], [f"watchNamespaces={{{namespace}}}"]):
            manifest = helm(
                "template",
                "gptoss",
                str(CHART),
                "--namespace",
                namespace,
                "--kube-version",
                KUBE_VERSION,
                *[arg for v in values for arg in ("--set", v)],
            ).stdout
            result = subprocess.run(
                [
                    str(tools().kubectl),
                    "--kubeconfig",
                    str(cluster.kubeconfig),
                    "apply",
                    "--dry-run=server",
                    "-f",
                    "-",
                ],
                input=manifest,
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )
            assert result.returncode == 0, result.stderr
            assert "deployment.apps/gptoss-gptoss-operator created (server dry run)" in (
                result.stdout
            )
    finally:
        kube.delete(Namespace, namespace)


def test_install_runs_the_operator_with_only_the_charts_rbac(
    cluster: ClusterUnderTest,
    kube: Client,
    crds: list[str],
    operator: OperatorProcess,
    tmp_path: Path,
) -> None:
    """helm install on the control plane; then the operator and a sidecar run as the
    chart's and the model's ServiceAccounts (not as admin) and serve a job end to end."""
    del crds
    suffix = uuid.uuid4().hex[:6]
    system, team = f"t-sys-{suffix}", f"t-team-{suffix}"
    for name in (system, team):
        kube.create(Namespace(metadata=ObjectMeta(name=name)))
    release = f"g{suffix}"
    operator.stop()  # the admin operator steps aside; the chart's identity takes over
    try:
        deployment_name = install(cluster, release, system, team)
        wait_for(
            lambda: (
                (
                    kube.get(Deployment, deployment_name, namespace=system).status.availableReplicas
                    or 0
                )
                == 1
            ),
            timeout=60,
            message="operator Deployment Available",
        )
        assert kube.get(ServiceAccount, deployment_name, namespace=system)
        assert kube.get(Role, deployment_name, namespace=team)
        assert kube.get(ClusterRole, f"{deployment_name}-crds")
        notes = helm(
            "get", "notes", release, "--namespace", system, kubeconfig=cluster.kubeconfig
        ).stdout
        assert "kubectl get gptossmodels -w" in notes

        operator_config = token_kubeconfig(
            cluster, kube, system, deployment_name, tmp_path / "operator.kubeconfig"
        )
        scoped = OperatorProcess(
            operator_config,
            tmp_path / "scoped-operator.log",
            {
                "GPTOSS_METRICS_PORT": "0",
                "GPTOSS_RESYNC_SECONDS": "3",
                "GPTOSS_DOWNLOADER_CLUSTER_ROLE": f"{deployment_name}-downloader",
                "GPTOSS_SIDECAR_CLUSTER_ROLE": f"{deployment_name}-sidecar",
                "GPTOSS_BATCH_WORKER_CLUSTER_ROLE": f"{deployment_name}-batch-worker",
                "GPTOSS_SIDECAR_TENANT_CLUSTER_ROLE": f"{deployment_name}-sidecar-tenant",
                "GPTOSS_NETWORK_POLICY": "true",
                "GPTOSS_NETWORK_POLICY_FROM": json.dumps(
                    [{"namespaceSelector": {"matchLabels": {"gateway": "true"}}}]
                ),
            },
        )
        scoped.start(extra_args=["--namespace", team])
        try:
            create_model(kube, team, "scoped")
            wait_for_phase(kube, team, "scoped", "Ready", timeout=90)
            policy = kube.get(NetworkPolicy, "scoped-vllm", namespace=team)
            assert policy.spec.podSelector.matchLabels == naming.server_selector("scoped")
            ingress, to_gateway = policy.spec.ingress
            assert [p.port for p in ingress.ports] == [naming.ENGINE_PORT]
            assert [peer.to_dict() for peer in ingress.from_] == [
                {"podSelector": {}},
                {"namespaceSelector": {"matchLabels": {"gateway": "true"}}},
            ]
            # Batch shards of any namespace reach the gateway; each request needs a key.
            assert [p.port for p in to_gateway.ports] == [naming.GATEWAY_PORT]
            assert [peer.to_dict() for peer in to_gateway.from_] == [{"namespaceSelector": {}}]
            worker_config = token_kubeconfig(
                cluster, kube, team, "scoped-sidecar", tmp_path / "sidecar.kubeconfig"
            )
            with StandinEngine(model="scoped") as engine:
                sidecar = SidecarProcess(
                    worker_config, team, "scoped", "scoped-0", engine.url, tmp_path
                ).start()
                try:
                    create_job(kube, team, "rbac-check", "scoped")
                    status = wait_finished(kube, team, "rbac-check", timeout=90)
                finally:
                    sidecar.stop()
            assert status["phase"] == "Succeeded", (
                status.get("message"),
                sidecar.log_tail(),
                scoped.log_tail(),
            )
        finally:
            scoped.stop()
        assert "Forbidden" not in scoped.log_path.read_text()
        helm("uninstall", release, "--namespace", system, kubeconfig=cluster.kubeconfig)
        wait_for(
            lambda: not list(kube.list(Deployment, namespace=system)),
            timeout=60,
            message="uninstall removed the operator",
        )
    finally:
        operator.start()
        for name in (system, team):
            kube.delete(Namespace, name)


def _exported_metric_names() -> set[str]:
    """The series names the operator's /metrics serves for one model with jobs, one of
    them finished while it ran."""
    from gptoss_operator.controllers.facts import JobFacts, ModelFacts
    from gptoss_operator.controllers.usage import UsageMeter
    from gptoss_operator.core import metrics

    model = ModelFacts.from_status({"phase": "Ready", "readyReplicas": 1, "replicas": 1})
    job = JobFacts.from_body(
        {"metadata": {"namespace": "ns", "name": "j"}, "spec": {"modelRef": {"name": "m"}}}
    )
    done = JobFacts.from_body(
        {
            "metadata": {"namespace": "ns", "name": "done"},
            "spec": {"modelRef": {"name": "m"}},
            "status": {
                "phase": "Succeeded",
                "completionTime": "2026-06-01T00:00:00Z",
                "usage": {"promptTokens": 5, "completionTokens": 7, "totalTokens": 12},
            },
        }
    )
    started = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    assert UsageMeter(started).observe([done], lambda job: job.namespace) == 1
    text = metrics.render({("ns", "m"): [model]}, {("ns", "m"): [job, done]})
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}


def _metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\bgptoss_[a-z_]+\b", expression))


def test_prometheus_rule_is_optional_and_reads_what_the_operator_exports() -> None:
    assert not [d for d in render() if d["kind"] == "PrometheusRule"]
    documents = render("prometheusRule.enabled=true", "prometheusRule.queueWaitingFor=10m")
    (rule,) = [d for d in documents if d["kind"] == "PrometheusRule"]
    rules = rule["spec"]["groups"][0]["rules"]
    exported = _exported_metric_names()
    assert "gptoss_model_queue" in exported
    for item in rules:
        used = _metric_names(item["expr"])
        assert used, item
        assert used <= exported, (used - exported, item)
    (alert,) = [item for item in rules if "alert" in item]
    assert alert["for"] == "10m"


def test_keda_example_scales_the_model_through_its_scale_subresource() -> None:
    example = yaml.safe_load((CHART / "files" / "keda-scaledobject.yaml").read_text())
    target = example["spec"]["scaleTargetRef"]
    crd = yaml.safe_load((CHART / "crds" / "gptoss.ai_gptossmodels.yaml").read_text())
    group, version = target["apiVersion"].split("/")
    assert (group, target["kind"]) == (crd["spec"]["group"], crd["spec"]["names"]["kind"])
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert served["subresources"]["scale"]["specReplicasPath"] == ".spec.serving.replicas"
    (trigger,) = example["spec"]["triggers"]
    assert _metric_names(trigger["metadata"]["query"]) <= _exported_metric_names()


def test_autoscaler_settings_reach_the_operator_and_its_network_peer() -> None:
    def env_of(*values: str) -> dict[str, str]:
        (deployment,) = [d for d in render(*values) if d["kind"] == "Deployment"]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        return {e["name"]: e.get("value") for e in container["env"]}

    env = env_of("autoscaling.intervalSeconds=2")
    assert env["GPTOSS_AUTOSCALE_SECONDS"] == "2"
    assert env["GPTOSS_AUTOSCALE_ENGINE_METRICS"] == "true"
    (peer,) = json.loads(env["GPTOSS_NETWORK_POLICY_FROM"])
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "gptoss-system"
    }
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "gptoss-operator"
    env = env_of("autoscaling.engineMetrics=false")
    assert env["GPTOSS_AUTOSCALE_ENGINE_METRICS"] == "false"
    assert json.loads(env["GPTOSS_NETWORK_POLICY_FROM"]) == []


def test_the_operator_image_may_be_pinned_by_digest() -> None:
    digest = "sha256:" + "a" * 64
    (deployment,) = [d for d in render(f"image.digest={digest}") if d["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"ghcr.io/gptoss-operator/gptoss-operator:0.1.0@{digest}"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GPTOSS_IMAGE"] == container["image"], "the workers run the same pinned image"


def test_the_operators_ports_admit_only_the_listed_metrics_peers() -> None:
    def policy(*values: str) -> dict[str, Any]:
        (found,) = [d for d in render(*values) if d["kind"] == "NetworkPolicy"]
        return found

    closed = policy()
    assert closed["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "gptoss-operator",
        "app.kubernetes.io/instance": "gptoss",
    }
    assert closed["spec"]["policyTypes"] == ["Ingress"]
    assert closed["spec"]["ingress"] == [], "nothing but the node's probes"
    opened = policy("operatorNetworkPolicy.metricsFrom[0].namespaceSelector.matchLabels.team=obs")
    (rule,) = opened["spec"]["ingress"]
    assert rule["ports"] == [{"port": "metrics", "protocol": "TCP"}]
    assert rule["from"] == [{"namespaceSelector": {"matchLabels": {"team": "obs"}}}]
    assert not [
        d for d in render("operatorNetworkPolicy.enabled=false") if d["kind"] == "NetworkPolicy"
    ]
