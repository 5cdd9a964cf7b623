"""The Helm chart's shared pod with its default terminator, run for real: the Envoy and ext-authz configs
the chart renders for `mode: shared` (the Envoy in the pod terminating the callers' mTLS, ext-authz on
native behind it over a unix socket), a real spire-server and spire-agent standing in for SPIRE and its
CSI driver. As in test_helm_sidecar.py, only what differs outside a pod is rewritten: the sockets' and the
state file's directories, the ports (free ones), and 0.0.0.0 as 127.0.0.1.

What it shows: a caller proving an allowed SPIFFE ID with its X509-SVID gets its Checks decided by
ext-authz (the chart's default rule: the frontend may GET /api/*); a caller with an SVID of the same trust
domain that is not on check.allowedSpiffeIds, or with no certificate, or with a certificate of another
CA, is refused in the handshake and no Check reaches ext-authz; the probes answer where the chart points
them; the Check socket is mode 0660.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from cryptography import x509

from ext_authz._proto.envoy.external_auth_pb2 import CheckRequest
from ext_authz._proto.envoy.external_auth_pb2_grpc import AuthorizationStub
from ext_authz.dev import pki
from ext_authz.dev.spire import Entry, SpireAgent, SpireServer, short_dir, wait_until
from ext_authz.dev.stack import envoy_binary, envoy_listener_ports
from tests.conftest import REPO
from tests.e2e.chartpod import get, stop, wait_for_probes
from tests.helm import render_values

pytestmark = pytest.mark.e2e

TD = "example.org"
POD_ID = f"spiffe://{TD}/ns/authz/sa/ext-authz"
GATEWAY = f"spiffe://{TD}/ns/edge/sa/gateway"  # on check.allowedSpiffeIds
INTRUDER = f"spiffe://{TD}/ns/billing/sa/worker"  # a valid SVID of the trust domain, not on the list
FRONTEND = f"spiffe://{TD}/ns/frontend/sa/web"
BILLING = f"spiffe://{TD}/ns/billing/sa/worker"


@dataclass
class Pod:
    root: Path
    ports: dict[str, int]
    bundle: Path
    svids: dict[str, tuple[Path, Path]]
    procs: dict[str, subprocess.Popen[bytes]]
    check_socket: Path

    def alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited: {(self.root / f'{name}.log').read_text()[-1500:]}")


@contextlib.contextmanager
def run_pod(
    root: Path, values: dict[str, Any], rewrites: list[tuple[str, str]], bundle: Path, svids: dict[str, Any]
) -> Iterator[Pod]:
    """The chart's rendered shared pod for ``values`` (its Envoy terminator and ext-authz), as processes
    here; ``rewrites``: pod paths to where they are here, besides the pod's own sockets and state."""
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        r = render_values({"mode": "shared", "replicas": 1, "state": {"backend": "sqlite"}, **values})
        envoy_text, config_text = r.envoy_config(), r.ext_authz_config()
        assert envoy_text is not None
        (envoy_files,) = [d["data"] for d in r.of("ConfigMap") if "envoy.yaml" in d["data"]]
        run = root / "run"
        for d in ("check", "admin", "envoy", "state", "envoy-config"):
            (run / d).mkdir(parents=True)
        ports = {"check": 0, "ready": 0, "http": 0}

        def local(text: str) -> str:
            for pod_path, here in (
                *rewrites,
                ("/etc/envoy/", f"{run}/envoy-config/"),
                ("/run/ext-authz/", f"{run}/check/"),
                ("/run/ext-authz-admin/", f"{run}/admin/"),
                ("/run/envoy/", f"{run}/envoy/"),
                ("/var/lib/ext-authz/", f"{run}/state/"),
            ):
                text = text.replace(pod_path, here)
            for name, pod_port in (("check", 9191), ("ready", 9902), ("http", 9192)):
                text = re.sub(rf"\b{pod_port}\b", str(ports[name]), text)
            return text.replace("0.0.0.0", "127.0.0.1")

        def spawn(name: str, argv: list[str]) -> None:
            with (root / f"{name}.log").open("wb") as log:
                procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

        (root / "config.yaml").write_text(local(config_text))
        argv = [sys.executable, "-m", "ext_authz.cli", "serve", "--config", str(root / "config.yaml")]
        spawn("ext-authz", [*argv, "--ready-file", str(root / "ready")])

        def reported() -> str | None:
            if procs["ext-authz"].poll() is not None:
                raise RuntimeError((root / "ext-authz.log").read_text()[-1500:])
            text = (root / "ready").read_text() if (root / "ready").exists() else ""
            return text if text.endswith("\n") else None

        bound = json.loads(wait_until("ext-authz to report its ports", reported, 60))
        ports["http"] = int(bound["http"].rpartition(":")[2])
        for name, text in envoy_files.items():  # the rest of Envoy's ConfigMap, where Envoy reads it
            (run / "envoy-config" / name).write_text(local(text))
        (root / "envoy.yaml").write_text(local(envoy_text))
        spawn("envoy", [envoy_binary(), "-c", str(root / "envoy.yaml"), "--disable-hot-restart"])

        def listening() -> dict[str, int] | None:
            if procs["envoy"].poll() is not None:
                raise RuntimeError((root / "envoy.log").read_text()[-1500:])
            with contextlib.suppress(OSError, ValueError):
                found = envoy_listener_ports(f"unix://{run}/envoy/admin.sock")
                if {"check", "ready"} <= found.keys():
                    return found
            return None

        found = wait_until("the terminator's listeners", listening, 60)
        ports["check"], ports["ready"] = found["check"], found["ready"]
        p = Pod(root, ports, bundle, svids, procs, run / "check/check.sock")

        wait_for_probes(ports, p.alive)
        yield p
    finally:
        stop(procs)


