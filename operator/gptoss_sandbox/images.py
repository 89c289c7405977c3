"""Build the container images of the sandbox here, with no Docker engine and no registry.

Each image ends up as an uncompressed docker-archive under ``cache_root()/images/``, for
``ctr -n k8s.io images import`` to load later:

- the base, ``localhost/gptoss-base:<hash>``: a Debian bookworm root filesystem made by
  ``mmdebstrap`` from Debian's packages (python3.11, venv, CA certificates), imported into
  buildah's storage. It stands in for ``python:3.11-slim`` (the ``PYTHON_IMAGE`` argument);
- the product, ``ghcr.io/gptoss-operator/gptoss-operator:<version>``: ``images/Dockerfile``
  built by ``buildah bud`` on that base;
- vLLM's CPU build, ``localhost/gptoss-sandbox/vllm-cpu:<VLLM_VERSION>``: the cached engine
  venv (``engine_venv``) relocated to /opt/vllm by ``images/vllm-cpu.Dockerfile``;
- the real node's pod sandbox, ``localhost/gptoss-sandbox/pause:<hash>``: the ``pause``
  binary alone.

An archive is named by a hash of its inputs and rebuilt only when that hash changes. RUN
steps use chroot isolation and the host's network; they see the host's CA certificates and
pip configuration through volumes, which never end up in an image. Before an image is
archived, its checks run in it the way a pod runs it: as uid 10001, with a read-only root, a
fresh /tmp and no network. Needs root and the apt packages in ``TOOLS``.
"""

from __future__ import annotations

import argparse
import ast
import configparser
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptoss_operator import __version__
from gptoss_operator.api.versions import VLLM_VERSION
from gptoss_sandbox.binaries import Progress, cache_lock, cache_root
from gptoss_sandbox.engine_venv import EngineVenv, ensure_engine

REPO_ROOT = Path(__file__).resolve().parents[2]
PRODUCT_DOCKERFILE = REPO_ROOT / "images" / "Dockerfile"
PRODUCT_IGNOREFILE = REPO_ROOT / "images" / "Dockerfile.dockerignore"
VLLM_DOCKERFILE = REPO_ROOT / "images" / "vllm-cpu.Dockerfile"

PRODUCT_REFERENCE = f"ghcr.io/gptoss-operator/gptoss-operator:{__version__}"
VLLM_REFERENCE = f"localhost/gptoss-sandbox/vllm-cpu:{VLLM_VERSION}"
BASE_REPOSITORY = "localhost/gptoss-base"
PAUSE_REPOSITORY = "localhost/gptoss-sandbox/pause"

DEBIAN_SUITE = "bookworm"
DEBIAN_SOURCES = (
    f"deb http://deb.debian.org/debian {DEBIAN_SUITE} main",
    f"deb http://deb.debian.org/debian {DEBIAN_SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {DEBIAN_SUITE}-security main",
)
BASE_PACKAGES = (
    "python3",
    "python3-venv",
    "python-is-python3",
    "ca-certificates",
    "libnuma1",  # vLLM's CPU kernels (vllm/_C*.so) link it
)
# What Debian's slim images leave out too: manuals, documentation but copyrights, locales.
BASE_DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
)
BASE_CONFIG = (
    "--env",
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "--env",
    "LANG=C.UTF-8",
    "--cmd",
    '["python3"]',
)

TOOLS = {"mmdebstrap": "mmdebstrap", "buildah": "buildah", "runc": "runc"}
"""The commands a build runs, each with the apt package that installs it."""

POD_UID = 10001
# The host folder RUN steps see at its own path (read-only); the base image has it too.
HOST_CA_FOLDER = "/etc/ssl/certs"
# Where files the host's pip configuration names are mounted, under the build's /root.
PIP_FILES_FOLDER = ".host-files"

