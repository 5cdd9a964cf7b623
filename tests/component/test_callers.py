"""Who may call Check and the admin API: a unix socket only its group can open, or TLS where the caller
is verified as an X.509-SVID of its own trust domain and must be on the allow-list.

The threat: Check has side effects (denial counting toward quarantine, a session's first use), and
certificates are public, so a forged CheckRequest carrying a victim's leaf — no private key needed —
would count denials against the victim. Only Envoy may call.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from ext_authz._proto import admin_pb2 as pb
from ext_authz._proto import admin_pb2_grpc
from ext_authz._proto.envoy import external_auth_pb2_grpc
from ext_authz.dev import pki
from ext_authz.dev.demo import BACKEND_ID
from tests.component.checkreq import check_request
from tests.component.test_server import Running, start, write_config

FRONTEND = "spiffe://example.org/ns/frontend/sa/web"
BILLING = "spiffe://example.org/ns/billing/sa/worker"


def creds(demo: Path, cert: bytes | None = None, key: bytes | None = None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=(demo / "bundle/root.pem").read_bytes(), private_key=key, certificate_chain=cert
    )


def svid(demo: Path, name: str) -> tuple[bytes, bytes]:
    if name == "envoy":  # the demo's Envoy: spiffe://example.org/ns/backend/sa/api
        return (demo / "envoy/server.pem").read_bytes(), (demo / "envoy/server.key").read_bytes()
    return (demo / f"svid/{name}.pem").read_bytes(), (demo / f"svid/{name}.key").read_bytes()


@pytest.fixture
async def tls(demo_dir: Path, tmp_path: Path) -> AsyncIterator[Running]:
    """ext-authz serving Check over TLS on a TCP port, only the demo Envoy on the allow-list."""
    cfg = write_config(
        demo_dir,
        tmp_path,
        listen="localhost:0",
        check={
            "tls": {"cert": str(demo_dir / "envoy/server.pem"), "key": str(demo_dir / "envoy/server.key")},
            "allowed_spiffe_ids": [BACKEND_ID],
        },
        quarantine={"denials": 2, "window": "60s", "duration": "15m"},
    )
    r = await start(cfg)
    yield r
    await r.channel.close()
    await r.server.stop(0)


async def call_check(
    r: Running, demo: Path, channel_creds: grpc.ChannelCredentials | None, **req: Any
) -> Any:
    target = r.server.addresses["check"]
    channel = (
        grpc.aio.secure_channel(target, channel_creds) if channel_creds else grpc.aio.insecure_channel(target)
    )
    async with channel:
        return await external_auth_pb2_grpc.AuthorizationStub(channel).Check(
            check_request(demo, **req), timeout=5
        )


async def code_of(coro: Any) -> grpc.StatusCode:
    try:
        await coro
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_the_allowed_envoy_is_served(tls: Running, demo_dir: Path) -> None:
    cert, key = svid(demo_dir, "envoy")
    resp = await call_check(tls, demo_dir, creds(demo_dir, cert, key), workload="frontend")
    assert resp.status.code == 0
    assert tls.records()[-1]["decision"] == "allow"


@pytest.mark.parametrize("caller", ["billing", "frontend"])
async def test_a_forged_check_from_another_workload_is_refused_without_side_effects(
    tls: Running, demo_dir: Path, caller: str
) -> None:
    """billing holds a valid SVID of the same trust domain but is not Envoy: it forges Checks that
    carry frontend's (public) certificate on a denied path, to get frontend quarantined."""
    cert, key = svid(demo_dir, caller)
    for _ in range(3):
        code = await code_of(
            call_check(tls, demo_dir, creds(demo_dir, cert, key), workload="frontend", path="/admin/x")
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
    assert tls.records() == []  # refused before the request was read: nothing decided, nothing counted
    assert tls.runtime.replica.snapshot.revocations == ()
    envoy = creds(demo_dir, *svid(demo_dir, "envoy"))
    assert (await call_check(tls, demo_dir, envoy, workload="frontend")).status.code == 0  # not quarantined


async def test_no_client_certificate_or_plaintext_gets_no_further_than_the_handshake(
    tls: Running, demo_dir: Path
) -> None:
    assert (
        await code_of(call_check(tls, demo_dir, creds(demo_dir), workload="frontend"))
        == grpc.StatusCode.UNAVAILABLE
    )
    assert await code_of(call_check(tls, demo_dir, None, workload="frontend")) == grpc.StatusCode.UNAVAILABLE
    assert tls.records() == []


async def test_a_certificate_that_is_not_an_svid_of_its_own_trust_domain_is_refused(
    tls: Running, demo_dir: Path, tmp_path: Path
) -> None:
    """Chains to a root in the handshake pool, but breaks the SPIFFE leaf rules: two URI SANs (one
    of them the allowed Envoy's)."""
    inter = pki.load_issued(
        (demo_dir / "ca/intermediate.pem").read_bytes(), (demo_dir / "ca/intermediate.key").read_bytes()
    )
    two_ids = pki.make_leaf(inter, [BACKEND_ID, FRONTEND])
    chain = (two_ids.pem + inter.pem).encode()
    code = await code_of(
        call_check(tls, demo_dir, creds(demo_dir, chain, two_ids.key_pem.encode()), workload="frontend")
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert tls.records() == []


async def test_plaintext_beyond_loopback_is_served_only_when_said_and_then_with_a_warning(
    demo_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """0.0.0.0 without TLS is refused at load unless check.plaintext says so; said, it is served, and
    the log warns that anyone who can reach it can call Check."""
    from ext_authz.errors import ConfigError
    from ext_authz.loader import load_engine

    with pytest.raises(ConfigError, match=r"check\.plaintext"):
        load_engine(write_config(demo_dir, tmp_path / "refused", listen="0.0.0.0:0", check={}))
    config = write_config(demo_dir, tmp_path / "said", listen="0.0.0.0:0", check={"plaintext": True})
    r = await start(config)
    port = r.server.bound_port
    try:
        assert any(
            rec.levelname == "WARNING" and "plaintext" in rec.getMessage() and "anyone" in rec.getMessage()
            for rec in caplog.records
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = external_auth_pb2_grpc.AuthorizationStub(ch)
            resp = await stub.Check(check_request(demo_dir, workload="frontend"))
        assert resp.status.code == 0
    finally:
        await r.channel.close()
        await r.server.stop(0)


async def test_check_on_a_unix_socket_is_open_to_its_group_only(demo_dir: Path, tmp_path: Path) -> None:
    sock = tmp_path / "run" / "check.sock"
    r = await start(write_config(demo_dir, tmp_path, listen=f"unix://{sock}"))
    try:
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        resp = await call_check(r, demo_dir, None, workload="frontend")
        assert resp.status.code == 0
        if os.geteuid() == 0:  # as root we can be someone else: a user outside the socket's group
            other = subprocess.run(
                [sys.executable, "-c", _CONNECT_AS_NOBODY, str(sock)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert other.returncode == 0, other.stderr
            assert other.stdout.strip() == "EACCES"
    finally:
        await r.channel.close()
        await r.server.stop(0)


_CONNECT_AS_NOBODY = """
import os, socket, sys
os.setgroups([]); os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
    print("CONNECTED")
except PermissionError:
    print("EACCES")
"""


# --- the admin API over TCP ---------------------------------------------------------------------------


@pytest.fixture
async def tcp_admin(demo_dir: Path, tmp_path: Path) -> AsyncIterator[tuple[Running, int]]:
    cfg = write_config(
        demo_dir,
        tmp_path,
        admin_listen="localhost:0",
        admin={
            # An operator of each trust domain: both roots are in the TLS handshake's pool.
            "allowed_spiffe_ids": [FRONTEND, "spiffe://other.org/ns/ops/sa/admin"],
            "cert": str(demo_dir / "envoy/server.pem"),
            "key": str(demo_dir / "envoy/server.key"),
        },
        trust_domains={
            "example.org": {
                "x509_bundle": str(demo_dir / "bundle/example.org.spiffe.json"),
                "jwt_bundle": str(demo_dir / "bundle/example.org.spiffe.json"),
            },
            "other.org": {"x509_bundle": str(tmp_path / "other-root.pem")},
        },
    )
    r = await start(cfg)
    yield r, int(r.server.addresses["admin"].rpartition(":")[2])
    await r.channel.close()
    await r.server.stop(0)


@pytest.fixture
def other_root(tmp_path: Path) -> pki.Issued:
    root = pki.make_ca("other.org root", spiffe_td="other.org")
    (tmp_path / "other-root.pem").write_text(root.pem)
    return root


async def admin_call(demo: Path, port: int, cert: bytes, key: bytes) -> tuple[grpc.StatusCode, Any]:
    async with grpc.aio.secure_channel(f"localhost:{port}", creds(demo, cert, key)) as ch:
        try:
            resp = await admin_pb2_grpc.AdminStub(ch).Revoke(
                pb.RevokeRequest(value=BILLING, reason="test"), timeout=5
            )
        except grpc.aio.AioRpcError as exc:
            return exc.code(), None
        return grpc.StatusCode.OK, resp


async def test_the_verified_spiffe_id_is_what_the_audit_records(
    other_root: pki.Issued, tcp_admin: tuple[Running, int], demo_dir: Path
) -> None:
    _, port = tcp_admin
    code, resp = await admin_call(demo_dir, port, *svid(demo_dir, "frontend"))
    assert code == grpc.StatusCode.OK
    assert resp.revocation.created_by == FRONTEND


async def test_an_allowed_id_in_a_certificate_from_another_trust_domains_root_is_refused(
    other_root: pki.Issued, tcp_admin: tuple[Running, int], demo_dir: Path
) -> None:
    """other.org's root is in the handshake pool (an other.org operator is allowed too), so TLS accepts
    a certificate it signed for spiffe://example.org/…: only the check against example.org's own bundle
    refuses it."""
    _, port = tcp_admin
    forged = pki.make_leaf(other_root, [FRONTEND])
    code, _ = await admin_call(demo_dir, port, forged.pem.encode(), forged.key_pem.encode())
    assert code == grpc.StatusCode.PERMISSION_DENIED
    two = pki.make_leaf(other_root, ["spiffe://other.org/ns/x/sa/y", FRONTEND])
    code, _ = await admin_call(demo_dir, port, two.pem.encode(), two.key_pem.encode())
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert r_revocations(tcp_admin[0]) == []


def r_revocations(r: Running) -> list[Any]:
    return list(r.runtime.replica.snapshot.revocations)
