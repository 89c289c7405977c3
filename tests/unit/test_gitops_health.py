"""Argo CD health checks: the chart's real Lua scripts, run as Argo CD runs them.

Argo CD uses gopher-lua (Lua 5.1) and, for argocd-cm scripts, opens only the base,
table, package and a safe os library; the runtime here is Lua 5.1 with the rest removed.
Sample statuses come from the operator's own status functions.

Regenerate the argocd-cm snippet: ``.venv/bin/python tests/unit/test_gitops_health.py --write``.
"""

from __future__ import annotations

import copy
import datetime
import json
import sys
from pathlib import Path
from typing import Any

import lupa.lua51 as lupa
import pytest
import yaml

from gptoss_operator.api.job import Phase as JobPhase
from gptoss_operator.api.job_status import queued, with_conditions
from gptoss_operator.controllers.batch.status import Observed as BatchObserved
from gptoss_operator.controllers.model.status import Observed, compute
from tests.support import batch_status_patch

FILES = Path(__file__).resolve().parents[2] / "charts" / "gptoss-operator" / "files"
MODEL_SCRIPT = FILES / "argocd-health-gptossmodel.lua"
JOB_SCRIPT = FILES / "argocd-health-inferencejob.lua"
SNIPPET = FILES / "argocd-cm-snippet.yaml"
SCRIPTS = {
    "resource.customizations.health.gptoss.ai_GptOssModel": MODEL_SCRIPT,
    "resource.customizations.health.gptoss.ai_InferenceJob": JOB_SCRIPT,
    "resource.customizations.health.gptoss.ai_InferenceBatch": JOB_SCRIPT,
}
HEALTH_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing"}
WAITING = "Waiting for the operator"

# --- sample objects ---------------------------------------------------------------

GENERATION = 3
DIGEST = "0123abcd"
MODEL = "gpt-oss-20b"
NAMESPACE = "ml"
BOUND_CLAIM = {"metadata": {"name": f"{MODEL}-weights"}, "status": {"phase": "Bound"}}


