"""Kubernetes Events about our objects, posted directly (from any task, not only from
inside kopf handlers)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from lightkube import ApiError, AsyncClient, codecs

from gptoss_operator.api.conditions import timestamp

log = logging.getLogger(__name__)

# How a controller records an Event: (object, type, reason, message).
EventSink = Callable[[dict[str, Any], str, str, str], Awaitable[None]]


def event_manifest(
    body: dict[str, Any], event_type: str, reason: str, message: str, component: str
) -> dict[str, Any]:
    metadata = body["metadata"]
    now = timestamp()
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": f"{metadata['name'][:200]}.",
            "namespace": metadata["namespace"],
        },
        "involvedObject": {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "uid": metadata.get("uid"),
            "resourceVersion": metadata.get("resourceVersion"),
        },
        "type": event_type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component, "host": socket.gethostname()},
        "reportingComponent": f"gptoss.ai/{component}",
        "reportingInstance": socket.gethostname(),
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }


async def post_event(
    client: AsyncClient,
    body: dict[str, Any],
    event_type: str,
    reason: str,
    message: str,
    component: str = "gptoss-operator",
) -> None:
    """Record an Event; a failure is logged, never raised."""
    try:
        await client.create(
            codecs.from_dict(event_manifest(body, event_type, reason, message, component))
        )
    except Exception as error:
        detail = error.status.message if isinstance(error, ApiError) else repr(error)
        log.warning("could not record event %s on %s: %s", reason, body["metadata"]["name"], detail)
