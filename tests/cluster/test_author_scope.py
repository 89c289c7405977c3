"""The chart's author-scope policies, enforced by the real apiserver: whoever writes a
GptOssModel or an InferenceBatch reaches through it only what they could reach
themselves (the apiserver's own authorizer answers for the requesting user), cannot set
the engine's reserved env or flags, and signs S3 requests only for allowed endpoints.

The author is a ServiceAccount holding exactly the permissions the test grants: to
write models and batches, to get the Secret ``mine``, the ConfigMap ``mine`` and the
claim ``readable``, and to update the claim ``writable``. ``theirs`` belongs to another
team of the same namespace.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import PolicyRule, RoleRef, Subject
from lightkube.resources.core_v1 import Namespace, ServiceAccount
from lightkube.resources.rbac_authorization_v1 import Role, RoleBinding
from lightkube.types import PatchType

from gptoss_operator.api.resources import GptOssModelResource, InferenceBatchResource
from gptoss_sandbox.chart import helm
from tests.cluster.chart_helpers import dry_run_refusal, install, token_kubeconfig
from tests.cluster.model_helpers import create_model, model_manifest
from tests.conftest import ClusterUnderTest
from tests.support import wait_for

pytestmark = pytest.mark.cluster

MINIO = "http://minio.storage.svc:9000"


@dataclass(frozen=True)
class Scoped:
    namespace: str
    author: Client
    user: str
    release: str
    system: str


def grant(kube: Client, namespace: str, account: str) -> None:
    rules = [
        PolicyRule(
            apiGroups=["gptoss.ai"],
            resources=["gptossmodels", "inferencebatches"],
            verbs=["get", "create", "update", "patch"],
        ),
        PolicyRule(apiGroups=[""], resources=["secrets"], verbs=["get"], resourceNames=["mine"]),
        PolicyRule(apiGroups=[""], resources=["configmaps"], verbs=["get"], resourceNames=["mine"]),
        PolicyRule(
            apiGroups=[""],
            resources=["persistentvolumeclaims"],
            verbs=["get"],
            resourceNames=["readable", "writable"],
        ),
        PolicyRule(
            apiGroups=[""],
            resources=["persistentvolumeclaims"],
            verbs=["update"],
            resourceNames=["writable"],
        ),
    ]
    kube.create(Role(metadata=ObjectMeta(name="author", namespace=namespace), rules=rules))
    kube.create(
        RoleBinding(
            metadata=ObjectMeta(name="author", namespace=namespace),
            roleRef=RoleRef(apiGroup="rbac.authorization.k8s.io", kind="Role", name="author"),
            subjects=[Subject(kind="ServiceAccount", name=account, namespace=namespace)],
        )
    )


@pytest.fixture(scope="module")
def scoped(
    cluster: ClusterUnderTest,
    kube: Client,
    crds: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Scoped]:
    """The chart installed with an S3 allow-list and ambient credentials forbidden, and
    the author's client, once for the module."""
    del crds
    suffix = uuid.uuid4().hex[:6]
    namespace, system, release = f"t-authors-{suffix}", f"t-sys-{suffix}", f"a{suffix}"
    for name in (namespace, system):
        kube.create(Namespace(metadata=ObjectMeta(name=name)))
    kube.create(ServiceAccount(metadata=ObjectMeta(name="author", namespace=namespace)))
    grant(kube, namespace, "author")
    path = tmp_path_factory.mktemp("author") / "author.kubeconfig"
    config = token_kubeconfig(cluster, kube, namespace, "author", path)
    author = Client(KubeConfig.from_file(str(config)), field_manager="author")
    install(
        cluster,
        release,
        system,
        values=(
            "authorScope.s3.allowedEndpoints={" + MINIO + "}",
            "authorScope.s3.allowAmbientCredentials=false",
        ),
    )
    user = f"system:serviceaccount:{namespace}:author"
    try:
        wait_for(
            lambda: model_refusal(kube, namespace, serving={"env": [{"name": "HF_TOKEN"}]}),
            timeout=30,
            message="the author-scope policies in effect",
        )
        yield Scoped(namespace, author, user, release, system)
    finally:
        helm("uninstall", release, "--namespace", system, kubeconfig=cluster.kubeconfig)
        # The apiserver drops a deleted policy a moment later: wait, for the next tests.
        wait_for(
            lambda: model_refusal(kube, namespace, serving={"env": [{"name": "HF_TOKEN"}]}) is None,
            timeout=30,
            message="the author-scope policies gone",
        )
        for name in (namespace, system):
            kube.delete(Namespace, name)