@pytest.fixture(scope="module")
def pod() -> Iterator[Pod]:
    """With SPIRE: the terminator's certificate and bundles over SDS from a real agent."""
    root = short_dir("ext-authz-shared-")
    try:
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(SpireServer(root / "server", TD))
            agent = stack.enter_context(SpireAgent(root / "agent", server))
            server.create_entries([Entry(POD_ID, parent=agent.spiffe_id, dns_names=("localhost",))])
            agent.wait_for_svids([POD_ID])
            svids: dict[str, tuple[Path, Path]] = {}
            bundle = Path()
            for name, sid in (("gateway", GATEWAY), ("intruder", INTRUDER), ("frontend", FRONTEND)):
                chain, key, bundle = server.mint_x509(sid, root / name)
                svids[name] = (chain, key)
            rewrites = [("/spiffe-workload-api/spire-agent.sock", str(agent.socket))]
            values = {"check": {"allowedSpiffeIds": [GATEWAY]}}
            yield stack.enter_context(run_pod(root, values, rewrites, bundle, svids))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def request(leaf_pem: str, path: str = "/api/orders") -> CheckRequest:
    """A Check as an Envoy sends it for a request whose client presented ``leaf_pem``."""
    req = CheckRequest()
    h = req.attributes.request.http
    h.method, h.path, h.host, h.scheme, h.protocol = "GET", path, "backend.internal", "https", "HTTP/2"
    h.headers.update({":method": "GET", ":path": path, ":authority": "backend.internal"})
    req.attributes.source.address.socket_address.address = "127.0.0.1"
    req.attributes.source.certificate = quote(leaf_pem, safe="")
    req.attributes.context_extensions["listener"] = "mesh"
    return req


