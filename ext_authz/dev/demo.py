"""`ext-authz dev init DIR`: a demo trust domain, workloads, an OIDC issuer, tokens and a config."""

from __future__ import annotations

import json
import os
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from joserfc import jws
from joserfc.jwk import ECKey, Key, RSAKey

from ..identity.dpop import token_hash
from . import pki

__all__ = ["DEMO_TD", "WORKLOADS", "dpop_proof", "init_demo", "mint_demo_tokens"]

DEMO_TD = "example.org"
ISSUER = "https://idp.example.com"
BACKEND_ID = f"spiffe://{DEMO_TD}/ns/backend/sa/api"
WORKLOADS = {
    "frontend": f"spiffe://{DEMO_TD}/ns/frontend/sa/web",
    "billing": f"spiffe://{DEMO_TD}/ns/billing/sa/worker",
}

CONFIG = """\
# ext-authz demo configuration, written by `ext-authz dev init`.
listen: unix://{dir}/.run/check.sock     # shared with Envoy only (envoy.yaml); mode 0660
http_listen: 127.0.0.1:9192
admin_listen: unix://{dir}/.run/admin.sock   # the CLI finds it here: --config {dir}/config.yaml
admin:
  local_approvals: true   # a demo: approvals over the unix socket, where each caller names itself
state: sqlite://{dir}/state.db
decision_log:
  path: {dir}/.run/decisions.log   # JSON decisions here; ext-authz's own log is .run/ext-authz.log

trust_domains:
  example.org:
    x509_bundle: bundle/example.org.spiffe.json    # SPIFFE bundle JSON: x509-svid root + jwt-svid key
    jwt_bundle: bundle/example.org.spiffe.json

jwt_svid:
  audiences: [{backend}]

issuers:
  {issuer}:
    jwks: idp/jwks.json
    audiences: [backend-api]
    algorithms: [RS256]

mtls:
  source: certificate

rules:
  - name: no-admin-through-proxy
    effect: deny
    match: {{paths: ["/admin/*"]}}

  - name: frontend-reads
    effect: allow
    match: {{paths: ["/api/*"], methods: [GET, HEAD], context_extensions: {{listener: mesh}}}}
    when: 'identity.spiffe_id.startsWith("spiffe://example.org/ns/frontend/")'

  - name: billing-reads-shadow            # would let billing read; evaluated and reported, not enforced
    effect: allow
    mode: shadow
    match: {{paths: ["/api/*"], methods: [GET]}}
    when: 'identity.spiffe_id.startsWith("spiffe://example.org/ns/billing/")'

  - name: people-read-profile
    effect: allow
    match: {{paths: ["/user/*"], methods: [GET]}}
    when: '"oidc" in identity.kinds && has(identity.claims.roles) && "reader" in identity.claims.roles'

  - name: workloads-with-jwt-svid
    effect: allow
    match: {{paths: ["/internal/*"]}}
    when: '"jwt_svid" in identity.kinds'

  - name: granted-reports                 # a just-in-time grant opens /reports/* to the principal it names
    effect: allow
    match: {{paths: ["/reports/*"], methods: [GET]}}
    when: 'size(grants) > 0'

  - name: public-health
    effect: allow
    anonymous: true
    match: {{paths: ["/healthz"], methods: [GET]}}
"""


