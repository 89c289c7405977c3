"""Resource builders: pure functions from a GptOssModel to manifests."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from gptoss_operator.api.download_exits import PERMANENT_EXIT_CODES
from gptoss_operator.api.model import GptOssModelSpec
from gptoss_operator.builders import (
    TOKEN_VOLUME,
    ModelContext,
    api_key,
    download,
    engine_config,
    network,
    rbac,
    serving,
    storage,
)
from gptoss_operator.core import naming
from gptoss_operator.core.quantity import to_bytes
from gptoss_operator.core.settings import Settings


def _ctx(settings: Settings | None = None, **spec: Any) -> ModelContext:
    return ModelContext(
        "m", "ns", "uid-1", GptOssModelSpec.model_validate(spec), settings or Settings()
    )


def test_default_claim_sizes_fit_the_repo() -> None:
    assert storage.default_size(_ctx().spec) == "150Gi"
    assert storage.default_size(_ctx(source={"repo": "openai/gpt-oss-20b"}).spec) == "40Gi"
    everything = _ctx(source={"excludePatterns": []}).spec
    assert storage.default_size(everything) == "300Gi"
    assert storage.default_size(_ctx(source={"repo": "acme/other"}).spec) == "200Gi"


def test_claim_ownership_follows_the_deletion_policy() -> None:
    retained = storage.claim(_ctx())
    assert "ownerReferences" not in retained["metadata"]
    deleted = storage.claim(_ctx(storage={"deletionPolicy": "Delete"}))
    assert deleted["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    sized = storage.claim(_ctx(storage={"size": "10Gi", "storageClassName": "fast"}))
    assert sized["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert sized["spec"]["storageClassName"] == "fast"


def test_download_job_names_the_token_secret_but_never_holds_it_and_is_restricted() -> None:
    ctx = _ctx(
        source={
            "tokenSecretRef": {"name": "hf", "key": "tok"},
            "endpoint": "https://mirror.internal",
        }
    )
    job = download.job(ctx, "abcd1234")
    assert job["metadata"]["name"] == "m-dl-abcd1234"
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["GPTOSS_TOKEN_SECRET"]["value"] == "hf"
    assert env["GPTOSS_TOKEN_KEY"]["value"] == "tok"
    assert "HF_TOKEN" not in env
    assert "secretKeyRef" not in json.dumps(job), "the pod never gets the Secret from kubelet"
    assert env["HF_ENDPOINT"]["value"] == "https://mirror.internal"
    assert int(env["GPTOSS_VOLUME_CAPACITY_BYTES"]["value"]) == 150 * 2**30
    security = container["securityContext"]
    assert security["runAsNonRoot"]
    assert not security["allowPrivilegeEscalation"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert set(rules[0]["onExitCodes"]["values"]) == set(PERMANENT_EXIT_CODES)
    assert job["spec"]["backoffLimit"] == 4


def _options(args: list[str]) -> dict[str, str]:
    return {
        flag: value
        for flag, value in zip(args, [*args[1:], ""], strict=True)
        if flag.startswith("--") and not value.startswith("--")
    }


R120 = {"repo": "openai/gpt-oss-120b"}
R20 = {"repo": "openai/gpt-oss-20b"}


@pytest.mark.parametrize(
    ("source", "profile", "gpus", "memory", "batched"),
    [
        # H100 80GB: the recipe's out-of-memory workaround for 120b at TP 1 only, and
        # utilization below 0.95 at TP 2.
        (R120, "H100-80GB", 1, "0.95", "1024"),
        (R120, "H100-80GB", 2, "0.9", "8192"),
        (R120, "H100-80GB", 4, None, "8192"),
        (R120, "H100-80GB", 8, None, "8192"),
        (R20, "H100-80GB", 1, None, "8192"),
        (R20, "H100-80GB", 2, None, "8192"),
        # H200 141GB: the recipe as is at every size.
        (R120, "H200-141GB", 1, None, "8192"),
        (R120, "H200-141GB", 2, None, "8192"),
        (R120, "H200-141GB", 4, None, "8192"),
        (R120, "H200-141GB", 8, None, "8192"),
        (R20, "H200-141GB", 1, None, "8192"),
    ],
)
def test_vllm_args_follow_the_recipe_per_gpu_profile(
    source: dict[str, str], profile: str, gpus: int, memory: str | None, batched: str
) -> None:
    args = engine_config.vllm_args(
        "m", _ctx(source=source, serving={"gpuProfile": profile, "gpusPerReplica": gpus}).spec, "h1"
    )
    assert args[:2] == ["serve", "/data/served/h1"]
    options = _options(args)
    assert options["--tensor-parallel-size"] == str(gpus)
    assert "--data-parallel-size" not in options
    assert options["--max-num-batched-tokens"] == batched
    assert options.get("--gpu-memory-utilization") == memory
    assert options["--max-cudagraph-capture-size"] == "2048"
    assert options["--stream-interval"] == "20"
    assert options["--max-num-seqs"] == "1024"
    assert options["--max-model-len"] == "131072"
    assert options["--served-model-name"] == "m"
    assert "--enable-prefix-caching" in args
    assert "--no-enable-prefix-caching" not in args
    assert "--async-scheduling" in args


def test_generic_gpus_get_vllms_defaults_and_user_values_win() -> None:
    spec = _ctx(
        serving={
            "gpuProfile": "Generic",
            "gpuMemoryUtilization": 0.8,
            "maxNumBatchedTokens": 4096,
            "maxModelLen": 32768,
        }
    ).spec
    options = _options(engine_config.vllm_args("m", spec, "h1"))
    assert options["--gpu-memory-utilization"] == "0.8"
    assert options["--max-num-batched-tokens"] == "4096"
    assert options["--max-model-len"] == "32768"
    assert options["--max-num-seqs"] == "256"
    assert "--max-cudagraph-capture-size" not in options
    assert "--stream-interval" not in options


def test_max_num_seqs_is_never_below_the_sidecar_concurrency() -> None:
    spec = _ctx(sidecar={"concurrency": 2048}).spec
    options = _options(engine_config.vllm_args("m", spec, "h1"))
    assert options["--max-num-seqs"] == "2048"
    # vLLM refuses fewer batched tokens than sequences.
    assert options["--max-num-batched-tokens"] == "2048"


def test_the_sidecar_keeps_no_more_jobs_in_flight_than_the_engine_admits() -> None:
    def in_flight(**spec: Any) -> str:
        pod = serving.deployment(_ctx(**spec), "h1")["spec"]["template"]["spec"]
        sidecar = next(c for c in pod["containers"] if c["name"] == "sidecar")
        return str(next(e["value"] for e in sidecar["env"] if e["name"] == "GPTOSS_CONCURRENCY"))

    assert in_flight(sidecar={"concurrency": 100}) == "100"
    # max-num-seqs set through extraArgs, in either spelling, bounds the sidecar.
    assert in_flight(serving={"extraArgs": ["--max-num-seqs", "8"]}) == "8"
    assert in_flight(serving={"extraArgs": ["--max-num-seqs=16"]}) == "16"
    # A value vLLM would refuse is left to vLLM to refuse (its log says why).
    assert in_flight(serving={"extraArgs": ["--max-num-seqs", "many"]}) == "64"


def test_gpus_beyond_the_tensor_parallel_group_run_data_parallel() -> None:
    spec = _ctx(serving={"gpusPerReplica": 8, "tensorParallelSize": 2}).spec
    options = _options(engine_config.vllm_args("m", spec, "h1"))
    assert options["--tensor-parallel-size"] == "2"
    assert options["--data-parallel-size"] == "4"


def test_engine_and_sidecar_containers_request_cpu_and_memory() -> None:
    pod = serving.deployment(_ctx(), "h1")["spec"]["template"]["spec"]
    engine, sidecar = pod["containers"]
    assert engine["resources"]["requests"] == {
        "cpu": "4",
        "memory": "96Gi",
        "nvidia.com/gpu": "1",
    }
    assert sidecar["resources"]["requests"] == {"cpu": "250m", "memory": "256Mi"}
    assert sidecar["resources"]["limits"] == {"memory": "1Gi"}
    given = _ctx(
        source=R20,
        serving={"gpusPerReplica": 2, "resources": {"requests": {"memory": "200Gi"}}},
        sidecar={"resources": {"limits": {"memory": "2Gi"}}},
    )
    engine, sidecar = serving.deployment(given, "h1")["spec"]["template"]["spec"]["containers"]
    assert engine["resources"]["requests"] == {
        "cpu": "8",
        "memory": "200Gi",
        "nvidia.com/gpu": "2",
    }
    assert sidecar["resources"]["limits"] == {"memory": "2Gi"}


def test_deployment_requests_gpus_and_probes_allow_the_startup_budget() -> None:
    ctx = _ctx(
        serving={
            "gpusPerReplica": 4,
            "startupTimeoutSeconds": 600,
            "nodeSelector": {"gpu": "h100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "priorityClassName": "inference",
            "extraArgs": ["--enforce-eager"],
        }
    )
    deployment = serving.deployment(ctx, "h1")
    pod = deployment["spec"]["template"]["spec"]
    engine, sidecar = pod["containers"]
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == "4"
    probe = engine["startupProbe"]
    assert probe["failureThreshold"] * probe["periodSeconds"] == 600
    assert engine["args"][-1] == "--enforce-eager"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in engine["volumeMounts"]
    assert pod["nodeSelector"] == {"gpu": "h100"}
    assert pod["priorityClassName"] == "inference"
    assert pod["serviceAccountName"] == "m-sidecar"
    env = {e["name"]: e for e in sidecar["env"]}
    assert env["GPTOSS_MODEL"]["value"] == "m"
    assert env["GPTOSS_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "TIKTOKEN_ENCODINGS_BASE" not in env, "the sidecar image carries the vocab"
    engine_env = {e["name"]: e.get("value") for e in engine["env"]}
    assert engine_env["TIKTOKEN_ENCODINGS_BASE"] == naming.VOCAB_DIR
    assert deployment["spec"]["selector"]["matchLabels"] == naming.server_selector("m")


def test_workers_are_bound_to_the_charts_cluster_roles_with_no_token_by_default() -> None:
    ctx = _ctx()
    (
        download_account,
        sidecar_account,
        batch_account,
        download_binding,
        sidecar_binding,
        batch_binding,
    ) = rbac.worker_identities(ctx)
    assert [
        download_account["metadata"]["name"],
        sidecar_account["metadata"]["name"],
        batch_account["metadata"]["name"],
    ] == ["m-download", "m-sidecar", "m-batch"]
    assert batch_account["automountServiceAccountToken"] is False
    assert batch_binding["roleRef"]["name"] == ctx.settings.batch_worker_cluster_role
    assert download_account["automountServiceAccountToken"] is False
    assert download_binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": ctx.settings.downloader_cluster_role,
    }
    assert sidecar_binding["roleRef"]["name"] == ctx.settings.sidecar_cluster_role
    assert sidecar_binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "m-sidecar", "namespace": ctx.namespace}
    ]


def test_only_the_sidecar_mounts_a_token_and_every_container_is_restricted() -> None:
    pod = serving.deployment(_ctx(), "h1")["spec"]["template"]["spec"]
    engine, sidecar = pod["containers"]
    assert pod["automountServiceAccountToken"] is False
    token_mounts = [
        (c["name"], m["mountPath"])
        for c in pod["containers"]
        for m in c["volumeMounts"]
        if m["name"] == TOKEN_VOLUME
    ]
    assert token_mounts == [("sidecar", "/var/run/secrets/kubernetes.io/serviceaccount")]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in (engine, sidecar):
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        assert security["allowPrivilegeEscalation"] is False
    engine_env = {e["name"]: e["value"] for e in engine["env"] if "value" in e}
    assert engine_env["HOME"] == "/tmp"
    assert {"name": "engine-scratch", "mountPath": "/tmp"} in engine["volumeMounts"]
    download_pod = download.job(_ctx(), "h1")["spec"]["template"]["spec"]
    assert download_pod["serviceAccountName"] == "m-download"


def test_source_hash_changes_with_what_is_downloaded() -> None:
    base = naming.source_hash(_ctx().spec)
    assert base == naming.source_hash(_ctx(serving={"replicas": 3}).spec)
    assert base != naming.source_hash(_ctx(source={"revision": "v2"}).spec)
    assert base != naming.source_hash(_ctx(source={"excludePatterns": []}).spec)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("150Gi", 150 * 2**30),
        ("1G", 10**9),
        ("512Mi", 512 * 2**20),
        ("1.5Ki", 1536),
        ("1000", 1000),
    ],
)
def test_quantities(text: str, value: int) -> None:
    assert to_bytes(text) == value


def test_bad_quantity() -> None:
    with pytest.raises(ValueError, match="not a storage quantity"):
        to_bytes("lots")


def test_the_api_key_reaches_both_containers_by_reference_only() -> None:
    pod = serving.deployment(_ctx(), "h1")["spec"]["template"]["spec"]
    engine, sidecar = pod["containers"]
    reference = {"secretKeyRef": {"name": "m-api-key", "key": "token"}}
    assert {"name": "VLLM_API_KEY", "valueFrom": reference} in engine["env"]
    assert {"name": "GPTOSS_ENGINE_API_KEY", "valueFrom": reference} in sidecar["env"]
    secret = api_key.generated_secret(_ctx(), "k" * 43)
    assert secret is not None
    assert secret["metadata"]["name"] == "m-api-key"
    assert secret["metadata"]["ownerReferences"][0]["kind"] == "GptOssModel"
    assert secret["data"] == {"token": base64.b64encode(b"k" * 43).decode()}


def test_a_named_api_key_secret_is_used_and_none_is_generated() -> None:
    ctx = _ctx(serving={"apiKeySecretRef": {"name": "team-key", "key": "api"}})
    assert api_key.generated_secret(ctx, "x") is None
    assert api_key.reference(ctx).to_wire() == {"name": "team-key", "key": "api"}
    engine = serving.deployment(ctx, "h1")["spec"]["template"]["spec"]["containers"][0]
    assert {
        "name": "VLLM_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "team-key", "key": "api"}},
    } in engine["env"]


def test_the_network_policy_admits_the_namespace_and_peers_to_the_engine_all_to_the_gateway() -> (
    None
):
    assert network.network_policy(_ctx()) is None, "off unless the admin turns it on"
    gateway = {"namespaceSelector": {"matchLabels": {"gateway": "true"}}}
    ctx = _ctx(settings=Settings(network_policy=True, network_policy_from=[gateway]))
    policy = network.network_policy(ctx)
    assert policy is not None
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": naming.server_selector("m")}
    assert spec["policyTypes"] == ["Ingress"]
    to_gateway = {
        "from": [{"namespaceSelector": {}}],
        "ports": [{"protocol": "TCP", "port": naming.GATEWAY_PORT}],
    }
    assert spec["ingress"] == [
        {"from": [{"podSelector": {}}, gateway], "ports": [{"protocol": "TCP", "port": 8000}]},
        to_gateway,
    ]
    closed = network.network_policy(
        _ctx(settings=Settings(network_policy=True, network_policy_same_namespace=False))
    )
    assert closed is not None
    assert closed["spec"]["ingress"] == [to_gateway], "no peers: nothing reaches the engine port"


def test_every_probe_names_a_port_of_its_own_container() -> None:
    """The kubelet resolves a probe's named port among its container's ports only: a name
    it cannot find fails the probe, and a failing liveness probe restarts the container."""
    pod = serving.deployment(_ctx(), "h1")["spec"]["template"]["spec"]
    probed = 0
    for container in pod["containers"]:
        names = {port["name"] for port in container.get("ports", [])}
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            port = container.get(kind, {}).get("httpGet", {}).get("port")
            if isinstance(port, str):
                probed += 1
                assert port in names, f"{container['name']}.{kind} names port {port!r}"
    assert probed == 4, "the engine's three probes and the sidecar's liveness probe"


def test_vllm_schedules_by_priority_unless_told_fcfs_and_the_sidecar_knows_which() -> None:
    def policy(**serving: Any) -> tuple[str, str]:
        ctx = _ctx(serving=serving)
        options = _options(engine_config.vllm_args("m", ctx.spec, "h1"))
        containers = serving_containers(ctx)
        env = {e["name"]: e.get("value") for e in containers["sidecar"]["env"]}
        return options["--scheduling-policy"], env["GPTOSS_ENGINE_PRIORITY_SCHEDULING"]

    assert policy() == ("priority", "true")
    assert policy(schedulingPolicy="fcfs") == ("fcfs", "false")


def serving_containers(ctx: ModelContext) -> dict[str, dict[str, Any]]:
    pod = serving.deployment(ctx, "h1", 1)["spec"]["template"]["spec"]
    return {container["name"]: container for container in pod["containers"]}