def leaf(chain: Path) -> str:
    pem = chain.read_text()
    return pem[: pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")] + "\n"


def check(pod: Pod, caller: tuple[bytes, bytes] | None, req: CheckRequest) -> tuple[int, str]:
    """Call Check on the pod's port over mTLS as ``caller`` (chain, key PEM; None: no certificate):
    (HTTP status ext-authz answered, its reason header)."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=pod.bundle.read_bytes(),
        private_key=caller[1] if caller else None,
        certificate_chain=caller[0] if caller else None,
    )
    target = f"127.0.0.1:{pod.ports['check']}"
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(target, creds, options=options) as channel:
        resp = AuthorizationStub(channel).Check(req, timeout=10)
    if resp.HasField("ok_response"):
        return 200, ""
    headers = {h.header.key: h.header.value for h in resp.denied_response.headers}
    return resp.denied_response.status.code, headers.get("x-ext-authz-reason", "")


def svid(pod: Pod, name: str) -> tuple[bytes, bytes]:
    chain, key = pod.svids[name]
    return chain.read_bytes(), key.read_bytes()


def test_an_allowed_caller_gets_checks_decided_by_the_charts_rule(pod: Pod) -> None:
    frontend = leaf(pod.svids["frontend"][0])
    assert check(pod, svid(pod, "gateway"), request(frontend)) == (200, "")
    assert check(pod, svid(pod, "gateway"), request(frontend, "/admin")) == (403, "no_rule")
    assert check(pod, svid(pod, "gateway"), request(leaf(pod.svids["intruder"][0]))) == (403, "no_rule")
    pod.alive()


@pytest.mark.parametrize("who", ["intruder", "none", "other-ca"])
def test_a_caller_not_on_the_list_is_refused_in_the_handshake(pod: Pod, who: str, tmp_path: Path) -> None:
    if who == "other-ca":  # the gateway's very SPIFFE ID, under a CA the trust domain never had
        ca = pki.make_ca("impostor", spiffe_td=TD)
        fake = pki.make_leaf(ca, [GATEWAY])
        caller: tuple[bytes, bytes] | None = (fake.pem.encode(), fake.key_pem.encode())
    else:
        caller = None if who == "none" else svid(pod, who)
    before = decided(pod)
    with pytest.raises(grpc.RpcError) as err:
        check(pod, caller, request(leaf(pod.svids["frontend"][0])))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
    assert decided(pod) == before  # no Check reached ext-authz
    assert check(pod, svid(pod, "gateway"), request(leaf(pod.svids["frontend"][0])))[0] == 200
    assert decided(pod) == before + 1  # ...while the allowed caller's does
    pod.alive()


def decided(pod: Pod) -> float:
    """Checks ext-authz decided so far (its ext_authz_decisions_total, on its metrics port)."""
    _, body = get(pod.ports["http"], "/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line.startswith("ext_authz_decisions_total{")
    )


def test_the_probes_answer_where_the_chart_points_them(pod: Pod) -> None:
    assert get(pod.ports["http"], "/readyz")[0] == 200
    assert get(pod.ports["http"], "/healthz")[0] == 200
    assert get(pod.ports["ready"], "/ready")[0] == 200
    assert get(pod.ports["ready"], "/stats")[0] == 404


def test_the_check_socket_is_owner_and_group_only(pod: Pod) -> None:
    assert stat.S_IMODE(pod.check_socket.stat().st_mode) == 0o660


# --- the terminator from files (spiffe.workloadApi false), and hostile callers ----------------------------

PARTNER = "spiffe://partner.org/ns/x/sa/y"


@pytest.fixture(scope="module")
def files_pod() -> Iterator[Pod]:
    """The terminator's certificate from a Secret and two trust domains' bundles from files (example.org
    and a federated partner.org), with a connection cap of 4 so that holding it is cheap to test."""
    root = short_dir("ext-authz-shared-files-")
    try:
        ca = pki.make_ca("example.org CA", spiffe_td=TD)
        partner = pki.make_ca("partner.org CA", spiffe_td="partner.org")
        for directory in ("bundles", "check-tls", "callers"):
            (root / directory).mkdir()
        (root / "bundles/example.org.x509.pem").write_text(ca.pem)
        (root / "bundles/partner.org.x509.pem").write_text(partner.pem)
        mount_secret(root / "check-tls", pki.make_leaf(ca, [POD_ID], dns=["localhost"], ips=["127.0.0.1"]), 1)
        callers = {
            "gateway": pki.make_leaf(ca, [GATEWAY]),
            "frontend": pki.make_leaf(ca, [FRONTEND]),
            # an allowed ID second, behind the partner's own: the partner's CA vouches for the first only
            "smuggled": pki.make_leaf(partner, [PARTNER, GATEWAY]),
            "two-sans": pki.make_leaf(ca, [GATEWAY, f"spiffe://{TD}/ns/other/sa/x"]),
            "partner": pki.make_leaf(partner, [PARTNER]),
        }
        svids: dict[str, tuple[Path, Path]] = {}
        for name, issued in callers.items():
            chain, key = root / f"callers/{name}.pem", root / f"callers/{name}.key"
            chain.write_text(issued.pem)
            key.write_text(issued.key_pem)
            svids[name] = (chain, key)
        values = {
            "check": {"allowedSpiffeIds": [GATEWAY], "tls": {"existingSecret": "check-tls"}},
            "spiffe": {
                "workloadApi": False,
                "bundles": {
                    "trustDomains": {
                        TD: {"x509": ca.pem},
                        "partner.org": {"x509": partner.pem},
                    }
                },
            },
            "envoy": {"maxDownstreamConnections": 4},
        }
        rewrites = [
            ("/etc/ext-authz/bundles", f"{root}/bundles"),
            ("/etc/ext-authz/check-tls", f"{root}/check-tls"),
        ]
        (root / "bundle.pem").write_text(ca.pem)
        (root / "ca.pem").write_text(ca.pem)
        (root / "ca.key").write_text(ca.key_pem)
        with run_pod(root, values, rewrites, root / "bundle.pem", svids) as p:
            yield p
    finally:
        shutil.rmtree(root, ignore_errors=True)


def mount_secret(directory: Path, issued: pki.Issued, version: int) -> None:
    """tls.crt and tls.key as kubelet lays a Secret out: links into ``..data``, itself a link to the
    current version's directory, swapped in one rename when the Secret changes."""
    data = directory / f"..v{version}"
    data.mkdir()
    (data / "tls.crt").write_text(issued.pem)
    (data / "tls.key").write_text(issued.key_pem)
    swap = directory / "..data_tmp"
    swap.symlink_to(data.name)
    swap.replace(directory / "..data")
    for name in ("tls.crt", "tls.key"):
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")


def served_serial(pod: Pod) -> int:
    """The serial of the certificate the terminator presents (to the gateway, which it admits)."""
    ctx = ssl.create_default_context(cafile=str(pod.bundle))
    ctx.load_cert_chain(*pod.svids["gateway"])
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", pod.ports["check"]), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_from_files_a_renewed_certificate_is_served_without_a_restart(files_pod: Pod) -> None:
    before = served_serial(files_pod)
    ca = pki.load_issued((files_pod.root / "ca.pem").read_bytes(), (files_pod.root / "ca.key").read_bytes())
    renewed = pki.make_leaf(ca, [POD_ID], dns=["localhost"], ips=["127.0.0.1"])
    mount_secret(files_pod.root / "check-tls", renewed, 2)
    wait_until(
        "the renewed certificate served",
        lambda: served_serial(files_pod) == renewed.cert.serial_number or None,
        30,
        alive=files_pod.alive,
    )
    assert before != renewed.cert.serial_number
    frontend = leaf(files_pod.svids["frontend"][0])
    assert check(files_pod, svid(files_pod, "gateway"), request(frontend)) == (200, "")


def test_from_files_an_allowed_caller_gets_checks_decided(files_pod: Pod) -> None:
    frontend = leaf(files_pod.svids["frontend"][0])
    assert check(files_pod, svid(files_pod, "gateway"), request(frontend)) == (200, "")


@pytest.mark.parametrize("who", ["smuggled", "two-sans", "partner"])
def test_an_allowed_id_beside_another_uri_san_is_refused(files_pod: Pod, who: str) -> None:
    """A federated trust domain's CA putting an allowed ID second (the validator judges the certificate
    by its first URI SAN, and a SAN matcher passes if any SAN matches), or a certificate with the allowed
    ID and another one: refused, as ext-authz's own TLS refuses more than one URI SAN."""
    before = decided(files_pod)
    with pytest.raises(grpc.RpcError) as err:
        check(files_pod, svid(files_pod, who), request(leaf(files_pod.svids["frontend"][0])))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
    assert decided(files_pod) == before
    files_pod.alive()


def test_a_check_larger_than_ext_authz_could_accept_is_refused_by_the_terminator(files_pod: Pod) -> None:
    """Native reads a whole request before its own size limit refuses it: the terminator never forwards
    one larger than ext-authz's limits allow (the chart's limits: 96 KiB of headers, 8 KiB of body)."""
    big = request(leaf(files_pod.svids["frontend"][0]))
    big.attributes.request.http.body = "x" * (512 * 1024)
    before = decided(files_pod)
    with pytest.raises(grpc.RpcError) as err:
        check(files_pod, svid(files_pod, "gateway"), big)
    # Envoy's 413 (gRPC UNKNOWN), not native's RESOURCE_EXHAUSTED after it had read the whole message
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.UNKNOWN, "Payload Too Large")
    assert decided(files_pod) == before
    assert (
        check(files_pod, svid(files_pod, "gateway"), request(leaf(files_pod.svids["frontend"][0])))[0] == 200
    )


