"""Trust bundles from the SPIFFE Workload API: a real gRPC agent (the spiffe package's own stubs)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from spiffe._proto import workload_pb2, workload_pb2_grpc

from ext_authz.dev import pki
from tests.component.checkreq import check_request
from tests.component.test_server import Running
from tests.component.test_streams import start
from tests.waiting import until

TD, FED = "example.org", "other.org"
WORKLOAD = f"spiffe://{TD}/ns/backend/sa/api"
AUDIENCE = f"spiffe://{TD}/ns/backend/sa/api"


def der_chain(*certs: pki.Issued) -> bytes:
    return b"".join(c.cert.public_bytes(Encoding.DER) for c in certs)


class Agent(workload_pb2_grpc.SpiffeWorkloadAPIServicer):
    """Streams X.509 contexts (own + federated bundles) and JWT bundles; pushes updates on demand."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.version = 0
        self.roots: dict[str, list[pki.Issued]] = {}
        self.jwt_keys: list[Any] = []
        self.svid = pki.make_leaf(pki.make_ca("agent svid ca", spiffe_td=TD), [WORKLOAD])
        self.entry = True  # as SPIRE without a registration entry for the caller: PermissionDenied

    def publish(self, roots: dict[str, list[pki.Issued]], jwt_keys: list[Any]) -> None:
        with self.cond:
            self.roots, self.jwt_keys = roots, jwt_keys
            self.version += 1
            self.cond.notify_all()

    def _updates(self, context: Any) -> Iterator[int]:
        if dict(context.invocation_metadata()).get("workload.spiffe.io") != "true":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing")
        if not self.entry:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "no identity issued")
        seen = -1
        while context.is_active():
            with self.cond:
                if self.version == seen:
                    self.cond.wait(0.2)
                    continue
                seen = self.version
            yield seen

    def FetchX509SVID(self, request: Any, context: Any) -> Iterator[Any]:
        for _ in self._updates(context):
            key = self.svid.key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
            svid = workload_pb2.X509SVID(
                spiffe_id=WORKLOAD,
                x509_svid=der_chain(self.svid),
                x509_svid_key=key,
                bundle=der_chain(*self.roots.get(TD, [])),
            )
            fed = {f"spiffe://{td}": der_chain(*rs) for td, rs in self.roots.items() if td != TD}
            yield workload_pb2.X509SVIDResponse(svids=[svid], federated_bundles=fed)

    def FetchJWTBundles(self, request: Any, context: Any) -> Iterator[Any]:
        for _ in self._updates(context):
            jwks = {"keys": [pki.jwk_public(k, use="jwt-svid") for k in self.jwt_keys]}
            yield workload_pb2.JWTBundlesResponse(bundles={f"spiffe://{TD}": json.dumps(jwks).encode()})


class AgentServer:
    def __init__(self, socket: Path, agent: Agent) -> None:
        self.socket, self.agent = socket, agent
        self.server: grpc.Server | None = None

    def start(self) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(self.agent, self.server)  # type: ignore[no-untyped-call]
        self.server.add_insecure_port(f"unix://{self.socket}")
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0).wait()
            self.server = None


@pytest.fixture
def pkis() -> dict[str, Any]:
    ca_a = pki.make_ca("a", spiffe_td=TD)
    ca_b = pki.make_ca("b", spiffe_td=FED)
    ca_c = pki.make_ca("c", spiffe_td=TD)
    return {
        "ca_a": ca_a,
        "ca_b": ca_b,
        "ca_c": ca_c,
        "leaf_a": pki.make_leaf(ca_a, [f"spiffe://{TD}/ns/web/sa/a"]),
        "leaf_b": pki.make_leaf(ca_b, [f"spiffe://{FED}/ns/partner/sa/b"]),
        "leaf_c": pki.make_leaf(ca_c, [f"spiffe://{TD}/ns/web/sa/c"]),
        "jwt": pki.new_jwt_key("ES256", kid="wl-1"),
    }


@pytest.fixture
def agent(tmp_path: Path, pkis: dict[str, Any]) -> Iterator[AgentServer]:
    a = Agent()
    a.publish({TD: [pkis["ca_a"]], FED: [pkis["ca_b"]]}, [pkis["jwt"]])
    server = AgentServer(tmp_path / "agent.sock", a)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def running(demo_dir: Path, tmp_path: Path, agent: AgentServer) -> AsyncIterator[Running]:
    sock = f"unix://{agent.socket}"
    r = await start(
        demo_dir,
        tmp_path / "authz",
        trust_domains={TD: {"workload_api": sock}, FED: {"workload_api": sock}},
        jwt_svid={"audiences": [AUDIENCE]},
        rules=[{"name": "any-workload"}],
    )
    yield r
    await r.channel.close()
    await r.server.stop(0)