def model_refusal(client: Client, namespace: str, **spec: Any) -> str | None:
    """The apiserver's refusal of a model (dry run), None when it is admitted."""
    model = GptOssModelResource.from_dict(model_manifest("m", **spec))
    return dry_run_refusal(client, model, namespace)


def batch_refusal(client: Client, namespace: str, **spec: Any) -> str | None:
    manifest = {
        "apiVersion": "gptoss.ai/v1alpha1",
        "kind": "InferenceBatch",
        "metadata": {"name": "b"},
        "spec": {
            "modelRef": {"name": "m"},
            "input": {"configMap": {"name": "mine"}},
            "output": {"volume": {"claimName": "writable", "path": "out"}},
            **spec,
        },
    }
    return dry_run_refusal(client, InferenceBatchResource.from_dict(manifest), namespace)


def env(name: str, **value_from: Any) -> dict[str, Any]:
    return {"name": name, "valueFrom": value_from}


def test_a_model_may_name_only_what_its_author_may_get(scoped: Scoped) -> None:
    author, ns, user = scoped.author, scoped.namespace, scoped.user

    def refusal(**spec: Any) -> str | None:
        return model_refusal(author, ns, **spec)

    token = refusal(source={"tokenSecretRef": {"name": "theirs"}})
    policy = f"{scoped.release}-gptoss-operator-model-author-scope"
    assert token == (
        f"403 gptossmodels.gptoss.ai \"m\" is forbidden: ValidatingAdmissionPolicy '{policy}' "
        f"with binding '{policy}' denied request: spec.source.tokenSecretRef: {user} may not "
        f"get secrets theirs in {ns}, so neither may the workers on their behalf"
    )
    api_key = refusal(serving={"apiKeySecretRef": {"name": "theirs", "key": "k"}})
    assert f"spec.serving.apiKeySecretRef: {user} may not get secrets theirs" in (api_key or "")
    secret_env = refusal(serving={"env": [env("X", secretKeyRef={"name": "theirs", "key": "k"})]})
    assert "spec.serving.env[X].valueFrom.secretKeyRef: " in (secret_env or "")
    assert "may not get secrets theirs" in (secret_env or "")
    map_env = refusal(serving={"env": [env("Y", configMapKeyRef={"name": "theirs", "key": "k"})]})
    assert "spec.serving.env[Y].valueFrom.configMapKeyRef: " in (map_env or "")
    assert "may not get configmaps theirs" in (map_env or "")
    # The downloader writes an existing claim: reading it is not enough.
    claim = refusal(storage={"existingClaim": "readable"})
    assert f"spec.storage.existingClaim: {user} may not update persistentvolumeclaims " in (
        claim or ""
    )
    two = refusal(
        serving={
            "env": [
                env("A", secretKeyRef={"name": "mine", "key": "k"}),
                env("B", secretKeyRef={"name": "theirs", "key": "k"}),
            ]
        }
    )
    assert (
        "spec.serving.env[A].valueFrom.secretKeyRef, spec.serving.env[B].valueFrom.secretKeyRef: "
        f"{user} may not get each of secrets mine, theirs in {ns}"
    ) in (two or "")

    # Exactly the right permissions: admitted.
    assert refusal(source={"tokenSecretRef": {"name": "mine"}}) is None
    assert refusal(storage={"existingClaim": "writable"}) is None
    assert (
        refusal(
            serving={
                "apiKeySecretRef": {"name": "mine"},
                "env": [
                    env("X", secretKeyRef={"name": "mine", "key": "k"}),
                    env("Y", configMapKeyRef={"name": "mine", "key": "k"}),
                    env("POD", fieldRef={"fieldPath": "metadata.name"}),
                    {"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"},
                ],
                "extraArgs": ["--dtype", "bfloat16", "--enforce-eager"],
            }
        )
        is None
    )


