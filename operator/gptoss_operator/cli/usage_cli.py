"""`gptoss usage`: what each team used of a model over a period, from its InferenceJobs.

    gptoss usage --model platform/gpt-oss-120b --since 24h -A
    gptoss usage --model gpt-oss-20b --since 7d -n team-a -n team-b

One row per namespace, with its tenant (the model's spec.access groups namespaces into
teams), the jobs and batches that finished in the period and the tokens they used, and
one total row per tenant. It counts what still exists: a job or batch deleted by its
ttlSecondsAfterFinished is gone from it (Prometheus keeps what the operator's counters
saw: ``gptoss_tenant_tokens_total``).
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from lightkube import ApiError, Client

from gptoss_operator.api.conditions import parse_time
from gptoss_operator.api.job import model_key_of
from gptoss_operator.api.model import Access
from gptoss_operator.api.resources import (
    GptOssModelResource,
    InferenceBatchResource,
    InferenceJobResource,
)
from gptoss_operator.core.fair_share import read_access

PERIOD = re.compile(r"^(\d+)([mhd])$")
UNIT_SECONDS = {"m": 60, "h": 3600, "d": 86400}


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    usage = sub.add_parser(
        "usage",
        help="tokens and jobs per team of a model over a period",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    usage.add_argument("--model", "-m", required=True, help="GptOssModel name, or NAMESPACE/NAME")
    usage.add_argument("--since", default="24h", help="the period: 30m, 24h, 7d (default 24h)")
    usage.add_argument(
        "--namespace",
        "-n",
        action="append",
        help="a namespace to count (repeatable; default: the kubeconfig's)",
    )
    usage.add_argument(
        "--all-namespaces", "-A", action="store_true", help="count every namespace you may read"
    )
    usage.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube)")


def period_seconds(text: str) -> int:
    match = PERIOD.match(text)
    if match is None:
        raise ValueError(f"--since: {text!r} is not a period such as 30m, 24h or 7d")
    return int(match.group(1)) * UNIT_SECONDS[match.group(2)]


@dataclass
class Row:
    tenant: str
    namespace: str
    succeeded: int = 0
    failed: int = 0
    batches: int = 0
    prompt: int = 0
    completion: int = 0

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def usage_rows(
    jobs: Iterable[Mapping[str, Any]],
    model: tuple[str, str],
    access: Access,
    since: datetime.datetime,
    batches: Iterable[Mapping[str, Any]] = (),
) -> list[Row]:
    """One row per namespace whose jobs or batches of ``model`` finished after
    ``since``, sorted by tenant and namespace."""
    rows: dict[str, Row] = {}
    for kind, found in (("job", jobs), ("batch", batches)):
        for item in found:
            status = item.get("status") or {}
            finished = parse_time(status.get("completionTime"))
            phase = str(status.get("phase"))
            if model_key_of(item) != model or finished is None or finished < since:
                continue
            if phase not in ("Succeeded", "Failed"):
                continue
            namespace = str(item["metadata"]["namespace"])
            row = rows.setdefault(namespace, Row(access.tenant_of(namespace).name, namespace))
            _add(row, kind, phase, status.get("usage") or {})
    return sorted(rows.values(), key=lambda row: (row.tenant, row.namespace))


def _add(row: Row, kind: str, phase: str, usage: Mapping[str, Any]) -> None:
    if kind == "batch":
        row.batches += 1
    elif phase == "Succeeded":
        row.succeeded += 1
    else:
        row.failed += 1
    row.prompt += int(usage.get("promptTokens") or 0)
    row.completion += int(usage.get("completionTokens") or 0)


def render(rows: list[Row], out: TextIO) -> None:
    """The rows, each tenant's total after its namespaces when it has several, and the
    total of all."""
    header = (
        "TENANT", "NAMESPACE", "SUCCEEDED", "FAILED", "BATCHES", "PROMPT", "COMPLETION", "TOTAL"
    )  # fmt: skip
    table: list[tuple[str, ...]] = [header]

    def line(tenant: str, namespace: str, group: list[Row]) -> tuple[str, ...]:
        return (
            tenant,
            namespace,
            str(sum(r.succeeded for r in group)),
            str(sum(r.failed for r in group)),
            str(sum(r.batches for r in group)),
            str(sum(r.prompt for r in group)),
            str(sum(r.completion for r in group)),
            str(sum(r.total for r in group)),
        )

    tenants = sorted({row.tenant for row in rows})
    for tenant in tenants:
        group = [row for row in rows if row.tenant == tenant]
        table += [line(tenant, row.namespace, [row]) for row in group]
        if len(group) > 1:
            table.append(line(tenant, "(all)", group))
    table.append(line("(all)", "(all)", rows))
    widths = [max(len(cells[i]) for cells in table) for i in range(len(header))]
    for cells in table:
        padded = (cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        out.write("   ".join(padded).rstrip() + "\n")


def run(args: argparse.Namespace, client: Client, now: datetime.datetime) -> int:
    try:
        since = now - datetime.timedelta(seconds=period_seconds(args.since))
    except ValueError as error:
        print(f"gptoss: {error}", file=sys.stderr)
        return 2
    model_namespace, _, name = args.model.rpartition("/")
    model_namespace = model_namespace or client.namespace
    access = _access(client, model_namespace, name)
    fields = {"spec.modelRef.name": name}
    namespaces = ["*"] if args.all_namespaces else (args.namespace or [client.namespace])
    jobs: list[dict[str, Any]] = []
    batches: list[dict[str, Any]] = []
    for namespace in namespaces:
        listed = client.list(InferenceJobResource, namespace=namespace, fields=fields)
        jobs += [job.to_dict() for job in listed]
        batches += [b.to_dict() for b in client.list(InferenceBatchResource, namespace=namespace)]
    render(usage_rows(jobs, (model_namespace, name), access, since, batches), sys.stdout)
    return 0


def _access(client: Client, namespace: str, name: str) -> Access:
    """The model's tenants, when the caller may read the model; else each namespace is
    its own."""
    try:
        model = client.get(GptOssModelResource, name, namespace=namespace).to_dict()
    except ApiError as error:
        print(
            f"gptoss: cannot read GptOssModel {namespace}/{name} ({error.status.reason}); "
            "each namespace counts as its own tenant",
            file=sys.stderr,
        )
        return Access()
    return read_access((model.get("spec") or {}).get("access"))
