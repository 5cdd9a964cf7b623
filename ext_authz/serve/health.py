"""Health: ``GET /healthz``, ``/readyz`` and ``/metrics`` on ``http_listen``, and ``grpc.health.v1``'s
``ext_authz.state`` service, which follows the state store's reachability."""

from __future__ import annotations

import asyncio

from grpc_health.v1 import health_pb2
from grpc_health.v1._async import HealthServicer

from ..observe.metrics import CONTENT_TYPE, OPENMETRICS
from .http import Request, Response, serve_http
from .runtime import Runtime

__all__ = ["STATE_SERVICE", "health_page", "serve_health", "watch_state_health"]

STATE_SERVICE = "ext_authz.state"  # health of the shared state store (degraded is not down)


DEGRADED_STATUS = 503  # /readyz?strict: what a degraded replica answers


async def health_page(runtime: Runtime, target: str, accept: str = "") -> tuple[int, str, str]:
    path, _, query = target.partition("?")
    if path == "/metrics":
        if "application/openmetrics-text" in accept:  # Prometheus asks for it first
            return 200, runtime.metrics.scrape_openmetrics().decode(), OPENMETRICS
        return 200, runtime.metrics.scrape().decode(), CONTENT_TYPE
    if path == "/healthz":
        return 200, "ok\n", "text/plain"
    if path == "/readyz":
        return readiness(runtime, strict="strict" in query.split("&"))
    return 404, "not found\n", "text/plain"


def waiting_for(runtime: Runtime) -> str:
    """What a live trust source has not delivered yet: X.509 bundles of Workload API trust domains
    (an SVID they would verify is refused meanwhile), or our own SVID for check.tls.workload_api."""
    engine = runtime.engine
    cfg = engine.config
    waiting = []
    for name, td in sorted(cfg.trust_domains.items()):
        if td.workload_api is not None:
            have = engine.trust.domains.get(name)
            if have is None or not have.x509_roots:
                waiting.append(name)
    parts = [f"the X.509 bundle of {', '.join(waiting)} from the Workload API"] if waiting else []
    if cfg.check.tls is not None and cfg.check.tls.workload_api is not None and not runtime.own_svid_ready():
        parts.append("our own X509-SVID from the Workload API (check.tls.workload_api)")
    return "; ".join(parts)


def readiness(runtime: Runtime, *, strict: bool = False) -> tuple[int, str, str]:
    """``ready``; or ``degraded: …`` (still enforcing: the last good config, the last snapshot of
    shared state) with 200, or with 503 under ``?strict`` for probes told to take it out of rotation;
    or ``not ready``."""
    if not runtime.ready:
        return 503, "not ready\n", "text/plain"
    missing = waiting_for(runtime)
    if missing:
        return 503, f"not ready: waiting for {missing}\n", "text/plain"
    revision = runtime.engine.revision
    problems = []
    if runtime.last_reload_error:
        error = " ".join(runtime.last_reload_error.split())
        problems.append(f"last reload failed, enforcing the last good configuration: {error}")
    if not runtime.replica.healthy:
        problems.append("state store unreachable, enforcing the last snapshot")
    if runtime.ssf is not None:
        problems += runtime.ssf.receivers.problems()
    if problems:
        body = "".join(f"degraded: {p}\n" for p in problems) + f"revision={revision}\n"
        return (DEGRADED_STATUS if strict else 200), body, "text/plain"
    return 200, f"ready revision={revision}\n", "text/plain"


async def serve_health(runtime: Runtime, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """``http_listen``: the GET pages, and the SSF endpoints when shared signals are configured."""

    async def handle(request: Request) -> Response:
        if runtime.ssf is not None:
            answer = await runtime.ssf.handle(request)
            if answer is not None:
                return answer
        if request.method not in ("GET", "HEAD"):
            return Response(405, "method not allowed\n", headers={"Allow": "GET"})
        code, body, ctype = await health_page(runtime, request.target, request.headers.get("accept", ""))
        return Response(code, body, ctype)

    await serve_http(handle, reader, writer)


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
