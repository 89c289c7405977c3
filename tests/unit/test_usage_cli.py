"""`gptoss usage`: the rows it prints from a model's jobs (pure parts)."""

from __future__ import annotations

import datetime
import io
from typing import Any

import pytest

from gptoss_operator.api.model import Access
from gptoss_operator.cli.usage_cli import period_seconds, render, usage_rows
from gptoss_operator.cli.user_main import build_parser

NOW = datetime.datetime(2026, 12, 1, 12, tzinfo=datetime.UTC)


def _job(
    namespace: str,
    hours_ago: float,
    phase: str = "Succeeded",
    model: dict[str, str] | None = None,
    prompt: int = 10,
    completion: int = 20,
) -> dict[str, Any]:
    done = NOW - datetime.timedelta(hours=hours_ago)
    return {
        "metadata": {"namespace": namespace, "name": "j"},
        "spec": {"modelRef": model or {"name": "big", "namespace": "platform"}},
        "status": {
            "phase": phase,
            "completionTime": done.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "usage": {"promptTokens": prompt, "completionTokens": completion},
        },
    }


def test_rows_count_the_jobs_of_the_model_finished_in_the_period_per_namespace() -> None:
    access = Access.model_validate(
        {"tenants": [{"name": "search", "namespaces": ["team-a", "team-a2"]}]}
    )
    jobs = [
        _job("team-a", 1),
        _job("team-a", 2, "Failed", completion=0),
        _job("team-a2", 3),
        _job("team-b", 4),
        _job("team-b", 30),  # before the period
        _job("team-b", 1, model={"name": "other", "namespace": "platform"}),
        {**_job("team-b", 1), "status": {"phase": "Running"}},
        _job("platform", 1, model={"name": "big"}),  # the model's own namespace
    ]
    batch = {**_job("platform", 2, prompt=1000, completion=4000), "kind": "InferenceBatch"}
    batch["spec"] = {"modelRef": {"name": "big"}}  # a batch names a model of its namespace
    since = NOW - datetime.timedelta(hours=24)
    rows = usage_rows(jobs, ("platform", "big"), access, since, batches=[batch])
    assert [(r.tenant, r.namespace, r.succeeded, r.failed, r.batches, r.total) for r in rows] == [
        ("platform", "platform", 1, 0, 1, 5030),
        ("search", "team-a", 1, 1, 0, 40),
        ("search", "team-a2", 1, 0, 0, 30),
        ("team-b", "team-b", 1, 0, 0, 30),
    ]
    out = io.StringIO()
    render(rows, out)
    lines = [line.split() for line in out.getvalue().splitlines()]
    assert lines[0] == [
        "TENANT", "NAMESPACE", "SUCCEEDED", "FAILED", "BATCHES", "PROMPT", "COMPLETION", "TOTAL"
    ]  # fmt: skip
    assert ["search", "(all)", "2", "1", "0", "30", "40", "70"] in lines
    assert lines[-1] == ["(all)", "(all)", "4", "1", "1", "1050", "4080", "5130"]


def test_the_period_is_minutes_hours_or_days_and_anything_else_is_refused() -> None:
    assert period_seconds("30m") == 1800
    assert period_seconds("24h") == 86400
    assert period_seconds("7d") == 604800
    with pytest.raises(ValueError, match="--since: '1w' is not a period"):
        period_seconds("1w")
    args = build_parser().parse_args(["usage", "--model", "platform/big", "-A"])
    assert (args.model, args.since, args.all_namespaces) == ("platform/big", "24h", True)
