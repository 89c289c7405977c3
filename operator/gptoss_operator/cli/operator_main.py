"""`gptoss-operator`: run the operator against the current kubeconfig (or in-cluster)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

import kopf


class _QuietChildEvents(logging.Filter):
    """Drop the per-event success lines of the child watchers (one per pod change)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "'child_changed' succeeded" not in record.getMessage()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gptoss-operator", description=__doc__)
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); all namespaces by default",
    )
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8080/healthz",
        help="liveness endpoint URL ('' to disable)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)

    kopf.configure(verbose=args.verbose)
    for client in ("httpx", "httpx2"):  # a line per request otherwise
        logging.getLogger(client).setLevel(logging.WARNING)
    logging.getLogger("kopf.objects").addFilter(_QuietChildEvents())
    import gptoss_operator.controllers.operator  # noqa: F401 - importing registers the handlers

    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            liveness_endpoint=args.liveness or None,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
