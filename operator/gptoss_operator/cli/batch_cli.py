"""`gptoss batch`: submit an InferenceBatch, follow it, read its results.

    gptoss batch submit requests.jsonl --model gpt-oss-20b --output pvc://results/eval
    gptoss batch submit s3://data/eval.jsonl --model gpt-oss-20b --output s3://data/out \\
        --s3-endpoint https://minio.example.com --s3-secret s3-keys --wait
    gptoss batch status eval-x7k2p --watch
    gptoss batch results eval-x7k2p > answers.jsonl

A local FILE goes into a ConfigMap owned by the batch (so up to about 1 MiB); larger
inputs belong on a volume (pvc://CLAIM/PATH) or in a bucket (s3://BUCKET/KEY).
``results`` reads output files in a bucket with your own S3 credentials (the usual
AWS_* variables); for files on a volume it says where they are.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from lightkube import ApiError, Client
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
from lightkube.resources.core_v1 import ConfigMap
from lightkube.types import PatchType
from pydantic import ValidationError

from gptoss_operator.api.batch import FINISHED_PHASES, InferenceBatchSpec
from gptoss_operator.api.common import API_VERSION
from gptoss_operator.api.resources import InferenceBatchResource

CONFIGMAP_LIMIT = 1_000_000  # bytes: a ConfigMap holds at most 1 MiB
BAR_WIDTH = 30


def model_reference(given: str) -> dict[str, str]:
    """``NAME`` or ``NAMESPACE/NAME`` as a modelRef."""
    namespace, _, name = given.rpartition("/")
    return {"name": name, **({"namespace": namespace} if namespace else {})}


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    batch = sub.add_parser("batch", help="run a file of requests as an InferenceBatch")
    steps = batch.add_subparsers(dest="step", required=True)

    submit = steps.add_parser("submit", parents=[common], help="create an InferenceBatch")
    submit.add_argument("input", help="a local JSONL file, pvc://CLAIM/PATH or s3://BUCKET/KEY")
    submit.add_argument(
        "--model",
        "-m",
        required=True,
        help="GptOssModel name, or NAMESPACE/NAME for a model another namespace shares",
    )
    submit.add_argument("--output", required=True, help="pvc://CLAIM/FOLDER or s3://BUCKET/PREFIX")
    submit.add_argument("--name", help="the batch's name (default: generated from 'batch-')")
    submit.add_argument("--shards", type=int, default=4)
    submit.add_argument("--requests-per-shard", type=int, default=32)
    submit.add_argument("--max-tokens", type=int, help="default for lines that set none")
    submit.add_argument("--reasoning", choices=("low", "medium", "high"))
    submit.add_argument(
        "--priority", type=int, help="higher runs first (default -10: below interactive jobs)"
    )
    submit.add_argument("--s3-endpoint", help="URL of an S3-compatible service")
    submit.add_argument("--s3-region", default="us-east-1")
    credentials = submit.add_mutually_exclusive_group()
    credentials.add_argument(
        "--s3-secret", help="Secret with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    )
    credentials.add_argument(
        "--s3-ambient",
        action="store_true",
        help="sign S3 requests with the pods' own cloud identity instead of a Secret",
    )
    submit.add_argument("--s3-path-style", action="store_true")
    submit.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files another batch wrote in the output folder (default: refuse)",
    )
    submit.add_argument("--wait", action="store_true", help="follow it until it finishes")

    status = steps.add_parser("status", parents=[common], help="show a batch's progress")
    status.add_argument("name")
    status.add_argument("--watch", "-w", action="store_true", help="until it finishes")
    status.add_argument("--json", action="store_true", help="print the status as JSON")

    results = steps.add_parser("results", parents=[common], help="print output.jsonl")
    results.add_argument("name")
    results.add_argument("--errors", action="store_true", help="print errors.jsonl instead")


# ---------------------------------------------------------------- pure parts
def location(url: str, args: argparse.Namespace, *, output: bool) -> dict[str, Any]:
    """An input/output location of the spec from pvc:// or s3:// (ValueError otherwise)."""
    scheme, sep, rest = url.partition("://")
    bucket_or_claim, _, path = rest.partition("/")
    if not sep or not bucket_or_claim or not path.strip("/"):
        raise ValueError(f"{url}: expected pvc://CLAIM/PATH or s3://BUCKET/KEY")
    if scheme == "pvc":
        return {"volume": {"claimName": bucket_or_claim, "path": path.strip("/")}}
    if scheme == "s3":
        s3: dict[str, Any] = {
            "bucket": bucket_or_claim,
            "key": path if not output else path.strip("/"),
            "region": args.s3_region,
            "pathStyle": args.s3_path_style,
        }
        if args.s3_endpoint:
            s3["endpoint"] = args.s3_endpoint
        if args.s3_secret:
            s3["credentialsSecretRef"] = {"name": args.s3_secret}
        elif args.s3_ambient:
            s3["credentials"] = "ambient"
        else:
            raise ValueError(f"{url}: give --s3-secret SECRET, or --s3-ambient")
        return {"s3": s3}
    raise ValueError(f"{url}: expected pvc://CLAIM/PATH or s3://BUCKET/KEY")


