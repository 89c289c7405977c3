"""The sidecar's liveness endpoint.

``GET /healthz`` is answered by the sidecar's event loop itself, so a loop that stopped
turning (the only hang the sidecar cannot recover from by itself) fails the kubelet's
probe and the container restarts. Everything else, an engine restarting, an apiserver
unreachable, a watch gone quiet, the sidecar handles without a restart, which would cut
the generations in flight; the body reports it for humans.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gptoss_operator.workers.sidecar.worker import Sidecar


def report(sidecar: Sidecar) -> dict[str, Any]:
    last_sync = sidecar.last_sync
    return {
        "worker": sidecar.config.worker,
        "engineReady": sidecar.gate.ready.is_set(),
        "running": len(sidecar.running),
        "pending": len(sidecar.pending),
        "completed": sidecar.completed,
        "secondsSinceLastList": (
            round(sidecar.clock() - last_sync, 1) if last_sync is not None else None
        ),
        "watchRestarts": sidecar.watch_restarts,
    }


async def start_health_server(sidecar: Sidecar, port: int) -> web.AppRunner:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response(report(sidecar))

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()
    return runner