PRODUCT_CHECK = """
import os, pathlib, gptoss_operator, openai_harmony
from gptoss_operator.engine.vocab import has_valid_vocab
assert has_valid_vocab(pathlib.Path(os.environ["TIKTOKEN_ENCODINGS_BASE"]))
name = openai_harmony.HarmonyEncodingName.HARMONY_GPT_OSS
encoding = openai_harmony.load_harmony_encoding(name)
print("gptoss-operator", gptoss_operator.__version__, "harmony", encoding.encode("hello world"))
"""


class ImageBuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class ImageArchive:
    """A docker-archive holding one image, tagged ``reference``."""

    reference: str
    path: Path
    input_hash: str


def images_dir() -> Path:
    return cache_root() / "images"


def missing_packages() -> list[str]:
    """The apt packages to install before images can be built here."""
    return sorted({package for tool, package in TOOLS.items() if shutil.which(tool) is None})


def _check_can_build() -> None:
    missing = missing_packages()
    if missing:
        raise ImageBuildError(
            "building images needs " + ", ".join(missing) + ": "
            f"apt-get install -y {' '.join(missing)}"
        )
    if os.geteuid() != 0:
        raise ImageBuildError("building images needs root (mmdebstrap, buildah, runc)")


def _digest(parts: Iterable[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for name, data in parts:
        digest.update(f"{name}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def base_input_hash() -> str:
    recipe = [DEBIAN_SUITE, *DEBIAN_SOURCES, *BASE_PACKAGES, *BASE_DPKG_OPTIONS, *BASE_CONFIG]
    return _digest(("base", line.encode()) for line in recipe)


def product_context_files() -> list[Path]:
    """The files of the build context ``images/Dockerfile.dockerignore`` lets through."""
    files = [
        REPO_ROOT / name for name in ("images/requirements.txt", "pyproject.toml", "README.md")
    ]
    for path in sorted((REPO_ROOT / "operator").rglob("*")):
        parts = path.relative_to(REPO_ROOT).parts
        if path.is_file() and not any(p == "__pycache__" or p.endswith(".egg-info") for p in parts):
            files.append(path)
    return files


def product_input_hash() -> str:
    sources = [PRODUCT_DOCKERFILE, PRODUCT_IGNOREFILE, *product_context_files()]
    return _digest(
        [("base", base_input_hash().encode())]
        + [(str(path.relative_to(REPO_ROOT)), path.read_bytes()) for path in sources]
    )


def vllm_input_hash(engine: EngineVenv) -> str:
    """The engine's identity is its version, folder and completion marker (rewritten by
    every install)."""
    marker = engine.root / ".gptoss-complete"
    return _digest(
        [
            ("base", base_input_hash().encode()),
            ("dockerfile", VLLM_DOCKERFILE.read_bytes()),
            ("engine", f"{engine.version}\0{engine.root}".encode()),
            ("marker", marker.read_bytes() + str(marker.stat().st_mtime_ns).encode()),
        ]
    )


def _run(args: Sequence[str], progress: Progress, log: Path | None = None) -> str:
    """Run a command; its output goes to ``log`` when given (long builds), else is returned."""
    shown = shlex.join(args[:8]) + (" ..." if len(args) > 8 else "")
    progress(f"  $ {shown}" + (f"  (log: {log})" if log else ""))
    if log is None:
        result = subprocess.run(list(args), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ImageBuildError(
                f"{shown} failed:\n{result.stdout[-2000:]}{result.stderr[-4000:]}"
            )
        return result.stdout
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        ran = subprocess.run(list(args), stdout=out, stderr=subprocess.STDOUT, check=False)
    if ran.returncode != 0:
        raise ImageBuildError(f"{shown} failed:\n{log.read_text(errors='replace')[-6000:]}")
    return ""


def _quiet(_line: str) -> None:
    """A Progress that drops its lines."""


def _repository_name(reference: str) -> str:
    """``vllm-cpu`` for ``localhost/gptoss-sandbox/vllm-cpu:0.32.0``."""
    return reference.rsplit("/", 1)[-1].split(":", 1)[0]


def _image_exists(reference: str) -> bool:
    probe = subprocess.run(
        ["buildah", "inspect", "--type", "image", reference], capture_output=True, check=False
    )
    return probe.returncode == 0


def _archive_path(name: str, input_hash: str) -> Path:
    return images_dir() / f"{name}-{input_hash[:16]}.tar"


def _replace_stale(current: Path, name: str) -> None:
    """Delete the archives of ``name`` that older input hashes left beside ``current``."""
    for old in current.parent.glob(f"{name}-*.tar"):
        if old != current:
            old.unlink()


def _ensure_base(progress: Progress) -> str:
    """The base image's reference, importing (and first making) its root filesystem when
    buildah's storage lacks it."""
    input_hash = base_input_hash()[:16]
    reference = f"{BASE_REPOSITORY}:{input_hash}"
    if _image_exists(reference):
        return reference
    rootfs = _archive_path("base-rootfs", input_hash)
    if not rootfs.exists():
        progress(f"making the Debian {DEBIAN_SUITE} base with mmdebstrap ...")
        partial = rootfs.with_name(rootfs.name + ".partial")
        partial.unlink(missing_ok=True)
        _run(
            [
                "mmdebstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                *(f"--dpkgopt={option}" for option in BASE_DPKG_OPTIONS),
                "--format=tar",
                DEBIAN_SUITE,
                str(partial),
                *DEBIAN_SOURCES,
            ],
            progress,
            log=images_dir() / "logs" / "base.log",
        )
        partial.rename(rootfs)
        _replace_stale(rootfs, "base-rootfs")
    container = _run(["buildah", "from", "scratch"], progress).strip()
    try:
        _run(["buildah", "add", "--quiet", container, str(rootfs), "/"], progress)
        _run(["buildah", "config", *BASE_CONFIG, container], progress)
        _run(["buildah", "commit", "--quiet", container, reference], progress)
    finally:
        _run(["buildah", "rm", container], _quiet)
    return reference


def _pip_settings() -> list[tuple[str, str, str]]:
    """(section, key, value) of this machine's pip configuration, its environment
    variables (section ``:env:``) last, as ``pip config list`` reports them."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=False
    )
    settings = []
    for line in listed.stdout.splitlines():
        name, sep, value = line.partition("=")
        section, dot, key = name.partition(".")
        if sep and dot:
            settings.append((section, key, str(ast.literal_eval(value))))
    return settings


@contextmanager
def _build_volumes() -> Iterator[list[str]]:
    """``buildah bud`` volumes for RUN steps: the host's CA certificates, and a throwaway
    /root holding the host's pip configuration as ``.config/pip/pip.conf``, with the local
    files and folders it names (a CA bundle, find-links folders) mounted beneath it. The
    mount points exist in the image already, so nothing is left behind in its layers."""
    with tempfile.TemporaryDirectory(prefix="gptoss-build-root-") as scratch:
        home = Path(scratch)
        volumes = ["-v", f"{home}:/root", "-v", f"{HOST_CA_FOLDER}:{HOST_CA_FOLDER}:ro"]
        config = configparser.ConfigParser(interpolation=None)
        mounted = 0
        for section, key, value in _pip_settings():
            tokens = []
            for token in value.split():
                host = Path(token)
                if host.is_absolute() and host.exists() and not token.startswith(HOST_CA_FOLDER):
                    mounted += 1
                    inside = home / PIP_FILES_FOLDER / str(mounted)
                    inside.parent.mkdir(parents=True, exist_ok=True)
                    if host.is_dir():
                        inside.mkdir()
                    else:
                        inside.touch()
                    token = f"/root/{inside.relative_to(home)}"
                    volumes += ["-v", f"{host}:{token}:ro"]
                tokens.append(token)
            name = "global" if section == ":env:" else section
            if not config.has_section(name):
                config.add_section(name)
            config.set(name, key, " ".join(tokens))
        pip_conf = home / ".config" / "pip" / "pip.conf"
        pip_conf.parent.mkdir(parents=True)
        with open(pip_conf, "w") as out:
            config.write(out)
        yield volumes


def _bud(
    reference: str,
    dockerfile: Path,
    context: Path,
    build_args: dict[str, str],
    bud_options: Sequence[str],
    progress: Progress,
) -> None:
    """``buildah bud`` with its intermediate layers kept, so an unchanged step is reused."""
    args = ["buildah", "bud", "--isolation", "chroot", "--network", "host", "--layers"]
    args += ["--pull=never", "-f", str(dockerfile), "-t", reference, *bud_options]
    for name, value in build_args.items():
        args += ["--build-arg", f"{name}={value}"]
    log = images_dir() / "logs" / f"{_repository_name(reference)}.log"
    with _build_volumes() as volumes:
        _run([*args, *volumes, str(context)], progress, log=log)


def _oci_spec(rootfs: str, argv: Sequence[str], image_config: dict[str, Any]) -> dict[str, Any]:
    """An OCI runtime config for ``argv`` in an image, as a restricted pod runs it."""
    return {
        "ociVersion": "1.0.2",
        "root": {"path": rootfs, "readonly": True},
        "hostname": "gptoss-image-check",
        "process": {
            "user": {"uid": POD_UID, "gid": POD_UID},
            "args": list(argv),
            "env": list(image_config.get("Env") or []),
            "cwd": image_config.get("WorkingDir") or "/",
            "noNewPrivileges": True,
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["mode=755"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["mode=1777"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["mode=1777"]},
        ],
        "linux": {
            "namespaces": [{"type": kind} for kind in ("pid", "ipc", "uts", "mount", "network")]
        },
    }


def run_as_pod(reference: str, argv: Sequence[str], progress: Progress = print) -> str:
    """Run ``argv`` in an image of buildah's storage as uid 10001, with a read-only root, a
    fresh /tmp, no capabilities and no network (only loopback); return its output."""
    container = _run(["buildah", "from", "--pull=never", "--quiet", reference], _quiet).strip()
    try:
        rootfs = _run(["buildah", "mount", container], _quiet).strip()
        inspected = json.loads(_run(["buildah", "inspect", "--type", "image", reference], _quiet))
        spec = _oci_spec(rootfs, argv, inspected["OCIv1"]["config"])
        with tempfile.TemporaryDirectory(prefix="gptoss-image-check-") as bundle:
            (Path(bundle) / "config.json").write_text(json.dumps(spec))
            name = f"gptoss-image-check-{os.getpid()}"
            return _run(["runc", "run", "--bundle", bundle, name], progress)
    finally:
        _run(["buildah", "rm", container], _quiet)


def _export(reference: str, archive: Path, progress: Progress) -> None:
    """Write the image as an uncompressed docker-archive (atomically)."""
    partial = archive.with_name(archive.name + ".partial")
    partial.unlink(missing_ok=True)
    _run(
        [
            "buildah",
            "push",
            "--quiet",
            "--disable-compression",
            reference,
            f"docker-archive:{partial}:{reference}",
        ],
        progress,
    )
    partial.rename(archive)


def _build_and_archive(
    reference: str,
    input_hash: str,
    progress: Progress,
    *,
    dockerfile: Path,
    context: Path,
    build_args: dict[str, str],
    bud_options: Sequence[str],
    checks: Sequence[tuple[Sequence[str], str]],
    keep_in_storage: bool = True,
) -> ImageArchive:
    """The image's archive for ``input_hash``; when missing, build the image on the base,
    run its ``checks`` (argv, text its output must hold) in it, then archive it."""
    name = _repository_name(reference)
    archive = _archive_path(name, input_hash)
    if archive.exists():
        return ImageArchive(reference, archive, input_hash)
    _check_can_build()
    progress(f"building {reference} (cached under {images_dir()}) ...")
    started = time.monotonic()
    build_args = {"PYTHON_IMAGE": _ensure_base(progress), **build_args}
    _bud(reference, dockerfile, context, build_args, bud_options, progress)
    for argv, expected in checks:
        output = run_as_pod(reference, argv, progress)
        if expected not in output:
            raise ImageBuildError(f"{shlex.join(argv)} in {reference} printed:\n{output[-4000:]}")
    _export(reference, archive, progress)
    if not keep_in_storage:
        _run(["buildah", "rmi", reference], progress)
    _replace_stale(archive, name)
    size = archive.stat().st_size / 2**20
    progress(f"built {reference} in {time.monotonic() - started:.0f}s: {archive} ({size:.0f} MiB)")
    return ImageArchive(reference, archive, input_hash)


def ensure_product_image(progress: Progress = print) -> ImageArchive:
    """The product image's archive, built when its inputs changed."""
    with cache_lock("images"):
        return _build_and_archive(
            PRODUCT_REFERENCE,
            product_input_hash(),
            progress,
            dockerfile=PRODUCT_DOCKERFILE,
            context=REPO_ROOT,
            build_args={},
            bud_options=["--ignorefile", str(PRODUCT_IGNOREFILE)],
            checks=[
                (["gptoss-operator", "--help"], "usage: gptoss-operator"),
                (["python", "-c", PRODUCT_CHECK], f"gptoss-operator {__version__} harmony"),
            ],
        )


def ensure_vllm_image(progress: Progress = print) -> ImageArchive:
    """The vLLM CPU image's archive (installing the engine venv first when missing)."""
    engine = ensure_engine(progress)
    with cache_lock("images"):
        return _build_and_archive(
            VLLM_REFERENCE,
            vllm_input_hash(engine),
            progress,
            dockerfile=VLLM_DOCKERFILE,
            context=engine.root,
            build_args={"VENV_ORIGIN": str(engine.root)},
            bud_options=[],
            checks=[(["vllm", "--version"], VLLM_VERSION)],
            # Its 6 GB stay in the archive only: a rebuild copies the venv again.
            keep_in_storage=False,
        )


def ensure_pause_image(pause: Path, progress: Progress = print) -> ImageArchive:
    """An image of the node's pod sandbox process alone (``pause``, a static binary), for
    containerd's sandbox image: no registry serves registry.k8s.io/pause here."""
    input_hash = _digest([("pause", pause.read_bytes())])
    reference = f"{PAUSE_REPOSITORY}:{input_hash[:16]}"
    with cache_lock("images"):
        archive = _archive_path("pause", input_hash)
        if archive.exists():
            return ImageArchive(reference, archive, input_hash)
        _check_can_build()
        container = _run(["buildah", "from", "scratch"], progress).strip()
        try:
            _run(
                ["buildah", "copy", "--quiet", "--chmod", "0755", container, str(pause), "/pause"],
                progress,
            )
            _run(
                [
                    "buildah",
                    "config",
                    "--entrypoint",
                    '["/pause"]',
                    "--user",
                    "65535:65535",
                    container,
                ],
                progress,
            )
            _run(["buildah", "commit", "--quiet", container, reference], progress)
        finally:
            _run(["buildah", "rm", container], _quiet)
        _export(reference, archive, progress)
        _replace_stale(archive, "pause")
        return ImageArchive(reference, archive, input_hash)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the sandbox's images as archives.")
    parser.add_argument("image", nargs="?", choices=("product", "vllm", "all"), default="all")
    args = parser.parse_args(argv)
    builders = {"product": ensure_product_image, "vllm": ensure_vllm_image}
    wanted = list(builders) if args.image == "all" else [args.image]
    for name in wanted:
        started = time.monotonic()
        image = builders[name](lambda line: print(line, flush=True))
        size = image.path.stat().st_size / 2**20
        print(f"{image.reference}: {image.path}")
        print(f"  {size:.0f} MiB, ready in {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
