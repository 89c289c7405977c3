"""Least privilege, checked by the apiserver's own authorizer: for each identity (the
operator in cluster and namespaced mode, the downloader, the sidecar) every permission it
uses is allowed and a list of dangerous ones is denied (SubjectAccessReview). The engine
holds no identity at all: its container mounts no token. And every pod the operator
creates is admitted in a namespace that enforces the ``restricted`` Pod Security profile.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, Client, KubeConfig, codecs
from lightkube.models.authorization_v1 import (
    NonResourceAttributes,
    ResourceAttributes,
    SubjectAccessReviewSpec,
)
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import RoleRef, Subject
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.authorization_v1 import SubjectAccessReview
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Event, Namespace, Pod, ServiceAccount
from lightkube.resources.rbac_authorization_v1 import RoleBinding
from lightkube.types import PatchType

from gptoss_operator.api.batch import InferenceBatchSpec
from gptoss_operator.api.model import GptOssModelSpec
from gptoss_operator.api.resources import (
    GptOssModelResource,
    InferenceBatchResource,
    InferenceJobResource,
)
from gptoss_operator.builders import ModelContext, download, rbac, serving
from gptoss_operator.builders.batch import BatchContext, merge_job, shards_job
from gptoss_operator.core.settings import Settings
from gptoss_sandbox.chart import helm
from tests.cluster.chart_helpers import (
    apiserver_refusal,
    dry_run_refusal,
    install,
    token_kubeconfig,
)
from tests.cluster.job_helpers import create_job
from tests.cluster.model_helpers import create_model, model_manifest, wait_for_phase
from tests.conftest import ClusterUnderTest, OperatorProcess
from tests.support import wait_for

pytestmark = pytest.mark.cluster

TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"

# (verb, group, resource, subresource, name); namespace given per check.
Check = tuple[str, str, str, str, str]


@dataclass(frozen=True)
class Identity:
    namespace: str
    account: str

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.account}"

    @property
    def groups(self) -> list[str]:
        return [
            "system:serviceaccounts",
            f"system:serviceaccounts:{self.namespace}",
            "system:authenticated",
        ]


def allowed(kube: Client, who: Identity, namespace: str | None, check: Check) -> bool:
    verb, group, resource, subresource, name = check
    review = kube.create(
        SubjectAccessReview(
            spec=SubjectAccessReviewSpec(
                user=who.user,
                groups=who.groups,
                resourceAttributes=ResourceAttributes(
                    verb=verb,
                    group=group,
                    resource=resource,
                    subresource=subresource or None,
                    name=name or None,
                    namespace=namespace,
                ),
            )
        )
    )
    return bool(review.status.allowed)


def assert_grants(
    kube: Client,
    who: Identity,
    namespace: str | None,
    allow: list[Check],
    deny: list[Check],
) -> None:
    wrong = [("should be allowed", c) for c in allow if not allowed(kube, who, namespace, c)]
    wrong += [("should be denied", c) for c in deny if allowed(kube, who, namespace, c)]
    assert not wrong, f"{who.user} in {namespace}: {wrong}"


# What no identity of the product may do in any namespace.
DANGEROUS: list[Check] = [
    ("get", "", "secrets", "", ""),
    ("list", "", "secrets", "", ""),
    ("watch", "", "secrets", "", ""),
    ("create", "", "pods", "exec", ""),
    ("create", "", "pods", "attach", ""),
    ("create", "", "pods", "portforward", ""),
    ("create", "", "serviceaccounts", "token", ""),
    ("create", "rbac.authorization.k8s.io", "roles", "", ""),
    ("escalate", "rbac.authorization.k8s.io", "roles", "", ""),
    ("bind", "rbac.authorization.k8s.io", "clusterroles", "", "cluster-admin"),
    ("bind", "rbac.authorization.k8s.io", "clusterroles", "", "admin"),
    ("bind", "rbac.authorization.k8s.io", "clusterroles", "", "edit"),
    ("update", "", "configmaps", "", ""),
    ("impersonate", "", "serviceaccounts", "", ""),
    ("delete", "", "persistentvolumeclaims", "", ""),
    ("deletecollection", "gptoss.ai", "inferencejobs", "", ""),
]

# Cluster-scoped writes no identity may make.
CLUSTER_WRITES: list[Check] = [
    ("create", "rbac.authorization.k8s.io", "clusterroles", "", ""),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings", "", ""),
    ("create", "", "namespaces", "", ""),
    ("delete", "", "namespaces", "", ""),
    ("patch", "", "nodes", "", ""),
    ("create", "", "persistentvolumes", "", ""),
    ("update", "apiextensions.k8s.io", "customresourcedefinitions", "", ""),
    ("create", "admissionregistration.k8s.io", "validatingwebhookconfigurations", "", ""),
]


def operator_needs(release: str) -> list[Check]:
    """What the operator does in a namespace it serves."""
    return [
        ("watch", "gptoss.ai", "gptossmodels", "", ""),
        ("patch", "gptoss.ai", "gptossmodels", "status", ""),
        ("list", "gptoss.ai", "inferencejobs", "", ""),
        ("patch", "gptoss.ai", "inferencejobs", "status", ""),
        ("delete", "gptoss.ai", "inferencejobs", "", ""),
        ("create", "apps", "deployments", "", ""),
        ("patch", "apps", "deployments", "", ""),
        ("create", "batch", "jobs", "", ""),
        ("delete", "batch", "jobs", "", ""),
        ("create", "", "persistentvolumeclaims", "", ""),
        ("patch", "", "persistentvolumeclaims", "", ""),
        ("create", "", "services", "", ""),
        ("create", "", "serviceaccounts", "", ""),
        ("create", "", "secrets", "", ""),
        ("create", "networking.k8s.io", "networkpolicies", "", ""),
        ("list", "", "pods", "", ""),
        ("create", "", "events", "", ""),
        ("create", "rbac.authorization.k8s.io", "rolebindings", "", ""),
        ("bind", "rbac.authorization.k8s.io", "clusterroles", "", f"{release}-downloader"),
        ("bind", "rbac.authorization.k8s.io", "clusterroles", "", f"{release}-sidecar"),
    ]


def operator_denied() -> list[Check]:
    return [
        *DANGEROUS,
        ("get", "", "configmaps", "", ""),
        ("create", "", "configmaps", "", ""),
        ("create", "", "pods", "", ""),
        ("delete", "", "pods", "", ""),
        ("update", "", "secrets", "", ""),
        ("patch", "", "secrets", "", ""),
        ("delete", "", "secrets", "", ""),
        ("delete", "apps", "deployments", "", ""),
        ("create", "gptoss.ai", "gptossmodels", "", ""),
        ("create", "gptoss.ai", "inferencejobs", "", ""),
        ("bind", "rbac.authorization.k8s.io", "roles", "", ""),
        (
            "bind",
            "rbac.authorization.k8s.io",
            "clusterroles",
            "",
            "system:controller:job-controller",
        ),
    ]


@dataclass
class Installed:
    release: str
    system: str
    team: str
    operator: Identity


@pytest.fixture
def installed(
    request: pytest.FixtureRequest, cluster: ClusterUnderTest, kube: Client, crds: list[str]
) -> Iterator[Installed]:
    """The chart installed (its operator Deployment is not what acts here: the reviews
    ask about its ServiceAccount); ``request.param`` True means namespaced mode."""
    del crds
    suffix = uuid.uuid4().hex[:6]
    system, team = f"t-sys-{suffix}", f"t-team-{suffix}"
    for name in (system, team):
        kube.create(Namespace(metadata=ObjectMeta(name=name)))
    release = f"s{suffix}"
    fullname = install(cluster, release, system, *([team] if request.param else []))
    try:
        yield Installed(fullname, system, team, Identity(system, fullname))
    finally:
        helm("uninstall", release, "--namespace", system, kubeconfig=cluster.kubeconfig)
        for name in (system, team):
            kube.delete(Namespace, name)


@pytest.mark.parametrize("installed", [False], indirect=True, ids=["cluster-mode"])
def test_operator_in_cluster_mode_holds_what_it_uses_and_nothing_dangerous(
    kube: Client, installed: Installed
) -> None:
    who = installed.operator
    for namespace in (installed.team, "default"):
        assert_grants(kube, who, namespace, operator_needs(installed.release), operator_denied())
    # kube-system: the dangerous grants are denied there too (the ClusterRole makes the
    # rest reachable in every namespace; namespaced mode is the way to fence it).
    assert_grants(kube, who, "kube-system", [], operator_denied())
    discovery: list[Check] = [
        ("list", "apiextensions.k8s.io", "customresourcedefinitions", "", ""),
        ("watch", "", "namespaces", "", ""),
    ]
    assert_grants(kube, who, None, discovery, CLUSTER_WRITES)


@pytest.mark.parametrize("installed", [True], indirect=True, ids=["namespaced-mode"])
def test_operator_in_namespaced_mode_acts_only_in_its_namespaces(
    kube: Client, installed: Installed
) -> None:
    who = installed.operator
    needs = operator_needs(installed.release)
    assert_grants(kube, who, installed.team, needs, operator_denied())
    for elsewhere in ("default", "kube-system", installed.system):
        assert_grants(kube, who, elsewhere, [], [*needs, *operator_denied()])
    assert_grants(kube, who, None, [], CLUSTER_WRITES)


@pytest.mark.parametrize("installed", [True], indirect=True, ids=["namespaced-mode"])
def test_operator_token_can_bind_its_workers_roles_and_no_other(
    cluster: ClusterUnderTest, kube: Client, installed: Installed, tmp_path: Path
) -> None:
    """The escalation check for real: as the operator's ServiceAccount, a RoleBinding to
    a worker ClusterRole is created, one to cluster-admin or edit is refused by RBAC; one
    to the operator's own Role (RBAC allows it: the operator holds every rule of it), to
    a subject elsewhere or without a model's labels and owner is refused by the chart's
    operator-bindings policy, and so is deleting a RoleBinding a model does not own."""
    config = token_kubeconfig(
        cluster, kube, installed.system, installed.operator.account, tmp_path / "op.kubeconfig"
    )
    as_operator = Client(KubeConfig.from_file(str(config)), field_manager="security-test")
    team = installed.team
    ours = {
        "labels": {"gptoss.ai/model": "m", "app.kubernetes.io/managed-by": "gptoss-operator"},
        "ownerReferences": [
            {"apiVersion": "gptoss.ai/v1alpha1", "kind": "GptOssModel", "name": "m", "uid": "u-1"}
        ],
    }

    def binding(
        role: str, kind: str = "ClusterRole", subject_namespace: str = team, **metadata: Any
    ) -> RoleBinding:
        return RoleBinding.from_dict(
            {
                "metadata": {
                    "name": f"probe-{role.replace(':', '-')}",
                    "namespace": team,
                    **(metadata or ours),
                },
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
                "subjects": [
                    {"kind": "ServiceAccount", "name": "default", "namespace": subject_namespace}
                ],
            }
        )

    def refusal(obj: RoleBinding) -> str | None:
        return dry_run_refusal(as_operator, obj)

    sidecar_role = f"{installed.release}-sidecar"
    own_role = wait_for(
        lambda: refusal(binding(installed.operator.account, kind="Role")),
        timeout=30,
        message="the operator-bindings policy in effect",
    )
    assert own_role.startswith("403 "), own_role
    assert "roleRef: the operator binds only its workers' roles (" in own_role
    assert refusal(binding(sidecar_role)) is None
    elsewhere_subject = refusal(binding(sidecar_role, subject_namespace="default"))
    assert f"to ServiceAccounts of {team}" in (elsewhere_subject or "")
    unowned = refusal(binding(sidecar_role, labels={"gptoss.ai/model": "m"}))
    assert "metadata: the operator writes only its models' and batches' rolebindings" in (
        unowned or ""
    )
    for role in ("cluster-admin", "edit", "admin"):
        with pytest.raises(ApiError) as refused:
            as_operator.create(binding(role))
        assert refused.value.status.code == 403, role
    with pytest.raises(ApiError) as elsewhere:
        as_operator.create(
            RoleBinding(
                metadata=ObjectMeta(name="probe", namespace="kube-system"),
                roleRef=RoleRef(
                    apiGroup="rbac.authorization.k8s.io", kind="ClusterRole", name=sidecar_role
                ),
                subjects=[Subject(kind="ServiceAccount", name="default", namespace="kube-system")],
            )
        )
    assert elsewhere.value.status.code == 403
    # A team's own binding: RBAC lets the operator delete RoleBindings, the policy not this.
    kube.create(binding("view", name="team-binding", namespace=team))
    with pytest.raises(ApiError) as deleted:
        as_operator.delete(RoleBinding, "team-binding", namespace=team)
    assert deleted.value.status.code == 403
    assert "the operator deletes only its models' and batches' rolebindings" in str(
        deleted.value.status.message
    )
    assert kube.get(RoleBinding, "team-binding", namespace=team).metadata.name == "team-binding"
    kube.create(
        Job.from_dict(
            {
                "metadata": {"name": "team-job", "namespace": team},
                "spec": {
                    "suspend": True,
                    "template": {
                        "spec": {
                            "restartPolicy": "Never",
                            "containers": [{"name": "c", "image": "busybox"}],
                        }
                    },
                },
            }
        )
    )
    with pytest.raises(ApiError) as job_deleted:
        as_operator.delete(Job, "team-job", namespace=team, dry_run=True)
    assert "the operator deletes only its models' and batches' jobs" in str(
        job_deleted.value.status.message
    )


def test_workers_hold_only_their_own_rules_and_the_engine_holds_no_token(
    kube: Client, namespace: str, operator: OperatorProcess
) -> None:
    del operator
    create_model(kube, namespace, "sec")
    wait_for_phase(kube, namespace, "sec", "Ready", timeout=90)
    downloader = Identity(namespace, "sec-download")
    sidecar = Identity(namespace, "sec-sidecar")
    assert_grants(
        kube,
        downloader,
        namespace,
        [
            ("get", "gptoss.ai", "gptossmodels", "", "sec"),
            ("patch", "gptoss.ai", "gptossmodels", "status", "sec"),
        ],
        [
            *DANGEROUS,
            ("patch", "gptoss.ai", "gptossmodels", "", "sec"),
            ("list", "gptoss.ai", "inferencejobs", "", ""),
            ("patch", "gptoss.ai", "inferencejobs", "status", ""),
            ("create", "", "configmaps", "", ""),
            ("create", "", "pods", "", ""),
        ],
    )
    assert_grants(
        kube,
        sidecar,
        namespace,
        [
            ("watch", "gptoss.ai", "inferencejobs", "", ""),
            ("patch", "gptoss.ai", "inferencejobs", "status", ""),
            ("create", "", "configmaps", "", ""),
            ("delete", "", "configmaps", "", ""),
            ("create", "", "events", "", ""),
            ("create", "events.k8s.io", "events", "", ""),
        ],
        [
            *[c for c in DANGEROUS if c[2] != "configmaps"],
            ("get", "", "configmaps", "", ""),
            ("patch", "gptoss.ai", "inferencejobs", "", ""),
            ("create", "gptoss.ai", "inferencejobs", "", ""),
            ("delete", "gptoss.ai", "inferencejobs", "", ""),
            ("patch", "gptoss.ai", "gptossmodels", "status", ""),
            ("create", "", "pods", "", ""),
            ("list", "", "pods", "", ""),
        ],
    )
    batch_worker = Identity(namespace, "sec-batch")
    assert_grants(
        kube,
        batch_worker,
        namespace,
        [
            ("get", "gptoss.ai", "inferencebatches", "", ""),
            ("patch", "gptoss.ai", "inferencebatches", "status", ""),
        ],
        [
            *DANGEROUS,
            ("patch", "gptoss.ai", "inferencebatches", "", ""),
            ("create", "gptoss.ai", "inferencebatches", "", ""),
            ("delete", "gptoss.ai", "inferencebatches", "", ""),
            ("list", "gptoss.ai", "inferencejobs", "", ""),
            ("patch", "gptoss.ai", "inferencejobs", "status", ""),
            ("patch", "gptoss.ai", "gptossmodels", "status", ""),
            ("create", "", "configmaps", "", ""),
            ("create", "", "pods", "", ""),
            ("list", "", "pods", "", ""),
            ("create", "batch", "jobs", "", ""),
        ],
    )
    for worker in (downloader, sidecar, batch_worker):
        assert_grants(kube, worker, "default", [], [("get", "gptoss.ai", "inferencejobs", "", "")])
        assert_grants(kube, worker, None, [], CLUSTER_WRITES)
    assert not allowed_path(kube, sidecar, "/metrics")

    # The engine has no identity: the pod mounts no token and only the sidecar asks
    # for one (checked on the pods the ReplicaSet created, after admission).
    pods = kube.list(Pod, namespace=namespace, labels={"gptoss.ai/model": "sec"})
    serving = [p for p in pods if "vllm" in {c.name for c in p.spec.containers}]
    assert serving, "the vLLM pod exists"
    for pod in serving:
        assert pod.spec.automountServiceAccountToken is False
        mounts = {c.name: {m.mountPath for m in c.volumeMounts or []} for c in pod.spec.containers}
        assert TOKEN_MOUNT not in mounts["vllm"]
        assert TOKEN_MOUNT in mounts["sidecar"]


def allowed_path(kube: Client, who: Identity, path: str) -> bool:
    review = kube.create(
        SubjectAccessReview(
            spec=SubjectAccessReviewSpec(
                user=who.user,
                groups=who.groups,
                nonResourceAttributes=NonResourceAttributes(path=path, verb="get"),
            )
        )
    )
    return bool(review.status.allowed)


def test_every_pod_is_admitted_where_the_restricted_profile_is_enforced(
    kube: Client, operator: OperatorProcess
) -> None:
    del operator
    namespace = f"t-pss-{uuid.uuid4().hex[:8]}"
    kube.create(
        Namespace(
            metadata=ObjectMeta(
                name=namespace,
                labels={
                    "pod-security.kubernetes.io/enforce": "restricted",
                    "pod-security.kubernetes.io/enforce-version": "latest",
                },
            )
        )
    )
    try:
        create_model(kube, namespace, "strict")
        wait_for_phase(kube, namespace, "strict", "Ready", timeout=90)
        jobs = list(kube.list(Job, namespace=namespace))
        deployments = list(kube.list(Deployment, namespace=namespace))
        assert len(jobs) == 1
        assert len(deployments) == 1
        pods = list(kube.list(Pod, namespace=namespace))
        owners = sorted(p.metadata.ownerReferences[0].kind for p in pods)
        assert owners == ["Job", "ReplicaSet"], owners
        # A pod the profile refuses is never created; its controller says so.
        warnings = [e for e in kube.list(Event, namespace=namespace) if e.reason == "FailedCreate"]
        assert not warnings, [w.message for w in warnings]
    finally:
        kube.delete(Namespace, namespace)


def test_a_pod_outside_the_profile_is_refused_there(kube: Client) -> None:
    """The check above can fail: the same namespace refuses a root pod."""
    namespace = f"t-pss-{uuid.uuid4().hex[:8]}"
    kube.create(
        Namespace(
            metadata=ObjectMeta(
                name=namespace, labels={"pod-security.kubernetes.io/enforce": "restricted"}
            )
        )
    )
    try:
        with pytest.raises(ApiError) as refused:
            kube.create(
                Pod.from_dict(
                    {
                        "metadata": {"name": "root", "namespace": namespace},
                        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
                    }
                )
            )
        assert refused.value.status.code == 403
        assert "restricted" in refused.value.status.message
    finally:
        kube.delete(Namespace, namespace)


def test_upgrade_unbinds_the_one_worker_role_of_earlier_versions(
    kube: Client, namespace: str, operator: OperatorProcess
) -> None:
    """Earlier versions bound one Role with both workers' rules to ``<model>-worker``;
    the operator removes that binding (only one its model owns) when it next reconciles."""
    model = create_model(kube, namespace, "old")
    wait_for_phase(kube, namespace, "old", "Ready", timeout=90)
    owner = {
        "apiVersion": "gptoss.ai/v1alpha1",
        "kind": "GptOssModel",
        "name": "old",
        "uid": model["metadata"]["uid"],
        "controller": True,
    }
    role_ref = RoleRef(apiGroup="rbac.authorization.k8s.io", kind="Role", name="old-worker")
    subjects = [Subject(kind="ServiceAccount", name="old-worker", namespace=namespace)]
    operator.stop()
    try:
        kube.create(
            RoleBinding.from_dict(
                {
                    "metadata": {
                        "name": "old-worker",
                        "namespace": namespace,
                        "ownerReferences": [owner],
                    },
                    "roleRef": role_ref.to_dict(),
                    "subjects": [s.to_dict() for s in subjects],
                }
            )
        )
    finally:
        operator.start()

    def unbound() -> bool:
        names = {b.metadata.name for b in kube.list(RoleBinding, namespace=namespace)}
        return "old-worker" not in names

    wait_for(unbound, timeout=60, message="the legacy worker binding removed")
    names = {b.metadata.name for b in kube.list(RoleBinding, namespace=namespace)}
    assert {"old-download", "old-sidecar"} <= names


def test_guard_rails_refuse_images_and_endpoints_the_admin_did_not_allow(
    cluster: ClusterUnderTest, kube: Client, namespace: str, crds: list[str]
) -> None:
    del crds
    # A model from before the rules: it keeps working, and only what changes is checked.
    create_model(
        kube,
        namespace,
        "before",
        source={"repo": "openai/gpt-oss-20b", "endpoint": "https://mirror.internal"},
        serving={"image": "elsewhere.example/vllm:1"},
    )
    system = f"t-sys-{uuid.uuid4().hex[:6]}"
    kube.create(Namespace(metadata=ObjectMeta(name=system)))
    release = f"r{uuid.uuid4().hex[:6]}"
    install(
        cluster,
        release,
        system,
        values=(
            "guardRails.allowedImagePrefixes={registry.internal/,vllm/vllm-openai:,mirror.corp}",
            "guardRails.allowEndpointOverride=false",
        ),
    )

    def refusal(name: str, **spec: object) -> str | None:
        """The apiserver's refusal of a model (dry run), None when it is admitted."""
        try:
            kube.create(
                GptOssModelResource.from_dict(model_manifest(name, **spec)),
                namespace=namespace,
                dry_run=True,
            )
        except ApiError as error:
            return str(error.status.message)
        return None

    try:
        first = wait_for(
            lambda: refusal("m", serving={"image": "evil.example/vllm:1"}),
            timeout=30,
            message="the guard rails in effect",
        )
        assert "spec.serving.image: evil.example/vllm:1 is not an allowed image" in first
        assert "registry.internal/, vllm/vllm-openai:, mirror.corp" in first
        download = refusal("m", download={"image": "evil.example/dl:1"})
        assert download is not None
        assert "spec.download.image: evil.example/dl:1" in download
        sidecar = refusal("m", sidecar={"image": "evil.example/sc:1"})
        assert sidecar is not None
        assert "spec.sidecar.image" in sidecar
        endpoint = refusal("m", source={"repo": "openai/gpt-oss-20b", "endpoint": "https://x.io"})
        assert endpoint is not None
        assert endpoint.endswith(
            "spec.source.endpoint: models here download from Hugging Face only; "
            "https://x.io is not allowed (guardRails.allowEndpointOverride)"
        )
        # A prefix without a trailing / matches at the host's end, never a longer host.
        lookalike = refusal("m", serving={"image": "mirror.corp.evil.example/vllm:1"})
        assert "spec.serving.image: mirror.corp.evil.example/vllm:1 is not an allowed" in (
            lookalike or ""
        )
        assert refusal("m", serving={"image": "mirror.corp/vllm:1"}) is None
        assert refusal("m", serving={"image": "mirror.corp:5000/vllm:1"}) is None
        assert refusal("m", serving={"image": "registry.internal/vllm:2"}) is None
        assert refusal("m", serving={"image": "vllm/vllm-openai:v0.32.0"}) is None
        assert refusal("m") is None, "defaults are the admin's own settings"

        # The older model: edits that keep its image and endpoint pass; a new image not.
        kube.patch(
            GptOssModelResource,
            "before",
            {"metadata": {"labels": {"team": "a"}}, "spec": {"serving": {"replicas": 2}}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )
        with pytest.raises(ApiError) as changed:
            kube.patch(
                GptOssModelResource,
                "before",
                {"spec": {"serving": {"image": "elsewhere.example/vllm:2"}}},
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )
        assert "spec.serving.image: elsewhere.example/vllm:2" in changed.value.status.message
    finally:
        helm("uninstall", release, "--namespace", system, kubeconfig=cluster.kubeconfig)
        kube.delete(Namespace, system)
        # The apiserver drops a deleted policy a moment later: wait, for the next tests.
        wait_for(
            lambda: refusal("after", source={"endpoint": "https://x.io"}) is None,
            timeout=30,
            message="the guard rails gone",
        )


RESTRICTED_CONTAINER = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
}
RESTRICTED_POD = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def probe_deployment(
    namespace: str,
    labels: dict[str, str],
    container: dict[str, Any] | None = None,
    **pod: object,
) -> Deployment:
    """A Deployment of the operator's shape (restricted), with ``container`` and ``pod``
    fields changed."""
    main = {"name": "c", "image": "busybox", "securityContext": RESTRICTED_CONTAINER}
    return Deployment.from_dict(
        {
            "metadata": {"name": "probe", "namespace": namespace, "labels": labels},
            "spec": {
                "selector": {"matchLabels": {"probe": "x"}},
                "template": {
                    "metadata": {"labels": {"probe": "x"}},
                    "spec": {
                        "securityContext": RESTRICTED_POD,
                        "containers": [{**main, **(container or {})}],
                        **pod,
                    },
                },
            },
        }
    )


