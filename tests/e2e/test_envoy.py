"""End to end: the real Envoy binary, ext-authz and the demo upstream, real TLS and tokens."""

from __future__ import annotations

import http.client
import json
import re
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ext_authz.dev.stack import Ports, Stack, envoy_binary, render_envoy_config
from tests.conftest import REPO
from tests.waiting import until_sync

pytestmark = pytest.mark.e2e


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: str

    def echo(self) -> dict[str, str]:
        """The headers the upstream received (the demo upstream echoes them)."""
        data: dict[str, str] = json.loads(self.body)["headers"]
        return data


@pytest.fixture(scope="module", params=["grpcio", "native"])
def stack(
    demo_dir: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    """The whole suite runs on both Check transports: grpcio's grpc.aio and pygrpc-native."""
    run = tmp_path_factory.mktemp("run")
    with Stack(demo_dir, REPO / "envoy.yaml", run, Ports.free(), overrides={"transport": request.param}) as s:
        yield s


def request(
    stack: Stack,
    path: str,
    *,
    listener: str = "mesh",
    workload: str | None = "frontend",
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    demo = stack.demo_dir
    ctx = ssl.create_default_context(cafile=str(demo / "bundle/root.pem"))
    if workload is not None:
        ctx.load_cert_chain(demo / f"svid/{workload}.pem", demo / f"svid/{workload}.key")
    port = stack.ports.mesh if listener == "mesh" else stack.ports.edge
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=10)
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    try:
        conn.request("GET", path, headers=hdrs)
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode())
    finally:
        conn.close()


def token(stack: Stack, name: str) -> str:
    return (stack.demo_dir / "tokens" / f"{name}.jwt").read_text().strip()


def test_allowed_workload_reaches_upstream_with_its_identity(stack: Stack) -> None:
    r = request(stack, "/api/orders")
    assert r.status == 200
    echo = r.echo()
    assert echo["x-spiffe-id"] == "spiffe://example.org/ns/frontend/sa/web"
    assert echo["x-ext-authz-identity-kind"] == "x509_svid"
    assert re.fullmatch(r"[0-9a-f]{32}", echo["x-ext-authz-decision-id"])


def test_checks_are_served_over_the_requested_transport(stack: Stack) -> None:
    assert request(stack, "/api/orders").status == 200
    log = stack.log_path("ext-authz").read_text()

    assert f"over {stack.transport} on uvloop (revision" in log  # uvloop: the default event loop


def test_other_workload_is_refused_with_403(stack: Stack) -> None:
    r = request(stack, "/api/orders", workload="billing")
    assert r.status == 403
    assert r.headers["x-ext-authz-reason"] == "no_rule"
    assert json.loads(r.body)["reason"] == "no_rule"


def test_deny_rule_wins(stack: Stack) -> None:
    r = request(stack, "/admin/users")
    assert r.status == 403 and r.headers["x-ext-authz-reason"] == "policy_denied"


def test_forged_identity_headers_never_reach_upstream(stack: Stack) -> None:
    forged = {
        "x-spiffe-id": "spiffe://example.org/ns/admin/sa/root",
        "x-ext-authz-subject": "root",
        "x-ext-authz-issuer": "https://evil.example",
        "x-ext-authz-decision-id": "0" * 32,
    }
    echo = request(stack, "/api/orders", headers=forged).echo()
    assert echo["x-spiffe-id"] == "spiffe://example.org/ns/frontend/sa/web"
    assert "x-ext-authz-subject" not in echo and "x-ext-authz-issuer" not in echo
    assert echo["x-ext-authz-decision-id"] != "0" * 32


def test_forged_xfcc_is_replaced_by_envoy(stack: Stack) -> None:
    echo = request(
        stack, "/api/orders", headers={"x-forwarded-client-cert": "URI=spiffe://example.org/ns/admin"}
    ).echo()
    assert "ns/admin" not in echo["x-forwarded-client-cert"]


