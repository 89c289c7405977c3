"""The fake Hub, driven by the real ``huggingface_hub`` client (no mocks).

Every request stays on 127.0.0.1: an autouse fixture refuses any other socket connection.
"""

from __future__ import annotations

import hashlib
import http.client
import random
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from huggingface_hub import HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from gptoss_sandbox.fake_hub import FakeHub, RequestRecord

REPO = "openai/gpt-oss-tiny"
MiB = 1024 * 1024
_rng = random.Random(20250805)
ROOT_FILES = {
    "config.json": b'{"architectures": ["GptOssForCausalLM"], "num_hidden_layers": 2}',
    "generation_config.json": b'{"eos_token_id": [200002, 199999]}',
    "tokenizer.json": _rng.randbytes(16 * 1024),  # LFS by size
    "model-00000-of-00001.safetensors": _rng.randbytes(200_000),
    "model.safetensors.index.json": b'{"weight_map": {}}',
}
FILES = {
    **ROOT_FILES,
    "original/config.json": b'{"num_hidden_layers": 2}',
    "original/model.safetensors": _rng.randbytes(50_000),
    "metal/model.bin": _rng.randbytes(30_000),
}
IGNORE = ["original/*", "metal/*"]
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def _git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob " + str(len(data)).encode() + b"\0" + data).hexdigest()


