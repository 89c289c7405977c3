"""The batch worker end to end on a volume folder, against the stand-in engine: shards,
merge, resume after a kill, overlapping attempts, engine faults, unusable storage."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gptoss_operator.api.batch import RequestDefaults
from gptoss_operator.api.batch_plan import BatchPlan, Place
from gptoss_operator.engine.client import EngineClient
from gptoss_operator.engine.harmony import Harmony
from gptoss_operator.engine.request import ChatRequest
from gptoss_operator.workers.batch.merge import LinesMissing, merge
from gptoss_operator.workers.batch.parts import ERRORS, OUTPUT, PARTS, SUMMARY
from gptoss_operator.workers.batch.shard import ShardRunner
from gptoss_operator.workers.batch.storage import VolumeFile, VolumeFolder
from gptoss_sandbox.standin_engine import StandinEngine
from tests.support import settled_count

MODEL = "gpt-oss-test"


@pytest.fixture(scope="module")
def server() -> Iterator[StandinEngine]:
    engine = StandinEngine(MODEL, max_model_len=4096)
    engine.start_in_thread()
    try:
        yield engine
    finally:
        engine.stop_in_thread()


@pytest.fixture
def engine(server: StandinEngine) -> Iterator[StandinEngine]:
    server.fail_next = []
    server.token_delay = 0.0
    server.loading = False
    yield server
    server.fail_next = []
    server.loading = False


@pytest.fixture(scope="module")
def harmony() -> Harmony:
    return Harmony()


def request_line(i: int, **body: Any) -> str:
    body = {"messages": [{"role": "user", "content": f"question {i}"}], **body}
    return json.dumps(
        {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def plan_for(tmp_path: Path, engine: StandinEngine, shards: int, **extra: Any) -> BatchPlan:
    return BatchPlan(
        batch="b",
        namespace="ns",
        uid="1234abcd-0000",
        shards=shards,
        requestsPerShard=extra.pop("requestsPerShard", 4),
        maxLineAttempts=extra.pop("maxLineAttempts", 3),
        defaults=RequestDefaults(maxTokens=200),
        engineUrl=engine.url,
        servedModelName=MODEL,
        modelNames=[MODEL, "my-model"],
        input=Place(path=str(tmp_path / "in.jsonl")),
        output=Place(path=str(tmp_path / "out")),
        **extra,
    )


def runner(
    plan: BatchPlan, index: int, harmony: Harmony, worker: str = "w", quiet: float = 30.0
) -> ShardRunner:
    assert plan.input.path
    assert plan.output.path
    return ShardRunner(
        plan,
        index,
        worker,
        VolumeFile(Path(plan.input.path), "in.jsonl"),
        VolumeFolder(Path(plan.output.path), "out"),
        EngineClient(
            plan.engineUrl, plan.servedModelName, quiet_seconds=quiet, through_service=True
        ),
        harmony,
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in path.read_text().splitlines()]


async def test_shards_answer_every_line_once_and_bad_lines_go_to_the_error_file(
    tmp_path: Path, engine: StandinEngine, harmony: Harmony
) -> None:
    lines = [request_line(i) for i in range(1, 21)]
    lines[4] = "{this is not json"  # line 5
    lines[9] = ""  # line 10: blank, skipped
    lines[13] = request_line(14, model="gpt-4o")  # line 14: another model
    lines[16] = request_line(17, model="my-model", reasoning_effort="high")
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    plan = plan_for(tmp_path, engine, shards=3)

    served = engine.requests_served
    tallies = [await runner(plan, index, harmony).run() for index in range(3)]
    assert sum(t.succeeded for t in tallies) == 17
    assert sum(t.failed for t in tallies) == 2
    assert engine.requests_served - served == 17
    summary = merge(VolumeFolder(tmp_path / "out", "out"))

    assert (summary.succeeded, summary.failed, summary.duplicates) == (17, 2, 0)
    outputs = read_jsonl(tmp_path / "out" / OUTPUT)
    assert sorted(o["custom_id"] for o in outputs) == sorted(
        f"req-{i}" for i in range(1, 21) if i not in (5, 10, 14)
    )
    by_id = {o["custom_id"]: o for o in outputs}
    message = by_id["req-17"]["response"]["body"]["choices"][0]["message"]
    assert message["content"] == "Stand-in answer to: question 17"
    assert message["reasoning"].startswith("Reasoning at high effort about: question 17")
    assert by_id["req-3"]["response"]["body"]["usage"]["completion_tokens"] > 0
    assert summary.completionTokens == sum(
        o["response"]["body"]["usage"]["completion_tokens"] for o in outputs
    )
    errors = {e["error"]["line"]: e for e in read_jsonl(tmp_path / "out" / ERRORS)}
    assert errors[5]["error"]["code"] == "invalid_json"
    assert errors[5]["custom_id"] is None
    assert errors[14]["error"]["code"] == "model_mismatch"
    assert errors[14]["custom_id"] == "req-14"
    assert json.loads((tmp_path / "out" / SUMMARY).read_text())["succeeded"] == 17
    assert not list((tmp_path / "out" / PARTS).rglob("*.jsonl"))  # parts removed


async def test_a_killed_shard_resumes_without_asking_written_lines_again(
    tmp_path: Path, engine: StandinEngine, harmony: Harmony
) -> None:
    (tmp_path / "in.jsonl").write_text("\n".join(request_line(i) for i in range(1, 41)))
    plan = plan_for(tmp_path, engine, shards=1, flushLines=5, requestsPerShard=2)
    engine.token_delay = 0.002
    first = runner(plan, 0, harmony, "pod-a")
    task = asyncio.create_task(first.run())
    for _ in range(2000):  # until at least 12 lines are on storage
        if first.tally.done >= 12:
            break
        await asyncio.sleep(0.01)
    task.cancel()  # what SIGTERM does
    with pytest.raises(asyncio.CancelledError):
        await task
    written = first.tally.done
    assert 12 <= written < 40
    engine.token_delay = 0.0

    served = await settled_count(engine)
    second = runner(plan, 0, harmony, "pod-b")
    tally = await second.run()
    assert tally.done == 40
    assert engine.requests_served - served == 40 - written  # nothing asked twice
    summary = merge(VolumeFolder(tmp_path / "out", "out"))
    assert (summary.succeeded, summary.duplicates) == (40, 0)
    ids = [o["custom_id"] for o in read_jsonl(tmp_path / "out" / OUTPUT)]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(1, 41))


async def test_overlapping_attempts_of_a_shard_appear_once_in_the_merged_output(
    tmp_path: Path, engine: StandinEngine, harmony: Harmony
) -> None:
    (tmp_path / "in.jsonl").write_text("\n".join(request_line(i) for i in range(1, 11)))
    plan = plan_for(tmp_path, engine, shards=1)
    # Two pods of one index at once (a node lost, its pod not yet gone): both answer all.
    await asyncio.gather(runner(plan, 0, harmony, "a").run(), runner(plan, 0, harmony, "b").run())
    summary = merge(VolumeFolder(tmp_path / "out", "out"))
    assert (summary.succeeded, summary.duplicates) == (10, 10)
    ids = [o["custom_id"] for o in read_jsonl(tmp_path / "out" / OUTPUT)]
    assert sorted(ids) == sorted(f"req-{i}" for i in range(1, 11))
    # A merge run again (its pod killed after the summary) changes nothing.
    again = merge(VolumeFolder(tmp_path / "out", "out"))
    assert again == summary


async def test_engine_errors_are_retried_then_reported_and_a_restart_costs_no_attempt(
    tmp_path: Path, engine: StandinEngine, harmony: Harmony
) -> None:
    (tmp_path / "in.jsonl").write_text("\n".join(request_line(i) for i in range(1, 4)))
    plan = plan_for(tmp_path, engine, shards=1, requestsPerShard=1, maxLineAttempts=2)
    # line 1: refused outright; line 2: two server errors (its attempts); line 3: the
    # engine restarts (503, then /health fails for a while), then one server error
    # (its first counted attempt), then the answer. Counted, the restart would have
    # used up line 3's two attempts.
    engine.fail_next = ["http400", "http500", "http500", "restart", "http500"]
    engine.restart_seconds = 0.5
    tally = await runner(plan, 0, harmony).run()
    assert (tally.succeeded, tally.failed) == (1, 2)
    merge(VolumeFolder(tmp_path / "out", "out"))
    errors = {e["custom_id"]: e["response"] for e in read_jsonl(tmp_path / "out" / ERRORS)}
    assert errors["req-1"]["status_code"] == 400
    assert errors["req-1"]["body"]["error"]["code"] == "EngineRejected"
    assert errors["req-2"]["body"]["error"]["code"] == "engine_error"
    assert "2 attempts failed" in errors["req-2"]["body"]["error"]["message"]
    answered = read_jsonl(tmp_path / "out" / OUTPUT)
    assert [o["custom_id"] for o in answered] == ["req-3"]


async def test_an_engine_shutting_down_gracefully_costs_no_attempt(
    tmp_path: Path, engine: StandinEngine, harmony: Harmony
) -> None:
    """vLLM's graceful shutdown ends the stream with finish_reason "abort": asked again,
    not written as malformed output and not counted (one attempt allowed)."""
    (tmp_path / "in.jsonl").write_text(request_line(1))
    plan = plan_for(tmp_path, engine, shards=1, requestsPerShard=1, maxLineAttempts=1)
    engine.fail_next = ["shutdown"]
    engine.restart_seconds = 0.5
    served = engine.requests_served
    tally = await runner(plan, 0, harmony).run()
    assert (tally.succeeded, tally.failed) == (1, 0)
    assert engine.requests_served - served == 2
    merge(VolumeFolder(tmp_path / "out", "out"))
    (answer,) = read_jsonl(tmp_path / "out" / OUTPUT)
    assert answer["response"]["body"]["choices"][0]["finish_reason"] == "stop"


def test_an_output_that_cannot_be_written_stops_the_shard_with_a_reason(
    tmp_path: Path, engine: StandinEngine
) -> None:
    (tmp_path / "in.jsonl").write_text(request_line(1))
    (tmp_path / "a-file").write_text("")
    plan = plan_for(tmp_path, engine, shards=1).model_copy(
        update={"output": Place(path=str(tmp_path / "a-file" / "out"), url="pvc://data/a-file/out")}
    )
    termination = tmp_path / "termination"
    result = subprocess.run(
        [sys.executable, "-m", "gptoss_operator.cli.batch_main", "shard", "--index", "0"],
        env={
            **os.environ,
            "GPTOSS_BATCH_PLAN": plan.model_dump_json(),
            "GPTOSS_REPORT": "0",
            "GPTOSS_TERMINATION_LOG": str(termination),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    reason = json.loads(termination.read_text())
    assert reason["reason"] == "StorageUnusable"
    assert "pvc://data/a-file/out is not writable" in reason["message"]


async def test_a_line_whose_answer_raises_anything_lands_in_the_error_file(
    tmp_path: Path, engine: StandinEngine, harmony: Harmony, monkeypatch: pytest.MonkeyPatch
) -> None:
    """#23, defect 2: an exception nobody planned for (here from rendering) fails its line
    into errors.jsonl; it never vanishes from both files."""
    (tmp_path / "in.jsonl").write_text("\n".join(request_line(i) for i in range(1, 6)))
    plan = plan_for(tmp_path, engine, shards=1)
    shard = runner(plan, 0, harmony)
    render = shard.renderer.render

    async def flaky(request: ChatRequest) -> list[int]:
        if "question 3" in request.messages[-1].content:
            raise RuntimeError("the render process pool broke")
        return await render(request)

    monkeypatch.setattr(shard.renderer, "render", flaky)
    tally = await shard.run()
    assert (tally.succeeded, tally.failed) == (4, 1)
    summary = merge(VolumeFolder(tmp_path / "out", "out"))
    assert (summary.succeeded, summary.failed) == (4, 1)
    (error,) = read_jsonl(tmp_path / "out" / ERRORS)
    assert error["custom_id"] == "req-3"
    assert error["response"]["body"]["error"]["code"] == "internal_error"
    assert (
        "RuntimeError: the render process pool broke"
        in (error["response"]["body"]["error"]["message"])
    )


async def test_the_merge_refuses_a_shard_whose_parts_miss_lines_it_read(
    tmp_path: Path, engine: StandinEngine, harmony: Harmony
) -> None:
    """#23, defect 2: a finished shard records how many lines it read; a merge that finds
    fewer of them in the parts fails with LinesMissing and keeps the parts."""
    (tmp_path / "in.jsonl").write_text("\n".join(request_line(i) for i in range(1, 7)))
    plan = plan_for(tmp_path, engine, shards=2)
    for index in range(2):
        await runner(plan, index, harmony).run()
    out = tmp_path / "out"
    (part,) = (out / PARTS / "00001").glob("*.jsonl")
    rows = part.read_bytes().splitlines(keepends=True)
    part.write_bytes(b"".join(rows[:-1]))  # one answered line lost between shard and merge
    with pytest.raises(LinesMissing, match=r"shard 1 read 3 lines, its parts hold 2"):
        merge(VolumeFolder(out, "out"))
    assert part.exists(), "the parts are kept"
    assert not (out / SUMMARY).exists()


@pytest.mark.parametrize("fault", ["shutdown", "reset", "stream_error"])
async def test_a_cut_or_aborted_stream_through_a_service_is_never_charged(
    tmp_path: Path, engine: StandinEngine, harmony: Harmony, fault: str
) -> None:
    """#23, defect 4: shards reach their model through its Service, so a stream cut by a
    replica that went away (a rollout, a scale-down) while the Service still answers
    /health is the platform's doing: asked again, never counted (one attempt allowed).
    That includes the error event a stopping vLLM sends mid-stream ("EngineCore
    encountered an issue"), seen on the real node with one of two replicas deleted."""
    (tmp_path / "in.jsonl").write_text(request_line(1))
    plan = plan_for(tmp_path, engine, shards=1, requestsPerShard=1, maxLineAttempts=1)
    engine.fail_next = [fault]
    engine.restart_seconds = 0.0  # the other replicas keep the Service healthy
    tally = await runner(plan, 0, harmony).run()
    assert (tally.succeeded, tally.failed) == (1, 0)
    merge(VolumeFolder(tmp_path / "out", "out"))
    (answer,) = read_jsonl(tmp_path / "out" / OUTPUT)
    assert answer["response"]["body"]["choices"][0]["finish_reason"] == "stop"


async def test_a_wait_in_a_busy_engines_queue_is_waited_out_not_charged(
    tmp_path: Path, engine: StandinEngine, harmony: Harmony
) -> None:
    """#23, defect 5: no token for longer than the engine client's quiet period, while the
    engine is healthy and reports the request waiting: the request is waited for, not
    cut, asked again or counted (one attempt allowed)."""
    (tmp_path / "in.jsonl").write_text("\n".join(request_line(i) for i in range(1, 4)))
    plan = plan_for(tmp_path, engine, shards=1, requestsPerShard=3, maxLineAttempts=1)
    engine.queue_delay = 1.5
    served = engine.requests_served
    try:
        tally = await runner(plan, 0, harmony, quiet=0.3).run()
    finally:
        engine.queue_delay = 0.0
    assert (tally.succeeded, tally.failed) == (3, 0)
    assert engine.requests_served - served == 3, "each line asked once"


async def test_a_request_an_idle_engine_lost_is_asked_again_not_charged(
    tmp_path: Path, engine: StandinEngine, harmony: Harmony
) -> None:
    """#23, defect 5: silence from an engine that is healthy but reports nothing in flight
    means the request was lost on the way (a dead connection): asked again, not counted."""
    (tmp_path / "in.jsonl").write_text(request_line(1))
    plan = plan_for(tmp_path, engine, shards=1, requestsPerShard=1, maxLineAttempts=1)
    engine.fail_next = ["hang"]
    served = engine.requests_served
    tally = await runner(plan, 0, harmony, quiet=0.3).run()
    assert (tally.succeeded, tally.failed) == (1, 0)
    assert engine.requests_served - served == 2