async def reason(r: Running, demo: Path, leaf: pki.Issued | None = None, token: str | None = None) -> str:
    req = check_request(demo, token=token)
    if leaf is not None:
        req.attributes.source.certificate = quote(leaf.pem, safe="")
    resp = await r.stub.Check(req)
    return str(resp.dynamic_metadata.fields["reason"].string_value)


async def eventually(r: Running, demo: Path, want: str, **kw: Any) -> None:
    async def reached() -> bool:
        return await reason(r, demo, **kw) == want

    await until(reached, f"the reason {want}")


async def test_bundles_from_the_workload_api_including_federated(
    running: Running, demo_dir: Path, pkis: dict[str, Any]
) -> None:
    assert await reason(running, demo_dir, pkis["leaf_a"]) == "allowed"
    assert await reason(running, demo_dir, pkis["leaf_b"]) == "allowed"  # federated trust domain
    assert await reason(running, demo_dir, pkis["leaf_c"]) == "cert_untrusted"
    now = int(time.time())
    token = pki.mint_jwt(
        pkis["jwt"], {"sub": f"spiffe://{TD}/ns/web/sa/a", "aud": [AUDIENCE], "exp": now + 60}
    )
    assert await reason(running, demo_dir, token=token) == "allowed"


async def test_rotation_is_swapped_in(
    running: Running, demo_dir: Path, agent: AgentServer, pkis: dict[str, Any]
) -> None:
    assert await reason(running, demo_dir, pkis["leaf_a"]) == "allowed"
    agent.agent.publish({TD: [pkis["ca_c"]], FED: [pkis["ca_b"]]}, [pkis["jwt"]])
    await eventually(running, demo_dir, "allowed", leaf=pkis["leaf_c"])
    assert await reason(running, demo_dir, pkis["leaf_a"]) == "cert_untrusted"  # the old root is gone


async def test_a_broken_stream_keeps_the_last_bundles_and_recovers(
    running: Running, demo_dir: Path, agent: AgentServer, pkis: dict[str, Any]
) -> None:
    agent.stop()
    # The client retries quietly; where the agent was, a listener that hangs up on every connection
    # makes its retries visible. Every Check while it retries is decided on the last bundles.
    attempts = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal attempts
        attempts += 1
        writer.close()

    agent.socket.unlink(missing_ok=True)
    broken = await asyncio.start_unix_server(hang_up, path=str(agent.socket))
    decided: list[str] = []

    async def retried_twice() -> bool:
        decided.append(await reason(running, demo_dir, pkis["leaf_a"]))
        return attempts >= 2

    try:
        await until(retried_twice, "the client reconnecting to the broken agent twice")
    finally:
        broken.close()
        await broken.wait_closed()
        agent.socket.unlink(missing_ok=True)
    assert decided and set(decided) == {"allowed"}
    agent.agent.publish({TD: [pkis["ca_a"], pkis["ca_c"]], FED: [pkis["ca_b"]]}, [pkis["jwt"]])
    agent.start()  # the agent returns (same socket) with a rotated bundle
    await eventually(running, demo_dir, "allowed", leaf=pkis["leaf_c"])


async def test_not_ready_until_every_workload_api_trust_domain_has_its_bundle(
    demo_dir: Path, tmp_path: Path, pkis: dict[str, Any]
) -> None:
    """Without a registration entry (or before the agent has one), SVIDs of that trust domain would be
    refused: /readyz says what ext-authz is waiting for, so a probe keeps it out of rotation."""
    from tests.component.test_server import _http_get

    a = Agent()
    a.entry = False  # no registration entry yet: the agent refuses, as SPIRE's does
    a.publish({TD: [pkis["ca_a"]], FED: [pkis["ca_b"]]}, [pkis["jwt"]])
    server = AgentServer(tmp_path / "agent.sock", a)
    server.start()
    sock = f"unix://{server.socket}"
    r = await start(
        demo_dir,
        tmp_path / "authz",
        trust_domains={TD: {"workload_api": sock}, FED: {"workload_api": sock}},
        jwt_svid={"audiences": [AUDIENCE]},
        rules=[{"name": "any-workload"}],
    )
    try:
        http = r.http
        assert http is not None
        code, body = await _http_get(http, "/readyz")
        assert code == 503 and "waiting for the X.509 bundle of example.org, other.org" in body
        a.entry = True  # the entry is registered: the next attempt gets the bundles

        async def ready() -> bool:
            return (await _http_get(http, "/readyz"))[0] == 200

        await until(ready, "ready once the bundles came", timeout=40)
    finally:
        await r.channel.close()
        await r.server.stop(0)
        server.stop()
