"""Finish large files that an earlier attempt left half-written.

huggingface_hub resumes a file with Range requests while one call lasts, but a new call
starts every file from zero. When a download pod is killed, its partial blobs
(``blobs/<sha256>.<id>.incomplete``) stay on the volume; this step fetches only their
missing bytes, checks the sha256, and moves them into place, so a retried Job continues
from the bytes on disk. ``snapshot_download`` then finds those blobs complete.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import httpx

from gptoss_operator.workers.download.layout import Layout

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def _is_lfs(etag: str) -> bool:
    """LFS files are named by their sha256 (64 hex); small git files by a sha1."""
    return len(etag) == 64


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _partials(blobs: Path, etag: str) -> list[Path]:
    found = [p for p in blobs.glob(f"{etag}*.incomplete") if p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_size, reverse=True)


def resume_partial_blobs(
    layout: Layout,
    repo: str,
    commit: str,
    files: list[tuple[str, int, str]],
    *,
    endpoint: str | None,
    token: str | None,
    read_timeout: float = 60.0,
) -> list[str]:
    """Complete the partial blobs of ``files`` ((path, size, etag) each); return the paths
    finished this way. Anything that cannot be resumed is left for a fresh download."""
    from huggingface_hub import hf_hub_url

    blobs = layout.blobs(repo)
    if not blobs.is_dir():
        return []
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    finished: list[str] = []
    timeout = httpx.Timeout(30.0, read=read_timeout)
    # Redirects to another origin (the LFS CDN) drop the Authorization header.
    with httpx.Client(follow_redirects=True, timeout=timeout) as http:
        for path, size, etag in files:
            target = blobs / etag
            if not _is_lfs(etag) or target.exists():
                continue
            partials = _partials(blobs, etag)
            if not partials:
                continue
            best = partials[0]
            have = best.stat().st_size
            if have == 0 or have > size:
                continue
            if have < size:
                url = hf_hub_url(repo, path, revision=commit, endpoint=endpoint)
                with http.stream("GET", url, headers={**headers, "Range": f"bytes={have}-"}) as r:
                    if r.status_code != 206:
                        log.info(
                            "%s: the server does not resume (HTTP %d); downloading it again",
                            path,
                            r.status_code,
                        )
                        continue
                    with open(best, "ab") as out:
                        for chunk in r.iter_bytes(_CHUNK):
                            out.write(chunk)
            if best.stat().st_size != size or _sha256(best) != etag:
                log.warning(
                    "%s: the resumed file does not match its sha256; downloading it again", path
                )
                best.unlink(missing_ok=True)
                continue
            os.replace(best, target)
            for stale in _partials(blobs, etag):
                stale.unlink(missing_ok=True)
            log.info("%s: resumed from byte %d of %d", path, have, size)
            finished.append(path)
    return finished
