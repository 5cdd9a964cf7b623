"""OIDC issuers with JWKS over HTTPS: discovery, rotation (refetch on unknown kid), stale-if-error."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from joserfc.jwk import Key

from ext_authz.dev import pki
from tests import httpserver
from tests.component.checkreq import check_request
from tests.component.test_server import Running
from tests.component.test_streams import start
from tests.httpserver import QuietHandler, serving
from tests.waiting import until


@dataclass
class Idp:
    """A real HTTPS identity provider: discovery document and a JWKS we can rotate."""

    port: int
    ca: Path
    keys: list[Key] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def issuer(self) -> str:
        return f"https://localhost:{self.port}"

    def token(self, key: Key, **claims: Any) -> str:
        now = int(time.time())
        body = {
            "iss": self.issuer,
            "aud": "backend-api",
            "sub": "alice",
            "roles": ["reader"],
            "iat": now,
            "exp": now + 600,
            **claims,
        }
        return pki.mint_jwt(key, body, alg="ES256")


@pytest.fixture
def idp(tmp_path: Path) -> Iterator[Idp]:
    root = pki.make_ca("idp test root")
    leaf = pki.make_leaf(root, dns=["localhost"], common_name="localhost")
    (tmp_path / "idp.pem").write_text(leaf.pem)
    (tmp_path / "idp.key").write_text(leaf.key_pem)
    (tmp_path / "ca.pem").write_text(root.pem)
    state = Idp(0, tmp_path / "ca.pem", [pki.new_jwt_key("ES256", kid="k1")])  # its port once it serves

    class Handler(QuietHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            if self.path == "/.well-known/openid-configuration":
                doc: Any = {"issuer": state.issuer, "jwks_uri": f"{state.issuer}/keys"}
            elif self.path == "/keys":
                doc = {"keys": [pki.jwk_public(k, use="sig") for k in state.keys]}
            else:
                self.send_error(404)
                return
            self.reply(200, json.dumps(doc).encode(), {"content-type": "application/json"})

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "idp.pem", tmp_path / "idp.key")
    with serving(Handler, tls=ctx) as server:
        state.server = server
        state.port = server.server_address[1]
        yield state


@pytest.fixture
async def running(demo_dir: Path, tmp_path: Path, idp: Idp) -> AsyncIterator[Running]:
    issuers = {
        idp.issuer: {
            "discovery": True,
            "audiences": ["backend-api"],
            "algorithms": ["ES256"],
            "ca": str(idp.ca),
            "refresh": "1s",
            "max_stale": "2s",
        }
    }
    r = await start(demo_dir, tmp_path / "authz", issuers=issuers)
    yield r
    await r.channel.close()
    await r.server.stop(0)


async def reason(r: Running, demo: Path, token: str) -> str:
    resp = await r.stub.Check(check_request(demo, token=token, path="/user/me", listener="edge"))
    return str(resp.dynamic_metadata.fields["reason"].string_value)


async def test_discovery_then_tokens_verify(running: Running, demo_dir: Path, idp: Idp) -> None:
    assert "/.well-known/openid-configuration" in idp.requests and "/keys" in idp.requests
    assert await reason(running, demo_dir, idp.token(idp.keys[0])) == "allowed"
    stranger = pki.new_jwt_key("ES256", kid="k1")
    assert await reason(running, demo_dir, idp.token(stranger)) == "token_signature"


async def test_rotation_is_picked_up_on_an_unknown_kid(running: Running, demo_dir: Path, idp: Idp) -> None:
    new = pki.new_jwt_key("ES256", kid="k2")
    idp.keys.append(new)
    running.server.remote.issuers[idp.issuer].last_attempt = 0  # as if the rate limit had passed
    token = idp.token(new)
    assert await reason(running, demo_dir, token) == "token_unknown_key"  # triggers a refetch

    async def allowed() -> bool:
        return await reason(running, demo_dir, token) == "allowed"

    await until(allowed, "the rotated key picked up")


async def test_stale_if_error_then_trust_stale(running: Running, demo_dir: Path, idp: Idp) -> None:
    token = idp.token(idp.keys[0])
    assert await reason(running, demo_dir, token) == "allowed"
    assert idp.server is not None
    httpserver.stop(idp.server)  # the IdP is gone: the last keys keep working for max_stale (2 s)
    remote = running.server.remote.issuers[idp.issuer]
    failures = remote.failures
    await until(lambda: remote.failures > failures, "a refresh failed")
    assert await reason(running, demo_dir, token) == "allowed"

    async def stale() -> bool:
        return await reason(running, demo_dir, token) == "trust_stale"

    await until(stale, "the keys refused once stale (max_stale), not trusted forever")
    resp = await running.stub.Check(check_request(demo_dir, token=token, path="/user/me", listener="edge"))
    assert resp.denied_response.status.code == 401


def test_config_rejects_plain_http_jwks(tmp_path: Path) -> None:
    from ext_authz.config import parse_settings
    from ext_authz.errors import ConfigError

    cfg = {"issuers": {"https://idp": {"jwks": "http://idp/keys", "audiences": ["a"]}}}
    with pytest.raises(ConfigError, match="https"):
        parse_settings(yaml.safe_dump(cfg), tmp_path / "c.yaml")