POLICY_TESTS = """\
# Policy tests for the demo policy: `ext-authz test {dir}/policy-tests.yaml` (exit 0: all pass).
# Identities here are taken as verified: these tests are about policy, not key material (see
# docs/policy-tests.md); the last case verifies a real token against the config's trust.
config: config.yaml
tests:
  - name: the frontend reads the API on the mesh listener
    request: {{method: GET, path: /api/orders, context_extensions: {{listener: mesh}}}}
    identity: {{workload: spiffe://example.org/ns/frontend/sa/web}}
    expect: {{decision: allow, rule: frontend-reads}}

  - name: but may not write it
    request: {{method: POST, path: /api/orders, context_extensions: {{listener: mesh}}}}
    identity: {{workload: spiffe://example.org/ns/frontend/sa/web}}
    expect: {{decision: deny, status: 403, reason: no_rule}}

  - name: billing has no rule for the API (only a shadow one)
    request: {{path: /api/orders, context_extensions: {{listener: mesh}}}}
    identity: {{workload: spiffe://example.org/ns/billing/sa/worker}}
    expect: {{decision: deny, reason: no_rule}}

  - name: /admin is closed to everyone
    request: {{path: /admin/users, context_extensions: {{listener: mesh}}}}
    identity: {{workload: spiffe://example.org/ns/frontend/sa/web}}
    expect: {{decision: deny, reason: policy_denied, rule: no-admin-through-proxy}}

  - name: a reader reads her profile
    request: {{path: /user/profile, context_extensions: {{listener: edge}}}}
    identity: {{user: {{issuer: https://idp.example.com, subject: alice, claims: {{roles: [reader]}}}}}}
    expect: {{decision: allow, rule: people-read-profile}}

  - name: a user without the reader role does not
    request: {{path: /user/profile}}
    identity: {{user: {{issuer: https://idp.example.com, subject: bob, claims: {{roles: [guest]}}}}}}
    expect: {{decision: deny, reason: no_rule}}

  - name: no credential at all
    request: {{path: /user/profile}}
    expect: {{decision: deny, status: 401, reason: no_credential}}

  - name: a revoked frontend is refused
    request: {{path: /api/orders, context_extensions: {{listener: mesh}}}}
    identity: {{workload: spiffe://example.org/ns/frontend/sa/web}}
    state: {{revocations: [{{kind: spiffe_id, value: spiffe://example.org/ns/frontend/sa/web}}]}}
    expect: {{decision: deny, reason: revoked}}

  - name: a just-in-time grant opens /reports for billing
    request: {{path: /reports/q3}}
    identity: {{workload: spiffe://example.org/ns/billing/sa/worker}}
    state: {{grants: [{{principal: spiffe://example.org/ns/billing/sa/worker, paths: ["/reports/*"]}}]}}
    expect: {{decision: allow, rule: granted-reports}}

  - name: anyone may ask for /healthz
    request: {{path: /healthz}}
    expect: {{decision: allow, rule: public-health}}

  - name: alice's real token, verified against the demo issuer's keys
    request: {{path: /user/profile}}
    credentials: {{token: tokens/alice.jwt}}
    expect: {{decision: allow, rule: people-read-profile}}
"""


def _write(path: Path, data: str | bytes, *, secret: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)


def _load_key(path: Path) -> pki.PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, pki.PrivateKey)
    return key


def init_demo(directory: Path, *, now: datetime | None = None, days: float = 30) -> None:
    """Write the demo PKI, keys, bundles, tokens and config into ``directory``."""
    now = now or datetime.now(UTC)
    d = directory.resolve()
    root = pki.make_ca("example.org demo root", spiffe_td=DEMO_TD, now=now, days=3650)
    inter = pki.make_ca(
        "example.org demo intermediate", parent=root, spiffe_td=DEMO_TD, now=now, days=365, path_length=0
    )
    _write(d / "bundle/root.pem", root.pem)
    _write(d / "ca/intermediate.pem", inter.pem)
    _write(d / "ca/root.key", root.key_pem, secret=True)
    _write(d / "ca/intermediate.key", inter.key_pem, secret=True)
    for name, sid in WORKLOADS.items():
        leaf = pki.make_leaf(inter, [sid], now=now, days=days, common_name=name)
        _write(d / f"svid/{name}.pem", leaf.pem + inter.pem)
        _write(d / f"svid/{name}.key", leaf.key_pem, secret=True)
    server = pki.make_leaf(
        inter, [BACKEND_ID], dns=["localhost"], ips=["127.0.0.1"], now=now, days=days, common_name="localhost"
    )
    _write(d / "envoy/server.pem", server.pem + inter.pem)
    _write(d / "envoy/server.key", server.key_pem, secret=True)

    jwt_key = pki.new_jwt_key("ES256", kid="jwt-svid-1")
    _write(d / "jwt/jwt-svid.key.json", json.dumps(jwt_key.as_dict(private=True)), secret=True)
    _write(d / f"bundle/{DEMO_TD}.spiffe.json", pki.spiffe_bundle([root.cert], [jwt_key]))
    idp_key = pki.new_jwt_key("RS256", kid="idp-1")
    _write(d / "idp/idp.key.json", json.dumps(idp_key.as_dict(private=True)), secret=True)
    _write(
        d / "idp/jwks.json", json.dumps({"keys": [pki.jwk_public(idp_key, use="sig", alg="RS256")]}, indent=2)
    )
    _write(d / "config.yaml", CONFIG.format(dir=d, backend=BACKEND_ID, issuer=ISSUER))
    _write(d / "policy-tests.yaml", POLICY_TESTS.format(dir=d))
    mint_demo_tokens(d, now=now)


