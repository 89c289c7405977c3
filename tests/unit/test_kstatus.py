"""Our status conventions, judged by the real kstatus library (what Flux and kpt use).

The first run builds a small Go binary around sigs.k8s.io/cli-utils (about a minute).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from gptoss_sandbox import kstatus
from tests.unit.test_gitops_health import (
    GENERATION,
    batch_objects,
    job_object,
    job_statuses,
    model_object,
    model_statuses,
)

pytestmark = pytest.mark.skipif(
    shutil.which("go") is None, reason="go is not on PATH: cannot build the kstatus binary"
)


@pytest.fixture(scope="module")
def binary() -> Path:
    return kstatus.ensure_kstatus()


def verdict(obj: dict[str, Any]) -> str:
    [result] = kstatus.compute([obj])
    return str(result["status"])


@pytest.mark.usefixtures("binary")
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("Ready", "Current"),
        ("ScaledToZero", "Current"),
        ("Pending", "InProgress"),
        ("Downloading", "InProgress"),
        ("Starting", "InProgress"),
        ("DownloadFailed", "Failed"),
        ("Unschedulable", "Failed"),
        ("ImagePullError", "Failed"),
        ("CrashLoop", "Failed"),
        ("ProgressDeadlineExceeded", "Failed"),
        ("ClaimPending", "Failed"),
    ],
)
def test_model(case: str, expected: str) -> None:
    assert verdict(model_object(model_statuses()[case])) == expected


@pytest.mark.usefixtures("binary")
def test_model_with_an_unobserved_generation_is_in_progress() -> None:
    obj = model_object(model_statuses()["Ready"], generation=GENERATION + 1)
    [result] = kstatus.compute([obj])
    assert result == {
        "status": "InProgress",
        "message": f"GptOssModel generation is {GENERATION + 1}, "
        f"but latest observed generation is {GENERATION}",
    }


@pytest.mark.usefixtures("binary")
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("Succeeded", "Current"),
        ("Running", "InProgress"),
        ("Queued", "InProgress"),
        ("WaitingForModel", "InProgress"),
        ("ModelNotFound", "InProgress"),
        ("WorkerLost", "InProgress"),
        ("Failed", "Failed"),
    ],
)
def test_job(case: str, expected: str) -> None:
    assert verdict(job_object(job_statuses()[case])) == expected


@pytest.mark.usefixtures("binary")
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("Pending", "InProgress"),
        ("Running", "InProgress"),
        ("Merging", "InProgress"),
        ("Succeeded", "Current"),
        ("Failed", "Failed"),
    ],
)
def test_batch(case: str, expected: str) -> None:
    assert verdict(batch_objects()[case]) == expected


@pytest.mark.usefixtures("binary")
def test_messages_are_the_condition_messages() -> None:
    stalled = model_statuses()["CrashLoop"]
    failed = job_statuses()["Failed"]
    results = kstatus.compute([model_object(stalled), job_object(failed)])
    assert [r["message"] for r in results] == [
        next(c["message"] for c in stalled["conditions"] if c["type"] == "Stalled"),
        failed["message"],
    ]


@pytest.mark.usefixtures("binary")
def test_without_status_kstatus_calls_it_current() -> None:
    """kstatus cannot tell a new object from one without conditions (Argo CD waits)."""
    assert verdict(model_object(None)) == "Current"
    assert verdict(job_object(None)) == "Current"


def test_go_mod_requires_the_pinned_versions() -> None:
    text = kstatus.go_mod()
    assert f"sigs.k8s.io/cli-utils {kstatus.CLI_UTILS_VERSION}" in text
    assert "k8s.io/apimachinery v0." in text