def model_object(status: dict[str, Any] | None, generation: int = GENERATION) -> dict[str, Any]:
    """A GptOssModel as the apiserver returns it."""
    obj: dict[str, Any] = {
        "apiVersion": "gptoss.ai/v1alpha1",
        "kind": "GptOssModel",
        "metadata": {
            "name": MODEL,
            "namespace": NAMESPACE,
            "uid": "5b0c8f8e-2f4e-4a53-9d1e-3c7a2b1f0a11",
            "resourceVersion": "4711",
            "generation": generation,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {
            "source": {"repo": "openai/gpt-oss-20b", "revision": "main"},
            "storage": {"size": "40Gi"},
            "serving": {"replicas": 1},
        },
    }
    if status is not None:
        obj["status"] = status
    return obj


def job_object(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    """An InferenceJob as the apiserver returns it."""
    obj: dict[str, Any] = {
        "apiVersion": "gptoss.ai/v1alpha1",
        "kind": "InferenceJob",
        "metadata": {
            "name": "pythagoras",
            "namespace": NAMESPACE,
            "uid": "9a1d3c55-0c57-4f0e-8d7b-2f6b9e4c1d22",
            "resourceVersion": "815",
            "generation": generation,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {
            "modelRef": {"name": MODEL},
            "messages": [{"role": "user", "content": "Prove the Pythagorean theorem"}],
            "reasoningLevel": "high",
        },
    }
    if status is not None:
        obj["status"] = status
    return obj


def _download_job(condition: str | None) -> dict[str, Any]:
    conditions = [{"type": condition, "status": "True"}] if condition else []
    return {"metadata": {"name": f"{MODEL}-download"}, "status": {"conditions": conditions}}


def _deployment(ready: int, conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": f"{MODEL}-vllm", "generation": 1},
        "status": {
            "readyReplicas": ready,
            "updatedReplicas": ready,
            "observedGeneration": 1,
            "conditions": conditions or [],
        },
    }


def _pod(status: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"name": f"{MODEL}-vllm-7d9f-abcde"}, "status": status}


def _serving(deployment: dict[str, Any], pods: list[dict[str, Any]] | None = None) -> Observed:
    return Observed(
        GENERATION,
        DIGEST,
        claim=BOUND_CLAIM,
        job=_download_job("Complete"),
        deployment=deployment,
        served_digest=DIGEST,
        server_pods=pods or [],
        service={},
    )


def model_status(observed: Observed, replicas: int = 1) -> dict[str, Any]:
    return compute(observed, {}, name=MODEL, namespace=NAMESPACE, replicas=replicas).patch


def model_statuses() -> dict[str, dict[str, Any]]:
    """One status per situation, computed by the operator's model_status.compute."""
    downloading = model_status(
        Observed(GENERATION, DIGEST, claim=BOUND_CLAIM, job=_download_job(None))
    )
    downloading["download"] = {"percent": 42, "bytesDone": 5_460_000_000, "bytesTotal": 13 * 10**9}
    failed_pod = _pod(
        {
            "containerStatuses": [
                {
                    "name": "download",
                    "state": {
                        "terminated": {
                            "exitCode": 11,
                            "finishedAt": "2026-01-01T00:05:00Z",
                            "message": json.dumps(
                                {
                                    "reason": "RevisionNotFound",
                                    "message": "revision nope not found in openai/gpt-oss-20b",
                                }
                            ),
                        }
                    },
                }
            ]
        }
    )
    unschedulable = _pod(
        {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
                }
            ]
        }
    )
    image_pull = _pod(
        {
            "containerStatuses": [
                {
                    "name": "vllm",
                    "image": "vllm/vllm-openai:nope",
                    "state": {"waiting": {"reason": "ImagePullBackOff"}},
                }
            ]
        }
    )
    crash = _pod(
        {
            "containerStatuses": [
                {
                    "name": "vllm",
                    "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                    "lastState": {"terminated": {"exitCode": 1, "message": "CUDA out of memory"}},
                }
            ]
        }
    )
    deadline = {
        "type": "Progressing",
        "status": "False",
        "reason": "ProgressDeadlineExceeded",
        "message": 'ReplicaSet "gpt-oss-20b-vllm-7d9f" has timed out progressing.',
    }
    pending_claim = {"metadata": {"name": f"{MODEL}-weights"}, "status": {"phase": "Pending"}}
    return {
        "Pending": model_status(Observed(GENERATION, DIGEST, claim=BOUND_CLAIM)),
        "Downloading": downloading,
        "Starting": model_status(_serving(_deployment(0))),
        "Ready": model_status(_serving(_deployment(1))),
        "ScaledToZero": model_status(_serving(_deployment(0)), replicas=0),
        "DownloadFailed": model_status(
            Observed(GENERATION, DIGEST, job=_download_job("Failed"), job_pods=[failed_pod])
        ),
        "Unschedulable": model_status(_serving(_deployment(0), [unschedulable])),
        "ImagePullError": model_status(_serving(_deployment(0), [image_pull])),
        "CrashLoop": model_status(_serving(_deployment(0), [crash])),
        "ProgressDeadlineExceeded": model_status(_serving(_deployment(0, [deadline]))),
        "ClaimPending": model_status(
            Observed(
                GENERATION,
                DIGEST,
                claim=pending_claim,
                claim_warning='storageclass "fast" not found',
            )
        ),
    }