def batch_spec(args: argparse.Namespace, input_location: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "modelRef": model_reference(args.model),
        "input": input_location,
        "output": location(args.output, args, output=True),
        "shards": args.shards,
        "requestsPerShard": args.requests_per_shard,
    }
    if args.overwrite:
        spec["output"]["overwrite"] = True
    if args.priority is not None:
        spec["priority"] = args.priority
    defaults = {}
    if args.max_tokens is not None:
        defaults["maxTokens"] = args.max_tokens
    if args.reasoning:
        defaults["reasoningLevel"] = args.reasoning
    if defaults:
        spec["defaults"] = defaults
    InferenceBatchSpec.model_validate(spec)  # the rules the apiserver applies
    return spec


def progress_line(status: dict[str, Any]) -> str:
    """``[#####-----] 45% 450/1000 (440 ok, 10 failed) 12.3 lines/s, 1m20s left``."""
    phase = status.get("phase") or "Pending"
    counts = status.get("counts") or {}
    total = counts.get("total")
    percent = status.get("percent")
    if total is None or percent is None:
        return f"{phase}: {status.get('message') or ''}".strip()
    done = int(counts.get("succeeded", 0)) + int(counts.get("failed", 0))
    filled = BAR_WIDTH * int(percent) // 100
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    line = (
        f"{phase} [{bar}] {percent:3d}% {done}/{total} "
        f"({counts.get('succeeded', 0)} ok, {counts.get('failed', 0)} failed)"
    )
    if status.get("linesPerSecond") is not None:
        line += f" {status['linesPerSecond']:.1f} lines/s"
    if status.get("estimatedTimeLeft"):
        line += f", {status['estimatedTimeLeft']} left"
    return line


# ---------------------------------------------------------------- commands
def run(args: argparse.Namespace, client: Client, namespace: str) -> int:
    try:
        if args.step == "submit":
            return submit(args, client, namespace)
        if args.step == "status":
            return show_status(args, client, namespace)
        return show_results(args, client, namespace)
    except ApiError as error:
        print(f"gptoss: the cluster refused the request: {error.status.message}", file=sys.stderr)
        return 2


