"""`gptoss-sidecar`: run InferenceJobs for one model against the vLLM engine beside it.

Configured by environment (the operator sets it in the Deployment): GPTOSS_MODEL,
GPTOSS_NAMESPACE, GPTOSS_POD_NAME, GPTOSS_ENGINE_URL (default http://127.0.0.1:8000),
GPTOSS_CONCURRENCY (default 64), GPTOSS_LEASE_SECONDS (default 30),
GPTOSS_HEARTBEAT_SECONDS (default 5), GPTOSS_ENGINE_QUIET_SECONDS (default 30: silence
after which the engine is asked whether it still holds the request),
GPTOSS_RESYNC_SECONDS (default 60), GPTOSS_HEALTH_PORT (default 0: no /healthz),
GPTOSS_ENGINE_API_KEY (the engine's API key, from the model's Secret),
GPTOSS_ENGINE_PRIORITY_SCHEDULING (true when vLLM runs requests by priority: the jobs'
spec.priority is sent), GPTOSS_GATEWAY_PORT (default 0: no gateway for batch shards),
GPTOSS_GATEWAY_SLOTS (default 256: batch lines the gateway sends to the engine at once).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

from gptoss_operator.core.kube import new_client
from gptoss_operator.engine.client import QUIET_SECONDS
from gptoss_operator.workers.sidecar.gateway import Gateway, read_grants, start_gateway
from gptoss_operator.workers.sidecar.health import start_health_server
from gptoss_operator.workers.sidecar.worker import Sidecar, SidecarConfig


def config_from_env(env: dict[str, str]) -> SidecarConfig:
    missing = [key for key in ("GPTOSS_MODEL", "GPTOSS_NAMESPACE") if not env.get(key)]
    if missing:
        raise SystemExit(f"gptoss-sidecar: set {', '.join(missing)}")
    return SidecarConfig(
        model=env["GPTOSS_MODEL"],
        namespace=env["GPTOSS_NAMESPACE"],
        worker=env.get("GPTOSS_POD_NAME") or socket.gethostname(),
        engine_url=env.get("GPTOSS_ENGINE_URL", "http://127.0.0.1:8000"),
        engine_api_key=env.get("GPTOSS_ENGINE_API_KEY") or None,
        concurrency=int(env.get("GPTOSS_CONCURRENCY", "64")),
        priority_scheduling=env.get("GPTOSS_ENGINE_PRIORITY_SCHEDULING") == "true",
        lease_seconds=int(env.get("GPTOSS_LEASE_SECONDS", "30")),
        heartbeat_seconds=float(env.get("GPTOSS_HEARTBEAT_SECONDS", "5")),
        engine_quiet_seconds=float(env.get("GPTOSS_ENGINE_QUIET_SECONDS", QUIET_SECONDS)),
        retry_base_seconds=float(env.get("GPTOSS_RETRY_BASE_SECONDS", "1")),
        resync_seconds=float(env.get("GPTOSS_RESYNC_SECONDS", "60")),
        gateway_slots=int(env.get("GPTOSS_GATEWAY_SLOTS", "256")),
    )


async def _serve(config: SidecarConfig, health_port: int, gateway_port: int) -> None:
    sidecar = Sidecar(config, new_client("gptoss-sidecar"))
    health = await start_health_server(sidecar, health_port) if health_port else None
    gateway = Gateway(
        config.engine_url,
        config.engine_api_key,
        priority_scheduling=config.priority_scheduling,
        lines=sidecar.lines,
    )
    sidecar.model_listeners.append(lambda model: gateway.take_grants(read_grants(model)))
    gateway_server = await start_gateway(gateway, gateway_port) if gateway_port else None
    task = asyncio.create_task(sidecar.run())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    waiter = asyncio.create_task(stop.wait())
    await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        logging.getLogger("gptoss.sidecar").info("stopping: handing running jobs back")
        await sidecar.drain()
    task.cancel()
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if gateway_server is not None:
        await gateway_server.cleanup()
    await gateway.close()
    if health is not None:
        await health.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gptoss-sidecar", description=__doc__)
    parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for client in ("httpx", "httpx2"):  # a line per request otherwise
        logging.getLogger(client).setLevel(logging.WARNING)
    health_port = int(os.environ.get("GPTOSS_HEALTH_PORT", "0"))
    gateway_port = int(os.environ.get("GPTOSS_GATEWAY_PORT", "0"))
    asyncio.run(_serve(config_from_env(dict(os.environ)), health_port, gateway_port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
