"""`gptoss-sandbox`: the local control plane and demo, for trying gptoss-operator anywhere."""

from __future__ import annotations

import sys

from gptoss_sandbox import binaries, cluster, demo


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print("usage: gptoss-sandbox {demo|binaries|cluster up|cluster down} [options]")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "binaries":
        return binaries.main(rest)
    if command == "cluster":
        return cluster.main(rest)
    if command == "demo":
        return demo.main(rest)
    print(f"gptoss-sandbox: unknown command {command!r}", file=sys.stderr)
    return 2