def job_statuses() -> dict[str, dict[str, Any]]:
    """One status per situation, computed by the operator's job_status functions."""
    model = repr(MODEL)
    running = with_conditions(
        {}, JobPhase.RUNNING, "Running", "running on gpt-oss-20b-vllm-0 (attempt 1)", 1
    )
    return {
        "Queued": queued({}, "Queued", f"waiting for a worker of GptOssModel {model}", 1),
        "WaitingForModel": queued(
            {},
            "WaitingForModel",
            f"GptOssModel {model} is Downloading; the job runs once it is Ready",
            1,
        ),
        "ModelNotFound": queued(
            {}, "ModelNotFound", f"GptOssModel {model} does not exist in {NAMESPACE}", 1
        ),
        "WorkerLost": queued(
            running, "WorkerLost", "worker gpt-oss-20b-vllm-0 stopped renewing its lease", 1
        ),
        "Running": running,
        "Succeeded": with_conditions(
            running, JobPhase.SUCCEEDED, "Completed", "the model answered", 1
        ),
        "Failed": with_conditions(
            running,
            JobPhase.FAILED,
            "DeadlineExceeded",
            "activeDeadlineSeconds (900) passed",
            1,
        ),
    }


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


# --- running the scripts ----------------------------------------------------------

# What argocd-cm scripts get without useOpenLibs: base, table, package, a safe os. Drop
# the rest (string methods too), so a script that needs them fails here as it would there.
_SANDBOX = """
getmetatable("").__index = nil
string, math, io, debug, coroutine, os = nil, nil, nil, nil, nil, nil
"""


def to_lua(lua: Any, value: Any) -> Any:
    """A Python value as Argo CD hands it to Lua: maps and lists become tables (lists
    1-based), null becomes nil (absent)."""
    if isinstance(value, dict):
        table = lua.table()
        for key, item in value.items():
            if item is not None:
                table[key] = to_lua(lua, item)
        return table
    if isinstance(value, list):
        table = lua.table()
        for index, item in enumerate(value, start=1):
            table[index] = to_lua(lua, item)
        return table
    return value


def run_health(script: Path, obj: dict[str, Any]) -> dict[str, Any]:
    """Run a health script on ``obj``; return its table as a dict, checked like Argo CD."""
    lua = lupa.LuaRuntime(unpack_returned_tuples=False)
    lua.execute(_SANDBOX)
    lua.globals().obj = to_lua(lua, copy.deepcopy(obj))
    result = lua.execute(script.read_text())
    assert lupa.lua_type(result) == "table", f"the script returned {result!r}"
    health = {str(key): value for key, value in result.items()}
    assert set(health) <= {"status", "message"}
    assert health["status"] in HEALTH_STATUSES
    assert isinstance(health.get("message", ""), str)
    return health


def model_health(obj: dict[str, Any]) -> tuple[str, str]:
    health = run_health(MODEL_SCRIPT, obj)
    return health["status"], health.get("message", "")


def job_health(obj: dict[str, Any]) -> tuple[str, str]:
    health = run_health(JOB_SCRIPT, obj)
    return health["status"], health.get("message", "")


def test_the_runtime_lacks_what_argo_cd_leaves_out() -> None:
    """A script calling string functions fails here, as it would in Argo CD."""
    for script in ('return string.format("%d", 1)', 'return ("x"):upper()', "return math.floor(1)"):
        lua = lupa.LuaRuntime(unpack_returned_tuples=False)
        lua.execute(_SANDBOX)
        with pytest.raises(lupa.LuaError):
            lua.execute(script)


# --- GptOssModel ------------------------------------------------------------------


def test_model_without_status_waits_for_the_operator() -> None:
    assert model_health(model_object(None)) == ("Progressing", WAITING)
    assert model_health(model_object({})) == ("Progressing", WAITING)


def test_model_with_an_unobserved_generation_waits() -> None:
    ready = model_statuses()["Ready"]
    status, message = model_health(model_object(ready, generation=GENERATION + 1))
    assert status == "Progressing"
    assert message == f"{WAITING} to observe generation {GENERATION + 1}"


def test_ready_model_is_healthy() -> None:
    status = model_statuses()["Ready"]
    assert status["phase"] == "Ready"
    assert model_health(model_object(status)) == (
        "Healthy",
        f"1/1 vLLM pods ready; serving at http://{MODEL}-vllm.{NAMESPACE}.svc:8000/v1",
    )