def operator_client(
    cluster: ClusterUnderTest, kube: Client, installed: Installed, tmp_path: Path
) -> Client:
    config = token_kubeconfig(
        cluster, kube, installed.system, installed.operator.account, tmp_path / "op.kubeconfig"
    )
    return Client(KubeConfig.from_file(str(config)), field_manager="security-test")


OURS = {"gptoss.ai/model": "m", "app.kubernetes.io/managed-by": "gptoss-operator"}


@pytest.mark.parametrize("installed", [True], indirect=True, ids=["namespaced-mode"])
def test_the_operator_token_starts_only_its_models_pods_as_their_workers(
    cluster: ClusterUnderTest, kube: Client, installed: Installed, tmp_path: Path
) -> None:
    """RBAC must let the operator create Deployments and Jobs; the chart's admission
    policy fences what they may be, for whoever holds the operator's token: the pods it
    renders, and nothing of another shape."""
    as_operator = operator_client(cluster, kube, installed, tmp_path)
    team = installed.team

    def deployment(labels: dict[str, str], **pod: object) -> Deployment:
        return probe_deployment(team, labels, **pod)

    def refusal(obj: Deployment | Job) -> str | None:
        return dry_run_refusal(as_operator, obj)

    unlabelled = wait_for(
        lambda: refusal(deployment({}, serviceAccountName="m-sidecar")),
        timeout=30,
        message="the operator-scope policy in effect",
    )
    assert unlabelled.startswith("403 "), "Forbidden, as the policy says"
    assert "metadata.labels: the operator writes only its models'" in unlabelled
    other_identity = refusal(deployment(OURS, serviceAccountName="default"))
    assert other_identity is not None
    assert "serviceAccountName" in other_identity
    assert "not default" in other_identity
    assert "serviceAccountName" in (refusal(deployment(OURS)) or ""), "no name means default"
    secret_volume = refusal(
        deployment(
            OURS,
            serviceAccountName="m-sidecar",
            volumes=[{"name": "s", "secret": {"secretName": "anything"}}],
        )
    )
    assert "spec.template.spec.volumes[s]: the operator's pods mount only" in (secret_volume or "")
    projected_secret = refusal(
        deployment(
            OURS,
            serviceAccountName="m-sidecar",
            volumes=[{"name": "p", "projected": {"sources": [{"secret": {"name": "x"}}]}}],
        )
    )
    assert "spec.template.spec.volumes[p]" in (projected_secret or "")
    host = refusal(deployment(OURS, serviceAccountName="m-sidecar", hostNetwork=True))
    assert "host namespaces" in (host or "")
    init = refusal(
        deployment(
            OURS,
            serviceAccountName="m-sidecar",
            initContainers=[{"name": "i", "image": "busybox"}],
        )
    )
    assert "no init or ephemeral containers and no nodeName" in (init or "")
    pinned = refusal(deployment(OURS, serviceAccountName="m-sidecar", nodeName="gpu-node-1"))
    assert "no nodeName" in (pinned or "")
    root_pod = refusal(
        deployment(
            OURS, serviceAccountName="m-sidecar", securityContext={**RESTRICTED_POD, "runAsUser": 0}
        )
    )
    assert "spec.template.spec.securityContext: the operator's pods run as non-root" in (
        root_pod or ""
    )
    for loose in (
        {"capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]}},
        {"runAsUser": 0},
        {"privileged": True, "allowPrivilegeEscalation": True},
        {"allowPrivilegeEscalation": True},
        {"capabilities": {"drop": ["NET_RAW"]}},
    ):
        container = {"securityContext": {**RESTRICTED_CONTAINER, **loose}}
        answer = refusal(probe_deployment(team, OURS, container, serviceAccountName="m-sidecar"))
        assert "spec.template.spec.containers[c].securityContext: the operator's containers" in (
            answer or ""
        ), loose
    host_port = refusal(
        probe_deployment(
            team, OURS, {"ports": [{"containerPort": 80, "hostPort": 80}]},
            serviceAccountName="m-sidecar",
        )
    )  # fmt: skip
    assert "no host ports" in (host_port or "")
    job = Job.from_dict(
        {
            "metadata": {"name": "probe", "namespace": team, "labels": OURS},
            "spec": {
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "serviceAccountName": "kube-admin-ish",
                        "securityContext": RESTRICTED_POD,
                        "containers": [
                            {
                                "name": "c",
                                "image": "busybox",
                                "securityContext": RESTRICTED_CONTAINER,
                            }
                        ],
                    }
                }
            },
        }
    )
    assert "serviceAccountName" in (refusal(job) or "")
    assert refusal(deployment(OURS, serviceAccountName="m-sidecar")) is None
    assert refusal(deployment(OURS, serviceAccountName="m-download")) is None
    # Nobody else is fenced by it: the admin creates the unlabelled Deployment.
    kube.create(deployment({}, serviceAccountName="default"), dry_run=True)


