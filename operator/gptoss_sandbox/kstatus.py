"""kstatus, computed by the real library, to check our status conventions.

``ensure_kstatus`` builds a tiny main around ``sigs.k8s.io/cli-utils/pkg/kstatus/status``
(the library Flux, kpt and ``kubectl wait``-style tools use) once into the binary cache;
``compute`` runs it on objects.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from gptoss_sandbox.binaries import (
    GO_SOURCES,
    KUBERNETES_VERSION,
    Progress,
    _build_dir,
    _go,
    _install,
    _timed,
    binary_dir,
    cache_lock,
    cache_root,
    staging_version,
)

CLI_UTILS_VERSION = "v0.37.2"
MAIN_GO = GO_SOURCES / "kstatus" / "main.go"


def _version() -> str:
    """cli-utils version plus a hash of main.go, so an edited main is rebuilt."""
    digest = hashlib.sha256(MAIN_GO.read_bytes()).hexdigest()[:8]
    return f"{CLI_UTILS_VERSION}-{digest}"


def kstatus_path() -> Path:
    return binary_dir("kstatus", _version()) / "kstatus"


def go_mod() -> str:
    """go.mod for the main; apimachinery matches the sandbox's Kubernetes version."""
    apimachinery = staging_version(KUBERNETES_VERSION)
    return (
        "module gptoss.local/sandbox/kstatus\n\ngo 1.26.0\n\nrequire (\n"
        f"\tk8s.io/apimachinery {apimachinery}\n"
        f"\tsigs.k8s.io/cli-utils {CLI_UTILS_VERSION}\n)\n"
    )


def ensure_kstatus(progress: Progress = print) -> Path:
    """Return the kstatus binary, building it on first use."""
    path = kstatus_path()
    if not os.access(path, os.X_OK):
        with cache_lock():
            if not os.access(path, os.X_OK):
                _timed(progress, f"kstatus (cli-utils {CLI_UTILS_VERSION})", _build, progress)
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"kstatus missing from {cache_root()} after a build")
    return path


def _build(progress: Progress) -> None:
    work = _build_dir(f"kstatus-{_version()}")
    shutil.copy(MAIN_GO, work / "main.go")
    (work / "go.mod").write_text(go_mod())
    _go(["mod", "tidy"], work, progress)
    _go(["build", "-trimpath", "-ldflags=-s -w", "-o", "kstatus", "."], work, progress)
    _install(kstatus_path().parent, [work / "kstatus"])


def compute(objects: list[dict[str, Any]], progress: Progress = print) -> list[dict[str, Any]]:
    """kstatus's ``{"status": ..., "message": ...}`` for each object, in order."""
    binary = ensure_kstatus(progress)
    result = subprocess.run(
        [str(binary)],
        input=json.dumps(objects),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kstatus failed: {result.stderr.strip()}")
    verdicts: list[dict[str, Any]] = [
        json.loads(line) for line in result.stdout.splitlines() if line.strip()
    ]
    if len(verdicts) != len(objects):
        raise RuntimeError(f"kstatus answered {len(verdicts)} of {len(objects)} objects")
    return verdicts
