"""The README's first command (`make demo`) works end to end and says what is a stand-in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import use_existing_cluster

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(use_existing_cluster(), reason="the demo starts its own local plane"),
]


def test_demo_serves_a_model_and_answers_a_job(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gptoss_sandbox.demo", "--dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "phase: Ready" in output
    assert "inferencejob.gptoss.ai/what-is-recursion condition met" in output
    assert "response: Stand-in answer to: What is recursion?" in output
    assert "STAND-IN" in output
    assert "It is NOT gpt-oss" in output
    assert "Stand-in answer to: Prove the Pythagorean theorem" in output
