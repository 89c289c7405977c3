"""vLLM's load as its ``/metrics`` page reports it: the requests it runs and holds."""

from __future__ import annotations

import math

# vLLM's requests running and waiting, and the batch lines the model's gateway holds for
# it (see workers.sidecar.gateway): all of them are the engine's work in flight.
GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "gptoss:gateway_lines_held")
# vLLM's page is tens of KiB; a pod that sends more is not read to its end.
MAX_PAGE_BYTES = 4 * 2**20


def requests_in_flight(text: str) -> int | None:
    """Running plus waiting requests in one ``/metrics`` page (None: vLLM's gauges are
    not there)."""
    total = 0.0
    found = False
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in GAUGES:
            try:
                value = float(line.rsplit(" ", 1)[1])
            except (IndexError, ValueError):
                continue
            if not math.isfinite(value) or value < 0:
                continue
            total += value
            found = True
    return round(total) if found else None
