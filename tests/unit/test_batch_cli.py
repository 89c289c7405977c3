"""`gptoss batch`: locations from URLs, the spec it submits, the progress line."""

from __future__ import annotations

import argparse

import pytest

from gptoss_operator.cli.batch_cli import batch_spec, location, progress_line
from gptoss_operator.cli.user_main import build_parser


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["batch", "submit", *argv])


def test_urls_become_volume_or_s3_locations() -> None:
    parsed = args(
        "in.jsonl",
        "--model",
        "m",
        "--output",
        "s3://b/out/",
        "--s3-endpoint",
        "http://minio:9000",
        "--s3-secret",
        "keys",
        "--s3-path-style",
    )
    assert location("pvc://data/in/r.jsonl", parsed, output=False) == {
        "volume": {"claimName": "data", "path": "in/r.jsonl"}
    }
    assert location("s3://b/out/", parsed, output=True) == {
        "s3": {
            "bucket": "b",
            "key": "out",
            "region": "us-east-1",
            "pathStyle": True,
            "endpoint": "http://minio:9000",
            "credentialsSecretRef": {"name": "keys"},
        }
    }
    ambient = args("in.jsonl", "--model", "m", "--output", "s3://b/o", "--s3-ambient")
    assert location("s3://b/o", ambient, output=True)["s3"]["credentials"] == "ambient"
    unsigned = args("in.jsonl", "--model", "m", "--output", "s3://b/o")
    with pytest.raises(ValueError, match="s3://b/o: give --s3-secret SECRET, or --s3-ambient"):
        location("s3://b/o", unsigned, output=True)
    for bad in ("in.jsonl", "pvc://data", "http://x/y", "s3:///key"):
        with pytest.raises(ValueError, match="expected pvc://CLAIM/PATH or s3://BUCKET/KEY"):
            location(bad, parsed, output=False)


def test_the_submitted_spec_passes_the_apis_rules() -> None:
    parsed = args(
        "in.jsonl",
        "--model",
        "m",
        "--output",
        "pvc://data/out",
        "--shards",
        "3",
        "--max-tokens",
        "900",
        "--reasoning",
        "high",
    )
    spec = batch_spec(parsed, {"configMap": {"name": "x", "key": "input.jsonl"}})
    assert spec["shards"] == 3
    assert spec["modelRef"] == {"name": "m"}
    assert spec["defaults"] == {"maxTokens": 900, "reasoningLevel": "high"}
    shared = args("in.jsonl", "--model", "platform/m", "--output", "pvc://data/out")
    spec_shared = batch_spec(shared, {"configMap": {"name": "x", "key": "input.jsonl"}})
    assert spec_shared["modelRef"] == {"name": "m", "namespace": "platform"}
    assert "overwrite" not in spec["output"], "refusing another batch's folder is the default"
    again = args("in.jsonl", "--model", "m", "--output", "pvc://data/out", "--overwrite")
    replacing = batch_spec(again, {"configMap": {"name": "x", "key": "input.jsonl"}})
    assert replacing["output"] == {
        "volume": {"claimName": "data", "path": "out"},
        "overwrite": True,
    }
    with pytest.raises(ValueError, match="shards"):
        batch_spec(
            args("in.jsonl", "--model", "m", "--output", "pvc://d/o", "--shards", "0"),
            {"configMap": {"name": "x"}},
        )


def test_the_progress_line_shows_a_bar_counts_rate_and_time_left() -> None:
    status = {
        "phase": "Running",
        "counts": {"total": 1000, "succeeded": 440, "failed": 10},
        "percent": 45,
        "linesPerSecond": 12.34,
        "estimatedTimeLeft": "1m20s",
    }
    assert progress_line(status) == (
        "Running [#############-----------------]  45% 450/1000 (440 ok, 10 failed) "
        "12.3 lines/s, 1m20s left"
    )
    assert progress_line({"phase": "Pending", "message": "GptOssModel m does not exist"}) == (
        "Pending: GptOssModel m does not exist"
    )


def test_a_batch_priority_is_passed_on_and_left_to_the_default_otherwise() -> None:
    location = {"configMap": {"name": "in"}}
    given = args("in.jsonl", "--model", "m", "--output", "pvc://out/run", "--priority", "3")
    assert batch_spec(given, location)["priority"] == 3
    unset = args("in.jsonl", "--model", "m", "--output", "pvc://out/run")
    assert "priority" not in batch_spec(unset, location)
