"""SIGTERM under load through the real Envoy: NOT_SERVING first, every Check answered while draining,
and Envoy sees no error before the drain ends."""

from __future__ import annotations

import http.client
import os
import signal
import ssl
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ext_authz.dev.stack import Ports, Stack
from tests.conftest import REPO
from tests.waiting import until_sync

pytestmark = pytest.mark.e2e

DRAIN = 2.0


def _load(stack: Stack, stop: threading.Event, out: list[tuple[float, int]]) -> None:
    """Allowed requests back to back on one keep-alive connection, reconnecting after any failure."""
    demo = stack.demo_dir
    ctx = ssl.create_default_context(cafile=str(demo / "bundle/root.pem"))
    ctx.load_cert_chain(demo / "svid/frontend.pem", demo / "svid/frontend.key")
    conn: http.client.HTTPSConnection | None = None
    while not stop.is_set():
        started = time.monotonic()
        try:
            if conn is None:
                conn = http.client.HTTPSConnection("localhost", stack.ports.mesh, context=ctx, timeout=5)
            conn.request("GET", "/api/orders")
            resp = conn.getresponse()
            resp.read()
            out.append((started, resp.status))
        except (OSError, http.client.HTTPException):
            out.append((started, 0))
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()


@pytest.mark.parametrize("transport", ["grpcio", "native"])
def test_sigterm_under_load_drains_without_an_error(demo_dir: Path, tmp_path: Path, transport: str) -> None:
    stack = Stack(
        demo_dir,
        REPO / "envoy.yaml",
        tmp_path / "run",
        Ports.free(),
        overrides={"transport": transport, "drain_delay": f"{int(DRAIN * 1000)}ms"},
    )
    with stack:
        authz = stack.procs["ext-authz"]
        results: list[tuple[float, int]] = []
        stop = threading.Event()
        threads = [threading.Thread(target=_load, args=(stack, stop, results)) for _ in range(4)]
        channel = grpc.insecure_channel(stack.check_address)
        try:
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="envoy.service.auth.v3.Authorization"), timeout=30
            )
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            for t in threads:
                t.start()
            until_sync(lambda: len(results) >= 50, "load under way")

            signalled = time.monotonic()
            os.kill(authz.pid, signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            not_serving = time.monotonic()
            # Load goes on into the drain: requests that start after health said NOT_SERVING.
            until_sync(lambda: sum(1 for at, _ in results if at > not_serving) >= 20, "load during the drain")
        finally:
            stop.set()
            for t in threads:
                t.join(10)
            channel.close()
        assert authz.wait(timeout=30) == 0

    before = [s for at, s in results if at < signalled]
    during = [s for at, s in results if signalled <= at]
    after_not_serving = [s for at, s in results if at > not_serving]
    assert before and all(s == 200 for s in before)
    # NOT_SERVING came first, and Checks were answered after it (the drain, not an abrupt stop).
    assert len(after_not_serving) >= 20 and all(s == 200 for s in after_not_serving)
    assert all(s == 200 for s in during), f"errors while draining: {sorted(set(during))}"
    log = stack.log_path("ext-authz").read_text()
    assert "still answering Checks" in log and "ext-authz stopped" in log