def test_no_token_is_401_with_a_challenge(stack: Stack) -> None:
    r = request(stack, "/user/profile", listener="edge", workload=None)
    assert r.status == 401
    assert r.headers["x-ext-authz-reason"] == "no_credential"
    assert r.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("name", "reason"), [("forged", "token_signature"), ("alice-expired", "token_expired")]
)
def test_bad_token_is_401_invalid_token(stack: Stack, name: str, reason: str) -> None:
    r = request(stack, "/user/profile", listener="edge", workload=None, token=token(stack, name))
    assert r.status == 401
    assert r.headers["x-ext-authz-reason"] == reason
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


def test_garbage_bearer_is_401_not_an_error(stack: Stack) -> None:
    r = request(stack, "/user/profile", listener="edge", workload=None, token="a.b.c")
    assert r.status == 401 and r.headers["x-ext-authz-reason"] == "token_malformed"


def test_person_with_valid_token_is_allowed_and_upstream_sees_subject(stack: Stack) -> None:
    r = request(stack, "/user/profile", listener="edge", workload=None, token=token(stack, "alice"))
    assert r.status == 200
    echo = r.echo()
    assert echo["x-ext-authz-subject"] == "alice"
    assert echo["x-ext-authz-issuer"] == "https://idp.example.com"
    assert "x-spiffe-id" not in echo


def test_jwt_svid_bearer_is_allowed(stack: Stack) -> None:
    r = request(
        stack, "/internal/jobs", listener="edge", workload=None, token=token(stack, "frontend-jwt-svid")
    )
    assert r.status == 200
    assert r.echo()["x-spiffe-id"] == "spiffe://example.org/ns/frontend/sa/web"


def test_svid_plus_bad_token_is_401_even_where_the_svid_alone_is_allowed(stack: Stack) -> None:
    r = request(stack, "/api/orders", token=token(stack, "forged"))
    assert r.status == 401 and r.headers["x-ext-authz-reason"] == "token_signature"


def test_anonymous_rule_allows_health_without_credentials(stack: Stack) -> None:
    assert request(stack, "/healthz", listener="edge", workload=None).status == 200


def test_access_log_carries_the_decision_id(stack: Stack) -> None:
    denied = request(stack, "/api/orders?probe=1", workload="billing")
    did = denied.headers["x-ext-authz-decision-id"]
    allowed = request(stack, "/api/orders?probe=2").echo()["x-ext-authz-decision-id"]

    def access_log() -> str:
        return stack.log_path("envoy").read_text()

    until_sync(
        lambda: did in access_log() and allowed in access_log(), "both decisions in Envoy's access log"
    )
    log = access_log()
    lines = [ln for ln in log.splitlines() if f"decision_id={did}" in ln]
    assert lines, f"no access log line with decision_id={did}:\n{log[-2000:]}"
    line = lines[0]
    assert " 403 " in line and "reason=no_rule" in line
    assert any(f"decision_id={allowed}" in ln and " 200 " in ln for ln in log.splitlines())

    def logged_ids() -> set[str]:  # ext-authz writes its decision log from a background thread
        text = stack.log_path("decisions").read_text()
        complete = text[: text.rfind("\n") + 1]  # not a line still being written
        return {json.loads(x)["decision_id"] for x in complete.splitlines() if x.startswith("{")}

    until_sync(lambda: {did, allowed} <= logged_ids(), "both decisions in ext-authz's decision log")


def test_envoy_yaml_validates(demo_dir: Path, tmp_path: Path) -> None:
    cfg = render_envoy_config(REPO / "envoy.yaml", demo_dir, Ports(), tmp_path / "envoy.json")
    res = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "OK" in res.stdout + res.stderr


def test_underscore_lookalike_of_an_identity_header_is_rejected(stack: Stack) -> None:
    r = request(
        stack, "/healthz", listener="edge", workload=None, headers={"x_spiffe_id": "spiffe://example.org/x"}
    )
    assert r.status == 400


def test_deny_rule_holds_for_anonymous_callers(stack: Stack) -> None:
    r = request(stack, "/admin/users", listener="edge", workload=None)
    assert r.status == 403 and r.headers["x-ext-authz-reason"] == "policy_denied"


