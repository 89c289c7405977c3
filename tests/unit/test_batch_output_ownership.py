"""A batch owns its output folder (#23, defect 1): a second batch pointed at a folder that
another batch wrote (merged or not) is refused with OutputInUse and touches none of its
files, unless its spec says to overwrite them. The real ``gptoss-batch`` runs each step,
against the stand-in engine, as its pods would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gptoss_operator.api.batch import RequestDefaults
from gptoss_operator.api.batch_plan import EXIT_CANNOT_RUN, BatchPlan, Place
from gptoss_sandbox.standin_engine import StandinEngine

MODEL = "gpt-oss-test"


@pytest.fixture(scope="module")
def engine() -> Iterator[StandinEngine]:
    server = StandinEngine(MODEL, max_model_len=4096)
    server.start_in_thread()
    try:
        yield server
    finally:
        server.stop_in_thread()


def write_input(path: Path, count: int, tag: str) -> None:
    lines = [
        json.dumps(
            {
                "custom_id": f"{tag}-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": f"{tag} question {i}"}]},
            }
        )
        for i in range(1, count + 1)
    ]
    path.write_text("\n".join(lines) + "\n")


def plan(tmp_path: Path, engine: StandinEngine, name: str, uid: str, **output: Any) -> BatchPlan:
    return BatchPlan(
        batch=name,
        namespace="ns",
        uid=uid,
        shards=1,
        requestsPerShard=4,
        maxLineAttempts=2,
        defaults=RequestDefaults(maxTokens=64),
        engineUrl=engine.url,
        servedModelName=MODEL,
        modelNames=[MODEL],
        input=Place(path=str(tmp_path / f"{name}.jsonl")),
        output=Place(path=str(tmp_path / "out"), url="pvc://results/eval"),
        **output,
    )


def step(the_plan: BatchPlan, which: str, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    """Run ``gptoss-batch <which>`` as a pod would: (exit code, termination message)."""
    termination = tmp_path / f"termination-{the_plan.batch}-{which}"
    termination.unlink(missing_ok=True)
    args = ["shard", "--index", "0"] if which == "shard" else ["merge"]
    result = subprocess.run(
        [sys.executable, "-m", "gptoss_operator.cli.batch_main", *args],
        env={
            **os.environ,
            "GPTOSS_BATCH_PLAN": the_plan.model_dump_json(),
            "GPTOSS_REPORT": "0",
            "GPTOSS_TERMINATION_LOG": str(termination),
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    message = json.loads(termination.read_text()) if termination.exists() else {}
    return result.returncode, message


def snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def answered_ids(folder: Path) -> list[str]:
    lines = (folder / "output.jsonl").read_text().splitlines()
    return sorted(json.loads(line)["custom_id"] for line in lines)


def assert_refused(code: int, message: dict[str, Any]) -> None:
    assert code == EXIT_CANNOT_RUN, message
    assert message["reason"] == "OutputInUse", message
    assert "pvc://results/eval" in message["message"]
    assert "ns/first" in message["message"], "names the batch that owns it"
    assert "spec.output.overwrite" in message["message"], "says how to proceed"


def first_batch(tmp_path: Path, engine: StandinEngine, *, merged: bool) -> BatchPlan:
    """Batch "first" (5 lines) run into out/: its shard, and its merge when ``merged``;
    the input of batch "second" (3 lines) is written beside it."""
    write_input(tmp_path / "first.jsonl", 5, "first")
    write_input(tmp_path / "second.jsonl", 3, "second")
    first = plan(tmp_path, engine, "first", "uid-first")
    assert step(first, "shard", tmp_path)[0] == 0
    if merged:
        assert step(first, "merge", tmp_path)[0] == 0
    return first


def test_a_second_batch_on_a_merged_folder_is_refused_and_changes_nothing(
    tmp_path: Path, engine: StandinEngine
) -> None:
    first = first_batch(tmp_path, engine, merged=True)
    before = snapshot(tmp_path / "out")
    served = engine.requests_served

    second = plan(tmp_path, engine, "second", "uid-second")
    assert_refused(*step(second, "shard", tmp_path))
    assert_refused(*step(second, "merge", tmp_path))
    assert engine.requests_served == served, "no line of the second batch was asked"
    assert snapshot(tmp_path / "out") == before, "the first batch's files are untouched"
    # The owner itself runs its steps again as before (a merge pod restarted).
    code, merged = step(first, "merge", tmp_path)
    assert code == 0
    assert merged["summary"]["succeeded"] == 5


def test_a_second_batch_does_not_take_the_parts_of_a_first_that_never_merged(
    tmp_path: Path, engine: StandinEngine
) -> None:
    first_batch(tmp_path, engine, merged=False)  # its shard ran, then it died: no merge
    before = snapshot(tmp_path / "out")
    assert any(name.startswith("parts/") for name in before)

    second = plan(tmp_path, engine, "second", "uid-second")
    assert_refused(*step(second, "shard", tmp_path))
    assert snapshot(tmp_path / "out") == before


def test_overwrite_replaces_another_batchs_files_with_its_own(
    tmp_path: Path, engine: StandinEngine
) -> None:
    first = first_batch(tmp_path, engine, merged=True)
    second = plan(tmp_path, engine, "second", "uid-second", overwrite=True)
    assert step(second, "shard", tmp_path)[0] == 0
    code, merged = step(second, "merge", tmp_path)
    assert code == 0
    assert merged["summary"]["succeeded"] == 3, "the second batch's own counts"
    assert answered_ids(tmp_path / "out") == ["second-1", "second-2", "second-3"]
    # Now the folder is the second batch's: the first one is refused in turn.
    code, message = step(first, "merge", tmp_path)
    assert code == EXIT_CANNOT_RUN
    assert message["reason"] == "OutputInUse"
    assert "ns/second" in message["message"]


def test_files_no_batch_claims_are_not_taken_over(tmp_path: Path, engine: StandinEngine) -> None:
    """A folder holding an output.jsonl from elsewhere (or from a version before batches
    claimed their folders): refused, since whose it is cannot be told."""
    write_input(tmp_path / "second.jsonl", 2, "second")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "output.jsonl").write_text('{"custom_id": "precious"}\n')
    code, message = step(plan(tmp_path, engine, "second", "uid-second"), "shard", tmp_path)
    assert code == EXIT_CANNOT_RUN
    assert message["reason"] == "OutputInUse"
    assert "pvc://results/eval" in message["message"]
    assert (tmp_path / "out" / "output.jsonl").read_text() == '{"custom_id": "precious"}\n'
