"""A real S3-compatible server for tests and the local demo: the Versity S3 Gateway
(``versitygw``, built from its Go module by ``gptoss_sandbox.binaries``) serving a local
folder, each sub-folder a bucket, with one access key pair."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from gptoss_sandbox import binaries
from gptoss_sandbox.cluster import free_port, stop_process


class S3Server:
    def __init__(self, root: Path, log_path: Path, port: int = 0, host: str = "127.0.0.1") -> None:
        self.root = root
        self.host = host
        self.log_path = log_path
        self.port = port or free_port()
        self.access_key = "gptoss-" + secrets.token_hex(4)
        self.secret_key = secrets.token_hex(16)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> S3Server:
        binary = binaries.ensure_binaries().versitygw
        self.root.mkdir(parents=True, exist_ok=True)
        meta = self.root.parent / f".{self.root.name}-meta"
        meta.mkdir(exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                str(binary),
                "--access",
                self.access_key,
                "--secret",
                self.secret_key,
                "--port",
                f"{self.host}:{self.port}",
                "posix",
                # Object metadata in a side folder: no need for extended attributes.
                "--sidecar",
                str(meta),
                str(self.root),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"versitygw exited: {self.log_path.read_text()[-2000:]}")
            with socket.socket() as probe:
                if probe.connect_ex((self.host, self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"versitygw did not listen on {self.port} in {timeout:.0f}s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_process(self.process)

    def client(self) -> Any:
        """A boto3 client with the server's keys (for tests to put and read objects)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