def test_workload_revoked_from_the_cli_is_refused_on_its_next_request(stack: Stack) -> None:
    cli = [sys.executable, "-m", "ext_authz.cli"]
    assert request(stack, "/api/orders").status == 200
    res = subprocess.run(
        [
            *cli,
            "revoke",
            "spiffe://example.org/ns/frontend/sa/web",
            "--reason",
            "e2e",
            "-c",
            str(stack.config_path),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    rid = json.loads(res.stdout)["revocation"]["id"]
    try:
        r = request(stack, "/api/orders")
        assert r.status == 403 and r.headers["x-ext-authz-reason"] == "revoked"
    finally:
        subprocess.run(
            [*cli, "unrevoke", rid, "--reason", "rotated", "-c", str(stack.config_path)],
            timeout=60,
            check=True,
        )
    assert request(stack, "/api/orders").status == 200


def test_no_secret_reaches_any_log(stack: Stack) -> None:
    """After everything above: neither ext-authz's nor Envoy's log holds a token, cookie or key."""
    request(
        stack,
        "/user/profile?api_key=qs3cr3t",
        listener="edge",
        workload=None,
        token=token(stack, "alice"),
        headers={"cookie": "session=c00kie-value", "x-api-key": "apikey-123456"},
    )
    until_sync(  # the access log and the background decision-log writer have flushed this request
        lambda: (
            "/user/profile" in stack.log_path("envoy").read_text().splitlines()[-1]
            and '"path":"/user/profile"' in stack.log_path("decisions").read_text()
        ),
        "both logs hold the last request",
    )
    logs = "".join(stack.log_path(n).read_text() for n in ("ext-authz", "decisions", "envoy"))
    secrets = [token(stack, n) for n in ("alice", "alice-expired", "forged", "frontend-jwt-svid")]
    secrets += [t.split(".")[2] for t in secrets]  # signatures alone
    secrets += ["qs3cr3t", "c00kie-value", "apikey-123456"]
    for key in (stack.demo_dir / "svid").glob("*.key"):
        secrets.append(key.read_text().splitlines()[1])  # a line of private key material
    for s in secrets:
        assert s not in logs, s[:20]


def test_a_dpop_bound_token_needs_its_proof_through_envoy(stack: Stack) -> None:
    """A client that signs DPoP proofs (RFC 9449) gets in; the same token copied without the key, or a
    proof replayed, does not."""
    import time
    import uuid

    from joserfc import jws
    from joserfc.jwk import ECKey, RSAKey

    from ext_authz.dev.pki import mint_jwt
    from ext_authz.identity.dpop import token_hash

    holder = ECKey.generate_key("P-256")
    idp = RSAKey.import_key(json.loads((stack.demo_dir / "idp/idp.key.json").read_text()))
    now = int(time.time())
    claims = {
        "iss": "https://idp.example.com",
        "aud": "backend-api",
        "sub": "alice",
        "roles": ["reader"],
        "jti": uuid.uuid4().hex,
        "iat": now,
        "exp": now + 600,
        "cnf": {"jkt": holder.thumbprint()},
    }
    tok = mint_jwt(idp, claims, alg="RS256")
    url = f"https://localhost:{stack.ports.edge}/user/profile"

    def proof() -> str:
        head = {"typ": "dpop+jwt", "alg": "ES256", "jwk": holder.as_dict(private=False)}
        body = {
            "jti": uuid.uuid4().hex,
            "htm": "GET",
            "htu": url,
            "iat": int(time.time()),
            "ath": token_hash(tok),
        }
        return jws.serialize_compact(head, json.dumps(body), holder, algorithms=["ES256"])

    def get(headers: dict[str, str]) -> Reply:
        return request(stack, "/user/profile", listener="edge", workload=None, headers=headers)

    one = proof()
    ok = get({"Authorization": f"DPoP {tok}", "DPoP": one})
    assert ok.status == 200, ok.body
    assert ok.echo()["x-ext-authz-subject"] == "alice"
    stolen = get({"Authorization": f"Bearer {tok}"})  # the token alone, as a thief has it
    assert stolen.status == 401 and stolen.headers["x-ext-authz-reason"] == "token_binding"
    replayed = get({"Authorization": f"DPoP {tok}", "DPoP": one})
    assert replayed.status == 401 and replayed.headers["x-ext-authz-reason"] == "dpop_proof"
    assert replayed.headers["www-authenticate"].startswith('DPoP error="invalid_dpop_proof"')
