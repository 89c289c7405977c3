"""`gptoss`: ask a served gpt-oss model a question, or run a file of them, from the
command line.

    gptoss ask --model gpt-oss-120b "Explain quantum computing"
    gptoss ask --model gpt-oss-120b --reasoning high --max-tokens 2048 --show-reasoning "..."
    gptoss ask --model gpt-oss-120b --messages '[{"role": "user", "content": "hi"}]' --json
    gptoss ask --model platform/gpt-oss-120b "..."        (a model another namespace shares)

Each call creates an InferenceJob, shows its progress on stderr while it waits, and prints
the answer (or, with --json, the runner-style result: response, analysis, commentary,
reasoning_level, plus usage and timings).

    gptoss batch submit requests.jsonl --model gpt-oss-120b --output pvc://results/run1 --wait
    gptoss batch status NAME --watch
    gptoss batch results NAME

runs a JSONL file in OpenAI's batch format as an InferenceBatch (see `gptoss batch -h`).

    gptoss usage --model platform/gpt-oss-120b --since 24h -A

prints the tokens and jobs each team used of a model (see `gptoss usage -h`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

from lightkube import ApiError, Client, KubeConfig
from lightkube.resources.core_v1 import ConfigMap
from pydantic import ValidationError

from gptoss_operator import __version__
from gptoss_operator.api.job import FINISHED_PHASES, InferenceJobSpec
from gptoss_operator.api.job_output import join
from gptoss_operator.api.json_schema import schema_problem
from gptoss_operator.api.resources import InferenceJobResource
from gptoss_operator.cli import batch_cli, usage_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptoss", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"gptoss {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    ask = sub.add_parser("ask", help="run one chat request as an InferenceJob")
    ask.add_argument("question", nargs="?", help="the user message")
    ask.add_argument(
        "--model",
        "-m",
        required=True,
        help="GptOssModel name, or NAMESPACE/NAME for a model of another namespace",
    )
    ask.add_argument("--namespace", "-n", help="namespace (default: the kubeconfig's)")
    ask.add_argument(
        "--messages",
        help="the whole conversation as a JSON list of {role, content} (instead of QUESTION)",
    )
    ask.add_argument("--system", help="system instructions for the model")
    ask.add_argument(
        "--tools",
        type=Path,
        help="a JSON file of the functions the model may call: a list of {name, description, "
        "parameters} (or OpenAI's {type: function, function: {...}})",
    )
    ask.add_argument(
        "--tool-choice", help="auto, none, required or a function's name (default: auto)"
    )
    ask.add_argument(
        "--schema",
        type=Path,
        help="a JSON schema file: the answer must be JSON that matches it (printed parsed)",
    )
    ask.add_argument("--reasoning", choices=("low", "medium", "high"), default="medium")
    ask.add_argument("--priority", type=int, default=0, help="higher runs first (default 0)")
    ask.add_argument("--max-tokens", type=int, default=256)
    ask.add_argument("--temperature", type=float, default=0.7)
    ask.add_argument("--top-p", type=float)
    ask.add_argument("--timeout", type=float, default=600, help="seconds to wait (default 600)")
    ask.add_argument(
        "--show-reasoning",
        action="store_true",
        help="also print the analysis and commentary channels",
    )
    ask.add_argument("--json", action="store_true", help="print the result as JSON")
    ask.add_argument("--status", action="store_true", help="print the job's whole status as JSON")
    ask.add_argument("--delete", action="store_true", help="delete the job when done")
    ask.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube)")
    ask.add_argument("--quiet", "-q", action="store_true", help="no progress on stderr")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--namespace", "-n", help="namespace (default: the kubeconfig's)")
    common.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube)")
    batch_cli.add_parser(sub, common)
    usage_cli.add_parser(sub, common)
    return parser


def new_client(args: argparse.Namespace) -> Client:
    if args.kubeconfig:
        return Client(config=KubeConfig.from_file(args.kubeconfig), field_manager="gptoss-cli")
    return Client(field_manager="gptoss-cli")


def job_manifest(args: argparse.Namespace) -> dict[str, Any]:
    if args.messages:
        messages = json.loads(args.messages)
    elif args.question:
        messages = [{"role": "user", "content": args.question}]
    else:
        raise ValueError("give a QUESTION or --messages")
    if args.system:
        messages = [{"role": "system", "content": args.system}, *messages]
    model_namespace, _, model = args.model.rpartition("/")
    spec: dict[str, Any] = {
        "modelRef": {"name": model, **({"namespace": model_namespace} if model_namespace else {})},
        "messages": messages,
        "maxTokens": args.max_tokens,
        "temperature": args.temperature,
        "reasoningLevel": args.reasoning,
        "priority": args.priority,
    }
    if args.top_p is not None:
        spec["topP"] = args.top_p
    if args.tools:
        spec["tools"] = [_tool(item) for item in _json_file(args.tools, list)]
    if args.tool_choice:
        spec["toolChoice"] = args.tool_choice
    if args.schema:
        schema = _json_file(args.schema, dict)
        if problem := schema_problem(schema):
            raise ValueError(f"{args.schema} {problem}")
        name = re.sub(r"[^a-zA-Z0-9_-]", "_", args.schema.stem)[:64] or "response"
        spec["responseFormat"] = {
            "type": "json_schema",
            "jsonSchema": {"name": name, "schema": schema},
        }
    InferenceJobSpec.model_validate(spec)  # the same rules the apiserver applies
    return {
        "apiVersion": "gptoss.ai/v1alpha1",
        "kind": "InferenceJob",
        "metadata": {"generateName": "ask-", "labels": {"gptoss.ai/created-by": "gptoss-cli"}},
        "spec": spec,
    }


def _json_file(path: Path, kind: type) -> Any:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error
    if not isinstance(value, kind):
        raise ValueError(f"{path} must hold a JSON {'list' if kind is list else 'object'}")
    return value


def _tool(item: Any) -> dict[str, Any]:
    """A function, as written in our API or in OpenAI's (``{type, function}``)."""
    if isinstance(item, dict) and isinstance(item.get("function"), dict):
        item = item["function"]
    if not isinstance(item, dict):
        raise ValueError("each tool must be a JSON object")
    return {key: item[key] for key in ("name", "description", "parameters") if key in item}