@pytest.mark.parametrize("installed", [True], indirect=True, ids=["namespaced-mode"])
def test_everything_the_operator_renders_passes_its_own_fence(
    cluster: ClusterUnderTest, kube: Client, installed: Installed, tmp_path: Path
) -> None:
    """The allow-list is the operator's own output: a model's Deployment, its download
    Job, a batch's shard and merge Jobs and the workers' bindings, with every optional
    part the API offers, are admitted for the operator's token."""
    as_operator = operator_client(cluster, kube, installed, tmp_path)
    release = installed.release
    settings = Settings(
        downloader_cluster_role=f"{release}-downloader",
        sidecar_cluster_role=f"{release}-sidecar",
        batch_worker_cluster_role=f"{release}-batch-worker",
    )
    model = ModelContext(
        "m",
        installed.team,
        "00000000-0000-0000-0000-000000000001",
        GptOssModelSpec.model_validate(
            {
                "source": {"repo": "openai/gpt-oss-20b", "tokenSecretRef": {"name": "hf"}},
                "storage": {"existingClaim": "weights"},
                "serving": {
                    "apiKeySecretRef": {"name": "key"},
                    "env": [
                        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
                    ],
                    "nodeSelector": {"gpu": "h100"},
                    "tolerations": [{"key": "gpu", "operator": "Exists"}],
                    "priorityClassName": "high",
                },
            }
        ),
        settings,
    )
    batch = BatchContext(
        "b",
        installed.team,
        "00000000-0000-0000-0000-000000000002",
        InferenceBatchSpec.model_validate(
            {
                "modelRef": {"name": "m"},
                "input": {"configMap": {"name": "requests"}},
                "output": {
                    "s3": {"bucket": "out", "key": "k", "credentialsSecretRef": {"name": "s3"}}
                },
            }
        ),
        model,
        key_secret="b-gateway-0123456789",
    )
    # A batch of the team's for a model of another namespace: its shards run in the
    # team's namespace as that model's batch identity there, bound by the operator.
    away = replace(batch, model=replace(model, namespace="platform"))
    rendered = [
        serving.deployment(model, "digest"),
        download.job(model, "digest"),
        shards_job(batch),
        merge_job(batch),
        shards_job(away),
        *[o for o in rbac.worker_identities(model) if o["kind"] == "RoleBinding"],
        rbac.tenant_batch_identity("m", "platform", installed.team, f"{release}-batch-worker")[1],
    ]
    wait_for(
        lambda: dry_run_refusal(as_operator, probe_deployment(installed.team, {})),
        timeout=30,
        message="the operator-scope policy in effect",
    )
    for manifest in rendered:
        manifest["metadata"]["namespace"] = installed.team
        answer = dry_run_refusal(as_operator, codecs.from_dict(manifest))
        assert answer is None, (manifest["kind"], manifest["metadata"]["name"], answer)


