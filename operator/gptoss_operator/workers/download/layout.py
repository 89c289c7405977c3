"""Where things live on the weights volume.

``hub/``                 the Hugging Face cache (blobs shared between revisions)
``served/<hash>``        link to the downloaded snapshot that vLLM serves
``served/<hash>.json``   completion marker: resolved revision, files and sizes
``tiktoken/``            harmony's vocab file, for vLLM and the sidecar offline
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def hub(self) -> Path:
        return self.root / "hub"

    @property
    def served(self) -> Path:
        return self.root / "served"

    @property
    def vocab(self) -> Path:
        return self.root / "tiktoken"

    def repo_cache(self, repo: str) -> Path:
        return self.hub / ("models--" + repo.replace("/", "--"))

    def blobs(self, repo: str) -> Path:
        return self.repo_cache(repo) / "blobs"

    def snapshot(self, repo: str, commit: str) -> Path:
        return self.repo_cache(repo) / "snapshots" / commit

    def link(self, digest: str) -> Path:
        return self.served / digest

    def marker(self, digest: str) -> Path:
        return self.served / f"{digest}.json"

    def attempts_file(self, digest: str) -> Path:
        return self.served / f"{digest}.attempts"

    def read_marker(self, digest: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.marker(digest).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_marker(self, digest: str, marker: dict[str, Any]) -> None:
        self.served.mkdir(parents=True, exist_ok=True)
        temp = self.marker(digest).with_suffix(".json.tmp")
        temp.write_text(json.dumps(marker, indent=2, sort_keys=True))
        os.replace(temp, self.marker(digest))

    def point_link(self, digest: str, repo: str, commit: str) -> None:
        """Point ``served/<hash>`` at the snapshot, with a relative link that works
        wherever the volume is mounted."""
        self.served.mkdir(parents=True, exist_ok=True)
        target = os.path.relpath(self.snapshot(repo, commit), self.served)
        temp = self.served / f".{digest}.link"
        if temp.is_symlink() or temp.exists():
            temp.unlink()
        temp.symlink_to(target)
        os.replace(temp, self.link(digest))

    def next_attempt(self, digest: str) -> int:
        self.served.mkdir(parents=True, exist_ok=True)
        path = self.attempts_file(digest)
        try:
            attempt = int(path.read_text().strip() or "0") + 1
        except (OSError, ValueError):
            attempt = 1
        path.write_text(str(attempt))
        return attempt
