"""Download one repo revision into the volume: plan, check space, fetch, verify, mark.

Failures are :class:`DownloadError` with a reason users see as a condition, and an exit
code that tells the Job whether a retry can help.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gptoss_operator.api.conditions import timestamp
from gptoss_operator.api.download_exits import (
    EXIT_BAD_REQUEST,
    EXIT_INSUFFICIENT_STORAGE,
    EXIT_NOT_FOUND,
    EXIT_UNAUTHORIZED,
    EXIT_UNREACHABLE,
)
from gptoss_operator.engine.vocab import write_vocab
from gptoss_operator.workers.download.layout import Layout
from gptoss_operator.workers.download.resume import resume_partial_blobs

log = logging.getLogger(__name__)

COMMIT = re.compile(r"^[0-9a-f]{40}$")


class DownloadError(Exception):
    def __init__(self, reason: str, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.exit_code = exit_code


@dataclass(frozen=True)
class DownloadConfig:
    repo: str
    revision: str
    exclude_patterns: list[str]
    digest: str
    data_dir: Path
    endpoint: str | None = None
    token: str | None = None
    stall_timeout: float = 300.0
    capacity_bytes: int | None = None
    progress_interval: float = 3.0
    max_workers: int = 8


@dataclass(frozen=True)
class PlannedFile:
    path: str
    size: int
    etag: str  # the blob's name in the cache: sha256 for LFS files, the git oid otherwise


@dataclass
class Plan:
    commit: str
    files: list[PlannedFile]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass
class Progress:
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int

    @property
    def percent(self) -> int:
        if self.bytes_total == 0:
            return 100
        return min(100, int(self.bytes_done * 100 / self.bytes_total))


@dataclass
class Result:
    commit: str
    files: int
    bytes_total: int
    downloaded: bool  # False when the marker showed the files were already there
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


ProgressSink = Callable[[Progress], None]


def excluded(path: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(path, pattern) for pattern in patterns)


def _scrub(text: str, token: str | None) -> str:
    """Never let a token reach a message that ends up in logs, status or Events."""
    if token:
        text = text.replace(token, "***")
    return re.sub(r"hf_[A-Za-z0-9]{8,}", "hf_***", text)


def classify(error: BaseException, config: DownloadConfig) -> DownloadError:
    """Map a huggingface_hub / network error to a reason and an exit code."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(error, DownloadError):
        return error
    text = _scrub(str(error).splitlines()[0] if str(error) else type(error).__name__, config.token)
    where = f"{config.repo}@{config.revision}"
    if isinstance(error, GatedRepoError):
        return DownloadError(
            "Unauthorized",
            f"{config.repo} is gated: accept its terms on the hub with the account whose "
            f"token spec.source.tokenSecretRef names ({text})",
            EXIT_UNAUTHORIZED,
        )
    if isinstance(error, RevisionNotFoundError):
        return DownloadError(
            "RevisionNotFound", f"revision not found: {where} ({text})", EXIT_NOT_FOUND
        )
    if isinstance(error, RepositoryNotFoundError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status == 401 or config.token is None:
            return DownloadError(
                "Unauthorized" if status == 401 else "RepoNotFound",
                f"repository {config.repo} not found, or private and the token has no "
                f"access (HTTP {status}): {text}",
                EXIT_UNAUTHORIZED if status == 401 else EXIT_NOT_FOUND,
            )
        return DownloadError(
            "RepoNotFound", f"repository not found: {config.repo} ({text})", EXIT_NOT_FOUND
        )
    if isinstance(error, EntryNotFoundError):
        return DownloadError("RepoNotFound", f"file missing in {where}: {text}", EXIT_NOT_FOUND)
    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            return DownloadError(
                "Unauthorized",
                f"access to {where} refused (HTTP {status}): {text}",
                EXIT_UNAUTHORIZED,
            )
        if status is not None and 400 <= status < 500:
            return DownloadError(
                "DownloadRefused",
                f"the hub refused {where} (HTTP {status}): {text}",
                EXIT_BAD_REQUEST,
            )
        return DownloadError(
            "EndpointError", f"the hub failed (HTTP {status}): {text}", EXIT_UNREACHABLE
        )
    if _is_network_error(error):
        endpoint = config.endpoint or "https://huggingface.co"
        return DownloadError(
            "EndpointUnreachable", f"cannot reach {endpoint}: {text}", EXIT_UNREACHABLE
        )
    return DownloadError("DownloadFailed", f"{type(error).__name__}: {text}", 1)


_NETWORK_ERROR_NAMES = {"TransportError", "LocalEntryNotFoundError", "OfflineModeIsEnabled"}


def _is_network_error(error: BaseException) -> bool:
    """Connection-level failures, whichever HTTP library huggingface_hub uses (httpx or
    its successor httpx2 raise classes of the same names)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError)):
            return True
        if _NETWORK_ERROR_NAMES & {cls.__name__ for cls in type(current).__mro__}:
            return True
        current = current.__cause__ or current.__context__
    return False


def plan(config: DownloadConfig) -> Plan:
    """Resolve the revision to a commit and list the files to fetch, with their sizes."""
    from huggingface_hub import HfApi

    api = HfApi(endpoint=config.endpoint, token=config.token or False)
    info = api.model_info(config.repo, revision=config.revision, files_metadata=True)
    if not info.sha:
        raise DownloadError("DownloadFailed", f"the hub gave no commit for {config.repo}")
    files = []
    for sibling in info.siblings or []:
        if excluded(sibling.rfilename, config.exclude_patterns):
            continue
        if sibling.lfs is not None:
            etag, size = sibling.lfs.sha256, sibling.lfs.size
        else:
            etag, size = sibling.blob_id or "", sibling.size or 0
        files.append(PlannedFile(sibling.rfilename, int(size or 0), etag))
    return Plan(commit=info.sha, files=sorted(files, key=lambda f: f.path))


def measure(layout: Layout, repo: str, planned: Plan) -> Progress:
    """Bytes and files already on disk for the plan (complete blobs and partial ones)."""
    blobs = layout.blobs(repo)
    done_bytes = 0
    done_files = 0
    for item in planned.files:
        complete = blobs / item.etag
        size = complete.stat().st_size if complete.is_file() else 0
        if size >= item.size and complete.is_file():
            done_files += 1
            done_bytes += item.size
            continue
        partial = 0
        if blobs.is_dir():
            for candidate in blobs.glob(f"{item.etag}*.incomplete"):
                try:
                    partial = max(partial, candidate.stat().st_size)
                except OSError:
                    continue
        done_bytes += min(partial, item.size)
    return Progress(done_bytes, planned.total_bytes, done_files, len(planned.files))


def check_space(config: DownloadConfig, layout: Layout, planned: Plan) -> None:
    """Fail fast when the files cannot fit: the volume's free space and, when known,
    the claim's capacity both bound what is still to come."""
    present = measure(layout, config.repo, planned).bytes_done
    missing = planned.total_bytes - present
    free = shutil.disk_usage(config.data_dir).free
    limit = free
    if config.capacity_bytes is not None:
        used = _tree_bytes(config.data_dir)
        limit = min(limit, config.capacity_bytes - used)
    if missing > limit:
        raise DownloadError(
            "InsufficientStorage",
            f"{config.repo}@{planned.commit[:12]} needs {_gib(planned.total_bytes)} "
            f"({_gib(missing)} still to download) but the volume has {_gib(max(limit, 0))} "
            "free: raise spec.storage.size or narrow spec.source.excludePatterns",
            EXIT_INSUFFICIENT_STORAGE,
        )


def _tree_bytes(folder: Path) -> int:
    total = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            continue
    return total


def _gib(count: int) -> str:
    if count < 2**30:
        return f"{count / 2**20:.1f} MiB"
    return f"{count / 2**30:.1f} GiB"


def already_complete(
    config: DownloadConfig, layout: Layout, commit: str | None
) -> dict[str, Any] | None:
    """The marker, if it covers this source (and commit, when known) and the files are
    still all there with their sizes."""
    marker = layout.read_marker(config.digest)
    if not marker or marker.get("repo") != config.repo:
        return None
    if commit is not None and marker.get("resolvedRevision") != commit:
        return None
    snapshot = layout.snapshot(config.repo, str(marker.get("resolvedRevision")))
    for item in marker.get("files", []):
        path = snapshot / item["path"]
        try:
            if path.stat().st_size != item["size"]:
                return None
        except OSError:
            return None
    if not layout.link(config.digest).exists():
        return None
    return marker


class StallWatch:
    """Watches bytes on disk; calls ``on_progress`` every interval and ``on_stall`` once
    when nothing moved for ``stall_timeout`` seconds."""

    def __init__(
        self,
        sample: Callable[[], Progress],
        on_progress: ProgressSink,
        on_stall: Callable[[Progress], None],
        stall_timeout: float,
        interval: float,
    ) -> None:
        self.sample = sample
        self.on_progress = on_progress
        self.on_stall = on_stall
        self.stall_timeout = stall_timeout
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stall-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        last_bytes = -1
        last_change = time.monotonic()
        while not self._stop.wait(self.interval):
            progress = self.sample()
            now = time.monotonic()
            if progress.bytes_done != last_bytes:
                last_bytes = progress.bytes_done
                last_change = now
            self.on_progress(progress)
            if progress.bytes_done < progress.bytes_total and (
                now - last_change >= self.stall_timeout
            ):
                self.on_stall(progress)
                return


def download(
    config: DownloadConfig,
    on_progress: ProgressSink,
    on_stall: Callable[[Progress], None],
) -> Result:
    """Make the volume hold the planned files for ``config``; returns what is there."""
    from huggingface_hub import snapshot_download

    started = time.monotonic()
    layout = Layout(config.data_dir)
    pinned = config.revision if COMMIT.match(config.revision) else None
    if pinned and (marker := already_complete(config, layout, pinned)):
        return _from_marker(marker, started, layout)
    try:
        planned = plan(config)
    except Exception as error:
        failure = classify(error, config)
        marker = already_complete(config, layout, None)
        if failure.reason == "EndpointUnreachable" and marker is not None:
            log.warning("hub unreachable; the volume already holds %s", config.repo)
            return _from_marker(marker, started, layout)
        raise failure from error
    if marker := already_complete(config, layout, planned.commit):
        return _from_marker(marker, started, layout)

    check_space(config, layout, planned)
    on_progress(measure(layout, config.repo, planned))
    watch = StallWatch(
        lambda: measure(layout, config.repo, planned),
        on_progress,
        on_stall,
        config.stall_timeout,
        config.progress_interval,
    )
    watch.start()
    try:
        resume_partial_blobs(
            layout,
            config.repo,
            planned.commit,
            [(f.path, f.size, f.etag) for f in planned.files],
            endpoint=config.endpoint,
            token=config.token,
        )
        snapshot_download(
            config.repo,
            revision=planned.commit,
            cache_dir=layout.hub,
            ignore_patterns=config.exclude_patterns or None,
            token=config.token or False,
            endpoint=config.endpoint,
            max_workers=config.max_workers,
        )
    except Exception as error:
        raise classify(error, config) from error
    finally:
        watch.stop()
    _verify(layout, config.repo, planned)
    write_vocab(layout.vocab)
    layout.point_link(config.digest, config.repo, planned.commit)
    layout.write_marker(
        config.digest,
        {
            "repo": config.repo,
            "revision": config.revision,
            "resolvedRevision": planned.commit,
            "excludePatterns": config.exclude_patterns,
            "files": [{"path": f.path, "size": f.size} for f in planned.files],
            "bytesTotal": planned.total_bytes,
            "completedAt": timestamp(),
        },
    )
    on_progress(measure(layout, config.repo, planned))
    return Result(
        planned.commit, len(planned.files), planned.total_bytes, True, time.monotonic() - started
    )


def _verify(layout: Layout, repo: str, planned: Plan) -> None:
    snapshot = layout.snapshot(repo, planned.commit)
    for item in planned.files:
        path = snapshot / item.path
        try:
            size = path.stat().st_size
        except OSError as error:
            raise DownloadError(
                "DownloadFailed", f"{item.path} is missing after the download", 1
            ) from error
        if size != item.size:
            raise DownloadError(
                "DownloadFailed", f"{item.path} has {size} bytes, expected {item.size}", 1
            )


def _from_marker(marker: dict[str, Any], started: float, layout: Layout) -> Result:
    write_vocab(layout.vocab)  # the volume may predate it (a pre-filled claim)
    files = marker.get("files", [])
    return Result(
        str(marker["resolvedRevision"]),
        len(files),
        int(marker.get("bytesTotal", sum(f["size"] for f in files))),
        False,
        time.monotonic() - started,
    )