def test_an_edit_is_checked_for_the_references_it_adds(scoped: Scoped, kube: Client) -> None:
    """A model the admin made with another team's Secret keeps working: its author may
    edit what does not touch that reference (and the operator its metadata), but may
    not point it at another Secret they cannot get."""
    ns = scoped.namespace
    create_model(kube, ns, "shared", source={"tokenSecretRef": {"name": "theirs"}})

    def patch(client: Client, body: dict[str, Any]) -> None:
        client.patch(GptOssModelResource, "shared", body, namespace=ns, patch_type=PatchType.MERGE)

    patch(scoped.author, {"spec": {"serving": {"replicas": 2}}})
    patch(scoped.author, {"metadata": {"finalizers": ["gptoss.ai/test"]}})
    with pytest.raises(ApiError) as changed:
        patch(scoped.author, {"spec": {"source": {"tokenSecretRef": {"name": "another"}}}})
    assert "spec.source.tokenSecretRef: " in str(changed.value.status.message)
    assert "may not get secrets another" in str(changed.value.status.message)
    patch(kube, {"metadata": {"finalizers": None}})


@pytest.mark.parametrize(
    ("name", "refused"),
    [
        ("HF_ENDPOINT", True),
        ("HF_TOKEN", True),
        ("HUGGING_FACE_HUB_TOKEN", True),
        ("VLLM_API_KEY", True),
        ("PYTHONPATH", True),
        ("LD_PRELOAD", True),
        ("TIKTOKEN_ENCODINGS_BASE", True),
        ("VLLM_CPU_KVCACHE_SPACE", False),
        ("MY_HF_SETTING", False),
    ],
)
def test_the_engines_own_env_is_out_of_a_models_reach(
    scoped: Scoped, kube: Client, name: str, refused: bool
) -> None:
    """Even a cluster admin's model may not set these: the operator sets the download
    source, the token, the key and the tokenizer's vocab, and nothing else may load code."""
    answer = model_refusal(kube, scoped.namespace, serving={"env": [{"name": name}]})
    assert (answer is not None) == refused, answer
    if refused:
        assert f"spec.serving.env[{name}]: the operator sets the engine's HF_*, " in str(answer)
        assert "(authorScope.reservedEnv)" in str(answer)


@pytest.mark.parametrize(
    ("arg", "refused"),
    [
        ("--tokenizer=/models/theirs", True),
        ("--model", True),
        ("--trust-remote-code", True),
        ("--trust_remote_code", True),  # vLLM reads _ as -
        ("--trust-remote", True),  # an abbreviation argparse would accept
        ("--hf-overrides.architectures", True),  # a field of --hf-overrides
        ("--config=/models/theirs/serve.yaml", True),
        ("--hf-token", True),
        ("--download-dir=/tmp", True),
        ("--load-format=runai_streamer", True),
        ("--api-key", True),
        ("--dtype=bfloat16", False),
        ("--max-num-seqs", False),
        ("bfloat16", False),
    ],
)
def test_extra_args_cannot_change_the_model_its_source_or_remote_code(
    scoped: Scoped, arg: str, refused: bool
) -> None:
    answer = model_refusal(scoped.author, scoped.namespace, serving={"extraArgs": [arg]})
    assert (answer is not None) == refused, answer
    if refused:
        assert f"spec.serving.extraArgs: {arg} would change what the operator sets" in str(answer)