def runner_result(status: dict[str, Any], texts: dict[str, str]) -> dict[str, Any]:
    """The result in the one-shot runner's shape, with usage and timings added."""
    return {
        "response": texts.get("response", ""),
        "analysis": texts.get("analysis", ""),
        "commentary": texts.get("commentary", ""),
        "tool_calls": status.get("toolCalls") or [],
        "response_json": status.get("responseJSON"),
        "reasoning_level": status.get("reasoningLevel"),
        "finish_reason": status.get("finishReason"),
        "usage": status.get("usage"),
        "time_to_first_token_seconds": status.get("timeToFirstTokenSeconds"),
        "tokens_per_second": status.get("tokensPerSecond"),
        "duration": status.get("duration"),
        "message": status.get("message"),
    }


def full_texts(client: Client, namespace: str, status: dict[str, Any]) -> dict[str, str]:
    texts = {key: str(status.get(key) or "") for key in ("response", "analysis", "commentary")}
    ref = status.get("outputRef")
    if ref:
        names = ref.get("configMapNames") or [ref["configMapName"]]
        data = [client.get(ConfigMap, name, namespace=namespace).data or {} for name in names]
        texts.update({key: join(key, data) for key in ref.get("keys") or [] if key in texts})
    return texts


def _progress_line(status: dict[str, Any]) -> str:
    phase = status.get("phase") or "Pending"
    return f"{phase}: {status.get('message') or ''}".strip()


def ask(args: argparse.Namespace) -> int:
    try:
        manifest = job_manifest(args)
    except (ValueError, ValidationError) as error:
        print(f"gptoss: {error}", file=sys.stderr)
        return 2
    client = new_client(args)
    namespace = args.namespace or client.namespace
    try:
        created = client.create(InferenceJobResource.from_dict(manifest), namespace=namespace)
    except ApiError as error:
        print(f"gptoss: the cluster refused the request: {error.status.message}", file=sys.stderr)
        return 2
    name = created.metadata.name
    if not args.quiet:
        print(f"inferencejob/{name} created in {namespace}", file=sys.stderr)
    deadline = time.monotonic() + args.timeout
    last_line = ""
    status: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status = dict(
            client.get(InferenceJobResource, name, namespace=namespace).to_dict().get("status")
            or {}
        )
        line = _progress_line(status)
        if not args.quiet and line != last_line:
            print(f"  {line}", file=sys.stderr)
            last_line = line
        if status.get("phase") in FINISHED_PHASES:
            break
        time.sleep(0.5)
    else:
        print(
            f"gptoss: inferencejob/{name} did not finish in {args.timeout:.0f}s "
            f"(last: {last_line})",
            file=sys.stderr,
        )
        return 3
    texts = full_texts(client, namespace, status)
    if args.status:
        print(json.dumps(status, indent=2, default=str))
    elif args.json:
        print(json.dumps(runner_result(status, texts), indent=2))
    else:
        if args.show_reasoning and texts["analysis"]:
            print(f"--- analysis\n{texts['analysis']}\n")
        if args.show_reasoning and texts["commentary"]:
            print(f"--- commentary\n{texts['commentary']}\n")
        if args.show_reasoning:
            print("--- response")
        for call in status.get("toolCalls") or []:
            print(f"tool call {call['id']}: {call['name']}({call['arguments']})")
        if "responseJSON" in status:
            print(json.dumps(status["responseJSON"], indent=2, ensure_ascii=False))
        elif texts["response"] or not status.get("toolCalls"):
            print(texts["response"])
    if args.delete:
        client.delete(InferenceJobResource, name, namespace=namespace)
    if status.get("phase") == "Failed":
        print(f"gptoss: inferencejob/{name} failed: {status.get('message')}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "ask":
        return ask(args)
    if args.command == "batch":
        client = new_client(args)
        return batch_cli.run(args, client, args.namespace or client.namespace)
    if args.command == "usage":
        return usage_cli.run(args, new_client(args), datetime.datetime.now(datetime.UTC))
    return 2


if __name__ == "__main__":
    sys.exit(main())
