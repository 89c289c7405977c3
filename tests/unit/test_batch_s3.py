"""Batch files in a bucket of a real S3-compatible server (versitygw over a folder):
shards read their input object and write parts, the merge writes the output objects
(multipart for large ones), a killed shard resumes from its parts, and wrong
credentials, a missing object or a missing bucket stop the worker with a reason."""

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

from gptoss_operator.api.batch import RequestDefaults, S3Location
from gptoss_operator.api.batch_plan import BatchPlan, Place
from gptoss_operator.engine.client import EngineClient
from gptoss_operator.engine.harmony import Harmony
from gptoss_operator.workers.batch.merge import merge
from gptoss_operator.workers.batch.ownership import OWNER, OutputInUse, Owner, claim_output
from gptoss_operator.workers.batch.parts import ERRORS, OUTPUT, SUMMARY
from gptoss_operator.workers.batch.plan import input_file, output_folder
from gptoss_operator.workers.batch.shard import ShardRunner
from gptoss_operator.workers.batch.storage import S3Folder
from gptoss_sandbox.s3_server import S3Server
from gptoss_sandbox.standin_engine import StandinEngine
from tests.support import settled_count

MODEL = "gpt-oss-test"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    folder = tmp_path_factory.mktemp("s3")
    with S3Server(folder / "buckets", folder / "versitygw.log") as server:
        yield server


@pytest.fixture(scope="module")
def engine() -> Iterator[StandinEngine]:
    server = StandinEngine(MODEL, max_model_len=4096)
    server.start_in_thread()
    try:
        yield server
    finally:
        server.stop_in_thread()


@pytest.fixture(scope="module")
def harmony() -> Harmony:
    return Harmony()