def test_a_custom_downloader_gets_no_token_unless_the_admin_allows_it(
    scoped: Scoped, cluster: ClusterUnderTest
) -> None:
    custom = {"image": "registry.internal/my-downloader:1"}
    token = {"tokenSecretRef": {"name": "mine"}}
    refused = model_refusal(scoped.author, scoped.namespace, download=custom, source=token)
    assert refused is not None
    assert "spec.source.tokenSecretRef: a model with its own spec.download.image" in refused
    assert "(authorScope.allowCustomDownloaderToken)" in refused
    assert model_refusal(scoped.author, scoped.namespace, download=custom) is None
    assert model_refusal(scoped.author, scoped.namespace, source=token) is None
    chart = str(Path(__file__).resolve().parents[2] / "charts" / "gptoss-operator")

    def allow(allowed: bool) -> None:
        helm(
            "upgrade", scoped.release, chart, "--namespace", scoped.system,
            "--reuse-values", "--wait=false",
            "--set", f"authorScope.allowCustomDownloaderToken={str(allowed).lower()}",
            kubeconfig=cluster.kubeconfig,
        )  # fmt: skip

    allow(True)
    try:
        wait_for(
            lambda: (
                model_refusal(scoped.author, scoped.namespace, download=custom, source=token)
                is None
            ),
            timeout=30,
            message="the admin's permission in effect",
        )
    finally:
        allow(False)
        wait_for(
            lambda: model_refusal(scoped.author, scoped.namespace, download=custom, source=token),
            timeout=30,
            message="the permission withdrawn",
        )


def test_a_batch_reads_and_writes_only_what_its_author_may(scoped: Scoped) -> None:
    author, ns, user = scoped.author, scoped.namespace, scoped.user

    def refusal(**spec: Any) -> str | None:
        return batch_refusal(author, ns, **spec)

    other_map = refusal(input={"configMap": {"name": "theirs"}})
    assert other_map is not None
    assert other_map.endswith(
        f"spec.input.configMap: {user} may not get configmaps theirs in {ns}, so neither "
        "may the workers on their behalf"
    )
    read_only = refusal(output={"volume": {"claimName": "readable", "path": "out"}})
    assert f"spec.output.volume.claimName: {user} may not update persistentvolumeclaims " in (
        read_only or ""
    )
    other_claim = refusal(input={"volume": {"claimName": "theirs", "path": "in.jsonl"}})
    assert "spec.input.volume.claimName: " in (other_claim or "")
    assert "may not get persistentvolumeclaims theirs" in (other_claim or "")
    keys = refusal(
        output={"s3": {"bucket": "out", "key": "k", "credentialsSecretRef": {"name": "theirs"}}}
    )
    assert "spec.output.s3.credentialsSecretRef: " in (keys or "")
    assert "may not get secrets theirs" in (keys or "")
    assert refusal() is None
    assert refusal(input={"volume": {"claimName": "readable", "path": "in.jsonl"}}) is None
    assert (
        refusal(
            input={
                "s3": {
                    "bucket": "requests",
                    "key": "k",
                    "endpoint": MINIO,
                    "credentialsSecretRef": {"name": "mine"},
                }
            }
        )
        is None
    )


@pytest.mark.parametrize(
    ("endpoint", "refused"),
    [
        (MINIO, False),
        (MINIO + "/tenant-a", False),
        ("http://minio.storage.svc", True),  # another port: the entry names 9000
        ("http://minio.storage.svc:9000.evil.example", True),
        ("http://minio.storage.svc:90001", True),
        ("http://169.254.169.254", True),
        ("http://kubernetes.default.svc", True),
    ],
)
def test_a_batch_signs_s3_requests_only_for_allowed_endpoints(
    scoped: Scoped, endpoint: str, refused: bool
) -> None:
    def refusal(s3: dict[str, Any]) -> str | None:
        return batch_refusal(scoped.author, scoped.namespace, output={"s3": s3})

    keys = {"bucket": "out", "key": "k", "credentialsSecretRef": {"name": "mine"}}
    answer = refusal({**keys, "endpoint": endpoint})
    assert (answer is not None) == refused, answer
    if refused:
        assert answer is not None
        assert answer.endswith(
            f"spec.output.s3.endpoint: {endpoint} is not an allowed S3 endpoint "
            f"(allowed: {MINIO}; authorScope.s3.allowedEndpoints)"
        )
    ambient = refusal({"bucket": "out", "key": "k", "credentials": "ambient"})
    assert (ambient or "").endswith(
        "spec.output.s3.credentials: ambient is not allowed here; name a Secret in "
        "credentialsSecretRef (authorScope.s3.allowAmbientCredentials)"
    )