def test_connections_that_prove_nothing_are_dropped_and_never_starve_the_probe(files_pod: Pod) -> None:
    idle = [socket.create_connection(("127.0.0.1", files_pod.ports["check"]), timeout=30) for _ in range(4)]
    try:
        # the cap of 4 is held; readiness is outside it
        assert get(files_pod.ports["ready"], "/ready")[0] == 200

        def closed(conn: socket.socket) -> bool:
            try:
                return conn.recv(1) == b""
            except ConnectionResetError:
                return True

        for conn in idle:  # each closed by the terminator (no handshake within 5 s)
            conn.settimeout(30)
            assert closed(conn)
    finally:
        for conn in idle:
            conn.close()
    frontend = leaf(files_pod.svids["frontend"][0])
    wait_until(
        "the allowed caller served again",
        lambda: check(files_pod, svid(files_pod, "gateway"), request(frontend)) == (200, "") or None,
        30,
    )


def terminator_stats(pod: Pod) -> dict[str, float]:
    status, body = get(pod.ports["ready"], "/stats/prometheus")
    assert status == 200
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def test_the_terminators_refusals_are_counted_where_the_alert_reads_them(files_pod: Pod) -> None:
    """ExtAuthzTerminatorCallersRefused (deploy/prometheus/ext-authz.rules.yaml) reads these series."""
    rules = (REPO / "deploy/prometheus/ext-authz.rules.yaml").read_text()
    before = terminator_stats(files_pod)
    denied = 'envoy_rbac_denied{envoy_rbac_prefix="check_callers"}'
    for name in (
        "envoy_listener_ssl_fail_verify_san",
        "envoy_listener_ssl_fail_verify_error",
        "envoy_rbac_denied",
    ):
        assert name in rules
        assert any(series.startswith(name + "{") for series in before), name
    with pytest.raises(grpc.RpcError):
        check(files_pod, svid(files_pod, "smuggled"), request(leaf(files_pod.svids["frontend"][0])))
    wait_until(
        "the refusal counted",
        lambda: terminator_stats(files_pod).get(denied, 0) > before.get(denied, 0) or None,
        20,
    )
