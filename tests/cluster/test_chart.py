"""The Helm chart: lint, schema, server-side dry-run, a real install, and the operator
running with exactly the RBAC the chart grants."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import Client
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Namespace, ServiceAccount
from lightkube.resources.rbac_authorization_v1 import ClusterRole, Role

from gptoss_operator.versions import DEFAULT_VLLM_IMAGE
from gptoss_sandbox import binaries
from gptoss_sandbox.standin_engine import StandinEngine
from tests.cluster.job_helpers import SidecarProcess, create_job, wait_finished
from tests.cluster.model_helpers import create_model, wait_for_phase
from tests.conftest import ClusterUnderTest, OperatorProcess
from tests.support import wait_for

pytestmark = pytest.mark.cluster

CHART = Path(__file__).resolve().parents[2] / "charts" / "gptoss-operator"
KUBE_VERSION = "1.37.2"


def _tools() -> binaries.Binaries:
    found = binaries.ensure_binaries()
    return found


def helm(
    *args: str, kubeconfig: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = [str(_tools().helm), *args]
    if kubeconfig is not None:
        command += ["--kubeconfig", str(kubeconfig)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def render(*values: str) -> list[dict[str, Any]]:
    args = [
        "template",
        "gptoss",
        str(CHART),
        "--namespace",
        "gptoss-system",
        "--kube-version",
        KUBE_VERSION,
    ]
    for value in values:
        args += ["--set", value]
    return [doc for doc in yaml.safe_load_all(helm(*args).stdout) if doc]


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
            "Deployment",
            "Service",
        ]
    )
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
    assert [r["metadata"]["name"] for r in cluster_roles] == ["gptoss-gptoss-operator-crds"]
    args = next(d for d in documents if d["kind"] == "Deployment")["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert "--namespace=team-a" in args
    assert "--namespace=team-b" in args


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
                    str(_tools().kubectl),
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


def _token_kubeconfig(
    cluster: ClusterUnderTest, kube: Client, namespace: str, account: str, path: Path
) -> Path:
    request = kube.create(
        ServiceAccount.Token(
            metadata=ObjectMeta(name=account, namespace=namespace),
            spec=TokenRequestSpec(audiences=[], expirationSeconds=3600),
        ),
        account,
        namespace=namespace,
    )
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": account, "user": {"token": request.status.token}}],
        "contexts": [
            {
                "name": "sa",
                "context": {
                    "cluster": admin["clusters"][0]["name"],
                    "user": account,
                    "namespace": namespace,
                },
            }
        ],
        "current-context": "sa",
    }
    path.write_text(yaml.safe_dump(config))
    return path


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
        helm(
            "install",
            release,
            str(CHART),
            "--namespace",
            system,
            "--wait=false",
            "--set",
            f"watchNamespaces={{{team}}}",
            kubeconfig=cluster.kubeconfig,
        )
        deployment_name = f"{release}-gptoss-operator"
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

        operator_config = _token_kubeconfig(
            cluster, kube, system, deployment_name, tmp_path / "operator.kubeconfig"
        )
        scoped = OperatorProcess(
            operator_config,
            tmp_path / "scoped-operator.log",
            {"GPTOSS_METRICS_PORT": "0", "GPTOSS_RESYNC_SECONDS": "3"},
        )
        scoped.start(extra_args=["--namespace", team])
        try:
            create_model(kube, team, "scoped")
            wait_for_phase(kube, team, "scoped", "Ready", timeout=90)
            worker_config = _token_kubeconfig(
                cluster, kube, team, "scoped-worker", tmp_path / "worker.kubeconfig"
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