@pytest.mark.parametrize("installed", [False], indirect=True, ids=["cluster-mode"])
def test_in_cluster_mode_the_operator_starts_nothing_in_kube_system_or_its_own_namespace(
    cluster: ClusterUnderTest, kube: Client, installed: Installed, tmp_path: Path
) -> None:
    as_operator = operator_client(cluster, kube, installed, tmp_path)
    wait_for(
        lambda: dry_run_refusal(as_operator, probe_deployment(installed.team, {})),
        timeout=30,
        message="the operator-scope policy in effect",
    )
    for namespace in ("kube-system", installed.system):
        answer = dry_run_refusal(
            as_operator, probe_deployment(namespace, OURS, serviceAccountName="m-sidecar")
        )
        assert (
            f"metadata.namespace: the operator starts nothing in {namespace} (kube-system and "
            "its own namespace are out of bounds)" in (answer or "")
        ), answer
    assert (
        dry_run_refusal(
            as_operator, probe_deployment(installed.team, OURS, serviceAccountName="m-sidecar")
        )
        is None
    )


@pytest.mark.parametrize("installed", [True], indirect=True, ids=["namespaced-mode"])
def test_a_models_workers_write_only_their_own_models_objects(
    cluster: ClusterUnderTest, kube: Client, installed: Installed, tmp_path: Path
) -> None:
    """RBAC binds the workers' roles per namespace; the worker-scope policy narrows each
    to its model: model a's sidecar, downloader and batch worker, each with its own
    token, against model b's jobs, ConfigMaps, status and batches."""
    team, release = installed.team, installed.release
    for model in ("a", "b"):
        create_model(kube, team, model)
        create_job(kube, team, f"job-{model}", model, "hi")
        kube.create(
            InferenceBatchResource.from_dict(
                {
                    "apiVersion": "gptoss.ai/v1alpha1",
                    "kind": "InferenceBatch",
                    "metadata": {"name": f"batch-{model}"},
                    "spec": {
                        "modelRef": {"name": model},
                        "input": {"configMap": {"name": "in"}},
                        "output": {"volume": {"claimName": "out", "path": "o"}},
                    },
                }
            ),
            namespace=team,
        )
    clients = {}
    for worker, role in (
        ("sidecar", "sidecar"),
        ("download", "downloader"),
        ("batch", "batch-worker"),
    ):
        account = f"a-{worker}"
        # The session's operator, reconciling model a, may have made it already.
        kube.apply(
            ServiceAccount(metadata=ObjectMeta(name=account, namespace=team)),
            field_manager="security-test",
        )
        kube.create(
            RoleBinding(
                metadata=ObjectMeta(name=f"{account}-probe", namespace=team),
                roleRef=RoleRef(
                    apiGroup="rbac.authorization.k8s.io",
                    kind="ClusterRole",
                    name=f"{release}-{role}",
                ),
                subjects=[Subject(kind="ServiceAccount", name=account, namespace=team)],
            )
        )
        config = token_kubeconfig(cluster, kube, team, account, tmp_path / f"{account}.kubeconfig")
        clients[worker] = Client(KubeConfig.from_file(str(config)), field_manager="worker")

    def patch_status(worker: str, resource: Any, name: str) -> str | None:
        return apiserver_refusal(
            lambda: clients[worker].patch(
                resource.Status,
                name,
                {"status": {"message": "x"}}
                if resource is not GptOssModelResource
                else {"status": {"download": {"message": "x"}}},
                namespace=team,
                patch_type=PatchType.MERGE,
                dry_run=True,
            )
        )

    def output_config_map(model: str, owner_kind: str = "InferenceJob") -> str | None:
        job = kube.get(InferenceJobResource, f"job-{model}", namespace=team)
        manifest = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": f"out-{model}",
                "namespace": team,
                "labels": {"gptoss.ai/model": model},
                "ownerReferences": [
                    {
                        "apiVersion": "gptoss.ai/v1alpha1",
                        "kind": owner_kind,
                        "name": f"job-{model}",
                        "uid": job.metadata.uid,
                    }
                ],
            },
            "data": {"response": "x"},
        }
        return dry_run_refusal(clients["sidecar"], codecs.from_dict(manifest))

    other = wait_for(
        lambda: patch_status("sidecar", InferenceJobResource, "job-b"),
        timeout=30,
        message="the worker-scope policy in effect",
    )
    user = f"system:serviceaccount:{team}:a-sidecar"
    assert other.startswith("403 "), other
    assert (
        f"{user} is a worker of GptOssModel a and writes only its InferenceJobs' status and "
        "their output ConfigMaps (labelled gptoss.ai/model=a), not inferencejobs/status job-b"
    ) in other
    assert patch_status("sidecar", InferenceJobResource, "job-a") is None
    assert "not configmaps out-b" in (output_config_map("b") or "")
    assert output_config_map("a", owner_kind="GptOssModel") is not None
    assert output_config_map("a") is None
    downloader = patch_status("download", GptOssModelResource, "b")
    assert "writes only its model's status, not gptossmodels/status b" in (downloader or "")
    assert patch_status("download", GptOssModelResource, "a") is None
    endpoint = apiserver_refusal(
        lambda: clients["download"].patch(
            GptOssModelResource.Status,
            "a",
            {"status": {"endpoint": "http://collector.evil.example/v1"}},
            namespace=team,
            patch_type=PatchType.MERGE,
            dry_run=True,
        )
    )
    assert "status: " in (endpoint or "")
    assert "the endpoint, API key reference, served name and phase are the operator's" in (
        endpoint or ""
    )
    batch = patch_status("batch", InferenceBatchResource, "batch-b")
    assert "writes only its InferenceBatches' status, not inferencebatches/status batch-b" in (
        batch or ""
    )
    assert patch_status("batch", InferenceBatchResource, "batch-a") is None