@pytest.fixture(autouse=True)
def _hf_client_stays_local(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No telemetry, no implicit token, short timeouts, and no connection off 127.0.0.1."""
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_ENDPOINT", "HF_HUB_DISABLE_XET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 3)
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 3)

    real_connect = socket.socket.connect

    def connect_loopback_only(self: socket.socket, address: Any) -> None:
        if self.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in _LOOPBACK:
            raise AssertionError(f"test tried to connect to {address!r}")
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect_loopback_only)


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    with FakeHub() as server:
        yield server


def _gets(hub: FakeHub, filename: str) -> list[RequestRecord]:
    return [r for r in hub.requests if r.method == "GET" and r.path.endswith("/" + filename)]


def _no_partial_files(cache: Path) -> bool:
    return not list(cache.rglob("*.incomplete"))


def _raw_get(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


# -- metadata -------------------------------------------------------------------------------


def test_model_info_reports_commit_sizes_and_lfs(hub: FakeHub) -> None:
    commit = hub.add_repo(REPO, FILES)
    info = HfApi(endpoint=hub.url, token=False).model_info(
        REPO, revision="main", files_metadata=True
    )
    assert info.sha == commit
    assert len(commit) == 40
    assert info.siblings is not None
    siblings = {s.rfilename: s for s in info.siblings}
    assert set(siblings) == set(FILES)
    for path, data in FILES.items():
        sibling = siblings[path]
        assert sibling.size == len(data)
        lfs = path.endswith(".safetensors") or path.endswith(".bin") or len(data) >= 10 * 1024
        if lfs:
            assert sibling.lfs is not None
            assert sibling.lfs.sha256 == hashlib.sha256(data).hexdigest()
            assert sibling.lfs.size == len(data)
        else:
            assert sibling.lfs is None
            assert sibling.blob_id == _git_blob_sha1(data)
    assert hub.requests == [
        RequestRecord("GET", f"/api/models/{REPO}/revision/main", None),
    ]


def test_branches_tags_and_commits_resolve(hub: FakeHub, tmp_path: Path) -> None:
    old = hub.add_repo(REPO, {"config.json": b"v1"}, tags=["v1"])
    new = hub.add_repo(REPO, {"config.json": b"v2"})
    assert old != new
    assert hub.resolve(REPO, "main") == new
    api = HfApi(endpoint=hub.url, token=False)
    assert api.model_info(REPO).sha == new
    assert api.model_info(REPO, revision="v1").sha == old
    assert api.model_info(REPO, revision=old).sha == old
    path = hf_hub_download(
        REPO, "config.json", revision="v1", cache_dir=tmp_path, token=False, endpoint=hub.url
    )
    assert Path(path).read_bytes() == b"v1"
    assert f"/snapshots/{old}/" in path


# -- downloads ------------------------------------------------------------------------------


@pytest.mark.parametrize("lfs_redirect", [True, False], ids=["cdn-redirect", "served-by-hub"])
def test_snapshot_download_skips_ignored_folders(
    hub: FakeHub, tmp_path: Path, lfs_redirect: bool
) -> None:
    hub.lfs_redirect = lfs_redirect
    commit = hub.add_repo(REPO, FILES)
    folder = snapshot_download(
        REPO,
        revision=commit,
        cache_dir=tmp_path,
        ignore_patterns=IGNORE,
        token=False,
        endpoint=hub.url,
    )
    snapshot = Path(folder)
    assert snapshot == tmp_path / "models--openai--gpt-oss-tiny" / "snapshots" / commit
    got = {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}
    assert got == set(ROOT_FILES)
    for name, data in ROOT_FILES.items():
        assert (snapshot / name).read_bytes() == data
    # Blobs are stored under their ETag: sha256 for LFS files, the git blob id otherwise.
    blobs = {p.name for p in (snapshot.parent.parent / "blobs").iterdir()}
    assert hashlib.sha256(ROOT_FILES["tokenizer.json"]).hexdigest() in blobs
    assert _git_blob_sha1(ROOT_FILES["config.json"]) in blobs

    # A commit sha needs no repo_info: the tree listing comes first, then one HEAD per file.
    assert hub.requests[0] == RequestRecord("GET", f"/api/models/{REPO}/tree/{commit}", None)
    heads = {r.path for r in hub.requests if r.method == "HEAD"}
    assert heads == {f"/{REPO}/resolve/{commit}/{name}" for name in ROOT_FILES}
    assert not [r for r in hub.requests if "/original/" in r.path or "/metal/" in r.path]
    lfs_gets = [r.path for r in _gets(hub, "model-00000-of-00001.safetensors")]
    if lfs_redirect:
        assert lfs_gets == [
            f"/lfs/{REPO}/{hashlib.sha256(ROOT_FILES['model-00000-of-00001.safetensors']).hexdigest()}"
            "/model-00000-of-00001.safetensors"
        ]
    else:
        assert lfs_gets == [f"/{REPO}/resolve/{commit}/model-00000-of-00001.safetensors"]
    assert hub.bytes_served_per_path == {f"{REPO}/{k}": len(v) for k, v in ROOT_FILES.items()}
    assert hub.bytes_served == sum(len(v) for v in ROOT_FILES.values())


def test_resolve_answers_like_the_hub(hub: FakeHub) -> None:
    commit = hub.add_repo(REPO, FILES)
    small, big = FILES["config.json"], FILES["model-00000-of-00001.safetensors"]
    parts = urlsplit(hub.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        conn.request("HEAD", f"/{REPO}/resolve/main/config.json")
        response = conn.getresponse()
        response.read()
        assert response.status == 200
        assert response.headers["ETag"] == f'"{_git_blob_sha1(small)}"'
        assert response.headers["X-Repo-Commit"] == commit
        assert response.headers["Content-Length"] == str(len(small))
        assert response.headers["X-Linked-Etag"] is None

        conn.request("HEAD", f"/{REPO}/resolve/main/model-00000-of-00001.safetensors")
        response = conn.getresponse()
        response.read()
        headers = response.headers
        assert response.status == 302
        assert headers["X-Linked-Etag"] == f'"{hashlib.sha256(big).hexdigest()}"'
        assert headers["X-Linked-Size"] == str(len(big))
        assert headers["X-Repo-Commit"] == commit
        assert headers["Location"].startswith(hub.cdn_url + "/")
        assert not [name for name in headers if name.lower().startswith("x-xet")]
    finally:
        conn.close()

    location = urlsplit(headers["Location"])
    signed = f"{location.path}?{location.query}"
    status, got, body = _raw_get(hub.cdn_url, signed, {"Range": "bytes=1000-"})
    assert (status, body) == (206, big[1000:])
    assert got["Content-Range"] == f"bytes 1000-{len(big) - 1}/{len(big)}"
    status, got, _ = _raw_get(hub.cdn_url, signed, {"Range": f"bytes={len(big)}-"})
    assert (status, got["Content-Range"]) == (416, f"bytes */{len(big)}")
    assert _raw_get(hub.cdn_url, location.path + "?Expires=1&Signature=0")[0] == 403


def test_download_resumes_with_range_after_connection_drop(hub: FakeHub, tmp_path: Path) -> None:
    # huggingface_hub reads bodies in DOWNLOAD_CHUNK_SIZE (10 MiB) chunks and, within the same
    # call, retries a broken body with Range from the bytes it has written so far.
    data = random.Random(1).randbytes(12 * MiB)
    commit = hub.add_repo(REPO, {"model.safetensors": data})
    hub.fail_after_bytes = 11 * MiB
    hub.fail_times = 1
    path = hf_hub_download(
        REPO,
        "model.safetensors",
        revision=commit,
        cache_dir=tmp_path,
        token=False,
        endpoint=hub.url,
    )
    assert Path(path).read_bytes() == data
    assert [r.range for r in _gets(hub, "model.safetensors")] == [
        None,
        f"bytes={constants.DOWNLOAD_CHUNK_SIZE}-",
    ]
    assert hub.bytes_served_per_path[f"{REPO}/model.safetensors"] == 11 * MiB + 2 * MiB
    assert hub.fail_times == 0
    assert _no_partial_files(tmp_path)


def test_drop_before_a_full_chunk_restarts_without_range(hub: FakeHub, tmp_path: Path) -> None:
    data = random.Random(2).randbytes(2 * MiB)
    commit = hub.add_repo(REPO, {"model.safetensors": data})
    hub.fail_after_bytes = MiB
    hub.fail_times = 1
    path = hf_hub_download(
        REPO,
        "model.safetensors",
        revision=commit,
        cache_dir=tmp_path,
        token=False,
        endpoint=hub.url,
    )
    assert Path(path).read_bytes() == data
    assert [r.range for r in _gets(hub, "model.safetensors")] == [None, None]


def test_reset_fails_the_call_and_nothing_is_kept_for_the_next(
    hub: FakeHub, tmp_path: Path
) -> None:
    httpx2 = pytest.importorskip("httpx2")  # the transport of huggingface_hub 2.x
    data = random.Random(3).randbytes(2 * MiB)
    commit = hub.add_repo(REPO, {"model.safetensors": data})
    hub.fail_after_bytes = MiB
    hub.fail_with_reset = True
    kwargs: dict[str, Any] = {"cache_dir": tmp_path, "token": False, "endpoint": hub.url}
    with pytest.raises(httpx2.ReadError):
        hf_hub_download(REPO, "model.safetensors", revision=commit, **kwargs)
    assert _no_partial_files(tmp_path)
    hub.fail_after_bytes = None
    path = hf_hub_download(REPO, "model.safetensors", revision=commit, **kwargs)
    assert Path(path).read_bytes() == data
    assert [r.range for r in _gets(hub, "model.safetensors")] == [None, None]


def test_download_recovers_from_a_stall_by_timeout_and_range(
    hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)
    data = random.Random(4).randbytes(11 * MiB)
    commit = hub.add_repo(REPO, {"model.safetensors": data})
    hub.stall_after_bytes = 10 * MiB + 1
    hub.stall_times = 1
    path = hf_hub_download(
        REPO,
        "model.safetensors",
        revision=commit,
        cache_dir=tmp_path,
        token=False,
        endpoint=hub.url,
    )
    assert Path(path).read_bytes() == data
    assert [r.range for r in _gets(hub, "model.safetensors")] == [
        None,
        f"bytes={constants.DOWNLOAD_CHUNK_SIZE}-",
    ]


# -- knobs on the wire ----------------------------------------------------------------------


def _open_body(url: str, path: str) -> tuple[socket.socket, bytes]:
    """Send a GET and return the socket and what followed the response headers."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "", parts.port or 80), timeout=5)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
    return sock, body


def _read(sock: socket.socket, size: int, body: bytes) -> bytes:
    while len(body) < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return body


def test_stall_holds_the_body_until_cleared(hub: FakeHub) -> None:
    data = bytes(range(256)) * 32  # 8 KiB, a regular (non-LFS) file served by the hub
    hub.add_repo(REPO, {"vocab.txt": data})
    hub.stall_after_bytes = 1000
    sock, body = _open_body(hub.url, f"/{REPO}/resolve/main/vocab.txt")
    with sock:
        body = _read(sock, 1000, body)
        assert body == data[:1000]
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        hub.stall_after_bytes = None
        sock.settimeout(5)
        assert _read(sock, len(data), body) == data


def test_stop_cuts_stalled_downloads() -> None:
    hub = FakeHub(lfs_redirect=False).start()
    hub.add_repo(REPO, {"model.safetensors": b"x" * 5000})
    hub.stall_after_bytes = 100
    sock, body = _open_body(hub.url, f"/{REPO}/resolve/main/model.safetensors")
    with sock:
        assert _read(sock, 100, body) == b"x" * 100
        started = time.monotonic()
        hub.stop()
        assert time.monotonic() - started < 2
        sock.settimeout(2)
        assert sock.recv(65536) == b""


def test_throttle_limits_bytes_per_second(hub: FakeHub) -> None:
    data = b"y" * 9000
    hub.add_repo(REPO, {"notes.txt": data})
    hub.bytes_per_second = 30_000
    started = time.monotonic()
    status, _, body = _raw_get(hub.url, f"/{REPO}/resolve/main/notes.txt")
    elapsed = time.monotonic() - started
    assert (status, body) == (200, data)
    assert elapsed >= 0.2  # 9000 bytes at 30 kB/s: five 50 ms pauses before the last chunk


# -- errors ---------------------------------------------------------------------------------


def test_private_repo_needs_the_token(hub: FakeHub, tmp_path: Path) -> None:
    commit = hub.add_repo(REPO, ROOT_FILES)
    hub.required_token = "hf_fake_token"
    with pytest.raises(RepositoryNotFoundError) as missing:
        HfApi(endpoint=hub.url, token=False).model_info(REPO, files_metadata=True)
    assert missing.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as wrong:
        HfApi(endpoint=hub.url, token="hf_other").model_info(REPO, files_metadata=True)
    assert wrong.value.response.status_code == 401
    assert not isinstance(wrong.value, RepositoryNotFoundError)
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download(REPO, revision=commit, cache_dir=tmp_path, token=False, endpoint=hub.url)

    info = HfApi(endpoint=hub.url, token="hf_fake_token").model_info(REPO, files_metadata=True)
    assert (info.sha, info.private) == (commit, True)
    folder = snapshot_download(
        REPO, revision=commit, cache_dir=tmp_path, token="hf_fake_token", endpoint=hub.url
    )
    assert (Path(folder) / "config.json").read_bytes() == ROOT_FILES["config.json"]


def test_gated_repo_raises_gated_repo_error(hub: FakeHub, tmp_path: Path) -> None:
    commit = hub.add_repo(REPO, ROOT_FILES)
    hub.gated_repos.add(REPO)
    with pytest.raises(GatedRepoError) as anonymous:
        HfApi(endpoint=hub.url, token=False).model_info(REPO, revision=commit)
    assert anonymous.value.response.status_code == 401
    # Signed in without access: the metadata is readable, the files are not.
    assert HfApi(endpoint=hub.url, token="hf_x").model_info(REPO).gated == "manual"
    with pytest.raises(GatedRepoError) as signed_in:
        snapshot_download(REPO, revision=commit, cache_dir=tmp_path, token="hf_x", endpoint=hub.url)
    assert signed_in.value.response.status_code == 403


def test_unknown_repo_raises_repository_not_found(hub: FakeHub, tmp_path: Path) -> None:
    commit = hub.add_repo(REPO, ROOT_FILES)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).model_info("openai/nope", files_metadata=True)
    with pytest.raises(RepositoryNotFoundError) as by_sha:
        snapshot_download(
            "openai/nope", revision=commit, cache_dir=tmp_path, token="hf_x", endpoint=hub.url
        )
    assert by_sha.value.response.status_code == 404
    assert not isinstance(by_sha.value, GatedRepoError)