def submit(args: argparse.Namespace, client: Client, namespace: str) -> int:
    local = "://" not in args.input
    try:
        if local:
            path = Path(args.input)
            data = path.read_bytes()
            if len(data) > CONFIGMAP_LIMIT:
                raise ValueError(
                    f"{path} is {len(data)} bytes, more than a ConfigMap holds: put it on a "
                    "volume (pvc://CLAIM/PATH) or in a bucket (s3://BUCKET/KEY)"
                )
            # Named once the ConfigMap exists (its name is generated).
            input_location: dict[str, Any] = {
                "configMap": {"name": "to-be-created", "key": "input.jsonl"}
            }
        else:
            input_location = location(args.input, args, output=False)
        spec = batch_spec(args, input_location)
    except (OSError, ValueError, ValidationError) as error:
        print(f"gptoss: {error}", file=sys.stderr)
        return 2
    metadata: dict[str, Any] = {"name": args.name} if args.name else {"generateName": "batch-"}
    config_map_name = None
    if local:
        config_map = client.create(
            ConfigMap(
                metadata=ObjectMeta(
                    generateName=f"{args.name or 'batch'}-input-",
                    namespace=namespace,
                    labels={"gptoss.ai/created-by": "gptoss-cli"},
                ),
                data={"input.jsonl": data.decode()},
            )
        )
        assert config_map.metadata is not None
        assert config_map.metadata.name
        config_map_name = config_map.metadata.name
        spec["input"]["configMap"]["name"] = config_map_name
    created = client.create(
        InferenceBatchResource.from_dict(
            {
                "apiVersion": API_VERSION,
                "kind": "InferenceBatch",
                "metadata": metadata,
                "spec": spec,
            }
        ),
        namespace=namespace,
    )
    name = created.metadata.name
    if config_map_name is not None:
        # The input goes when the batch goes.
        owner = OwnerReference(
            apiVersion=API_VERSION, kind="InferenceBatch", name=name, uid=created.metadata.uid
        )
        client.patch(
            ConfigMap,
            config_map_name,
            {"metadata": {"ownerReferences": [owner.to_dict()]}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )
    print(f"inferencebatch/{name} created in {namespace}", file=sys.stderr)
    print(name)
    if args.wait:
        return follow(client, namespace, name, sys.stderr)
    return 0


def _status(client: Client, namespace: str, name: str) -> dict[str, Any]:
    found = client.get(InferenceBatchResource, name, namespace=namespace)
    return dict(found.to_dict().get("status") or {})


def follow(client: Client, namespace: str, name: str, out: TextIO) -> int:
    last = ""
    while True:
        status = _status(client, namespace, name)
        line = progress_line(status)
        if line != last:
            print(f"  {line}", file=out)
            last = line
        if status.get("phase") in FINISHED_PHASES:
            break
        time.sleep(1.0)
    return finished_code(name, status, out)


def finished_code(name: str, status: dict[str, Any], out: TextIO) -> int:
    if status.get("phase") == "Failed":
        print(f"gptoss: inferencebatch/{name} failed: {status.get('message')}", file=out)
        return 1
    files = status.get("output") or {}
    if files:
        print(f"  answers: {files.get('results')}\n  errors:  {files.get('errors')}", file=out)
    return 0


def show_status(args: argparse.Namespace, client: Client, namespace: str) -> int:
    if args.watch:
        return follow(client, namespace, args.name, sys.stdout)
    status = _status(client, namespace, args.name)
    if args.json:
        print(json.dumps(status, indent=2, default=str))
    else:
        print(progress_line(status))
    return 0


def show_results(args: argparse.Namespace, client: Client, namespace: str) -> int:
    found = client.get(InferenceBatchResource, args.name, namespace=namespace).to_dict()
    status = found.get("status") or {}
    files = status.get("output") or {}
    url = files.get("errors" if args.errors else "results")
    if not url:
        print(
            f"gptoss: inferencebatch/{args.name} has no output yet ({progress_line(status)})",
            file=sys.stderr,
        )
        return 3
    output = InferenceBatchSpec.model_validate(found["spec"]).output
    if output.s3 is None:
        print(
            f"gptoss: the files are on a volume: {url} (mount the claim to read them)",
            file=sys.stderr,
        )
        return 4
    from gptoss_operator.workers.batch.storage import s3_client

    bucket, _, key = url.removeprefix("s3://").partition("/")
    body = s3_client(output.s3).get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in body.iter_chunks(1 << 20):
        sys.stdout.buffer.write(chunk)
    sys.stdout.flush()
    return 0
