"""End to end over TCP: Envoy calls Check over mTLS with its own SVID; a forged Check from another
workload, with a valid SVID of the same trust domain, is refused."""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from ext_authz._proto.envoy import external_auth_pb2_grpc
from ext_authz.dev.stack import Ports, Stack
from tests.component.checkreq import check_request
from tests.conftest import REPO

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run = tmp_path_factory.mktemp("run-tls")
    with Stack(demo_dir, REPO / "envoy.yaml", run, Ports.free(), check="tls") as s:
        yield s


def status(stack: Stack, path: str, workload: str) -> int:
    demo = stack.demo_dir
    ctx = ssl.create_default_context(cafile=str(demo / "bundle/root.pem"))
    ctx.load_cert_chain(demo / f"svid/{workload}.pem", demo / f"svid/{workload}.key")
    conn = http.client.HTTPSConnection("localhost", stack.ports.mesh, context=ctx, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_envoy_calls_check_over_mtls(stack: Stack) -> None:
    assert status(stack, "/api/orders", "frontend") == 200
    assert status(stack, "/api/orders", "billing") == 403


def forged_check(stack: Stack, channel: grpc.Channel) -> grpc.StatusCode:
    try:
        external_auth_pb2_grpc.AuthorizationStub(channel).Check(
            check_request(stack.demo_dir, workload="frontend"), timeout=5
        )
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def test_a_forged_check_over_tcp_is_refused(stack: Stack) -> None:
    demo = stack.demo_dir
    creds = grpc.ssl_channel_credentials(
        root_certificates=(demo / "bundle/root.pem").read_bytes(),
        private_key=(demo / "svid/billing.key").read_bytes(),
        certificate_chain=(demo / "svid/billing.pem").read_bytes(),
    )
    with grpc.secure_channel(f"localhost:{stack.ports.ext_authz}", creds) as ch:
        assert forged_check(stack, ch) == grpc.StatusCode.PERMISSION_DENIED
    with grpc.insecure_channel(f"127.0.0.1:{stack.ports.ext_authz}") as plain:
        assert forged_check(stack, plain) == grpc.StatusCode.UNAVAILABLE
    assert status(stack, "/api/orders", "frontend") == 200  # Envoy itself is still served
