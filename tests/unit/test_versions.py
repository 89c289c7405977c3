"""One constant holds the engine version; the chart and the README follow it."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from gptoss_operator.api.versions import DEFAULT_VLLM_IMAGE, VLLM_IMAGE_CUDA12, VLLM_VERSION
from gptoss_operator.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_the_chart_pins_the_same_vllm_image() -> None:
    values = yaml.safe_load((ROOT / "charts/gptoss-operator/values.yaml").read_text())
    assert values["defaults"]["vllmImage"] == DEFAULT_VLLM_IMAGE
    assert Settings().vllm_image == DEFAULT_VLLM_IMAGE


def test_the_readme_and_examples_name_no_other_vllm_release() -> None:
    texts = [(ROOT / "README.md").read_text()]
    texts += [path.read_text() for path in (ROOT / "examples").glob("*.yaml")]
    tags = {tag for text in texts for tag in re.findall(r"vllm/vllm-openai:(\S+?)[`\s,)]", text)}
    assert tags == {f"v{VLLM_VERSION}", VLLM_IMAGE_CUDA12.split(":")[1]}
