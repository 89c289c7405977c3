"""Run a process the way a container of a pod sees the machine: as the pod's user, with
a read-only root filesystem, its volumes at their mount paths and fresh emptyDirs.

No container runtime here: a private mount namespace (``unshare --mount``) gets a new
root of read-only bind mounts of this machine's directories, a tmpfs for each emptyDir,
the volumes bound at their mount paths, and the process enters it with ``chroot`` and
``setpriv`` (the pod's uid and gid, no supplementary groups, no capabilities, no new
privileges). What a restricted pod forbids fails here too: writing outside an emptyDir,
needing root, needing a name for the uid. Needs root (CAP_SYS_ADMIN) to set up.

The home of this machine's root user is not mounted (a pod's image has no such thing),
and /tmp is the pod's own; the directories ``expose`` names (the engine venv and the
Python it was made from) are shown at their paths, read-only, wherever they live.
"""

from __future__ import annotations

import functools
import os
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Top-level directories set up on their own rather than bound from this machine.
_SPECIAL = {"dev", "proc", "sys", "tmp", "root", "run", "lost+found", "mnt", "media"}


@dataclass(frozen=True)
class PodView:
    """What one container of a pod sees."""

    uid: int
    gid: int
    # container path -> host path, mounted read-only (volumes marked readOnly)
    read_only: dict[str, Path] = field(default_factory=dict)
    # container path -> host path, mounted writable
    writable: dict[str, Path] = field(default_factory=dict)
    # container paths of emptyDirs: a fresh tmpfs each
    empty_dirs: tuple[str, ...] = ()
    # directories of this machine to show at the same path, read-only
    expose: tuple[Path, ...] = ()


@functools.cache
def available() -> bool:
    """True when this process may build a pod's view (root, mount namespaces); probed
    once per process."""
    if os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "true"], capture_output=True, check=False, timeout=30
    )
    return probe.returncode == 0


def view_of(pod: dict[str, Any], container: str, volumes: dict[str, Path]) -> PodView:
    """The view of ``container`` in a pod spec; ``volumes`` maps the pod's volume names
    that are not emptyDirs to host folders (what to ``expose`` is the caller's)."""
    spec = next(c for c in pod["containers"] if c["name"] == container)
    security = {**(pod.get("securityContext") or {}), **(spec.get("securityContext") or {})}
    if "runAsUser" not in security:
        raise ValueError(f"container {container} names no user (runAsUser)")
    by_name = {v["name"]: v for v in pod.get("volumes") or []}
    read_only: dict[str, Path] = {}
    writable: dict[str, Path] = {}
    empty_dirs: list[str] = []
    for mount in spec.get("volumeMounts") or []:
        volume = by_name[mount["name"]]
        path = mount["mountPath"]
        if "emptyDir" in volume:
            empty_dirs.append(path)
        elif mount["name"] in volumes:
            (read_only if mount.get("readOnly") else writable)[path] = volumes[mount["name"]]
        else:
            raise ValueError(f"no host folder for volume {mount['name']} at {path}")
    return PodView(
        uid=int(security["runAsUser"]),
        gid=int(security.get("runAsGroup", security["runAsUser"])),
        read_only=read_only,
        writable=writable,
        empty_dirs=tuple(empty_dirs),
    )


def command(view: PodView, argv: Sequence[str], new_root: Path) -> list[str]:
    """``argv`` run inside ``view``; ``new_root`` is an empty folder for the mount point."""
    q = shlex.quote
    root = q(str(new_root))
    lines = [
        "set -eu",
        f"R={root}",
        'mount -t tmpfs -o mode=755 pod-root "$R"',
    ]
    for entry in sorted(os.listdir("/")):
        source = Path("/") / entry
        if entry in _SPECIAL:
            continue
        if source.is_symlink():
            lines.append(f'ln -s {q(os.readlink(source))} "$R"/{q(entry)}')
        elif source.is_dir():
            lines.append(_bind(str(source), f'"$R"/{q(entry)}', read_only=True))
    lines += [
        'mkdir -p "$R/dev" "$R/proc" "$R/sys" "$R/tmp" "$R/root" "$R/run"',
        'mount --rbind /dev "$R/dev"',
        'mount -t tmpfs -o mode=1777 shm "$R/dev/shm"',
        'mount --rbind /proc "$R/proc"',
        'mount --rbind /sys "$R/sys"',
        'mount -o remount,bind,ro "$R/sys"',
        'mount -t tmpfs -o mode=755 run "$R/run"',
        'mount -t tmpfs -o mode=755 root-home "$R/root"',
        'mount -o remount,ro "$R/run"',
    ]
    for path, host in sorted(view.read_only.items()):
        lines.append(_bind(str(host), f'"$R"{q(path)}', read_only=True))
    for path, host in sorted(view.writable.items()):
        lines.append(_bind(str(host), f'"$R"{q(path)}', read_only=False))
    for path in view.empty_dirs:
        lines.append(f'mkdir -p "$R"{q(path)} && mount -t tmpfs -o mode=1777 empty "$R"{q(path)}')
    # Last, so that neither the home tmpfs nor an emptyDir (/tmp) hides them.
    for folder in view.expose:
        lines.append(_bind(str(folder), f'"$R"{q(str(folder))}', read_only=True))
    lines.append('mount -o remount,ro "$R/root"')
    lines.append('mount -o remount,ro "$R"')
    lines.append(
        f'exec chroot "$R" setpriv --reuid={view.uid} --regid={view.gid} --clear-groups '
        '--no-new-privs --inh-caps=-all --bounding-set=-all -- "$@"'
    )
    script = "\n".join(lines)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "pod", *argv]


def _bind(source: str, target: str, *, read_only: bool) -> str:
    """Shell lines binding ``source`` at ``target`` (created first), read-only if asked."""
    make = f"mkdir -p {target}" if Path(source).is_dir() else f"touch {target}"
    line = f"{make} && mount --rbind {shlex.quote(source)} {target}"
    if read_only:
        line += f" && mount -o remount,bind,ro {target}"
    return line
