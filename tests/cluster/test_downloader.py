"""gptoss-download for real: a process, the real huggingface_hub client, a Hugging
Face-compatible endpoint on loopback (the test stand-in FakeHub), a temp dir as the
volume, and progress patched into a real GptOssModel on the control plane."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import PolicyRule, RoleRef, Subject
from lightkube.resources.batch_v1 import Job
from lightkube.resources.core_v1 import Event, Pod, Secret, ServiceAccount
from lightkube.resources.rbac_authorization_v1 import Role, RoleBinding

from gptoss_operator.engine.vocab import VOCAB_SHA256
from gptoss_sandbox.fake_hub import FakeHub
from tests.cluster.chart_helpers import token_kubeconfig
from tests.cluster.model_helpers import (
    MANUAL,
    condition,
    create_model,
    finish_pod,
    pods,
    status_of,
    wait_for_condition,
)
from tests.conftest import ClusterUnderTest, OperatorProcess
from tests.support import wait_for

pytestmark = pytest.mark.cluster

MiB = 2**20
REPO = "openai/gpt-oss-mini"
DIGEST = "feedbeef"


def _blob(seed: str, size: int) -> bytes:
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (size // len(block) + 1))[:size]


FILES = {
    "config.json": b'{"model_type": "gpt_oss"}',
    "tokenizer.json": b'{"version": "1.0"}' * 50,
    "model-00001-of-00002.safetensors": _blob("one", 3 * MiB),
    "model-00002-of-00002.safetensors": _blob("two", 12 * MiB),
    "original/model.safetensors": _blob("orig", 2 * MiB),
    "metal/model.bin": _blob("metal", 2 * MiB),
}
KEPT = [path for path in FILES if not path.startswith(("original/", "metal/"))]


@dataclass
class Run:
    returncode: int
    termination: dict[str, Any]
    output: str


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as server:
        server.add_repo(REPO, FILES)
        yield server


@pytest.fixture
def model(kube: Client, namespace: str, crds: list[str]) -> str:
    del crds
    # The operator's own Job pod stays untouched (manual), so only the test's downloader
    # writes status.download.
    create_model(kube, namespace, "dl", source={"repo": REPO}, download={"podAnnotations": MANUAL})
    return "dl"


class Downloader:
    def __init__(
        self, cluster: ClusterUnderTest, namespace: str, model: str, data: Path, hub: FakeHub
    ) -> None:
        self.data = data
        self.termination = data.parent / "termination-log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("HF_")},
            "KUBECONFIG": str(cluster.kubeconfig),
            "GPTOSS_MODEL": model,
            "GPTOSS_NAMESPACE": namespace,
            "GPTOSS_REPO": REPO,
            "GPTOSS_REVISION": "main",
            "GPTOSS_EXCLUDE_PATTERNS": "original/*,metal/*",
            "GPTOSS_SOURCE_HASH": DIGEST,
            "GPTOSS_DATA_DIR": str(data),
            "GPTOSS_TERMINATION_LOG": str(self.termination),
            "GPTOSS_PROGRESS_INTERVAL_SECONDS": "0.3",
            "GPTOSS_STALL_TIMEOUT_SECONDS": "30",
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(data.parent / "hf-home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DOWNLOAD_TIMEOUT": "2",
            "HF_HUB_ETAG_TIMEOUT": "5",
        }

    def start(self, **env: str) -> subprocess.Popen[str]:
        self.termination.unlink(missing_ok=True)
        return subprocess.Popen(
            [sys.executable, "-m", "gptoss_operator.cli.download_main"],
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(self, timeout: float = 120, **env: str) -> Run:
        process = self.start(**env)
        output, _ = process.communicate(timeout=timeout)
        termination = json.loads(self.termination.read_text()) if self.termination.exists() else {}
        return Run(process.returncode, termination, output)


@pytest.fixture
def downloader(
    cluster: ClusterUnderTest, namespace: str, model: str, hub: FakeHub, tmp_path: Path
) -> Downloader:
    return Downloader(cluster, namespace, model, tmp_path / "volume", hub)


def _snapshot(data: Path) -> Path:
    return data / "served" / DIGEST


def test_downloads_root_files_reports_progress_and_leaves_a_marker(
    kube: Client, namespace: str, model: str, hub: FakeHub, downloader: Downloader
) -> None:
    hub.bytes_per_second = 4 * MiB
    process = downloader.start()
    seen: list[int] = []
    while process.poll() is None:
        percent = (status_of(kube, namespace, model).get("download") or {}).get("percent")
        if percent is not None:
            seen.append(percent)
        time.sleep(0.2)
    output = process.stdout.read() if process.stdout else ""
    assert process.returncode == 0, output
    assert any(0 < p < 100 for p in seen), f"no live progress seen: {seen}"
    assert seen == sorted(seen), "progress never goes backwards"

    served = _snapshot(downloader.data)
    assert sorted(str(p.relative_to(served)) for p in served.rglob("*") if p.is_file()) == sorted(
        KEPT
    )
    for path in KEPT:
        assert (served / path).read_bytes() == FILES[path]
    assert not any("original/" in r.path or "metal/" in r.path for r in hub.requests)
    assert (downloader.data / "served" / DIGEST).is_symlink()

    commit = hub.resolve(REPO, "main")
    marker = json.loads((downloader.data / "served" / f"{DIGEST}.json").read_text())
    assert marker["resolvedRevision"] == commit
    assert {f["path"]: f["size"] for f in marker["files"]} == {p: len(FILES[p]) for p in KEPT}
    vocab = downloader.data / "tiktoken" / "o200k_base.tiktoken"
    assert hashlib.sha256(vocab.read_bytes()).hexdigest() == VOCAB_SHA256

    download = status_of(kube, namespace, model)["download"]
    total = sum(len(FILES[p]) for p in KEPT)
    assert (download["bytesDone"], download["bytesTotal"], download["percent"]) == (
        total,
        total,
        100,
    )
    assert (download["filesDone"], download["filesTotal"]) == (len(KEPT), len(KEPT))
    assert download["resolvedRevision"] == commit
    assert download["completedAt"] >= download["startedAt"]
    termination = json.loads(downloader.termination.read_text())
    assert termination["reason"] == "Downloaded"

    # A second run (a retried Job, a restarted operator, another model on the claim)
    # finds the marker and downloads nothing.
    hub.reset_counters()
    again = downloader.run()
    assert again.returncode == 0
    assert "already on the volume" in again.termination["message"]
    assert hub.bytes_served == 0


def test_an_interrupted_download_resumes_from_what_is_on_disk(
    hub: FakeHub, downloader: Downloader
) -> None:
    hub.bytes_per_second = 3 * MiB
    process = downloader.start()
    first_shard = "model-00001-of-00002.safetensors"
    blobs = downloader.data / "hub" / "models--openai--gpt-oss-mini" / "blobs"
    sha = hashlib.sha256(FILES[first_shard]).hexdigest()
    wait_for(lambda: (blobs / sha).exists(), timeout=60, message="first shard on disk")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert not (downloader.data / "served" / f"{DIGEST}.json").exists()

    hub.reset_counters()
    hub.bytes_per_second = 0
    resumed = downloader.run()
    assert resumed.returncode == 0, resumed.output
    assert hub.bytes_served_per_path.get(f"{REPO}/{first_shard}", 0) == 0
    assert hub.bytes_served_per_path[f"{REPO}/model-00002-of-00002.safetensors"] > 0
    for path in KEPT:
        assert (_snapshot(downloader.data) / path).read_bytes() == FILES[path]


def test_a_killed_attempt_continues_a_half_written_file(
    hub: FakeHub, downloader: Downloader
) -> None:
    big = "model-00002-of-00002.safetensors"
    blobs = downloader.data / "hub" / "models--openai--gpt-oss-mini" / "blobs"
    sha = hashlib.sha256(FILES[big]).hexdigest()
    hub.bytes_per_second = 4 * MiB
    process = downloader.start()

    def partial_bytes() -> int:
        sizes = (
            [p.stat().st_size for p in blobs.glob(f"{sha}*.incomplete")] if blobs.is_dir() else []
        )
        return max(sizes, default=0)

    # huggingface_hub writes 10 MiB chunks: wait for the first one of the 12 MiB file.
    wait_for(lambda: partial_bytes() >= 10 * MiB, timeout=60, message="a partial file on disk")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    have = partial_bytes()
    time.sleep(1)  # let the hub notice the dead connection before counting afresh

    hub.reset_counters()
    hub.bytes_per_second = 0
    resumed = downloader.run()
    assert resumed.returncode == 0, resumed.output
    assert any(r.range == f"bytes={have}-" for r in hub.requests), hub.requests
    assert hub.bytes_served_per_path[f"{REPO}/{big}"] == len(FILES[big]) - have
    assert (_snapshot(downloader.data) / big).read_bytes() == FILES[big]
    assert not list(blobs.glob("*.incomplete"))


def test_a_stalled_download_ends_the_attempt_with_a_reason(
    kube: Client, namespace: str, model: str, hub: FakeHub, downloader: Downloader
) -> None:
    hub.stall_after_bytes = 256 * 1024
    run = downloader.run(GPTOSS_STALL_TIMEOUT_SECONDS="3")
    hub.stall_after_bytes = None
    assert run.returncode == 20, run.output
    assert run.termination["reason"] == "DownloadStalled"
    assert "no bytes received for 3s" in run.termination["message"]
    download = status_of(kube, namespace, model)["download"]
    assert "no bytes received" in download["message"]


def test_missing_or_wrong_token_is_unauthorized_and_never_leaks(
    kube: Client, namespace: str, model: str, hub: FakeHub, downloader: Downloader
) -> None:
    hub.required_token = "hf_rightTokenValue123456"
    anonymous = downloader.run()
    assert anonymous.returncode == 10, anonymous.output
    assert anonymous.termination["reason"] == "Unauthorized"
    wrong = downloader.run(HF_TOKEN="hf_wrongTokenValue987654")
    assert wrong.returncode == 10, wrong.output
    assert wrong.termination["reason"] == "Unauthorized"
    status = json.dumps(status_of(kube, namespace, model))
    for text in (wrong.output, json.dumps(wrong.termination), status):
        assert "hf_wrongTokenValue987654" not in text
    right = downloader.run(HF_TOKEN="hf_rightTokenValue123456")
    assert right.returncode == 0, right.output
    assert "hf_rightTokenValue123456" not in right.output


def test_gated_repo_is_unauthorized(hub: FakeHub, downloader: Downloader) -> None:
    hub.gated_repos.add(REPO)
    run = downloader.run(HF_TOKEN="hf_someTokenValue1234567")
    assert run.returncode == 10, run.output
    assert run.termination["reason"] == "Unauthorized"
    assert "gated" in run.termination["message"]


def test_unknown_repo_and_revision_are_not_found(downloader: Downloader) -> None:
    repo = downloader.run(GPTOSS_REPO="openai/does-not-exist", HF_TOKEN="hf_anyTokenValue1234")
    assert repo.returncode == 11, repo.output
    assert repo.termination["reason"] == "RepoNotFound"
    revision = downloader.run(GPTOSS_REVISION="v9.9")
    assert revision.returncode == 11, revision.output
    assert revision.termination["reason"] == "RevisionNotFound"
    assert "v9.9" in revision.termination["message"]


def test_too_little_storage_fails_before_downloading(hub: FakeHub, downloader: Downloader) -> None:
    run = downloader.run(GPTOSS_VOLUME_CAPACITY_BYTES=str(4 * MiB))
    assert run.returncode == 12, run.output
    assert run.termination["reason"] == "InsufficientStorage"
    assert "raise spec.storage.size" in run.termination["message"]
    assert not any(r.path.endswith(".safetensors") for r in hub.requests)


def test_unreachable_endpoint_is_retryable(downloader: Downloader) -> None:
    run = downloader.run(HF_ENDPOINT="http://127.0.0.1:9")
    assert run.returncode == 21, run.output
    assert run.termination["reason"] == "EndpointUnreachable"


PLANTED = "hf_plantedSecretValue4242"


def test_a_token_secret_is_used_only_once_its_owner_shared_it_and_only_where_it_allows(
    cluster: ClusterUnderTest,
    kube: Client,
    namespace: str,
    hub: FakeHub,
    operator: OperatorProcess,
    tmp_path: Path,
) -> None:
    """The downloader reads the Secret with the model's own identity: refused until the
    Secret's owner grants that identity get on it, then refused for an endpoint the
    Secret does not list. The planted token appears nowhere but where it is used."""
    hub.required_token = PLANTED
    kube.create(
        Secret(metadata=ObjectMeta(name="hf", namespace=namespace), stringData={"token": PLANTED})
    )
    create_model(
        kube,
        namespace,
        "priv",
        source={
            "repo": REPO,
            "endpoint": hub.url,
            "tokenSecretRef": {"name": "hf", "key": "token"},
        },
        download={"podAnnotations": MANUAL},
    )
    wait_for(
        lambda: list(
            kube.list(
                ServiceAccount, namespace=namespace, fields={"metadata.name": "priv-download"}
            )
        ),
        timeout=30,
        message="the model's download identity",
    )
    job = wait_for(
        lambda: next(iter(kube.list(Job, namespace=namespace)), None),
        timeout=30,
        message="the download Job",
    )
    env = {e.name: e.value for e in job.spec.template.spec.containers[0].env}
    identity = token_kubeconfig(
        cluster, kube, namespace, "priv-download", tmp_path / "download.kubeconfig"
    )
    downloader = Downloader(cluster, namespace, "priv", tmp_path / "volume", hub)
    as_job = {
        "KUBECONFIG": str(identity),
        "GPTOSS_TOKEN_SECRET": env["GPTOSS_TOKEN_SECRET"],
        "GPTOSS_TOKEN_KEY": env["GPTOSS_TOKEN_KEY"],
    }

    unshared = downloader.run(**as_job)
    assert unshared.returncode == 10, unshared.output
    assert unshared.termination["reason"] == "TokenNotShared"
    assert unshared.termination["message"].startswith(
        "spec.source.tokenSecretRef: the Secret hf is not shared with this model"
    )
    assert f"{namespace}/priv-download" in unshared.termination["message"]
    # As the kubelet reports it: the Job's pod ends with that termination message, and
    # the model says why, naming the field, in its condition and a Warning Event.
    download_pod = wait_for(
        lambda: next(iter(pods(kube, namespace, {"job-name": job.metadata.name})), None),
        timeout=30,
        message="the download pod",
    )
    finish_pod(
        kube, namespace, download_pod, exit_code=10, message=json.dumps(unshared.termination)
    )
    refused = wait_for_condition(kube, namespace, "priv", "Downloaded", "TokenNotShared")
    assert condition(refused, "Downloaded")["message"].startswith("spec.source.tokenSecretRef")
    wait_for(
        lambda: [
            e
            for e in kube.list(Event, namespace=namespace)
            if e.reason == "TokenNotShared" and e.type == "Warning"
        ],
        timeout=30,
        message="a Warning Event TokenNotShared",
    )

    # The Secret's owner shares it with this model's downloader, and nothing else.
    kube.create(
        Role(
            metadata=ObjectMeta(name="share-hf", namespace=namespace),
            rules=[
                PolicyRule(
                    apiGroups=[""], resources=["secrets"], verbs=["get"], resourceNames=["hf"]
                )
            ],
        )
    )
    kube.create(
        RoleBinding(
            metadata=ObjectMeta(name="share-hf", namespace=namespace),
            roleRef=RoleRef(apiGroup="rbac.authorization.k8s.io", kind="Role", name="share-hf"),
            subjects=[Subject(kind="ServiceAccount", name="priv-download", namespace=namespace)],
        )
    )
    elsewhere = downloader.run(**as_job)
    assert elsewhere.returncode == 10, elsewhere.output
    assert elsewhere.termination["reason"] == "TokenEndpointNotAllowed"
    assert hub.url in elsewhere.termination["message"]
    assert not hub.requests, "refused before any request: the token went nowhere"

    kube.patch(
        Secret,
        "hf",
        {"metadata": {"annotations": {"gptoss.ai/token-endpoints": hub.url}}},
        namespace=namespace,
    )
    shared = downloader.run(**as_job)
    assert shared.returncode == 0, shared.output
    assert shared.termination["reason"] == "Downloaded"

    events = [e.to_dict() for e in kube.list(Event, namespace=namespace)]
    places = {
        "downloader output": unshared.output + elsewhere.output + shared.output,
        "termination messages": json.dumps(
            [unshared.termination, elsewhere.termination, shared.termination]
        ),
        "model status": json.dumps(status_of(kube, namespace, "priv")),
        "Events": json.dumps(events),
        "the Job": json.dumps(job.to_dict()),
        "the Job's pods": json.dumps([p.to_dict() for p in kube.list(Pod, namespace=namespace)]),
        "operator log": operator.log_path.read_text(errors="replace"),
    }
    leaked = [where for where, text in places.items() if PLANTED in text]
    assert not leaked, leaked
