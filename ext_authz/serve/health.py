"""Health: ``GET /healthz``, ``/readyz`` and ``/metrics`` on ``http_listen``, and ``grpc.health.v1``'s
``ext_authz.state`` service, which follows the state store's reachability."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from ..observe.metrics import CONTENT_TYPE
from .http import serve_get
from .runtime import Runtime

__all__ = ["STATE_SERVICE", "health_page", "serve_health", "watch_state_health"]

STATE_SERVICE = "ext_authz.state"  # health of the shared state store (degraded is not down)


async def health_page(runtime: Runtime, path: str) -> tuple[int, str, str]:
    if path == "/metrics":
        return 200, runtime.metrics.scrape().decode(), CONTENT_TYPE
    if path == "/healthz":
        return 200, "ok\n", "text/plain"
    if path == "/readyz":
        revision = runtime.engine.revision
        if runtime.ready and not runtime.replica.healthy:
            # Still enforcing (on the last snapshot of shared state): ready, but say so.
            body = f"degraded: state store unreachable, enforcing the last snapshot revision={revision}\n"
            return 200, body, "text/plain"
        if runtime.ready:
            return 200, f"ready revision={revision}\n", "text/plain"
        return 503, "not ready\n", "text/plain"
    return 404, "not found\n", "text/plain"


async def serve_health(runtime: Runtime, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    async def page(path: str) -> tuple[int, str, str]:
        return await health_page(runtime, path)

    await serve_get(page, reader, writer)


async def watch_state_health(runtime: Runtime, health: HealthServicer) -> None:
    """``ext_authz.state``: NOT_SERVING while shared state is unreachable."""
    last: bool | None = None
    while True:
        healthy = runtime.replica.healthy
        if healthy != last:
            serving = health_pb2.HealthCheckResponse.SERVING
            await health.set(
                STATE_SERVICE, serving if healthy else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            last = healthy
        await asyncio.sleep(0.2)
