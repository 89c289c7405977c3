"""Parse ``vllm serve`` command lines with the installed vLLM's own argument parser.

Runs under the engine venv's python (it imports ``vllm``), by path:
``python vllm_argv_check.py < argvs.json``. The input is a JSON list of argv lists, each
starting with ``serve``; the output is one JSON object per argv: ``ok``, the parsed
values of the options the argv spelled, or the parser's error. Flags must be spelled out
in full: vLLM's parser accepts abbreviations, which would hide a renamed flag.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from typing import Any


def _parser() -> Any:
    from vllm.entrypoints.cli.serve import ServeSubcommand
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(description="vLLM CLI")
    subparsers = parser.add_subparsers(required=False, dest="subparser")
    command = ServeSubcommand()
    serve = command.subparser_init(subparsers)
    serve.set_defaults(dispatch_function=command.cmd)
    return parser, serve, command


def check(argv: list[str]) -> dict[str, Any]:
    parser, serve, command = _parser()
    known = set(serve._option_string_actions)
    flags = [a.split("=", 1)[0] for a in argv if a.startswith("--")]
    unknown = [flag for flag in flags if flag not in known]
    if unknown:
        return {"ok": False, "error": f"not flags of vllm serve: {unknown}"}
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            namespace = parser.parse_args(argv)
        command.validate(namespace)
    except SystemExit:
        lines = errors.getvalue().strip().splitlines()
        return {"ok": False, "error": lines[-1] if lines else "argument parsing failed"}
    except Exception as error:
        return {"ok": False, "error": f"{type(error).__name__}: {error}"}
    values = {
        action.dest: getattr(namespace, action.dest)
        for flag in flags
        for action in [serve._option_string_actions[flag]]
    }
    values["model_tag"] = namespace.model_tag
    return {"ok": True, "values": json.loads(json.dumps(values, default=str))}


def main() -> int:
    argvs = json.load(sys.stdin)
    results = [check(argv) for argv in argvs]
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
