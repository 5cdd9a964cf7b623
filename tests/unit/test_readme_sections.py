"""docs/migrating-from-opa-envoy.md: each rewritten policy (a YAML block after an
`<!-- opa-example: NAME -->` marker) is loaded by ext-authz and decides the requests the text says as it
says. The examples' identities are SPIFFE IDs Envoy verified (`mtls.source: principal`, as under Istio)
and tokens of a test issuer standing in for https://idp.example.com."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from ext_authz._proto.envoy.external_auth_pb2 import CheckRequest
from ext_authz.dev import pki
from ext_authz.envoy.normalize import normalize
from ext_authz.loader import load_engine
from ext_authz.pipeline import Caches, Engine, decide
from tests.conftest import REPO

SECTIONS = REPO / "docs" / "migrating-from-opa-envoy.md"
NOW = datetime(2033, 3, 1, 12, 0, tzinfo=UTC)
ISSUER = "https://idp.example.com"
FRONTEND = "spiffe://example.org/ns/frontend/sa/web"
BILLING = "spiffe://example.org/ns/billing/sa/worker"
OPS = "spiffe://example.org/ns/ops/sa/oncall"


def examples() -> dict[str, dict[str, Any]]:
    text = SECTIONS.read_text()
    found = re.findall(r"<!-- opa-example: ([\w-]+) -->\n```yaml\n(.*?)```", text, re.S)
    return {name: yaml.safe_load(block) for name, block in found}


class Material:
    def __init__(self, root: Path) -> None:
        self.root = root
        ca = pki.make_ca("example.org root", spiffe_td="example.org", now=NOW)
        self.bundle = root / "example.org.pem"
        self.bundle.write_text(ca.pem)
        self.key = pki.new_jwt_key("ES256", kid="idp-1")
        self.jwks = root / "idp-jwks.json"
        self.jwks.write_text(json.dumps({"keys": [pki.jwk_public(self.key, use="sig")]}))

    def engine(self, name: str) -> Engine:
        cfg = examples()[name]
        cfg["trust_domains"] = {"example.org": {"x509_bundle": str(self.bundle)}}
        cfg["mtls"] = {"source": "principal"}
        for issuer in cfg.get("issuers", {}).values():
            issuer["jwks"] = str(self.jwks)  # the example's https URL, served from a file here
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return load_engine(path)

    def token(self, audience: str, *, key: Any = None, **claims: Any) -> str:
        body = {
            "iss": ISSUER,
            "sub": "user-1",
            "aud": audience,
            "iat": int(NOW.timestamp()) - 60,
            "exp": int((NOW + timedelta(minutes=10)).timestamp()),
            **claims,
        }
        return pki.mint_jwt(key or self.key, body, kid="idp-1")


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return Material(tmp_path_factory.mktemp("opa-examples"))


def decision(
    engine: Engine,
    path: str,
    method: str = "GET",
    *,
    principal: str | None = None,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, str, str]:
    h = {
        ":method": method,
        ":path": path,
        ":authority": "api.internal",
        ":scheme": "https",
        **(headers or {}),
    }
    if token is not None:
        h["authorization"] = f"Bearer {token}"
    source: dict[str, Any] = {"address": {"socketAddress": {"address": "10.0.0.7", "portValue": 40312}}}
    if principal is not None:
        source["principal"] = principal
    doc = {
        "attributes": {
            "source": source,
            "request": {"http": {"method": method, "path": path, "host": "api.internal", "headers": h}},
        }
    }
    ctx = normalize(json_format.Parse(json.dumps(doc), CheckRequest()))
    d = decide(ctx, engine, Caches(), NOW, "decision-1")
    return d.status, d.reason, d.rule


def test_every_example_is_tested() -> None:
    assert sorted(examples()) == [
        "allow-list",
        "deny-wins",
        "headers-and-query",
        "result-object",
        "token-roles",
    ]


def test_allow_list(material: Material) -> None:
    e = material.engine("allow-list")
    assert decision(e, "/orders/7?page=2", principal=FRONTEND)[:2] == (200, "allowed")
    assert decision(e, "/orders", "HEAD", principal=FRONTEND)[:2] == (200, "allowed")
    assert decision(e, "/orders", "POST", principal=FRONTEND)[:2] == (403, "no_rule")
    assert decision(e, "/orders/7", principal=BILLING)[:2] == (403, "no_rule")


def test_token_roles(material: Material) -> None:
    e = material.engine("token-roles")
    guest = material.token("people-api", role="guest")
    admin = material.token("people-api", role="admin")
    assert decision(e, "/people/ada", token=guest) == (200, "allowed", "people-read")
    assert decision(e, "/people", "POST", token=guest)[:2] == (403, "no_rule")
    assert decision(e, "/people", "POST", token=admin) == (200, "allowed", "people-create")
    assert decision(e, "/people/ada")[:2] == (401, "no_credential")
    forged = material.token("people-api", key=pki.new_jwt_key("ES256", kid="idp-1"), role="admin")
    assert decision(e, "/people", "POST", token=forged)[:2] == (401, "token_signature")


def test_deny_wins(material: Material) -> None:
    e = material.engine("deny-wins")
    assert decision(e, "/admin/users", principal=OPS) == (200, "allowed", "workloads-read")
    assert decision(e, "/admin", principal=FRONTEND) == (403, "policy_denied", "admin-only-for-ops")
    assert decision(e, "/api/orders", principal=FRONTEND) == (200, "allowed", "workloads-read")


def test_headers_and_query(material: Material) -> None:
    e = material.engine("headers-and-query")
    acme = material.token("reports", tenant="acme")
    tenant = {"x-tenant": "acme"}
    assert decision(e, "/reports/q3?format=csv", token=acme, headers=tenant)[:2] == (200, "allowed")
    assert decision(e, "/reports/q3?lang=en&format=csv", token=acme, headers=tenant)[:2] == (200, "allowed")
    assert decision(e, "/reports/q3?format=csv", token=acme, headers={"x-tenant": "globex"})[:2] == (
        403,
        "no_rule",
    )
    assert decision(e, "/reports/q3", token=acme, headers=tenant)[:2] == (403, "no_rule")
    assert decision(e, "/reports/q3?format=csvx", token=acme, headers=tenant)[:2] == (403, "no_rule")


def test_result_object(material: Material) -> None:
    from ext_authz.envoy.render import render

    e = material.engine("result-object")
    reader = material.token("docs", roles=["reader"], email="ada@acme.test", tenant="acme")
    guest = material.token("docs", roles=["guest"], email="bob@acme.test", tenant="acme")
    assert decision(e, "/docs/a", token=reader, headers={"cookie": "s=1"}) == (200, "allowed", "readers")
    assert decision(e, "/docs/a", token=guest) == (403, "policy_denied", "others-get-a-problem")
    h = {
        ":method": "GET",
        ":path": "/docs/a",
        ":authority": "api.internal",
        "authorization": f"Bearer {reader}",
    }
    doc = {
        "attributes": {
            "request": {"http": {"method": "GET", "path": "/docs/a", "host": "api.internal", "headers": h}}
        }
    }
    ok = render(decide(normalize(json_format.Parse(json.dumps(doc), CheckRequest())), e, Caches(), NOW, "d1"))
    up = {o.header.key: o.header.value for o in ok.ok_response.headers}
    assert up["x-user-email"] == "ada@acme.test" and up["x-tenant"] == "acme"
    assert "cookie" in ok.ok_response.headers_to_remove
    assert ok.dynamic_metadata.fields["tenant"].string_value == "acme"
    h["authorization"] = f"Bearer {guest}"
    denied = render(
        decide(normalize(json_format.Parse(json.dumps(doc), CheckRequest())), e, Caches(), NOW, "d2")
    )
    assert denied.denied_response.body == '{"title":"Forbidden","status":403}'
    assert denied.denied_response.status.code == 403