def test_unknown_revision_raises_revision_not_found(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo(REPO, ROOT_FILES)
    with pytest.raises(RevisionNotFoundError):
        HfApi(endpoint=hub.url, token=False).model_info(REPO, revision="nope")
    for revision in ("nope", "f" * 40):
        with pytest.raises(RevisionNotFoundError):
            snapshot_download(
                REPO, revision=revision, cache_dir=tmp_path, token=False, endpoint=hub.url
            )


def test_missing_file_raises_entry_not_found(hub: FakeHub, tmp_path: Path) -> None:
    hub.add_repo(REPO, ROOT_FILES)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "nope.json", cache_dir=tmp_path, token=False, endpoint=hub.url)


def test_add_repo_validates_its_input() -> None:
    hub = FakeHub()
    assert hub.add_repo(REPO, {"a.txt": b"a"}, commit="ab" * 20) == "ab" * 20
    with pytest.raises(ValueError, match="owner/name"):
        hub.add_repo("no-owner", {"a.txt": b"a"})
    with pytest.raises(ValueError, match="40 lowercase hex"):
        hub.add_repo(REPO, {"a.txt": b"a"}, commit="main")
    with pytest.raises(ValueError, match="invalid file path"):
        hub.add_repo(REPO, {"../a.txt": b"a"})
    with pytest.raises(RuntimeError, match="not running"):
        _ = hub.url
