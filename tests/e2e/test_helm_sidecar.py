"""The Helm chart's sidecar pod, run for real: the Envoy and ext-authz configs the chart renders (its
default values), a real spire-server and spire-agent standing in for SPIRE and its CSI driver, the demo
upstream standing in for the app. Only what differs outside a pod is rewritten: the sockets' and the
state file's directories (the pod's volumes), the ports (free ones, since tests may run side by side),
and 0.0.0.0 as 127.0.0.1.

What it shows: kubelet's probes get their answers where the chart points them (Envoy's `ready` listener
proxies the admin socket's /ready and nothing else; ext-authz's /readyz and /healthz), Envoy calls Check
over the unix socket with mode 0660, and requests through Envoy's mTLS listener are decided by the
chart's default rule with the identities SPIRE issued.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import shutil
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ext_authz.dev.spire import Entry, SpireAgent, SpireServer, short_dir, wait_until
from ext_authz.dev.stack import envoy_binary, envoy_listener_ports
from tests.e2e.chartpod import get, stop, wait_for_probes
from tests.helm import render_values

pytestmark = pytest.mark.e2e

TD = "example.org"
# The pod's identity under SPIRE's default ClusterSPIFFEID template: namespace authz, account ext-authz.
POD_ID = f"spiffe://{TD}/ns/authz/sa/ext-authz"
FRONTEND = f"spiffe://{TD}/ns/frontend/sa/web"
BILLING = f"spiffe://{TD}/ns/billing/sa/worker"


@dataclass
class Pod:
    root: Path
    ports: dict[str, int]
    bundle: Path
    frontend: tuple[Path, Path]
    billing: tuple[Path, Path]
    procs: dict[str, subprocess.Popen[bytes]]
    check_socket: Path

    def alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                log = self.root / f"{name}.log"
                raise RuntimeError(f"{name} exited: {log.read_text()[-1500:]}")


@pytest.fixture(scope="module")
def pod() -> Iterator[Pod]:
    root = short_dir("ext-authz-chart-")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(SpireServer(root / "server", TD))
            agent = stack.enter_context(SpireAgent(root / "agent", server))
            # Envoy and ext-authz run as this uid: one entry, so SDS's "default" SVID is the pod's.
            server.create_entries([Entry(POD_ID, parent=agent.spiffe_id, dns_names=("localhost",))])
            agent.wait_for_svids([POD_ID])
            fe_chain, fe_key, bundle = server.mint_x509(FRONTEND, root / "frontend")
            bi_chain, bi_key, _ = server.mint_x509(BILLING, root / "billing")

            r = render_values({})
            envoy_text, config_text = r.envoy_config(), r.ext_authz_config()
            assert envoy_text is not None
            # Every port 0, each read back from its process: the app and ext-authz report theirs in a
            # ready file; Envoy (started last, its cluster on the app's port) through its admin pipe.
            ports = {"mtls": 0, "ready": 0, "http": 0, "app": 0}
            run = root / "run"
            for d in ("check", "admin", "envoy", "state"):
                (run / d).mkdir(parents=True)

            def local(text: str) -> str:
                for pod_path, here in (
                    ("/spiffe-workload-api/spire-agent.sock", str(agent.socket)),
                    ("/run/ext-authz/", f"{run}/check/"),
                    ("/run/ext-authz-admin/", f"{run}/admin/"),
                    ("/run/envoy/", f"{run}/envoy/"),
                    ("/var/lib/ext-authz/", f"{run}/state/"),
                ):
                    text = text.replace(pod_path, here)
                for name, pod_port in (("mtls", 10443), ("ready", 9902), ("http", 9192), ("app", 8080)):
                    text = re.sub(rf"\b{pod_port}\b", str(ports[name]), text)
                return text.replace("0.0.0.0", "127.0.0.1")

            def spawn(name: str, argv: list[str]) -> subprocess.Popen[bytes]:
                with (root / f"{name}.log").open("wb") as log:
                    procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
                return procs[name]

            def reported(path: Path, name: str) -> str:
                def written() -> str | None:
                    if procs[name].poll() is not None:
                        raise RuntimeError(f"{name} exited: {(root / f'{name}.log').read_text()[-1500:]}")
                    text = path.read_text() if path.exists() else ""
                    return text if text.endswith("\n") else None

                return wait_until(f"{name} to report its port", written, 60)

            py = sys.executable
            app_ready = root / "app.ready"
            spawn(
                "app",
                [py, "-m", "ext_authz.dev.upstream", "--port", "0", "--ready-file", str(app_ready)],
            )
            ports["app"] = int(reported(app_ready, "app"))
            (root / "config.yaml").write_text(local(config_text))
            # The pod's init container first, as the kubelet runs it: the rendered config validates.
            (init,) = r.deployment()["spec"]["template"]["spec"]["initContainers"]
            validate = [
                a.replace("/etc/ext-authz/config/config.yaml", str(root / "config.yaml"))
                for a in init["args"]
            ]
            checked = subprocess.run([py, "-m", "ext_authz.cli", *validate], capture_output=True, text=True)
            assert checked.returncode == 0, checked.stderr
            argv = [py, "-m", "ext_authz.cli", "serve", "--config", str(root / "config.yaml")]
            spawn("ext-authz", [*argv, "--ready-file", str(root / "ext-authz.ready")])
            bound = json.loads(reported(root / "ext-authz.ready", "ext-authz"))
            ports["http"] = int(bound["http"].rpartition(":")[2])
            (root / "envoy.yaml").write_text(local(envoy_text))
            spawn("envoy", [envoy_binary(), "-c", str(root / "envoy.yaml"), "--disable-hot-restart"])
            admin = run / "envoy/admin.sock"  # the chart's envoyAdminSocket, /run/envoy/admin.sock

            def envoy_alive() -> None:
                if procs["envoy"].poll() is not None:
                    raise RuntimeError(f"envoy exited: {(root / 'envoy.log').read_text()[-1500:]}")

            def listening() -> dict[str, int] | None:
                with contextlib.suppress(OSError, ValueError):
                    found = envoy_listener_ports(f"unix://{admin}")
                    if {"mesh", "ready"} <= found.keys():
                        return found
                return None

            found = wait_until("Envoy's listeners", listening, 60, alive=envoy_alive)
            ports["mtls"], ports["ready"] = found["mesh"], found["ready"]
            p = Pod(
                root,
                ports,
                bundle,
                (fe_chain, fe_key),
                (bi_chain, bi_key),
                procs,
                run / "check/check.sock",
            )

            wait_for_probes(ports, p.alive)
            yield p
    finally:
        stop(procs)
        shutil.rmtree(root, ignore_errors=True)


def _mtls(pod: Pod, cert: tuple[Path, Path], path: str) -> tuple[int, dict[str, str], bytes]:
    ctx = ssl.create_default_context(cafile=str(pod.bundle))
    ctx.load_cert_chain(*cert)
    conn = http.client.HTTPSConnection("localhost", pod.ports["mtls"], context=ctx, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_envoys_ready_listener_serves_only_the_admin_ready(pod: Pod) -> None:
    status, body = get(pod.ports["ready"], "/ready")
    assert (status, body.strip()) == (200, b"LIVE")
    for path in ("/stats", "/config_dump", "/clusters", "/ready/x"):
        assert get(pod.ports["ready"], path)[0] == 404, path
    assert get(pod.ports["ready"], "/quitquitquit", method="POST")[0] == 404
    assert get(pod.ports["ready"], "/ready", method="POST")[0] == 404
    pod.alive()


def test_ext_authz_answers_its_probes(pod: Pod) -> None:
    assert get(pod.ports["http"], "/readyz")[0] == 200
    assert get(pod.ports["http"], "/healthz")[0] == 200


def test_the_check_socket_is_owner_and_group_only(pod: Pod) -> None:
    assert stat.S_IMODE(pod.check_socket.stat().st_mode) == 0o660


def test_requests_through_envoy_are_decided_by_the_charts_rule(pod: Pod) -> None:
    status, headers, body = _mtls(pod, pod.frontend, "/api/orders")
    assert status == 200, (headers, body)
    assert b"x-spiffe-id" in body and FRONTEND.encode() in body  # the app saw who called
    status, headers, _ = _mtls(pod, pod.billing, "/api/orders")
    assert (status, headers.get("x-ext-authz-reason")) == (403, "no_rule")
    status, headers, _ = _mtls(pod, pod.frontend, "/admin")
    assert (status, headers.get("x-ext-authz-reason")) == (403, "no_rule")
