"""What the tests that run the chart's rendered pods as local processes share (test_helm_sidecar.py,
test_helm_shared.py): plain HTTP to a port, the pod's two probes, and stopping its processes."""

from __future__ import annotations

import contextlib
import http.client
import subprocess
from collections.abc import Callable

from ext_authz.dev.spire import wait_until

__all__ = ["get", "status_or_none", "stop", "wait_for_probes"]


def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def status_or_none(port: int, path: str) -> int | None:
    with contextlib.suppress(OSError):
        status, _ = get(port, path)
        return status
    return None


def wait_for_probes(ports: dict[str, int], alive: Callable[[], None]) -> None:
    """Until kubelet's two probes would pass: ext-authz's /readyz and Envoy's ready listener."""

    def ready() -> bool | None:
        ok = status_or_none(ports["http"], "/readyz") == 200
        return True if ok and status_or_none(ports["ready"], "/ready") == 200 else None

    wait_until("the pod's probes to pass", ready, 60, alive=alive)


def stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """Terminate every process, then wait; kill what has not exited after 15 s."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
    for proc in procs.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