def test_model_scaled_to_zero_is_healthy() -> None:
    status = model_statuses()["ScaledToZero"]
    assert model_health(model_object(status)) == ("Healthy", "spec.serving.replicas is 0")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("Pending", "Pending: creating the download Job"),
        ("Downloading", "Downloading: downloading the weights (42% downloaded)"),
        ("Starting", "Starting: 0/1 vLLM pods ready; vLLM is loading the weights"),
    ],
)
def test_model_on_its_way_is_progressing(case: str, message: str) -> None:
    status = model_statuses()[case]
    assert status["phase"] == case
    assert condition(status, "Reconciling")["status"] == "True"
    assert model_health(model_object(status)) == ("Progressing", message)


def test_download_percent_is_left_out_once_downloaded() -> None:
    status = model_statuses()["Starting"]
    status["download"] = {"percent": 100}
    assert "%" not in model_health(model_object(status))[1]


@pytest.mark.parametrize(
    ("case", "phase"),
    [
        ("DownloadFailed", "Failed"),
        ("Unschedulable", "Starting"),
        ("ImagePullError", "Starting"),
        ("CrashLoop", "Starting"),
        ("ProgressDeadlineExceeded", "Starting"),
        ("ClaimPending", "Pending"),
    ],
)
def test_stalled_model_is_degraded_with_the_reason(case: str, phase: str) -> None:
    status = model_statuses()[case]
    stalled = condition(status, "Stalled")
    assert (status["phase"], stalled["status"]) == (phase, "True")
    assert model_health(model_object(status)) == ("Degraded", stalled["message"])


def test_model_degraded_messages_say_what_is_wrong() -> None:
    statuses = model_statuses()
    expected = {
        "DownloadFailed": "revision nope not found",
        "Unschedulable": "Insufficient nvidia.com/gpu",
        "ImagePullError": "vllm/vllm-openai:nope",
        "CrashLoop": "CUDA out of memory",
        "ProgressDeadlineExceeded": "has timed out progressing",
        "ClaimPending": 'storageclass "fast" not found',
    }
    for case, text in expected.items():
        assert text in model_health(model_object(statuses[case]))[1], case


# --- InferenceJob -----------------------------------------------------------------


def test_job_without_status_waits_for_the_operator() -> None:
    assert job_health(job_object(None)) == ("Progressing", WAITING)
    assert job_health(job_object({})) == ("Progressing", WAITING)


def test_job_with_an_unobserved_generation_waits() -> None:
    succeeded = job_statuses()["Succeeded"]
    assert job_health(job_object(succeeded, generation=2)) == (
        "Progressing",
        f"{WAITING} to observe generation 2",
    )


def test_succeeded_job_is_healthy() -> None:
    status = job_statuses()["Succeeded"]
    assert condition(status, "Complete")["status"] == "True"
    assert job_health(job_object(status)) == ("Healthy", "the model answered")


def test_failed_job_is_degraded_with_its_message() -> None:
    status = job_statuses()["Failed"]
    assert condition(status, "Failed")["status"] == "True"
    assert job_health(job_object(status)) == ("Degraded", "activeDeadlineSeconds (900) passed")


@pytest.mark.parametrize(
    ("case", "phase"),
    [
        ("Queued", "Pending"),
        ("WaitingForModel", "Pending"),
        ("ModelNotFound", "Pending"),
        ("WorkerLost", "Pending"),
        ("Running", "Running"),
    ],
)
def test_pending_and_running_jobs_are_progressing(case: str, phase: str) -> None:
    status = job_statuses()[case]
    assert status["phase"] == phase
    assert job_health(job_object(status)) == ("Progressing", f"{phase}: {status['message']}")


def test_job_phase_alone_decides_without_conditions() -> None:
    for phase, health in [("Succeeded", "Healthy"), ("Failed", "Degraded"), ("Running", None)]:
        status, message = job_health(job_object({"phase": phase, "message": "why"}))
        assert status == (health or "Progressing")
        assert message == ("why" if health else f"{phase}: why")