@pytest.fixture
def bucket(s3: S3Server, request: pytest.FixtureRequest) -> str:
    name = f"b-{abs(hash(request.node.name)) % 10**8}"
    s3.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def keys(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """The keys where the operator's pod spec puts them for an S3 location."""
    for prefix in ("GPTOSS_INPUT_", "GPTOSS_OUTPUT_"):
        monkeypatch.setenv(f"{prefix}AWS_ACCESS_KEY_ID", s3.access_key)
        monkeypatch.setenv(f"{prefix}AWS_SECRET_ACCESS_KEY", s3.secret_key)


def location(s3: S3Server, bucket: str, key: str) -> S3Location:
    return S3Location(bucket=bucket, key=key, endpoint=s3.endpoint, pathStyle=True)


def plan_for(s3: S3Server, engine: StandinEngine, bucket: str, **extra: Any) -> BatchPlan:
    return BatchPlan(
        batch="b",
        namespace="ns",
        uid="5678-ef",
        shards=extra.pop("shards", 2),
        requestsPerShard=extra.pop("requestsPerShard", 4),
        maxLineAttempts=3,
        defaults=RequestDefaults(),
        engineUrl=engine.url,
        servedModelName=MODEL,
        modelNames=[MODEL],
        input=Place(s3=location(s3, bucket, "in/requests.jsonl"), credentialsEnv="GPTOSS_INPUT_"),
        output=Place(s3=location(s3, bucket, "out/run1"), credentialsEnv="GPTOSS_OUTPUT_"),
        **extra,
    )


def put_requests(s3: S3Server, bucket: str, count: int) -> None:
    body = "\n".join(
        json.dumps(
            {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": f"question {i}"}]},
            }
        )
        for i in range(1, count + 1)
    )
    s3.client().put_object(Bucket=bucket, Key="in/requests.jsonl", Body=body.encode())


def runner(plan: BatchPlan, index: int, harmony: Harmony, worker: str = "w") -> ShardRunner:
    return ShardRunner(
        plan,
        index,
        worker,
        input_file(plan.input),
        output_folder(plan.output),
        EngineClient(plan.engineUrl, plan.servedModelName),
        harmony,
    )


def objects(s3: S3Server, bucket: str, prefix: str) -> list[str]:
    listed = s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(item["Key"] for item in listed.get("Contents") or [])


def read_object(s3: S3Server, bucket: str, key: str) -> list[dict[str, Any]]:
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return [json.loads(line) for line in body.decode().splitlines()]


async def test_shards_and_merge_through_a_bucket(
    s3: S3Server, engine: StandinEngine, harmony: Harmony, bucket: str, keys: None
) -> None:
    put_requests(s3, bucket, 30)
    plan = plan_for(s3, engine, bucket)
    tallies = [await runner(plan, index, harmony).run() for index in range(2)]
    assert [t.succeeded for t in tallies] == [15, 15]
    assert len(objects(s3, bucket, "out/run1/parts/")) >= 2
    summary = merge(output_folder(plan.output))
    assert (summary.succeeded, summary.failed) == (30, 0)
    assert summary.output == f"s3://{bucket}/out/run1/output.jsonl"
    assert objects(s3, bucket, "out/run1/") == [
        f"out/run1/{ERRORS}",
        f"out/run1/{OUTPUT}",
        f"out/run1/{SUMMARY}",
    ]
    answers = read_object(s3, bucket, f"out/run1/{OUTPUT}")
    assert sorted(a["custom_id"] for a in answers) == sorted(f"req-{i}" for i in range(1, 31))
    assert read_object(s3, bucket, f"out/run1/{ERRORS}") == []


async def test_a_killed_shard_resumes_from_its_parts_in_the_bucket(
    s3: S3Server, engine: StandinEngine, harmony: Harmony, bucket: str, keys: None
) -> None:
    put_requests(s3, bucket, 40)
    plan = plan_for(s3, engine, bucket, shards=1, flushLines=5, requestsPerShard=2)
    engine.token_delay = 0.002
    try:
        first = runner(plan, 0, harmony, "pod-a")
        task = asyncio.create_task(first.run())
        for _ in range(3000):
            if first.tally.done >= 10:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        engine.token_delay = 0.0
    written = first.tally.done
    served = await settled_count(engine)
    tally = await runner(plan, 0, harmony, "pod-b").run()
    assert tally.done == 40
    assert engine.requests_served - served == 40 - written
    assert merge(output_folder(plan.output)).succeeded == 40


def test_a_large_output_goes_up_in_parts(s3: S3Server, bucket: str) -> None:
    client = s3.client()
    folder = S3Folder(location(s3, bucket, "big"), client, part_size=5 << 20)
    data = os.urandom(11 << 20)
    with folder.writer("output.jsonl") as out:
        for start in range(0, len(data), 1 << 20):
            out.write(data[start : start + (1 << 20)])
    head = client.head_object(Bucket=bucket, Key="big/output.jsonl")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 1 MiB
    assert folder.read("output.jsonl") == data


def test_a_writer_that_fails_leaves_no_object(s3: S3Server, bucket: str) -> None:
    folder = S3Folder(location(s3, bucket, "half"), s3.client(), part_size=5 << 20)

    def killed_midway() -> None:
        with folder.writer("output.jsonl") as out:
            out.write(os.urandom(6 << 20))  # one part sent
            raise RuntimeError("the merge pod is killed")

    with pytest.raises(RuntimeError):
        killed_midway()
    assert objects(s3, bucket, "half/") == []
    # The upload was aborted, not left to accumulate parts.
    assert not s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads")


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("wrong-secret", "s3://{bucket}/in/requests.jsonl cannot be read"),
        ("missing-object", "NoSuchKey"),
        ("missing-bucket", "is not writable: NoSuchBucket"),
    ],
)
def test_unusable_storage_stops_the_worker_with_a_reason(
    s3: S3Server, engine: StandinEngine, bucket: str, tmp_path: Path, case: str, expected: str
) -> None:
    put_requests(s3, bucket, 2)
    plan = plan_for(s3, engine, bucket)
    secret = s3.secret_key
    if case == "wrong-secret":
        secret = "not-the-secret"
    elif case == "missing-object":
        plan.input.s3 = location(s3, bucket, "in/nothing-here.jsonl")
    else:
        plan.output.s3 = location(s3, "no-such-bucket", "out")
    termination = tmp_path / "termination"
    env = {
        **os.environ,
        "GPTOSS_BATCH_PLAN": plan.model_dump_json(),
        "GPTOSS_REPORT": "0",
        "GPTOSS_TERMINATION_LOG": str(termination),
        "GPTOSS_INPUT_AWS_ACCESS_KEY_ID": s3.access_key,
        "GPTOSS_INPUT_AWS_SECRET_ACCESS_KEY": secret,
        "GPTOSS_OUTPUT_AWS_ACCESS_KEY_ID": s3.access_key,
        "GPTOSS_OUTPUT_AWS_SECRET_ACCESS_KEY": s3.secret_key,
    }
    result = subprocess.run(
        [sys.executable, "-m", "gptoss_operator.cli.batch_main", "shard", "--index", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    reason = json.loads(termination.read_text())
    assert reason["reason"] == "StorageUnusable"
    assert expected.format(bucket=bucket) in reason["message"]
    assert secret not in result.stderr
    assert s3.secret_key not in result.stderr


def test_a_prefix_another_batch_owns_is_refused_in_a_bucket_too(
    s3: S3Server, engine: StandinEngine, bucket: str, keys: None
) -> None:
    """The claim is a conditional create (If-None-Match: *) that the S3 server decides:
    of two batches claiming one prefix, one wins; the other is refused and writes nothing."""
    first = plan_for(s3, engine, bucket)
    second = first.model_copy(update={"batch": "other", "uid": "uid-other"})
    folder = output_folder(first.output)
    claim_output(folder, Owner("ns", first.batch, first.uid), overwrite=False)
    claim_output(folder, Owner("ns", first.batch, first.uid), overwrite=False)  # again: ok
    with pytest.raises(OutputInUse, match=f"belongs to InferenceBatch ns/{first.batch}"):
        claim_output(output_folder(second.output), Owner("ns", "other", "uid-other"),
                     overwrite=False)  # fmt: skip
    assert objects(s3, bucket, "out/run1/") == [f"out/run1/{OWNER}"]
    assert not folder.create(OWNER, b"{}"), "the object exists: the server refuses"
