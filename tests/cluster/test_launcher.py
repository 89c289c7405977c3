"""The launcher starts a whole plane and leaves no stray process behind, even when killed."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from gptoss_sandbox import cluster as sandbox
from tests.conftest import use_existing_cluster
from tests.support import wait_for

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(use_existing_cluster(), reason="exercises the local launcher itself"),
]

COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")


def _descendants(pid: int) -> list[int]:
    found = []
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        for text in child.read_text().split():
            found.append(int(text))
            found += _descendants(int(text))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


def _exe_names(pids: list[int]) -> set[str]:
    names = set()
    for pid in pids:
        try:
            names.add(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode())
        except OSError:
            continue
    return {Path(name).name for name in names}


def test_killed_launcher_takes_every_component_with_it(tmp_path: Path) -> None:
    launcher = subprocess.Popen(
        [sys.executable, "-m", "gptoss_sandbox.cluster", "serve", str(tmp_path), "1", "8"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: (tmp_path / "state.json").exists(), timeout=120, message="ready")
        children = _descendants(launcher.pid)
        assert set(COMPONENTS) <= _exe_names(children)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=10)
        wait_for(
            lambda: not any(_alive(pid) for pid in children),
            timeout=20,
            message="components to exit after the launcher was killed",
        )
    finally:
        if launcher.poll() is None:
            launcher.kill()


def test_up_writes_a_working_kubeconfig_and_down_stops_everything(tmp_path: Path) -> None:
    workdir = tmp_path / "plane"
    started = time.monotonic()
    state = sandbox.up(workdir, gpu_nodes=1, gpus=4)
    elapsed = time.monotonic() - started
    pid = state["pid"]
    try:
        children = _descendants(pid)
        kubeconfig = yaml.safe_load(Path(state["kubeconfig"]).read_text())
        assert kubeconfig["clusters"][0]["cluster"]["server"] == state["server"]
        kubectl = sandbox.binaries.cached_binaries()
        assert kubectl is not None
        nodes = subprocess.run(
            [
                str(kubectl.kubectl),
                "--kubeconfig",
                state["kubeconfig"],
                "get",
                "nodes",
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        items = json.loads(nodes.stdout)["items"]
        assert [n["status"]["capacity"]["nvidia.com/gpu"] for n in items] == ["4"]
        assert sandbox.up(workdir)["pid"] == pid, "a second `up` reuses the running plane"
    finally:
        assert sandbox.down(workdir)
    assert not _alive(pid)
    assert not any(_alive(child) for child in children)
    assert not (workdir / "state.json").exists()
    assert not sandbox.down(workdir)
    print(f"up() took {elapsed:.1f}s")