def dpop_proof(key_file: Path, token: str, method: str, url: str, *, now: float | None = None) -> str:
    """A DPoP proof (RFC 9449) for one request, signed by the holder's key in ``key_file`` (a private
    JWK, EC P-256): what a client that holds a DPoP-bound token sends in the ``DPoP`` header."""
    holder = ECKey.import_key(json.loads(key_file.read_text()))
    head = {"typ": "dpop+jwt", "alg": "ES256", "jwk": holder.as_dict(private=False)}
    claims = {
        "jti": secrets.token_urlsafe(16),
        "htm": method.upper(),
        "htu": url,
        "iat": int(time.time() if now is None else now),
        "ath": token_hash(token),
    }
    return jws.serialize_compact(head, json.dumps(claims), holder, algorithms=["ES256"])


def _import_private(path: Path) -> Key:
    data = json.loads(path.read_text())
    return RSAKey.import_key(data) if data.get("kty") == "RSA" else ECKey.import_key(data)


def mint_demo_tokens(directory: Path, *, now: datetime | None = None, hours: float = 12) -> dict[str, Path]:
    """(Re)mint the sample tokens so a demo started later still has valid ones."""
    now = now or datetime.now(UTC)
    d = directory.resolve()
    iat = int(now.timestamp())
    exp = int((now + timedelta(hours=hours)).timestamp())
    idp = _import_private(d / "idp/idp.key.json")
    jwt_key = _import_private(d / "jwt/jwt-svid.key.json")
    stranger = pki.new_jwt_key("RS256", kid="idp-1")  # same kid, different key: a forgery
    user = {
        "iss": ISSUER,
        "aud": "backend-api",
        "sub": "alice",
        "roles": ["reader"],
        "jti": secrets.token_hex(8),
        "sid": "sess-alice-1",
        "device_id": "LAPTOP-7",
        "iat": iat,
        "exp": exp,
    }
    # alice's key, which her DPoP-bound token names (cnf jkt): kept across runs, as a client keeps its own
    holder_file = d / "tokens" / "alice-dpop.key.json"
    if not holder_file.exists():
        _write(holder_file, json.dumps(ECKey.generate_key("P-256").as_dict(private=True)), secret=True)
    holder = ECKey.import_key(json.loads(holder_file.read_text()))
    bound = {**user, "jti": secrets.token_hex(8), "cnf": {"jkt": holder.thumbprint()}}
    tokens = {
        "alice": pki.mint_jwt(idp, user, alg="RS256"),
        "alice-dpop": pki.mint_jwt(idp, bound, alg="RS256"),
        "alice-expired": pki.mint_jwt(idp, {**user, "iat": iat - 7200, "exp": iat - 3600}, alg="RS256"),
        "forged": pki.mint_jwt(stranger, user, alg="RS256"),
        "frontend-jwt-svid": pki.mint_jwt(
            jwt_key, {"sub": WORKLOADS["frontend"], "aud": [BACKEND_ID], "iat": iat, "exp": exp}, alg="ES256"
        ),
    }
    out: dict[str, Path] = {}
    for name, tok in tokens.items():
        p = d / "tokens" / f"{name}.jwt"
        _write(p, tok + "\n", secret=True)
        out[name] = p
    # A CheckRequest (protobuf JSON, as Envoy sends it) for `ext-authz check --request`: alice's profile.
    request = {
        "attributes": {
            "request": {
                "http": {
                    "method": "GET",
                    "path": "/user/profile",
                    "host": "localhost:10444",
                    "scheme": "https",
                    "protocol": "HTTP/2",
                    "headers": {
                        ":method": "GET",
                        ":path": "/user/profile",
                        ":authority": "localhost:10444",
                        "authorization": f"Bearer {tokens['alice']}",
                    },
                }
            },
            "contextExtensions": {"listener": "edge"},
        }
    }
    _write(d / "requests/alice-profile.json", json.dumps(request, indent=2) + "\n", secret=True)
    return out


def leaf_expiry(directory: Path) -> datetime:
    cert = x509.load_pem_x509_certificates((directory / "svid/frontend.pem").read_bytes())[0]
    return cert.not_valid_after_utc
