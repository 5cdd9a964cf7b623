"""The pure decision pipeline end to end: real certificates, real tokens, the demo policy, pinned time.

``now`` is pinned years away from the wall clock: the demo PKI is issued at NOW, so any code that
read the real clock would find every certificate and token outside its validity window.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from google.protobuf import json_format

from ext_authz._proto.envoy.external_auth_pb2 import CheckRequest
from ext_authz.dev.demo import WORKLOADS, init_demo, leaf_expiry
from ext_authz.envoy.normalize import normalize
from ext_authz.loader import load_engine
from ext_authz.model import Decision, RequestContext, ShadowResult
from ext_authz.pipeline import Caches, Engine, decide
from ext_authz.trust.revision import TrustRevision

NOW = datetime(2033, 3, 1, 12, 0, tzinfo=UTC)
FRONTEND = WORKLOADS["frontend"]
BILLING = WORKLOADS["billing"]
BACKEND = "spiffe://example.org/ns/backend/sa/api"
SHADOW_NOT_MATCHED = (ShadowResult("billing-reads-shadow", "allow", False),)
SHADOW_MATCHED = (ShadowResult("billing-reads-shadow", "allow", True),)


@dataclasses.dataclass(frozen=True)
class Demo:
    dir: Path
    engine: Engine
    tokens: Mapping[str, str]

    def svid(self, workload: str) -> tuple[str, str]:
        """(leaf PEM, leaf + intermediate PEM) of a demo workload."""
        pem = (self.dir / "svid" / f"{workload}.pem").read_text()
        end = pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----\n")
        return pem[:end], pem

    def variant(self, name: str, **changes: Any) -> Engine:
        """The demo config with some top-level keys replaced, loaded from beside the original."""
        cfg = yaml.safe_load((self.dir / "config.yaml").read_text())
        cfg.update(changes)
        path = self.dir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return load_engine(path)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    d = tmp_path_factory.mktemp("pipeline-demo")
    init_demo(d, now=NOW)
    tokens = {p.stem: p.read_text().strip() for p in (d / "tokens").glob("*.jwt")}
    return Demo(d, load_engine(d / "config.yaml"), tokens)


def request(
    demo: Demo,
    path: str = "/api/orders",
    *,
    workload: str | None = None,
    xfcc_chain: bool = True,
    token: str | None = None,
    authorization: str | None = None,
    principal: str | None = None,
    method: str = "GET",
    listener: str = "mesh",
    extra_headers: Mapping[str, str] | None = None,
    body: str = "",
) -> RequestContext:
    """Build the CheckRequest Envoy would send, as JSON, and normalize it."""
    headers = {":method": method, ":path": path, ":authority": "backend.internal", ":scheme": "https"}
    source: dict[str, Any] = {"address": {"socketAddress": {"address": "10.0.0.7", "portValue": 40312}}}
    if workload is not None:
        leaf, full_chain = demo.svid(workload)
        source["certificate"] = quote(leaf, safe="")
        if xfcc_chain:
            headers["x-forwarded-client-cert"] = f'By={BACKEND};Chain="{quote(full_chain, safe="")}"'
    if principal is not None:
        source["principal"] = principal
    if token is not None:
        headers["authorization"] = f"Bearer {demo.tokens[token]}"
    if authorization is not None:
        headers["authorization"] = authorization
    headers.update(extra_headers or {})
    http: dict[str, Any] = {"method": method, "path": path, "host": "backend.internal", "headers": headers}
    if body:
        http["body"] = body
    doc = {
        "attributes": {
            "source": source,
            "request": {"http": http},
            "contextExtensions": {"listener": listener},
        }
    }
    return normalize(json_format.Parse(json.dumps(doc), CheckRequest()))


def run(
    demo: Demo,
    ctx: RequestContext,
    *,
    engine: Engine | None = None,
    caches: Caches | None = None,
    now: datetime = NOW,
) -> Decision:
    return decide(ctx, engine or demo.engine, caches or Caches(), now, "decision-1")


def outcome(d: Decision) -> tuple[bool, int, str, str]:
    return d.allowed, d.status, d.reason, d.rule


# --- workloads (X.509-SVID) -------------------------------------------------------------------------


def test_frontend_svid_with_xfcc_chain_is_allowed(demo: Demo) -> None:
    d = run(demo, request(demo, "/api/orders?page=2", workload="frontend"))

    assert outcome(d) == (True, 200, "allowed", "frontend-reads")
    assert d.decision_id == "decision-1"
    assert d.principal.workload is not None
    assert d.principal.workload.spiffe_id == FRONTEND
    assert d.principal.token is None
    assert d.principal.kinds == ("x509_svid",)
    assert d.shadow == SHADOW_NOT_MATCHED
    assert d.shadow_allowed is True
    assert d.credential_failed == ""


def test_leaf_without_its_intermediate_is_untrusted(demo: Demo) -> None:
    d = run(demo, request(demo, workload="frontend", xfcc_chain=False))

    assert outcome(d) == (False, 401, "cert_untrusted", "")
    assert d.credential_failed == "x509"


def test_frontend_rule_needs_the_mesh_listener(demo: Demo) -> None:
    d = run(demo, request(demo, workload="frontend", listener="edge"))

    assert outcome(d) == (False, 403, "no_rule", "")


def test_frontend_rule_is_for_reads(demo: Demo) -> None:
    d = run(demo, request(demo, workload="frontend", method="POST"))

    assert outcome(d) == (False, 403, "no_rule", "")


def test_billing_gets_no_rule_and_the_shadow_rule_would_allow_it(demo: Demo) -> None:
    d = run(demo, request(demo, workload="billing"))

    assert outcome(d) == (False, 403, "no_rule", "")
    assert d.principal.spiffe_id == BILLING
    assert d.shadow == SHADOW_MATCHED
    assert d.shadow_allowed is True


def test_admin_paths_are_denied_to_everyone(demo: Demo) -> None:
    for workload in ("billing", "frontend"):
        d = run(demo, request(demo, "/admin/users", workload=workload))
        assert outcome(d) == (False, 403, "policy_denied", "no-admin-through-proxy"), workload


def test_source_principal_must_equal_the_certificates_spiffe_id(demo: Demo) -> None:
    mismatch = run(demo, request(demo, workload="frontend", principal=BILLING))
    same = run(demo, request(demo, workload="frontend", principal=FRONTEND))

    assert outcome(mismatch) == (False, 401, "principal_mismatch", "")
    assert mismatch.credential_failed == "x509"
    assert outcome(same) == (True, 200, "allowed", "frontend-reads")


def test_l4_check_carries_only_the_leaf_which_cannot_reach_the_root(demo: Demo) -> None:
    leaf, _ = demo.svid("frontend")
    req = CheckRequest()
    req.attributes.source.certificate = quote(leaf, safe="")

    d = run(demo, normalize(req))

    # no HTTP headers, so no XFCC Chain: the demo leaf is issued by an intermediate
    assert outcome(d) == (False, 401, "cert_untrusted", "")


# --- tokens ---------------------------------------------------------------------------------------------


def test_alice_token_reads_her_profile(demo: Demo) -> None:
    d = run(demo, request(demo, "/user/profile", token="alice"))

    assert outcome(d) == (True, 200, "allowed", "people-read-profile")
    assert d.principal.token is not None
    assert (d.principal.token.kind, d.principal.token.subject) == ("oidc", "alice")
    assert d.principal.workload is None


def test_expired_token_is_401(demo: Demo) -> None:
    d = run(demo, request(demo, "/user/profile", token="alice-expired"))

    assert outcome(d) == (False, 401, "token_expired", "")
    assert d.credential_failed == "token"
    assert not d.principal.authenticated


def test_jwt_svid_reaches_internal_paths(demo: Demo) -> None:
    d = run(demo, request(demo, "/internal/jobs", token="frontend-jwt-svid"))

    assert outcome(d) == (True, 200, "allowed", "workloads-with-jwt-svid")
    assert d.principal.spiffe_id == FRONTEND
    assert d.principal.kinds == ("jwt_svid",)


@pytest.mark.parametrize(
    ("token", "authorization", "reason"),
    [
        ("forged", None, "token_signature"),
        ("alice-expired", None, "token_expired"),
        (None, "Bearer not a token", "token_malformed"),
        (None, "Bearer abc.def", "token_malformed"),
    ],
)
def test_a_bad_token_is_401_even_when_the_svid_alone_would_be_allowed(
    demo: Demo, token: str | None, authorization: str | None, reason: str
) -> None:
    assert run(demo, request(demo, workload="frontend")).allowed

    d = run(demo, request(demo, workload="frontend", token=token, authorization=authorization))

    assert outcome(d) == (False, 401, reason, "")
    assert d.credential_failed == "token"


def test_basic_authorization_is_not_a_credential(demo: Demo) -> None:
    d = run(demo, request(demo, workload="frontend", authorization="Basic dXNlcjpwYXNz"))

    assert outcome(d) == (True, 200, "allowed", "frontend-reads")


# --- anonymous -----------------------------------------------------------------------------------------


def test_no_credential_is_401(demo: Demo) -> None:
    d = run(demo, request(demo))

    assert outcome(d) == (False, 401, "no_credential", "")
    assert d.credential_failed == ""
    assert d.shadow == SHADOW_NOT_MATCHED
    assert d.shadow_allowed is False


def test_anonymous_rule_allows_health_checks(demo: Demo) -> None:
    d = run(demo, request(demo, "/healthz"))

    assert outcome(d) == (True, 200, "allowed", "public-health")
    assert not d.principal.authenticated


def test_anonymous_deny_is_403(demo: Demo) -> None:
    rules = [
        {"name": "public", "anonymous": True},
        {"name": "no-scraping", "effect": "deny", "anonymous": True, "match": {"paths": ["/export/*"]}},
    ]
    engine = demo.variant("anonymous", rules=rules)

    assert outcome(run(demo, request(demo, "/export/all"), engine=engine)) == (
        False,
        403,
        "policy_denied",
        "no-scraping",
    )
    assert outcome(run(demo, request(demo, "/index"), engine=engine)) == (True, 200, "allowed", "public")


# --- both credentials ----------------------------------------------------------------------------------


def test_svid_and_token_together_are_both_visible_to_cel(demo: Demo) -> None:
    when = (
        'identity.x509.spiffe_id == "spiffe://example.org/ns/frontend/sa/web"'
        ' && identity.token.subject == "alice"'
        ' && identity.kinds == ["x509_svid", "oidc"]'
        ' && identity.spiffe_id == "spiffe://example.org/ns/frontend/sa/web"'
        ' && identity.subject == "alice"'
        ' && "reader" in identity.claims.roles'
    )
    engine = demo.variant("both", rules=[{"name": "web-on-behalf-of-alice", "when": when}])

    both = run(demo, request(demo, workload="frontend", token="alice"), engine=engine)
    other_workload = run(demo, request(demo, workload="billing", token="alice"), engine=engine)
    svid_only = run(demo, request(demo, workload="frontend"), engine=engine)

    assert outcome(both) == (True, 200, "allowed", "web-on-behalf-of-alice")
    assert both.principal.workload is not None
    assert both.principal.token is not None
    assert both.principal.workload.spiffe_id == FRONTEND
    assert both.principal.token.subject == "alice"
    assert outcome(other_workload) == (False, 403, "no_rule", "")
    assert outcome(svid_only) == (False, 403, "no_rule", "")


def test_cel_sees_the_request_and_source(demo: Demo) -> None:
    when = (
        'request.method == "GET" && request.path == "/api/orders?x=1"'
        ' && request.host == "backend.internal" && request.context_extensions.listener == "mesh"'
        ' && request.headers[":authority"] == "backend.internal"'
        ' && source.address == "10.0.0.7:40312" && identity.authenticated'
        ' && now == timestamp("2033-03-01T12:00:00Z")'
    )
    engine = demo.variant("request", rules=[{"name": "sees-all", "when": when}])

    d = run(demo, request(demo, "/api/orders?x=1", workload="frontend"), engine=engine)

    assert outcome(d) == (True, 200, "allowed", "sees-all")


# --- mtls.source: principal -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def principal_engine(demo: Demo) -> Engine:
    return demo.variant("principal", mtls={"source": "principal"})


def test_principal_mode_trusts_source_principal_without_a_certificate(
    demo: Demo, principal_engine: Engine
) -> None:
    assert principal_engine.config.mtls.source == "principal"

    d = run(demo, request(demo, principal=FRONTEND), engine=principal_engine)

    assert outcome(d) == (True, 200, "allowed", "frontend-reads")
    assert d.principal.workload is not None
    assert d.principal.workload.spiffe_id == FRONTEND
    assert d.principal.workload.path == "/ns/frontend/sa/web"
    assert run(demo, request(demo, principal=BILLING), engine=principal_engine).reason == "no_rule"


@pytest.mark.parametrize(
    ("principal", "reason"),
    [
        ("spiffe://other.org/ns/frontend/sa/web", "unknown_trust_domain"),
        ("frontend", "cert_not_svid"),
        ("spiffe://example.org", "cert_not_svid"),  # a trust domain, not a workload
    ],
)
def test_principal_mode_refuses_a_principal_it_cannot_trust(
    demo: Demo, principal_engine: Engine, principal: str, reason: str
) -> None:
    d = run(demo, request(demo, principal=principal), engine=principal_engine)

    assert outcome(d) == (False, 401, reason, "")
    assert d.credential_failed == "x509"


def test_principal_mode_without_a_principal_is_no_credential(demo: Demo, principal_engine: Engine) -> None:
    d = run(demo, request(demo, workload="frontend"), engine=principal_engine)

    assert outcome(d) == (False, 401, "no_credential", "")


def test_l4_check_matches_only_rules_without_http_selectors(demo: Demo) -> None:
    rules = [
        {"name": "api", "match": {"paths": ["/api/*"]}},
        {"name": "tcp-listener", "match": {"context_extensions": {"listener": "tcp"}}},
    ]
    engine = demo.variant("l4", mtls={"source": "principal"}, rules=rules)
    req = CheckRequest()
    req.attributes.source.principal = FRONTEND

    req.attributes.context_extensions["listener"] = "mesh"
    on_mesh = run(demo, normalize(req), engine=engine)
    req.attributes.context_extensions["listener"] = "tcp"
    on_tcp = run(demo, normalize(req), engine=engine)

    assert outcome(on_mesh) == (False, 403, "no_rule", "")
    assert outcome(on_tcp) == (True, 200, "allowed", "tcp-listener")
    assert on_tcp.principal.spiffe_id == FRONTEND


# --- caches ---------------------------------------------------------------------------------------------


def test_second_decision_for_the_same_certificate_hits_the_cache(demo: Demo) -> None:
    caches = Caches()
    ctx = request(demo, workload="frontend")

    first = run(demo, ctx, caches=caches)
    second = run(demo, ctx, caches=caches, now=NOW + timedelta(minutes=5))

    assert (caches.x509.misses, caches.x509.hits) == (1, 1)
    assert outcome(first) == outcome(second) == (True, 200, "allowed", "frontend-reads")
    assert second.principal == first.principal


def test_a_new_trust_revision_misses_the_cache(demo: Demo) -> None:
    caches = Caches()
    ctx = request(demo, workload="frontend")
    rotated = dataclasses.replace(
        demo.engine, trust=dataclasses.replace(demo.engine.trust, revision=TrustRevision("rotated"))
    )

    run(demo, ctx, caches=caches)
    d = run(demo, ctx, engine=rotated, caches=caches)

    assert (caches.x509.misses, caches.x509.hits) == (2, 0)
    assert d.allowed


def test_a_new_trust_revision_misses_the_token_cache(demo: Demo) -> None:
    caches = Caches()
    ctx = request(demo, "/user/profile", token="alice")
    rotated = dataclasses.replace(
        demo.engine, trust=dataclasses.replace(demo.engine.trust, revision=TrustRevision("rotated"))
    )

    run(demo, ctx, caches=caches)
    run(demo, ctx, caches=caches)
    d = run(demo, ctx, engine=rotated, caches=caches)

    assert (caches.tokens.misses, caches.tokens.hits) == (2, 1)
    assert d.allowed


def test_a_cached_certificate_does_not_outlive_its_expiry(demo: Demo) -> None:
    caches = Caches()
    ctx = request(demo, workload="frontend")
    expiry = leaf_expiry(demo.dir)

    assert run(demo, ctx, caches=caches).allowed
    assert len(caches.x509) == 1
    d = run(demo, ctx, caches=caches, now=expiry + timedelta(seconds=1))

    assert outcome(d) == (False, 401, "cert_expired", "")
    assert d.credential_failed == "x509"
    assert caches.x509.hits == 0
    assert len(caches.x509) == 0


def test_a_cached_token_does_not_outlive_its_expiry(demo: Demo) -> None:
    caches = Caches()
    ctx = request(demo, "/user/profile", token="alice")

    assert run(demo, ctx, caches=caches).allowed
    assert run(demo, ctx, caches=caches, now=NOW + timedelta(hours=1)).allowed
    assert caches.tokens.hits == 1
    d = run(demo, ctx, caches=caches, now=NOW + timedelta(hours=13))

    assert outcome(d) == (False, 401, "token_expired", "")
    assert caches.tokens.hits == 1


def test_a_cached_token_is_rechecked_when_the_token_settings_change(demo: Demo) -> None:
    # Same trust files, tighter config: the issuer no longer accepts the backend-api audience.
    cfg = yaml.safe_load((demo.dir / "config.yaml").read_text())
    issuers = cfg["issuers"]
    for issuer in issuers.values():
        issuer["audiences"] = ["another-api"]
    tightened = demo.variant("tightened", issuers=issuers)
    assert tightened.trust.revision == demo.engine.trust.revision
    caches = Caches()
    ctx = request(demo, "/user/profile", token="alice")

    assert run(demo, ctx, caches=caches).allowed
    d = run(demo, ctx, engine=tightened, caches=caches)

    assert outcome(d) == (False, 401, "token_audience", "")


def test_failures_are_not_cached(demo: Demo) -> None:
    caches = Caches()
    ctx = request(demo, workload="frontend", xfcc_chain=False)

    run(demo, ctx, caches=caches)
    run(demo, ctx, caches=caches)

    assert (caches.x509.misses, caches.x509.hits, len(caches.x509)) == (2, 0, 0)


def test_a_principal_mismatch_is_refused_even_from_the_cache(demo: Demo) -> None:
    caches = Caches()

    assert run(demo, request(demo, workload="frontend"), caches=caches).allowed
    d = run(demo, request(demo, workload="frontend", principal=BILLING), caches=caches)

    assert caches.x509.hits == 1
    assert d.reason == "principal_mismatch"


# --- limits: refused with a reason before anything in them is parsed further ----------------------


def test_defaults_admit_an_ordinary_request(demo: Demo) -> None:
    d = run(demo, request(demo, workload="frontend", token="alice", extra_headers={"x-a": "b" * 1000}))

    assert d.reason == "allowed"


@pytest.mark.parametrize(
    ("limits", "extra", "reason", "status"),
    [
        ({"max_headers": 8}, {f"x-h{i}": "v" for i in range(8)}, "request_headers_too_large", 431),
        ({"max_header_bytes": 2048}, {"x-big": "v" * 2048}, "request_headers_too_large", 431),
    ],
    ids=["count", "bytes"],
)
def test_too_many_or_too_large_headers_are_431(
    demo: Demo, limits: dict[str, int], extra: dict[str, str], reason: str, status: int
) -> None:
    engine = demo.variant("limits-headers", limits=limits)

    over = run(demo, request(demo, workload="frontend", extra_headers=extra), engine=engine)
    under = run(demo, request(demo, workload="frontend"), engine=engine)

    assert (over.allowed, over.status, over.reason) == (False, status, reason)
    assert under.reason == "allowed"


def test_a_body_over_the_limit_is_413(demo: Demo) -> None:
    engine = demo.variant("limits-body", limits={"max_body_bytes": 10})

    assert outcome(run(demo, request(demo, workload="frontend", body="x" * 11), engine=engine))[:3] == (
        False,
        413,
        "body_too_large",
    )
    assert run(demo, request(demo, workload="frontend", body="x" * 10), engine=engine).allowed


def test_a_token_over_the_limit_is_401_token_too_large(demo: Demo) -> None:
    size = len(demo.tokens["alice"])
    small = demo.variant("limits-token", limits={"max_token_bytes": size - 1})
    exact = demo.variant("limits-token-exact", limits={"max_token_bytes": size})

    d = run(demo, request(demo, "/user/profile", token="alice"), engine=small)

    assert (d.status, d.reason, d.credential_failed) == (401, "token_too_large", "token")
    assert run(demo, request(demo, "/user/profile", token="alice"), engine=exact).allowed


def test_a_chain_longer_than_the_limit_is_401_cert_chain_too_large(demo: Demo) -> None:
    engine = demo.variant("limits-chain", limits={"max_chain_length": 0})  # the demo has one intermediate

    d = run(demo, request(demo, workload="frontend"), engine=engine)

    assert (d.status, d.reason, d.credential_failed) == (401, "cert_chain_too_large", "x509")
    one = demo.variant("limits-chain-1", limits={"max_chain_length": 1})
    assert run(demo, request(demo, workload="frontend"), engine=one).allowed


def test_an_xfcc_header_over_the_chain_byte_limit_is_refused(demo: Demo) -> None:
    engine = demo.variant("limits-chain-bytes", limits={"max_chain_bytes": 1024})

    d = run(demo, request(demo, workload="frontend"), engine=engine)

    assert (d.status, d.reason) == (401, "cert_chain_too_large")
