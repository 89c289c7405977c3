"""The README's first command (`make demo`) works end to end and says what is not real."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gptoss_sandbox.tiny_gptoss import SCRIPTED_ANSWER
from tests.conftest import use_existing_cluster

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(use_existing_cluster(), reason="the demo starts its own local plane"),
]


def _demo(tmp_path: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "gptoss_sandbox.demo", "--dir", str(tmp_path / "demo"), *args],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "phase: Ready" in output
    assert "inferencejob.gptoss.ai/what-is-recursion condition met" in output
    return output


@pytest.mark.engine
def test_demo_installs_the_chart_on_a_real_node_and_answers_from_the_models_pod(
    tmp_path: Path,
) -> None:
    output = _demo(tmp_path)
    assert "helm install gptoss-operator charts/gptoss-operator" in output
    assert "a FAKE device plugin advertises 4 nvidia.com/gpu" in output
    assert "STAND-IN for huggingface.co" in output
    # kubectl get pods -o wide: the operator's pod and the model's on the real node.
    lines = output.splitlines()
    operator_row = next(line for line in lines if line.startswith("gptoss-operator-"))
    assert operator_row.split()[1:3] == ["1/1", "Running"]
    assert "gptoss-node" in operator_row
    server_row = next(line for line in lines if line.startswith("pod/gpt-oss-120b-vllm-"))
    assert server_row.split()[1:3] == ["2/2", "Running"]
    download_row = next(line for line in lines if line.startswith("pod/gpt-oss-120b-dl-"))
    assert download_row.split()[2] == "Completed"
    assert f"response: {SCRIPTED_ANSWER}" in output
    assert output.count(SCRIPTED_ANSWER) >= 4  # the note, the job, gptoss ask, the batch
    assert "8 answers in" in output


@pytest.mark.engine
def test_demo_on_kwok_runs_real_vllm_with_the_deployments_arguments(tmp_path: Path) -> None:
    output = _demo(tmp_path, "--kwok")
    assert "Starting REAL vLLM with the arguments of the Deployment" in output
    assert "It is NOT gpt-oss-120b" in output
    assert "vllm serve /data/served/" in output
    assert f"response: {SCRIPTED_ANSWER}" in output
    assert output.count(SCRIPTED_ANSWER) >= 3  # the note, the job, and gptoss ask


def test_demo_with_the_stand_in_engine(tmp_path: Path) -> None:
    output = _demo(tmp_path, "--engine", "standin")
    assert "response: Stand-in answer to: What is recursion?" in output
    assert "STAND-IN" in output
    assert "It is NOT gpt-oss" in output
    assert "Stand-in answer to: Prove the Pythagorean theorem" in output
