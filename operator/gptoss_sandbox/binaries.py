"""Build and cache the local control plane's binaries from upstream Go modules.

The binaries, each built once per version and cached outside the repository:

- ``etcd``: a tiny main around ``go.etcd.io/etcd/server/v3/etcdmain``;
- ``kube``: one multi-call binary holding kube-apiserver, kube-controller-manager,
  kube-scheduler, kubectl, kubelet and kube-proxy (symlinks with those names point at it);
- ``kwok``: ``sigs.k8s.io/kwok/cmd/kwok``, installed from its module;
- ``helm``: ``helm.sh/helm/v3/cmd/helm``, installed from its module (chart tests, demo);
- ``versitygw``: the Versity S3 Gateway (``github.com/versity/versitygw``), an
  S3-compatible server over a folder, for InferenceBatch files in buckets.

The real node (``gptoss_sandbox.node``) runs the kubelet and kube-proxy above and:

- ``containerd``, ``containerd-shim-runc-v2`` and ``ctr`` (``github.com/containerd/containerd/v2``);
- the CNI plugins bridge, host-local, loopback and portmap
  (``github.com/containernetworking/plugins``);
- ``crictl`` (``sigs.k8s.io/cri-tools``), the CRI client;
- ``coredns``: CoreDNS (``github.com/coredns/coredns``) with the five plugins the
  cluster's DNS uses (``gosrc/coredns``);
- ``fakegpu``: a device plugin of our own (``gosrc/fakegpu``) that advertises GPUs the
  machine does not have, so GPU pods schedule onto the real node;
- ``pause``: the pod sandbox's process (``gosrc/pause``), the one file of the node's
  sandbox image;
- ``runc`` is Debian's package (``apt-get install runc``), not built here.

Everything comes from the Go module proxy; nothing else is downloaded.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.37.2"
ETCD_VERSION = "v3.7.0"
KWOK_VERSION = "v0.8.0"
HELM_VERSION = "v3.22.0"
VERSITYGW_VERSION = "v1.8.0"
CONTAINERD_VERSION = "v2.4.2"
CNI_PLUGINS_VERSION = "v1.10.0"
CRI_TOOLS_VERSION = "v1.37.0"
COREDNS_VERSION = "v1.15.0"
# The fake GPU device plugin speaks the kubelet's device plugin API at our Kubernetes
# version, over the gRPC release that API's module asks for.
FAKEGPU_GRPC_VERSION = "v1.82.1"
# Bump when gosrc/fakegpu, gosrc/pause or gosrc/coredns change, so the cache builds them
# again.
NODE_SOURCES_REVISION = "1"

KUBE_COMPONENTS = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kubelet",
    "kube-proxy",
)
CONTAINERD_COMMANDS = ("containerd", "containerd-shim-runc-v2", "ctr")
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
GO_SOURCES = Path(__file__).parent / "gosrc"

Progress = Callable[[str], None]


def cache_root() -> Path:
    """Where binaries and their build folders live (``GPTOSS_CACHE_DIR`` overrides)."""
    configured = os.environ.get("GPTOSS_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "gptoss-operator"


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path
    helm: Path
    versitygw: Path


def binary_dir(name: str, version: str) -> Path:
    return cache_root() / "bin" / f"{name}-{version}"


def cached_binaries() -> Binaries | None:
    """The cached binaries, or None when any of them still has to be built."""
    kube_dir = binary_dir("kubernetes", KUBERNETES_VERSION)
    found = Binaries(
        etcd=binary_dir("etcd", ETCD_VERSION) / "etcd",
        kube_apiserver=kube_dir / "kube-apiserver",
        kube_controller_manager=kube_dir / "kube-controller-manager",
        kube_scheduler=kube_dir / "kube-scheduler",
        kubectl=kube_dir / "kubectl",
        kwok=binary_dir("kwok", KWOK_VERSION) / "kwok",
        helm=binary_dir("helm", HELM_VERSION) / "helm",
        versitygw=binary_dir("versitygw", VERSITYGW_VERSION) / "versitygw",
    )
    if all(os.access(p, os.X_OK) for p in vars(found).values()):
        return found
    return None


def ensure_binaries(progress: Progress = print) -> Binaries:
    """Return the binaries, building whatever is missing from the cache."""
    with cache_lock():
        if not (binary_dir("etcd", ETCD_VERSION) / "etcd").exists():
            _timed(progress, f"etcd {ETCD_VERSION}", _build_etcd, progress)
        kube_dir = binary_dir("kubernetes", KUBERNETES_VERSION)
        if not all((kube_dir / name).exists() for name in KUBE_COMPONENTS):
            _timed(progress, f"kubernetes {KUBERNETES_VERSION}", _build_kubernetes, progress)
        if not (binary_dir("kwok", KWOK_VERSION) / "kwok").exists():
            _timed(progress, f"kwok {KWOK_VERSION}", _build_kwok, progress)
        if not (binary_dir("helm", HELM_VERSION) / "helm").exists():
            _timed(progress, f"helm {HELM_VERSION}", _build_helm, progress)
        if not (binary_dir("versitygw", VERSITYGW_VERSION) / "versitygw").exists():
            _timed(progress, f"versitygw {VERSITYGW_VERSION}", _build_versitygw, progress)
    found = cached_binaries()
    if found is None:
        raise RuntimeError(f"binaries missing from {cache_root()} after a build")
    return found


@dataclass(frozen=True)
class NodeBinaries:
    """What the real node runs besides the control plane."""

    kubelet: Path
    kube_proxy: Path
    containerd: Path
    containerd_shim: Path
    ctr: Path
    cni_dir: Path
    crictl: Path
    coredns: Path
    fakegpu: Path
    pause: Path
    runc: Path


def ensure_node_binaries(progress: Progress = print) -> NodeBinaries:
    """Return the real node's binaries, building whatever is missing from the cache.

    runc comes from Debian (``apt-get install runc``); it is looked up, not built.
    """
    runc = shutil.which("runc")
    if runc is None:
        raise RuntimeError("runc is missing: apt-get install runc")
    ensure_binaries(progress)
    kube_dir = binary_dir("kubernetes", KUBERNETES_VERSION)
    containerd_dir = binary_dir("containerd", CONTAINERD_VERSION)
    found = NodeBinaries(
        kubelet=kube_dir / "kubelet",
        kube_proxy=kube_dir / "kube-proxy",
        containerd=containerd_dir / "containerd",
        containerd_shim=containerd_dir / "containerd-shim-runc-v2",
        ctr=containerd_dir / "ctr",
        cni_dir=binary_dir("cni-plugins", CNI_PLUGINS_VERSION),
        crictl=binary_dir("crictl", CRI_TOOLS_VERSION) / "crictl",
        coredns=_coredns_dir() / "coredns",
        fakegpu=_fakegpu_dir() / "fakegpu",
        pause=_pause_dir() / "pause",
        runc=Path(runc),
    )
    builds: list[tuple[list[Path], str, Callable[[Progress], None]]] = [
        (
            [containerd_dir / name for name in CONTAINERD_COMMANDS],
            f"containerd {CONTAINERD_VERSION}",
            _build_containerd,
        ),
        (
            [found.cni_dir / name for name in CNI_PLUGINS],
            f"CNI plugins {CNI_PLUGINS_VERSION}",
            _build_cni_plugins,
        ),
        ([found.crictl], f"crictl {CRI_TOOLS_VERSION}", _build_crictl),
        ([found.coredns], f"coredns {COREDNS_VERSION}", _build_coredns),
        ([found.fakegpu], "the fake GPU device plugin", _build_fakegpu),
        ([found.pause], "the pod sandbox's pause", _build_pause),
    ]
    with cache_lock():
        for paths, label, build in builds:
            if not all(path.exists() for path in paths):
                _timed(progress, label, build, progress)
    return found


@contextlib.contextmanager
def cache_lock(name: str = "build") -> Iterator[None]:
    """Serialize work on the cache between processes (parallel test runs, make targets)."""
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _timed(
    progress: Progress, label: str, build: Callable[[Progress], None], *args: Progress
) -> None:
    progress(f"building {label} (first run only; cached under {cache_root()}) ...")
    started = time.monotonic()
    build(*args)
    progress(f"built {label} in {time.monotonic() - started:.0f}s")


def _go(args: list[str], cwd: Path, progress: Progress, env: dict[str, str] | None = None) -> str:
    full_env = {**os.environ, "GO111MODULE": "on", "GOFLAGS": "-mod=mod", **(env or {})}
    full_env.pop("GOWORK", None)
    progress(f"  $ go {' '.join(args)}")
    result = subprocess.run(
        ["go", *args], cwd=cwd, env=full_env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed:\n{result.stderr[-4000:]}")
    return result.stdout


def _module_info(module: str, version: str, progress: Progress) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as scratch:
        out = _go(["mod", "download", "-json", f"{module}@{version}"], Path(scratch), progress)
    info: dict[str, str] = json.loads(out)
    return info


def staging_modules(kubernetes_go_mod: str) -> list[str]:
    """The ``k8s.io/*`` modules that k8s.io/kubernetes replaces with its staging folders."""
    modules = []
    for line in kubernetes_go_mod.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("./staging/"):
            modules.append(parts[0])
    return sorted(set(modules))


def staging_version(kubernetes_version: str) -> str:
    """Staging modules are tagged v0.<minor>.<patch> for Kubernetes v1.<minor>.<patch>."""
    major, rest = kubernetes_version.lstrip("v").split(".", 1)
    if major != "1":
        raise ValueError(f"unexpected Kubernetes version {kubernetes_version}")
    return f"v0.{rest}"


def kubernetes_go_mod(main_module: str, kubernetes_version: str, kubernetes_mod_text: str) -> str:
    """go.mod for a module that builds components of k8s.io/kubernetes."""
    staging = staging_version(kubernetes_version)
    go_line = next(
        (ln for ln in kubernetes_mod_text.splitlines() if ln.startswith("go ")), "go 1.26.0"
    )
    lines = [
        f"module {main_module}",
        "",
        go_line,
        "",
        f"require k8s.io/kubernetes {kubernetes_version}",
        "",
        "replace (",
    ]
    lines += [f"\t{mod} => {mod} {staging}" for mod in staging_modules(kubernetes_mod_text)]
    lines += [")", ""]
    return "\n".join(lines)


def _version_ldflags(version: str) -> str:
    major, minor = version.lstrip("v").split(".")[:2]
    values = {
        "gitVersion": version,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    flags = ["-s", "-w"]
    for package in ("k8s.io/client-go/pkg/version", "k8s.io/component-base/version"):
        flags += [f"-X '{package}.{key}={value}'" for key, value in values.items()]
    return " ".join(flags)


def _build_dir(name: str) -> Path:
    path = cache_root() / "src" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def _install(target_dir: Path, built: list[Path], aliases: tuple[str, ...] = ()) -> None:
    """Move built binaries into their versioned folder atomically, with ``aliases``
    (symlinks to the first)."""
    staging = target_dir.with_name(target_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for binary in built:
        shutil.move(str(binary), staging / binary.name)
    for alias in aliases:
        (staging / alias).symlink_to(built[0].name)
    shutil.rmtree(target_dir, ignore_errors=True)
    staging.rename(target_dir)


def _build_etcd(progress: Progress) -> None:
    work = _build_dir(f"etcd-{ETCD_VERSION}")
    shutil.copy(GO_SOURCES / "etcd" / "main.go", work / "main.go")
    (work / "go.mod").write_text(
        f"module gptoss.local/sandbox/etcd\n\ngo 1.26.0\n\n"
        f"require go.etcd.io/etcd/server/v3 {ETCD_VERSION}\n"
    )
    _go(["mod", "tidy"], work, progress)
    _go(["build", "-trimpath", "-ldflags=-s -w", "-o", "etcd", "."], work, progress)
    _install(binary_dir("etcd", ETCD_VERSION), [work / "etcd"])


def _build_kubernetes(progress: Progress) -> None:
    info = _module_info("k8s.io/kubernetes", KUBERNETES_VERSION, progress)
    mod_text = Path(info["GoMod"]).read_text()
    work = _build_dir(f"kubernetes-{KUBERNETES_VERSION}")
    shutil.copy(GO_SOURCES / "kube" / "main.go", work / "main.go")
    (work / "go.mod").write_text(
        kubernetes_go_mod("gptoss.local/sandbox/kube", KUBERNETES_VERSION, mod_text)
    )
    _go(["mod", "tidy"], work, progress)
    ldflags = _version_ldflags(KUBERNETES_VERSION)
    _go(["build", "-trimpath", f"-ldflags={ldflags}", "-o", "kube", "."], work, progress)
    _install(binary_dir("kubernetes", KUBERNETES_VERSION), [work / "kube"], KUBE_COMPONENTS)


def _go_install(
    name: str,
    packages: list[str],
    version: str,
    progress: Progress,
    tags: str = "",
) -> None:
    """``go install package@version ...`` (one module without replace lines) into the cache
    folder ``name-version``."""
    work = _build_dir(f"{name}-{version}")
    flags = ["-trimpath", "-ldflags=-s -w", *([f"-tags={tags}"] if tags else [])]
    _go(
        ["install", *flags, *(f"{package}@{version}" for package in packages)],
        work,
        progress,
        env={"GOBIN": str(work), "GOFLAGS": ""},
    )
    _install(binary_dir(name, version), [work / p.rsplit("/", 1)[1] for p in packages])


def _build_kwok(progress: Progress) -> None:
    _go_install("kwok", ["sigs.k8s.io/kwok/cmd/kwok"], KWOK_VERSION, progress)


def _build_helm(progress: Progress) -> None:
    _go_install("helm", ["helm.sh/helm/v3/cmd/helm"], HELM_VERSION, progress)


def _build_versitygw(progress: Progress) -> None:
    _go_install(
        "versitygw", ["github.com/versity/versitygw/cmd/versitygw"], VERSITYGW_VERSION, progress
    )


def _build_containerd(progress: Progress) -> None:
    module = "github.com/containerd/containerd/v2/cmd"
    _go_install(
        "containerd",
        [f"{module}/{name}" for name in CONTAINERD_COMMANDS],
        CONTAINERD_VERSION,
        progress,
        # The node's snapshotter is overlayfs: leave out the ones that need C headers.
        tags="no_btrfs,no_devmapper,no_zfs",
    )


def _build_cni_plugins(progress: Progress) -> None:
    module = "github.com/containernetworking/plugins/plugins"
    packages = {"bridge": "main", "host-local": "ipam", "loopback": "main", "portmap": "meta"}
    _go_install(
        "cni-plugins",
        [f"{module}/{packages[name]}/{name}" for name in CNI_PLUGINS],
        CNI_PLUGINS_VERSION,
        progress,
    )


def _build_crictl(progress: Progress) -> None:
    _go_install("crictl", ["sigs.k8s.io/cri-tools/cmd/crictl"], CRI_TOOLS_VERSION, progress)


def _build_main(
    name: str,
    target_dir: Path,
    requires: dict[str, str],
    progress: Progress,
    env: dict[str, str] | None = None,
) -> None:
    """Build ``gosrc/<name>/main.go`` in a module requiring ``requires`` (module: version)
    into ``target_dir``."""
    work = _build_dir(target_dir.name)
    shutil.copy(GO_SOURCES / name / "main.go", work / "main.go")
    lines = [f"module gptoss.local/sandbox/{name}", "", "go 1.26.0", ""]
    lines += [f"require {module} {version}" for module, version in sorted(requires.items())]
    (work / "go.mod").write_text("\n".join(lines) + "\n")
    if requires:
        _go(["mod", "tidy"], work, progress)
    _go(["build", "-trimpath", "-ldflags=-s -w", "-o", name, "."], work, progress, env=env)
    _install(target_dir, [work / name])


def _coredns_dir() -> Path:
    return binary_dir("coredns", f"{COREDNS_VERSION}-{NODE_SOURCES_REVISION}")


def _fakegpu_dir() -> Path:
    return binary_dir("fakegpu", f"{KUBERNETES_VERSION}-{NODE_SOURCES_REVISION}")


def _pause_dir() -> Path:
    return binary_dir("pause", NODE_SOURCES_REVISION)


def _build_coredns(progress: Progress) -> None:
    _build_main(
        "coredns", _coredns_dir(), {"github.com/coredns/coredns": COREDNS_VERSION}, progress
    )


def _build_pause(progress: Progress) -> None:
    # Static: it is the only file of its image.
    _build_main("pause", _pause_dir(), {}, progress, env={"CGO_ENABLED": "0"})


def _build_fakegpu(progress: Progress) -> None:
    requires = {
        "google.golang.org/grpc": FAKEGPU_GRPC_VERSION,
        "k8s.io/kubelet": staging_version(KUBERNETES_VERSION),
    }
    _build_main("fakegpu", _fakegpu_dir(), requires, progress)


def cache_size_bytes() -> int:
    root = cache_root() / "bin"
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the local control plane's binaries.")
    parser.add_argument("--print-dir", action="store_true", help="print the cache folder and exit")
    parser.add_argument(
        "--node", action="store_true", help="also the real node's (containerd, CNI, CoreDNS...)"
    )
    args = parser.parse_args(argv)
    if args.print_dir:
        print(cache_root())
        return 0
    started = time.monotonic()
    progress: Progress = lambda line: print(line, flush=True)  # noqa: E731
    built: dict[str, Path] = dict(vars(ensure_binaries(progress)))
    if args.node:
        built.update(vars(ensure_node_binaries(progress)))
    print(f"binaries ready in {time.monotonic() - started:.0f}s:")
    for name, path in built.items():
        print(f"  {name}: {path}")
    print(f"cache size: {cache_size_bytes() / 2**20:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