# --- the argocd-cm snippet --------------------------------------------------------

SNIPPET_HEADER = """\
# Argo CD health checks for gptoss.ai resources. Merge these keys into the data of
# Argo CD's argocd-cm ConfigMap (they need no resource.customizations.useOpenLibs).
# Generated from argocd-health-*.lua next to this file by
#   .venv/bin/python tests/unit/test_gitops_health.py --write
# and checked by that test: edit the .lua files, not this one.
"""


def render_snippet() -> str:
    lines = [
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: argocd-cm",
        "  namespace: argocd",
        "  labels:",
        "    app.kubernetes.io/name: argocd-cm",
        "    app.kubernetes.io/part-of: argocd",
        "data:",
    ]
    for key, path in SCRIPTS.items():
        lines.append(f"  {key}: |")
        lines += [f"    {line}" if line else "" for line in path.read_text().splitlines()]
    return SNIPPET_HEADER + "\n".join(lines) + "\n"


# --- InferenceBatch (the InferenceJob script: same conditions and phases) -----------


def _job_with(condition_type: str, reason: str = "", message: str = "") -> dict[str, Any]:
    return {
        "status": {
            "conditions": [
                {"type": condition_type, "status": "True", "reason": reason, "message": message}
            ]
        }
    }


def batch_objects() -> dict[str, dict[str, Any]]:
    """InferenceBatches in each phase, with status from the operator's own function."""

    summary = {
        "summary": {
            "succeeded": 3,
            "failed": 1,
            "promptTokens": 1,
            "completionTokens": 2,
            "output": "o",
            "errors": "e",
        }
    }
    cases = {
        "Pending": BatchObserved(waiting=("ModelNotFound", "GptOssModel m does not exist")),
        "Running": BatchObserved(shards_job={"status": {}}),
        "Merging": BatchObserved(shards_job=_job_with("Complete")),
        "Succeeded": BatchObserved(
            shards_job=_job_with("Complete"), merge_job=_job_with("Complete"), merged=summary
        ),
        "Failed": BatchObserved(
            shards_job=_job_with("Failed", "PodFailurePolicy"),
            merge_job=_job_with("Complete"),
            shard_failure={"reason": "StorageUnusable", "message": "input file x does not exist"},
        ),
    }
    now = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=datetime.UTC)
    objects = {}
    for case, observed in cases.items():
        obj = job_object(batch_status_patch(2, {}, 1, observed, now))
        obj["kind"] = "InferenceBatch"
        objects[case] = obj
    return objects


def test_batch_health_follows_its_phase() -> None:
    def health(case: str) -> tuple[str, str]:
        found = run_health(JOB_SCRIPT, batch_objects()[case])
        return found["status"], found.get("message", "")

    assert health("Pending") == ("Progressing", "Pending: GptOssModel m does not exist")
    assert health("Running") == ("Progressing", "Running: answering")
    assert health("Merging")[0] == "Progressing"
    assert health("Succeeded") == ("Healthy", "3 lines answered, 1 failed")
    assert health("Failed") == ("Degraded", "input file x does not exist")


def test_snippet_embeds_the_scripts() -> None:
    text = SNIPPET.read_text()
    assert text == render_snippet(), "regenerate it: python tests/unit/test_gitops_health.py -w"
    config_map = yaml.safe_load(text)
    assert (config_map["kind"], config_map["metadata"]["name"]) == ("ConfigMap", "argocd-cm")
    assert config_map["data"] == {key: path.read_text() for key, path in SCRIPTS.items()}


def test_scripts_use_spaces_and_end_with_a_newline() -> None:
    for path in SCRIPTS.values():
        text = path.read_text()
        assert "\t" not in text
        assert text.endswith("\n")
        assert not text.endswith("\n\n")


if __name__ == "__main__":
    if sys.argv[1:] in (["--write"], ["-w"]):
        SNIPPET.write_text(render_snippet())
    else:
        sys.stdout.write(render_snippet())
