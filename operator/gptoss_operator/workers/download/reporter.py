"""Report download progress into the GptOssModel's status (``status.download``)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from lightkube import Client
from lightkube.types import PatchType

from gptoss_operator.api.resources import GptOssModelResource

log = logging.getLogger(__name__)


class StatusReporter:
    """Merge-patches ``status.download``, at most once per ``min_interval`` seconds
    unless forced. A failed patch is logged and never stops the download."""

    def __init__(self, name: str, namespace: str, min_interval: float = 3.0) -> None:
        self.name = name
        self.namespace = namespace
        self.min_interval = min_interval
        self._client: Client | None = None
        self._last_sent = 0.0
        self._lock = threading.Lock()

    def _get_client(self) -> Client:
        if self._client is None:
            self._client = Client(field_manager="gptoss-download")
        return self._client

    def report(self, download: dict[str, Any], *, force: bool = False) -> bool:
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last_sent < self.min_interval:
                return False
            self._last_sent = now
            try:
                self._get_client().patch(
                    GptOssModelResource.Status,
                    self.name,
                    {"status": {"download": download}},
                    namespace=self.namespace,
                    patch_type=PatchType.MERGE,
                )
            except Exception as error:
                log.warning(
                    "could not report progress to %s/%s: %s", self.namespace, self.name, error
                )
                return False
            return True


class NullReporter(StatusReporter):
    """Used when no model is named (a local run): reports nothing."""

    def __init__(self) -> None:
        super().__init__("", "")

    def report(self, download: dict[str, Any], *, force: bool = False) -> bool:
        return False
