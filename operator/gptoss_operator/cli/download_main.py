"""`gptoss-download`: download a gpt-oss repo into the model volume (the download Job).

Configured by environment (the operator sets it): GPTOSS_REPO, GPTOSS_REVISION,
GPTOSS_EXCLUDE_PATTERNS (comma-separated), GPTOSS_SOURCE_HASH, GPTOSS_DATA_DIR,
GPTOSS_STALL_TIMEOUT_SECONDS, GPTOSS_VOLUME_CAPACITY_BYTES, HF_ENDPOINT, and
GPTOSS_MODEL / GPTOSS_NAMESPACE to report progress into that GptOssModel's status. The
token comes from the Secret GPTOSS_TOKEN_SECRET (key GPTOSS_TOKEN_KEY), read with the
Job's own identity (see ``gptoss_operator.workers.download.token``); HF_TOKEN is for running it
by hand.
The exit code tells the Job whether to retry; the termination message (JSON) says why.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from lightkube import Client

from gptoss_operator.api.conditions import timestamp
from gptoss_operator.api.download_exits import EXIT_STALLED
from gptoss_operator.workers.download.downloader import (
    DownloadConfig,
    DownloadError,
    Progress,
    download,
)
from gptoss_operator.workers.download.layout import Layout
from gptoss_operator.workers.download.reporter import NullReporter, StatusReporter
from gptoss_operator.workers.download.token import TokenRef, read_token

log = logging.getLogger("gptoss.download")
TERMINATION_LOG = "/dev/termination-log"


def config_from_env(env: dict[str, str]) -> DownloadConfig:
    patterns = [p for p in env.get("GPTOSS_EXCLUDE_PATTERNS", "").split(",") if p]
    capacity = env.get("GPTOSS_VOLUME_CAPACITY_BYTES")
    repo = env.get("GPTOSS_REPO", "openai/gpt-oss-120b")
    revision = env.get("GPTOSS_REVISION", "main")
    digest = env.get("GPTOSS_SOURCE_HASH") or "local"
    return DownloadConfig(
        repo=repo,
        revision=revision,
        exclude_patterns=patterns,
        digest=digest,
        data_dir=Path(env.get("GPTOSS_DATA_DIR", "/data")),
        endpoint=env.get("HF_ENDPOINT") or None,
        token=env.get("HF_TOKEN") or None,
        stall_timeout=float(env.get("GPTOSS_STALL_TIMEOUT_SECONDS", "300")),
        capacity_bytes=int(capacity) if capacity else None,
        progress_interval=float(env.get("GPTOSS_PROGRESS_INTERVAL_SECONDS", "3")),
    )


def write_termination(path: str, payload: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        Path(path).write_text(json.dumps(payload)[:4000])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gptoss-download", description=__doc__)
    parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for client in ("httpx", "httpx2"):  # a line per request otherwise
        logging.getLogger(client).setLevel(logging.WARNING)
    env = dict(os.environ)
    config = config_from_env(env)
    termination = env.get("GPTOSS_TERMINATION_LOG", TERMINATION_LOG)
    model, namespace = env.get("GPTOSS_MODEL"), env.get("GPTOSS_NAMESPACE")
    reporter = (
        StatusReporter(model, namespace, config.progress_interval)
        if model and namespace
        else NullReporter()
    )
    config.data_dir.mkdir(parents=True, exist_ok=True)
    attempt = Layout(config.data_dir).next_attempt(config.digest)
    started = timestamp()
    log.info(
        "downloading %s@%s into %s (attempt %d)",
        config.repo,
        config.revision,
        config.data_dir,
        attempt,
    )
    reporter.report(
        {
            "startedAt": started,
            "completedAt": None,
            "attempt": attempt,
            "message": f"resolving {config.repo}@{config.revision}",
        },
        force=True,
    )

    def on_progress(progress: Progress) -> None:
        reporter.report(_progress_fields(progress))

    def on_stall(progress: Progress) -> None:
        message = (
            f"no bytes received for {config.stall_timeout:.0f}s at "
            f"{progress.bytes_done}/{progress.bytes_total} bytes; retrying"
        )
        log.error(message)
        reporter.report({**_progress_fields(progress), "message": message}, force=True)
        write_termination(termination, {"reason": "DownloadStalled", "message": message})
        logging.shutdown()
        os._exit(EXIT_STALLED)

    try:
        secret = env.get("GPTOSS_TOKEN_SECRET")
        if secret and model and namespace:
            ref = TokenRef(namespace, model, secret, env.get("GPTOSS_TOKEN_KEY", "token"))
            token = read_token(Client(field_manager="gptoss-download"), ref, config.endpoint)
            config = dataclasses.replace(config, token=token)
        result = download(config, on_progress, on_stall)
    except DownloadError as error:
        log.error("%s: %s", error.reason, error.message)
        reporter.report({"message": error.message}, force=True)
        write_termination(termination, {"reason": error.reason, "message": error.message})
        return error.exit_code
    done = "downloaded" if result.downloaded else "already on the volume"
    message = f"{result.files} files ({result.bytes_total} bytes) {done}"
    log.info("%s@%s: %s", config.repo, result.commit, message)
    reporter.report(
        {
            "resolvedRevision": result.commit,
            "bytesDone": result.bytes_total,
            "bytesTotal": result.bytes_total,
            "percent": 100,
            "filesDone": result.files,
            "filesTotal": result.files,
            "completedAt": timestamp(),
            "message": message,
        },
        force=True,
    )
    write_termination(
        termination,
        {"reason": "Downloaded", "resolvedRevision": result.commit, "message": message},
    )
    return 0


def _progress_fields(progress: Progress) -> dict[str, Any]:
    return {
        "bytesDone": progress.bytes_done,
        "bytesTotal": progress.bytes_total,
        "percent": progress.percent,
        "filesDone": progress.files_done,
        "filesTotal": progress.files_total,
        "message": "downloading",
    }


if __name__ == "__main__":
    sys.exit(main())
