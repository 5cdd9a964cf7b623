"""Continuous trust in the pure pipeline: revocations, quarantine, grants, exceptions, signals, ages.

Real demo certificates and tokens, the demo policy plus a few rules that read ``grants`` and
``signals``, and state passed in as a StateSnapshot. ``now`` is pinned: the demo PKI is issued at NOW.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from joserfc.jwk import ECKey, RSAKey

from ext_authz.dev.demo import WORKLOADS, init_demo
from ext_authz.dev.pki import jwk_public, mint_jwt, new_jwt_key
from ext_authz.envoy.normalize import normalize
from ext_authz.envoy.render import render
from ext_authz.loader import load_engine
from ext_authz.model import CountDenial, Decision, NewSession, RequestContext
from ext_authz.pipeline import Caches, Engine, decide, identity_for_cel
from ext_authz.state.commands import InvalidArgument, revocation_value
from ext_authz.state.records import ExceptionGrant, Grant, Revocation, Scope, Signal
from ext_authz.state.snapshot import StateSnapshot
from tests import factories
from tests.component.checkreq import check_request

NOW = datetime(2033, 3, 1, 12, 0, tzinfo=UTC)
TS = NOW.timestamp()
FRONTEND = WORKLOADS["frontend"]
BILLING = WORKLOADS["billing"]
BACKEND = "spiffe://example.org/ns/backend/sa/api"
ISSUER = "https://idp.example.com"
ALICE = f"{ISSUER}#alice"  # a user, named as state names users: ISSUER#SUBJECT
PARTNER = "https://partner.example.com"
PARTNER_ALICE = f"{PARTNER}#alice"
EMPTY = StateSnapshot()

EXTRA_RULES: list[dict[str, Any]] = [
    {
        "name": "fragile-deny",  # its condition cannot be evaluated: a policy_error denial
        "effect": "deny",
        "match": {"paths": ["/fragile/*"]},
        "when": 'identity.claims.no_such_claim == "x"',
    },
    {
        "name": "incident-grant",
        "match": {"paths": ["/incident/*"]},
        "when": 'grants.exists(g, g.reason == "INC-42" && g.approver == "bob")',
    },
    {
        "name": "compliant-devices",
        "match": {"paths": ["/secure/*"]},
        "when": 'has(signals.device.posture) && signals.device.posture == "compliant"',
    },
    {
        "name": "low-risk-workloads",
        "match": {"paths": ["/batch/*"]},
        "when": 'has(signals.workload.risk) && signals.workload.risk == "low"',
    },
    {
        "name": "payments-step-up",  # RFC 9470: a strong and recent authentication, or a challenge
        "match": {"paths": ["/payments/*"]},
        "when": 'identity.issuer == "https://idp.example.com"',
        "step_up": {"acr_values": ["urn:example:mfa", "phr"], "max_age": "5m"},
    },
    {
        "name": "trained-users",
        "match": {"paths": ["/training/*"]},
        "when": 'has(signals.user.training) && signals.user.training == "done"',
    },
]


@dataclasses.dataclass(frozen=True)
class Trust:
    dir: Path
    engine: Engine  # demo policy + EXTRA_RULES, device id from the token claim or x-device-id
    aged: Engine  # the same with max_token_age 5m and max_session_age 10m
    hw_claim: Engine  # the same with the device id in the token claim hw_id
    two_issuers: Engine  # the same with a second issuer (PARTNER), whose users may also be called alice
    quarantined: Engine  # the same with quarantine on (attribution: user)
    by_workload: Engine  # quarantine with attribution: workload
    exceptable: Engine  # every deny rule says `exceptable: true`
    idp: RSAKey
    partner: RSAKey
    svid_key: ECKey
    cert_sha256: str
    cert_serial_issuer: str
    leaf: x509.Certificate

    def partner_token(self, **changes: Any) -> str:
        """A token for *another* alice, from the partner IdP."""
        claims = {
            "iss": PARTNER,
            "aud": "backend-api",
            "sub": "alice",
            "roles": ["reader"],
            "sid": "sess-alice-1",
            "jti": "jti-alice-1",
            "iat": int(TS),
            "exp": int(TS) + 3600,
            **changes,
        }
        return mint_jwt(self.partner, claims, alg="RS256")

    def token(self, **changes: Any) -> str:
        """A token for alice from the demo IdP; a change to None removes that claim."""
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": "backend-api",
            "sub": "alice",
            "roles": ["reader"],
            "jti": "jti-alice-1",
            "sid": "sess-alice-1",
            "device_id": "LAPTOP-7",
            "iat": int(TS),
            "exp": int(TS) + 12 * 3600,
        }
        claims.update(changes)
        return mint_jwt(self.idp, {k: v for k, v in claims.items() if v is not None}, alg="RS256")

    def svid_token(self, sub: str = FRONTEND, **changes: Any) -> str:
        claims = {"sub": sub, "aud": [BACKEND], "iat": int(TS), "exp": int(TS) + 3600, **changes}
        return mint_jwt(self.svid_key, {k: v for k, v in claims.items() if v is not None}, alg="ES256")

    def ctx(self, path: str = "/api/orders", **kw: Any) -> RequestContext:
        return normalize(check_request(self.dir, path=path, **kw))


def variant(directory: Path, name: str, *, exceptable: bool = False, **changes: Any) -> Engine:
    cfg = yaml.safe_load((directory / "config.yaml").read_text())
    cfg["rules"] = [*cfg["rules"], *EXTRA_RULES]
    if exceptable:
        cfg["rules"] = [{**r, "exceptable": True} if r.get("effect") == "deny" else r for r in cfg["rules"]]
    cfg.update(changes)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return load_engine(path)


@pytest.fixture(scope="module")
def trust(tmp_path_factory: pytest.TempPathFactory) -> Trust:
    d = tmp_path_factory.mktemp("trust-demo")
    init_demo(d, now=NOW)
    leaf = x509.load_pem_x509_certificates((d / "svid/frontend.pem").read_bytes())[0]
    device = {"header": "x-device-id"}
    partner = new_jwt_key("RS256", kid="partner-1")
    (d / "partner-jwks.json").write_text(json.dumps({"keys": [jwk_public(partner, use="sig", alg="RS256")]}))
    base = yaml.safe_load((d / "config.yaml").read_text())
    issuers = {
        **base["issuers"],
        PARTNER: {"jwks": "partner-jwks.json", "audiences": ["backend-api"], "algorithms": ["RS256"]},
    }
    quarantine = {"denials": 3, "window": "60s", "duration": "15m"}
    return Trust(
        dir=d,
        engine=variant(d, "trust", device=device),
        aged=variant(d, "aged", device=device, max_token_age="5m", max_session_age="10m"),
        hw_claim=variant(d, "hw", device={"claim": "hw_id"}),
        two_issuers=variant(d, "two", device=device, issuers=issuers),
        quarantined=variant(d, "q", quarantine=quarantine),
        by_workload=variant(d, "qw", quarantine={**quarantine, "attribution": "workload"}),
        exceptable=variant(d, "exceptable", exceptable=True, device=device),
        idp=RSAKey.import_key(json.loads((d / "idp/idp.key.json").read_text())),
        partner=partner,  # type: ignore[arg-type]
        svid_key=ECKey.import_key(json.loads((d / "jwt/jwt-svid.key.json").read_text())),
        cert_sha256=leaf.fingerprint(hashes.SHA256()).hex(),
        # As state holds it: what an operator typed, canonicalised by the revoke command.
        cert_serial_issuer=revocation_value("cert", f"{leaf.serial_number:X}@{leaf.issuer.rfc4514_string()}")[
            1
        ],
        leaf=leaf,
    )


def check(
    t: Trust,
    ctx: RequestContext,
    state: StateSnapshot = EMPTY,
    *,
    at: datetime = NOW,
    engine: Engine | None = None,
) -> Decision:
    return decide(ctx, engine or t.engine, Caches(), at, "decision-1", state)


def outcome(d: Decision) -> tuple[bool, int, str]:
    return d.allowed, d.status, d.reason


ALLOWED = (True, 200, "allowed")
NO_RULE = (False, 403, "no_rule")


def revocation(
    kind: str, value: str, rid: str = "rev_1", *, expires_at: float | None = None, source: str = "api"
) -> Revocation:
    return factories.revocation(rid, kind, value, created_at=TS - 60, expires_at=expires_at, source=source)


def revoked(*revs: Revocation) -> StateSnapshot:
    return StateSnapshot.build(1, revocations=revs)


def grant(
    principal: str = FRONTEND,
    scope: Scope = Scope(paths=("/reports/*",), methods=("GET",)),  # noqa: B008 - frozen value
    gid: str = "grt_1",
    *,
    not_before: float = TS - 60,
    not_after: float = TS + 3600,
    ended_at: float | None = None,
    reason: str = "INC-42",
    pending: bool = False,
) -> Grant:
    return factories.grant(
        gid, principal, scope, created_at=TS - 60, not_before=not_before, not_after=not_after,
        ended_at=ended_at, reason=reason, pending=pending,
    )  # fmt: skip


def exception(
    principal: str = FRONTEND,
    paths: tuple[str, ...] = ("/payroll/*",),
    eid: str = "exc_1",
    *,
    opened_at: float = TS - 60,
    expires_at: float = TS + 600,
    closed_at: float | None = None,
    pending: bool = False,
) -> ExceptionGrant:
    return factories.exception(
        eid,
        principal,
        paths,
        opened_at=opened_at,
        expires_at=expires_at,
        closed_at=closed_at,
        pending=pending,
    )


def signal(kind: str, subject: str, key: str, value: str, *, expires_at: float = TS + 300) -> Signal:
    return factories.signal(kind, subject, key, value, set_at=TS - 10, expires_at=expires_at)


# --- revocations ----------------------------------------------------------------------------------

REVOCATION_CASES = [
    "spiffe_id-x509",
    "spiffe_id-jwt_svid",
    "cert-sha256",
    "cert-serial@issuer",
    "jti",
    "sub",
    "sid",
    "device-claim",
    "device-header",
]


def revocation_case(t: Trust, case: str) -> tuple[RequestContext, str, str]:
    """(a request the demo policy allows, the kind and the value that revoke it)."""
    frontend = t.ctx(workload="frontend")
    alice = t.ctx("/user/me", token=t.token())
    cases = {
        "spiffe_id-x509": (frontend, "spiffe_id", FRONTEND),
        "spiffe_id-jwt_svid": (t.ctx("/internal/jobs", token=t.svid_token()), "spiffe_id", FRONTEND),
        "cert-sha256": (frontend, "cert", t.cert_sha256),
        "cert-serial@issuer": (frontend, "cert", t.cert_serial_issuer),
        "jti": (alice, "jti", f"{ISSUER}#jti-alice-1"),
        "sub": (alice, "sub", ALICE),
        "sid": (alice, "sid", f"{ISSUER}#sess-alice-1"),
        "device-claim": (alice, "device", "LAPTOP-7"),
        "device-header": (
            t.ctx(workload="frontend", headers={"x-device-id": "KIOSK-3"}),
            "device",
            "KIOSK-3",
        ),
    }
    return cases[case]


@pytest.mark.parametrize("case", REVOCATION_CASES)
def test_each_revocation_kind_refuses_the_next_request(trust: Trust, case: str) -> None:
    ctx, kind, value = revocation_case(trust, case)
    assert outcome(check(trust, ctx)) == ALLOWED

    d = check(trust, ctx, revoked(revocation(kind, value, "rev_42")))
    assert outcome(d) == (False, 403, "revoked")
    assert (d.revocation_kind, d.revocation_id) == (kind, "rev_42")
    assert d.credential_failed == ""
    assert "ops@example.org" in d.detail
    assert "credential leaked" in d.detail
    assert d.principal.authenticated


def test_revocations_of_other_values_or_kinds_change_nothing(trust: Trust) -> None:
    state = revoked(
        revocation("spiffe_id", BILLING, "r1"),
        revocation("sub", FRONTEND, "r2"),  # the right value under the wrong kind
        revocation("jti", f"{ISSUER}#alice", "r3"),
        revocation("sid", f"{ISSUER}#sess-alice-2", "r4"),
        revocation("device", "LAPTOP-8", "r5"),
        revocation("cert", "00" * 32, "r6"),
        revocation("sub", f"{ISSUER}#bob", "r7"),
        revocation("sub", "alice", "r8"),  # a bare subject names nobody
        revocation("jti", "jti-alice-1", "r9"),  # nor does a bare jti
        revocation("sid", "https://other.example.com#sess-alice-1", "r10"),  # another issuer's session
    )
    assert outcome(check(trust, trust.ctx(workload="frontend"), state)) == ALLOWED
    assert outcome(check(trust, trust.ctx("/user/me", token=trust.token()), state)) == ALLOWED


def test_a_revoked_device_header_refuses_even_an_anonymous_caller(trust: Trust) -> None:
    health = trust.ctx("/healthz", headers={"x-device-id": "KIOSK-3"})
    assert outcome(check(trust, health)) == ALLOWED
    d = check(trust, health, revoked(revocation("device", "KIOSK-3")))
    assert outcome(d) == (False, 403, "revoked")
    assert d.revocation_kind == "device"


def test_the_device_claim_wins_over_the_header(trust: Trust) -> None:
    ctx = trust.ctx("/user/me", token=trust.token(), headers={"x-device-id": "KIOSK-3"})
    assert outcome(check(trust, ctx, revoked(revocation("device", "KIOSK-3")))) == ALLOWED
    assert outcome(check(trust, ctx, revoked(revocation("device", "LAPTOP-7"))))[2] == "revoked"


def test_the_device_claim_is_configurable(trust: Trust) -> None:
    ctx = trust.ctx("/user/me", token=trust.token(hw_id="LAPTOP-9"))
    by_hw = revoked(revocation("device", "LAPTOP-9"))
    by_default_claim = revoked(revocation("device", "LAPTOP-7"))
    assert outcome(check(trust, ctx, by_hw, engine=trust.hw_claim))[2] == "revoked"
    assert outcome(check(trust, ctx, by_default_claim, engine=trust.hw_claim)) == ALLOWED
    assert outcome(check(trust, ctx, by_hw)) == ALLOWED  # the default claim is device_id


@pytest.mark.parametrize("case", ["spiffe_id-x509", "jti", "device-header"])
def test_an_expired_revocation_allows_again(trust: Trust, case: str) -> None:
    ctx, kind, value = revocation_case(trust, case)
    state = revoked(revocation(kind, value, expires_at=TS + 60))
    assert outcome(check(trust, ctx, state))[2] == "revoked"
    assert outcome(check(trust, ctx, state, at=NOW + timedelta(seconds=59)))[2] == "revoked"
    assert outcome(check(trust, ctx, state, at=NOW + timedelta(seconds=60))) == ALLOWED


# --- quarantine -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "key"),
    [("x509", FRONTEND), ("jwt_svid", FRONTEND), ("oidc", ALICE)],
)
def test_a_quarantined_identity_is_refused_and_says_so(trust: Trust, who: str, key: str) -> None:
    ctx = {
        "x509": trust.ctx(workload="frontend"),
        "jwt_svid": trust.ctx("/internal/jobs", token=trust.svid_token()),
        "oidc": trust.ctx("/user/me", token=trust.token()),
    }[who]
    q = revocation("quarantine", key, "qtn_1", expires_at=TS + 900, source="quarantine")
    d = check(trust, ctx, revoked(q))
    assert outcome(d) == (False, 403, "quarantined")
    assert (d.revocation_kind, d.revocation_id) == ("quarantine", "qtn_1")
    assert outcome(check(trust, ctx, revoked(q), at=NOW + timedelta(seconds=900))) == ALLOWED  # lifted


def test_a_quarantine_holds_only_its_identity(trust: Trust) -> None:
    state = revoked(revocation("quarantine", ALICE, expires_at=TS + 900, source="quarantine"))
    assert outcome(check(trust, trust.ctx(workload="frontend"), state)) == ALLOWED
    state = revoked(revocation("quarantine", BILLING, expires_at=TS + 900, source="quarantine"))
    assert outcome(check(trust, trust.ctx("/user/me", token=trust.token()), state)) == ALLOWED


# --- just-in-time grants --------------------------------------------------------------------------


def with_grants(*grants: Grant) -> StateSnapshot:
    return StateSnapshot.build(1, grants=grants)


def test_a_covering_grant_allows(trust: Trust) -> None:
    ctx = trust.ctx("/reports/q1", workload="frontend")
    assert outcome(check(trust, ctx)) == NO_RULE
    d = check(trust, ctx, with_grants(grant()))
    assert outcome(d) == ALLOWED
    assert d.rule == "granted-reports"  # the demo's rule
    assert d.grant_ids == ("grt_1",)


def test_a_grant_to_a_subject_covers_that_user(trust: Trust) -> None:
    user = trust.ctx("/reports/q1", token=trust.token())
    workload = trust.ctx("/reports/q1", workload="frontend")
    state = with_grants(grant(ALICE))
    assert outcome(check(trust, user, state)) == ALLOWED
    assert check(trust, user, state).grant_ids == ("grt_1",)
    assert outcome(check(trust, workload, state)) == NO_RULE


@pytest.mark.parametrize(
    ("scope", "method", "path"),
    [
        (Scope(paths=("/reports/*",), methods=("GET",)), "POST", "/reports/q1"),
        (Scope(paths=("/reports/2033/*",)), "GET", "/reports/2032/q1"),
        (Scope(hosts=("other.internal",), paths=("/reports/*",)), "GET", "/reports/q1"),
    ],
    ids=["method", "path", "host"],
)
def test_a_grant_outside_its_scope_does_not_allow(trust: Trust, scope: Scope, method: str, path: str) -> None:
    ctx = trust.ctx(path, workload="frontend", method=method)
    d = check(trust, ctx, with_grants(grant(scope=scope)))
    assert outcome(d) == NO_RULE
    assert d.grant_ids == ()


def test_a_grant_with_a_matching_host_allows(trust: Trust) -> None:
    scope = Scope(hosts=("*.internal",), paths=("/reports/*",))
    ctx = trust.ctx("/reports/q1", workload="frontend")
    assert outcome(check(trust, ctx, with_grants(grant(scope=scope)))) == ALLOWED


@pytest.mark.parametrize(
    "inactive",
    [
        grant(ended_at=TS - 1),
        grant(not_after=TS),
        grant(not_before=TS + 1),
        grant(BILLING),
    ],
    ids=["ended", "expired", "not-yet", "someone-else"],
)
def test_an_inactive_or_foreign_grant_does_not_allow(trust: Trust, inactive: Grant) -> None:
    d = check(trust, trust.ctx("/reports/q1", workload="frontend"), with_grants(inactive))
    assert outcome(d) == NO_RULE
    assert d.grant_ids == ()


def test_a_grant_expires_by_itself(trust: Trust) -> None:
    ctx = trust.ctx("/reports/q1", workload="frontend")
    state = with_grants(grant(not_after=TS + 3600))
    assert outcome(check(trust, ctx, state, at=NOW + timedelta(seconds=3599))) == ALLOWED
    assert outcome(check(trust, ctx, state, at=NOW + timedelta(seconds=3600))) == NO_RULE


def test_cel_sees_the_grant_fields(trust: Trust) -> None:
    ctx = trust.ctx("/incident/42", workload="frontend")
    scope = Scope(paths=("/incident/*",))
    assert outcome(check(trust, ctx, with_grants(grant(scope=scope)))) == ALLOWED
    other = with_grants(grant(scope=scope, reason="INC-7"))
    assert outcome(check(trust, ctx, other)) == NO_RULE


def test_covering_grants_are_reported_whichever_rule_allows(trust: Trust) -> None:
    state = with_grants(
        grant(scope=Scope(paths=("/api/*",)), gid="grt_api"),
        grant(scope=Scope(paths=("/reports/*",)), gid="grt_reports"),
    )
    d = check(trust, trust.ctx("/api/orders", workload="frontend"), state)
    assert outcome(d) == ALLOWED
    assert d.rule == "frontend-reads"
    assert d.grant_ids == ("grt_api",)


def test_a_grant_never_lifts_a_revocation(trust: Trust) -> None:
    state = StateSnapshot.build(1, revocations=[revocation("spiffe_id", FRONTEND)], grants=[grant()])
    assert outcome(check(trust, trust.ctx("/reports/q1", workload="frontend"), state))[2] == "revoked"


# --- exceptions (break-glass) ---------------------------------------------------------------------


def with_exceptions(*exceptions: ExceptionGrant, revocations: tuple[Revocation, ...] = ()) -> StateSnapshot:
    return StateSnapshot.build(1, revocations=revocations, exceptions=exceptions)


def test_an_exception_allows_what_no_rule_allowed(trust: Trust) -> None:
    ctx = trust.ctx("/payroll/run", workload="frontend")
    assert outcome(check(trust, ctx)) == NO_RULE
    d = check(trust, ctx, with_exceptions(exception(paths=("/payroll/run",))))
    assert outcome(d) == (True, 200, "exception")
    assert d.exception_id == "exc_1"


@pytest.mark.parametrize(
    ("path", "denied_as"), [("/admin/users", "policy_denied"), ("/fragile/x", "policy_error")]
)
def test_an_exception_never_overrides_a_deny_rule_unless_it_is_exceptable(
    trust: Trust, path: str, denied_as: str
) -> None:
    """Break-glass opens what policy did not foresee; it does not open what a rule explicitly closes
    (`/admin/*` closed to everyone) unless that rule says `exceptable: true`."""
    ctx = trust.ctx(path, workload="frontend")
    state = with_exceptions(exception(paths=(path,)))
    d = check(trust, ctx, state)
    assert outcome(d) == (False, 403, denied_as) and d.exception_id == ""
    d = check(trust, ctx, state, engine=trust.exceptable)
    assert outcome(d) == (True, 200, "exception") and d.exception_id == "exc_1"


def test_a_pending_exception_or_grant_has_no_effect(trust: Trust) -> None:
    ctx = trust.ctx("/payroll/run", workload="frontend")
    assert (
        outcome(check(trust, ctx, with_exceptions(exception(paths=("/payroll/run",), pending=True))))
        == NO_RULE
    )
    incident = trust.ctx("/incident/x", workload="frontend")
    pending = StateSnapshot.build(1, grants=[grant(scope=Scope(paths=("/incident/*",)), pending=True)])
    d = check(trust, incident, pending)
    assert outcome(d) == NO_RULE and d.grant_ids == ()
    approved = StateSnapshot.build(1, grants=[grant(scope=Scope(paths=("/incident/*",)))])
    assert outcome(check(trust, incident, approved))[0] is True


def test_an_exception_for_a_user(trust: Trust) -> None:
    user = trust.ctx("/payroll/run", token=trust.token())
    d = check(trust, user, with_exceptions(exception(ALICE)))
    assert outcome(d) == (True, 200, "exception")
    assert d.exception_id == "exc_1"
    assert (
        outcome(
            check(trust, trust.ctx("/payroll/run", workload="frontend"), with_exceptions(exception(ALICE)))
        )
        == NO_RULE
    )


def test_an_allowed_request_is_not_marked_with_an_exception(trust: Trust) -> None:
    d = check(trust, trust.ctx(workload="frontend"), with_exceptions(exception(paths=("/api/*",))))
    assert outcome(d) == ALLOWED
    assert d.exception_id == ""


@pytest.mark.parametrize(
    "inactive",
    [
        exception(paths=("/other/*",)),
        exception(closed_at=TS - 1),
        exception(expires_at=TS),
        exception(opened_at=TS + 1),
        exception(BILLING),
    ],
    ids=["other-path", "closed", "expired", "not-yet", "someone-else"],
)
def test_an_exception_that_does_not_apply_changes_nothing(trust: Trust, inactive: ExceptionGrant) -> None:
    d = check(trust, trust.ctx("/payroll/run", workload="frontend"), with_exceptions(inactive))
    assert outcome(d) == NO_RULE
    assert d.exception_id == ""


@pytest.mark.parametrize(
    ("kind", "reason"), [("spiffe_id", "revoked"), ("cert", "revoked"), ("quarantine", "quarantined")]
)
def test_an_exception_never_overrides_a_revocation(trust: Trust, kind: str, reason: str) -> None:
    value = trust.cert_sha256 if kind == "cert" else FRONTEND
    state = with_exceptions(exception(), revocations=(revocation(kind, value),))
    d = check(trust, trust.ctx("/payroll/run", workload="frontend"), state)
    assert outcome(d) == (False, 403, reason)
    assert d.exception_id == ""


def test_an_exception_never_overrides_a_401(trust: Trust) -> None:
    state = with_exceptions(exception(ALICE), exception(FRONTEND, eid="exc_2"))
    forged = trust.ctx("/payroll/run", token=(trust.dir / "tokens/forged.jwt").read_text().strip())
    wrong_audience = trust.ctx("/payroll/run", token=trust.token(aud="someone-else"))
    expired = trust.ctx("/payroll/run", token=trust.token(exp=int(TS) - 3600, iat=int(TS) - 7200))
    too_old = trust.ctx("/payroll/run", token=trust.token(iat=int(TS) - 3600))
    anonymous = trust.ctx("/payroll/run")
    good_cert_bad_token = trust.ctx("/payroll/run", workload="frontend", token=trust.token(aud="x"))
    assert outcome(check(trust, forged, state)) == (False, 401, "token_signature")
    assert outcome(check(trust, wrong_audience, state)) == (False, 401, "token_audience")
    assert outcome(check(trust, expired, state)) == (False, 401, "token_expired")
    assert outcome(check(trust, too_old, state, engine=trust.aged)) == (False, 401, "token_too_old")
    assert outcome(check(trust, anonymous, state)) == (False, 401, "no_credential")
    assert outcome(check(trust, good_cert_bad_token, state)) == (False, 401, "token_audience")
    for ctx in (forged, wrong_audience, expired, anonymous):
        assert check(trust, ctx, state).exception_id == ""


# --- signals --------------------------------------------------------------------------------------


def with_signals(*signals: Signal) -> StateSnapshot:
    return StateSnapshot.build(1, signals=signals)


def test_a_fresh_device_signal_is_visible_to_cel(trust: Trust) -> None:
    ctx = trust.ctx("/secure/vault", token=trust.token())
    assert outcome(check(trust, ctx)) == NO_RULE
    d = check(trust, ctx, with_signals(signal("device", "LAPTOP-7", "posture", "compliant")))
    assert outcome(d) == ALLOWED
    assert d.rule == "compliant-devices"
    assert d.signals_read == ("device.posture",)  # what the decision was given: keys, never values


def test_a_decision_records_the_signal_keys_it_read_even_when_it_denies(trust: Trust) -> None:
    ctx = trust.ctx("/secure/vault", token=trust.token())
    state = with_signals(
        signal("device", "LAPTOP-7", "posture", "noncompliant"),
        signal("user", ALICE, "training", "due"),
        signal("device", "LAPTOP-7", "stale", "x", expires_at=TS - 1),
    )
    d = check(trust, ctx, state)
    assert outcome(d) == NO_RULE
    assert d.signals_read == ("device.posture", "user.training")


def test_a_stale_signal_is_absent(trust: Trust) -> None:
    ctx = trust.ctx("/secure/vault", token=trust.token())
    state = with_signals(signal("device", "LAPTOP-7", "posture", "compliant", expires_at=TS + 60))
    assert outcome(check(trust, ctx, state, at=NOW + timedelta(seconds=59))) == ALLOWED
    assert outcome(check(trust, ctx, state, at=NOW + timedelta(seconds=60))) == NO_RULE


@pytest.mark.parametrize(
    "sig",
    [
        signal("device", "LAPTOP-7", "posture", "noncompliant"),
        signal("device", "LAPTOP-8", "posture", "compliant"),
        signal("user", "LAPTOP-7", "posture", "compliant"),
    ],
    ids=["other-value", "other-device", "other-subject-kind"],
)
def test_a_signal_about_something_else_does_not_count(trust: Trust, sig: Signal) -> None:
    assert (
        outcome(check(trust, trust.ctx("/secure/vault", token=trust.token()), with_signals(sig))) == NO_RULE
    )


def test_the_device_signal_follows_the_device_header(trust: Trust) -> None:
    state = with_signals(signal("device", "KIOSK-3", "posture", "compliant"))
    kiosk = trust.ctx("/secure/vault", workload="frontend", headers={"x-device-id": "KIOSK-3"})
    assert outcome(check(trust, kiosk, state)) == ALLOWED
    assert outcome(check(trust, trust.ctx("/secure/vault", workload="frontend"), state)) == NO_RULE


def test_workload_and_user_signals(trust: Trust) -> None:
    state = with_signals(
        signal("workload", FRONTEND, "risk", "low", expires_at=TS + 60),
        signal("user", ALICE, "training", "done"),
    )
    batch = trust.ctx("/batch/run", workload="frontend")
    assert outcome(check(trust, batch, state)) == ALLOWED
    assert outcome(check(trust, batch, state, at=NOW + timedelta(seconds=60))) == NO_RULE
    assert outcome(check(trust, trust.ctx("/batch/run", workload="billing"), state)) == NO_RULE
    assert outcome(check(trust, trust.ctx("/training/x", token=trust.token()), state)) == ALLOWED
    assert outcome(check(trust, trust.ctx("/training/x", workload="frontend"), state)) == NO_RULE


# --- credential age -------------------------------------------------------------------------------


@pytest.mark.parametrize(("age", "ok"), [(0, True), (300, True), (301, False), (3600, False)])
def test_max_token_age(trust: Trust, age: int, ok: bool) -> None:
    ctx = trust.ctx("/user/me", token=trust.token(iat=int(TS) - age))
    d = check(
        trust, ctx, engine=trust.aged, state=StateSnapshot.build(1, sessions={f"{ISSUER}#sess-alice-1": TS})
    )
    if ok:
        assert outcome(d) == ALLOWED
    else:
        assert outcome(d) == (False, 401, "token_too_old")
        assert d.credential_failed == "token"
    assert outcome(check(trust, ctx)) == ALLOWED  # no max_token_age: age does not matter


def test_max_token_age_applies_to_jwt_svids(trust: Trust) -> None:
    ctx = trust.ctx("/internal/jobs", token=trust.svid_token(iat=int(TS) - 301))
    assert outcome(check(trust, ctx, engine=trust.aged)) == (False, 401, "token_too_old")
    assert outcome(check(trust, ctx)) == ALLOWED


def test_a_token_without_iat_is_too_old_when_age_is_limited(trust: Trust) -> None:
    ctx = trust.ctx("/user/me", token=trust.token(iat=None))
    d = check(trust, ctx, engine=trust.aged)
    assert outcome(d) == (False, 401, "token_too_old")
    assert "iat" in d.detail
    assert outcome(check(trust, ctx)) == ALLOWED


def test_workloads_have_no_token_age(trust: Trust) -> None:
    assert outcome(check(trust, trust.ctx(workload="frontend"), engine=trust.aged)) == ALLOWED


def sessions(first_use: Mapping[str, float]) -> StateSnapshot:
    return StateSnapshot.build(1, sessions=first_use)


def new_sessions(d: Decision) -> list[NewSession]:
    return [e for e in d.effects if isinstance(e, NewSession)]


def test_first_use_of_a_session_is_reported(trust: Trust) -> None:
    ctx = trust.ctx("/user/me", token=trust.token())
    d = check(trust, ctx, engine=trust.aged)
    assert outcome(d) == ALLOWED
    assert NewSession(f"{ISSUER}#sess-alice-1", TS) in d.effects
    d = check(trust, ctx, sessions({f"{ISSUER}#sess-alice-1": TS - 10}), engine=trust.aged)
    assert outcome(d) == ALLOWED
    assert new_sessions(d) == []


def test_first_use_is_recorded_without_a_limit_too(trust: Trust) -> None:
    # Turning max_session_age on later counts from the first request, not from when it was set.
    d = check(trust, trust.ctx("/user/me", token=trust.token()))
    assert new_sessions(d) == [NewSession(f"{ISSUER}#sess-alice-1", TS)]


def test_no_session_to_record_without_a_sid(trust: Trust) -> None:
    no_sid = trust.ctx("/user/me", token=trust.token(sid=None))
    assert new_sessions(check(trust, no_sid, engine=trust.aged)) == []
    assert new_sessions(check(trust, trust.ctx(workload="frontend"), engine=trust.aged)) == []


@pytest.mark.parametrize(("age", "ok"), [(0, True), (600, True), (601, False), (86400, False)])
def test_max_session_age(trust: Trust, age: int, ok: bool) -> None:
    ctx = trust.ctx("/user/me", token=trust.token())  # freshly issued: only the session is old
    d = check(
        trust,
        ctx,
        sessions({f"{ISSUER}#sess-alice-1": TS - age, f"{ISSUER}#sess-other": TS}),
        engine=trust.aged,
    )
    if ok:
        assert outcome(d) == ALLOWED
    else:
        assert outcome(d) == (False, 401, "session_too_old")
        assert d.credential_failed == "token"
        assert new_sessions(d) == []
    assert outcome(check(trust, ctx, sessions({f"{ISSUER}#sess-alice-1": TS - age}))) == ALLOWED  # no limit


def test_a_session_ages_while_its_tokens_are_renewed(trust: Trust) -> None:
    state = sessions({f"{ISSUER}#sess-alice-1": TS})
    later = NOW + timedelta(minutes=11)
    renewed = trust.ctx("/user/me", token=trust.token(iat=int(later.timestamp())))
    assert outcome(check(trust, renewed, state, at=later, engine=trust.aged)) == (
        False,
        401,
        "session_too_old",
    )
    new_session = trust.ctx("/user/me", token=trust.token(iat=int(later.timestamp()), sid="sess-alice-2"))
    d = check(trust, new_session, state, at=later, engine=trust.aged)
    assert outcome(d) == ALLOWED
    assert NewSession(f"{ISSUER}#sess-alice-2", later.timestamp()) in d.effects


def test_an_oidc_subject_that_looks_like_a_spiffe_id_is_not_that_workload(trust: Trust) -> None:
    """A user token with sub=spiffe://… must not pick up the workload's grants or exceptions."""
    impostor = trust.ctx("/reports/q1", token=trust.token(sub=FRONTEND), listener="edge")
    assert outcome(check(trust, impostor, with_grants(grant(FRONTEND)))) == NO_RULE
    assert check(trust, impostor, with_grants(grant(FRONTEND))).grant_ids == ()


def test_a_revoked_token_reports_the_revocation_even_when_it_is_also_too_old(trust: Trust) -> None:
    ctx = trust.ctx("/user/me", token=trust.token(iat=int(TS) - 3600))
    d = check(trust, ctx, revoked(revocation("jti", f"{ISSUER}#jti-alice-1")), engine=trust.aged)
    assert outcome(d) == (False, 403, "revoked")
    assert d.revocation_id == "rev_1"


# --- principals are named exactly: a second issuer's alice is someone else ----------------------------


def test_another_issuers_alice_gets_none_of_alices_state(trust: Trust) -> None:
    ours = trust.ctx("/user/me", token=trust.token())
    theirs = trust.ctx("/user/me", token=trust.partner_token())
    engine = trust.two_issuers
    assert outcome(check(trust, theirs, engine=engine)) == ALLOWED  # the partner's alice is a reader too
    assert check(trust, theirs, engine=engine).principal.keys == (PARTNER_ALICE,)

    state = StateSnapshot.build(
        1,
        revocations=[
            revocation("sub", ALICE, "r-sub"),
            revocation("jti", f"{ISSUER}#jti-alice-1", "r-jti"),
            revocation("sid", f"{ISSUER}#sess-alice-1", "r-sid"),
            revocation("quarantine", ALICE, "r-q", expires_at=TS + 900, source="quarantine"),
        ],
    )
    assert outcome(check(trust, ours, state, engine=engine))[2] in ("revoked", "quarantined")
    assert outcome(check(trust, theirs, state, engine=engine)) == ALLOWED  # none of it names her

    reports = trust.ctx("/reports/q1", token=trust.partner_token())
    training = trust.ctx("/training/x", token=trust.partner_token())
    payroll = trust.ctx("/payroll/run", token=trust.partner_token())
    granted = StateSnapshot.build(
        1,
        grants=[grant(ALICE)],
        exceptions=[exception(ALICE)],
        signals=[signal("user", ALICE, "training", "done")],
    )
    assert outcome(check(trust, reports, granted, engine=engine)) == NO_RULE
    assert outcome(check(trust, training, granted, engine=engine)) == NO_RULE
    assert outcome(check(trust, payroll, granted, engine=engine)) == NO_RULE
    mine = trust.ctx("/training/x", token=trust.token())
    assert outcome(check(trust, mine, granted, engine=engine)) == ALLOWED


def test_sessions_of_two_issuers_are_two_sessions(trust: Trust) -> None:
    theirs = trust.ctx("/user/me", token=trust.partner_token())
    d = check(
        trust,
        theirs,
        StateSnapshot.build(1, sessions={f"{ISSUER}#sess-alice-1": TS - 10**6}),
        engine=trust.two_issuers,
    )
    assert outcome(d) == ALLOWED
    assert new_sessions(d) == [NewSession(f"{PARTNER}#sess-alice-1", TS)]


# --- quarantine: a denial counts against the principal policy denied ----------------------------------


def counted(d: Decision) -> list[str]:
    return [e.principal for e in d.effects if isinstance(e, CountDenial)]


def test_a_user_relayed_by_a_gateway_is_counted_not_the_gateway(trust: Trust) -> None:
    """frontend (a gateway) relays alice's token to a path a deny rule closes: alice is accountable.
    Counting frontend would let one user get the gateway quarantined for everyone."""
    relayed = trust.ctx("/admin/users", workload="frontend", token=trust.token())
    d = check(trust, relayed, engine=trust.quarantined)
    assert outcome(d) == (False, 403, "policy_denied")
    assert counted(d) == [ALICE]
    assert counted(check(trust, relayed, engine=trust.by_workload)) == [FRONTEND]


def test_a_workload_alone_is_counted_itself(trust: Trust) -> None:
    assert counted(
        check(trust, trust.ctx("/admin/users", workload="frontend"), engine=trust.quarantined)
    ) == [FRONTEND]
    svid = trust.ctx("/admin/users", token=trust.svid_token())
    assert counted(check(trust, svid, engine=trust.quarantined)) == [FRONTEND]


def test_what_is_not_a_policy_denial_is_not_counted(trust: Trust) -> None:
    assert counted(check(trust, trust.ctx(workload="frontend"), engine=trust.quarantined)) == []  # allowed
    forged = trust.ctx("/user/me", token=trust.token()[:-4] + "AAAA")
    assert counted(check(trust, forged, engine=trust.quarantined)) == []  # a bad credential: nobody proven
    assert counted(check(trust, trust.ctx("/admin/users", workload="frontend"))) == []  # quarantine off


def test_only_what_exceeds_policy_counts_unless_told_otherwise(trust: Trust) -> None:
    """A denial no rule decided (a lapsed posture, a path nobody wrote a rule for) is not an attack:
    by default only explicit deny rules count. `quarantine.count` widens it."""
    no_rule = trust.ctx("/payroll/run", workload="frontend")
    assert outcome(check(trust, no_rule, engine=trust.quarantined)) == NO_RULE
    assert counted(check(trust, no_rule, engine=trust.quarantined)) == []
    broad = variant(
        trust.dir,
        "qall",
        quarantine={"denials": 3, "count": ["policy_denied", "no_rule", "policy_error"]},
    )
    assert counted(check(trust, no_rule, engine=broad)) == [FRONTEND]
    assert counted(check(trust, trust.ctx("/fragile/x", workload="frontend"), engine=broad)) == [FRONTEND]


# --- certificate revocations, however the issuer was typed -----------------------------------------------


def _openssl_oneline(leaf: x509.Certificate) -> str:
    parts = [f"{a.rfc4514_attribute_name} = {a.value!s}" for rdn in leaf.issuer.rdns for a in rdn]
    return "issuer=" + ", ".join(parts)


def _slash(leaf: x509.Certificate) -> str:
    return "".join(f"/{a.rfc4514_attribute_name}={a.value!s}" for rdn in leaf.issuer.rdns for a in rdn)


@pytest.mark.parametrize("spelling", ["rfc4514", "openssl", "slash", "colons", "upper"])
def test_a_serial_at_issuer_revocation_matches_however_it_was_typed(trust: Trust, spelling: str) -> None:
    leaf = trust.leaf
    serial = f"{leaf.serial_number:x}"
    colons = ":".join(f"{leaf.serial_number:040X}"[i : i + 2] for i in range(0, 40, 2))
    typed = {
        "rfc4514": f"{serial}@{leaf.issuer.rfc4514_string()}",
        "openssl": f"serial={serial.upper()}@{_openssl_oneline(leaf)}",
        "slash": f"0x{serial}@{_slash(leaf)}",
        "colons": f"{colons}@{leaf.issuer.rfc4514_string()}",
        "upper": f"{serial}@{leaf.issuer.rfc4514_string().upper()}",
    }[spelling]
    kind, value = revocation_value("cert", typed)
    d = check(trust, trust.ctx(workload="frontend"), revoked(revocation(kind, value)))
    assert outcome(d) == (False, 403, "revoked")


@pytest.mark.parametrize(
    "typed",
    [
        "12345",
        "zz@CN=x",
        "12@",
        "@CN=x",
        "12@CN",
        "12@XX=1",
        "12@CN=a,,O=b",
        "12@CN=#04",
        "AB" * 21 + "@CN=x",
    ],
)
def test_a_cert_revocation_that_does_not_parse_is_refused_with_one_line(typed: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        revocation_value("cert", typed)
    assert "\n" not in str(err.value) and str(err.value)


# --- step-up (RFC 9470) ------------------------------------------------------------------------------


def test_a_strong_recent_authentication_passes_the_step_up(trust: Trust) -> None:
    tok = trust.token(acr="urn:example:mfa", auth_time=int(TS) - 60)
    d = check(trust, trust.ctx("/payments/run", token=tok))
    assert outcome(d) == ALLOWED and d.rule == "payments-step-up"


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"auth_time": int(TS) + 365 * 86400}, "token_not_yet_valid"),  # a year ahead: any max_age passes
        ({"auth_time": int(TS) + 3600, "iat": int(TS) + 3600}, "token_not_yet_valid"),
        ({"auth_time": int(TS) + 120, "iat": int(TS) - 60}, "token_not_yet_valid"),
        ({"auth_time": int(TS) - 10, "iat": int(TS) - 3600}, "token_claims"),  # after it was issued
        ({"auth_time": "yesterday"}, "token_claims"),
        ({"nbf": int(TS) + 3600}, "token_not_yet_valid"),
        ({"iat": int(TS) + 3600}, "token_not_yet_valid"),
    ],
)
def test_times_to_come_are_refused_beyond_the_leeway(
    trust: Trust, claims: dict[str, Any], reason: str
) -> None:
    tok = trust.token(acr="urn:example:mfa", **claims)
    d = check(trust, trust.ctx("/payments/run", token=tok))
    assert outcome(d) == (False, 401, reason)


def test_auth_time_within_the_leeway_is_now(trust: Trust) -> None:
    tok = trust.token(acr="urn:example:mfa", auth_time=int(TS) + 5, iat=int(TS) + 5)  # a fast IdP clock
    assert outcome(check(trust, trust.ctx("/payments/run", token=tok))) == ALLOWED


@pytest.mark.parametrize(
    ("claims", "why"),
    [
        ({"acr": "urn:example:pwd", "auth_time": int(TS) - 60}, "a weaker acr"),
        ({"auth_time": int(TS) - 60}, "no acr"),
        ({"acr": "phr", "auth_time": int(TS) - 3600}, "authenticated an hour ago"),
        ({"acr": "phr"}, "no auth_time"),
    ],
)
def test_otherwise_a_challenge_the_client_can_take_to_its_idp(
    trust: Trust, claims: dict[str, Any], why: str
) -> None:
    d = check(trust, trust.ctx("/payments/run", token=trust.token(**claims)))
    assert outcome(d) == (False, 401, "step_up_required"), why
    assert d.rule == "payments-step-up"
    assert d.challenge == (
        'Bearer error="insufficient_user_authentication", error_description="A stronger or more recent'
        ' authentication is required", acr_values="urn:example:mfa phr", max_age="300"'
    )
    resp = render(d)
    www = {h.header.key: h.header.value for h in resp.denied_response.headers}["www-authenticate"]
    assert www == d.challenge and resp.denied_response.status.code == 401


def test_an_assurance_decrease_lowers_what_earlier_tokens_count_as(trust: Trust) -> None:
    """CAEP assurance-level-change (decrease) after the token was issued: its acr no longer counts."""
    tok = trust.token(acr="urn:example:mfa", auth_time=int(TS) - 60, iat=int(TS) - 60)
    lowered = with_signals(
        dataclasses.replace(signal("user", ALICE, "assurance_direction", "decrease"), set_at=TS - 10),
        dataclasses.replace(signal("user", ALICE, "assurance_level", "nist-aal1"), set_at=TS - 10),
    )
    assert outcome(check(trust, trust.ctx("/payments/run", token=tok), lowered))[2] == "step_up_required"
    fresh = trust.token(acr="urn:example:mfa", auth_time=int(TS) - 1, iat=int(TS) - 1)  # stepped up since
    assert outcome(check(trust, trust.ctx("/payments/run", token=fresh), lowered)) == ALLOWED
    raised = with_signals(
        dataclasses.replace(signal("user", ALICE, "assurance_direction", "increase"), set_at=TS - 10),
        dataclasses.replace(signal("user", ALICE, "assurance_level", "nist-aal1"), set_at=TS - 10),
    )
    assert outcome(check(trust, trust.ctx("/payments/run", token=tok), raised)) == ALLOWED


def test_an_exceptable_deny_rule_first_does_not_make_a_later_one_exceptable(trust: Trust) -> None:
    """A change freeze on every path (exceptable) listed before /admin's deny (not exceptable): an
    exception for /admin/* opens nothing, whatever the order of the rules."""
    freeze = {"name": "change-freeze", "effect": "deny", "exceptable": True, "match": {"paths": ["/*"]}}
    cfg = yaml.safe_load((trust.dir / "config.yaml").read_text())
    cfg["rules"] = [freeze, *cfg["rules"]]
    path = trust.dir / "freeze.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    engine = load_engine(path)
    admin = trust.ctx("/admin/users", workload="frontend")
    d = check(trust, admin, with_exceptions(exception(paths=("/admin/*",))), engine=engine)
    assert outcome(d) == (False, 403, "policy_denied") and d.exception_id == ""
    api = trust.ctx("/api/orders", workload="frontend")
    d = check(trust, api, with_exceptions(exception(paths=("/api/*",))), engine=engine)
    assert outcome(d) == (True, 200, "exception")  # the freeze alone may be broken


def test_an_assurance_decrease_to_an_accepted_level_does_not_lift_a_weak_token(trust: Trust) -> None:
    """A 'decrease' can only take acceptance away: it never makes a password-only token pass."""
    weak = trust.token(acr="urn:example:pwd", auth_time=int(TS) - 60, iat=int(TS) - 60)
    decrease = with_signals(
        dataclasses.replace(signal("user", ALICE, "assurance_direction", "decrease"), set_at=TS - 10),
        dataclasses.replace(signal("user", ALICE, "assurance_level", "phr"), set_at=TS - 10),
    )
    assert outcome(check(trust, trust.ctx("/payments/run", token=weak), decrease))[2] == "step_up_required"


def test_a_check_never_walks_every_record_held(trust: Trust, monkeypatch: pytest.MonkeyPatch) -> None:
    """With state held, a Check looks records up by what names the caller: a walk over everything held
    (a million revocations) would make every Check as slow as the state is large."""
    from ext_authz.state.snapshot import Index

    held = [revocation("jti", f"https://idp.example.com#t{i}", f"rev_{i}") for i in range(50)]
    snapshot = StateSnapshot.build(1, revocations=held)
    ctx, kind, value = revocation_case(trust, "jti")

    def walked(*_: object) -> Any:
        raise AssertionError("the Check path walked every record held")

    monkeypatch.setattr(StateSnapshot, "all", walked)
    monkeypatch.setattr(Index, "buckets", walked)
    assert outcome(check(trust, ctx, snapshot)) == ALLOWED
    revoked_too = StateSnapshot.build(1, revocations=[*held, revocation(kind, value, "rev_x")])
    assert outcome(check(trust, ctx, revoked_too)) == (False, 403, "revoked")


# --- certificate-bound tokens (RFC 8705) ------------------------------------------------------------


def thumbprint(t: Trust, workload: str = "frontend") -> str:
    """RFC 8705 §3.1: base64url (no padding) of the SHA-256 of the certificate's DER."""
    import base64

    leaf = x509.load_pem_x509_certificates((t.dir / f"svid/{workload}.pem").read_bytes())[0]
    return base64.urlsafe_b64encode(leaf.fingerprint(hashes.SHA256())).rstrip(b"=").decode()


def test_a_bound_token_with_its_certificate_passes_and_policy_sees_how(trust: Trust) -> None:
    tok = trust.token(cnf={"x5t#S256": thumbprint(trust)})
    d = check(trust, trust.ctx("/api/orders", workload="frontend", token=tok))
    assert outcome(d) == ALLOWED
    view = identity_for_cel(d.principal)
    assert view["token"]["bound"] == "x5t#S256" and view["bound"] == "x5t#S256"
    assert identity_for_cel(check(trust, trust.ctx(workload="frontend")).principal)["bound"] == ""


@pytest.mark.parametrize(
    ("cnf", "workload", "why"),
    [
        ("billing", "billing", "another workload's certificate: the token was lifted from frontend"),
        ("frontend", None, "no certificate at all (the edge listener)"),
        ({"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}, "frontend", "DPoP-bound: not checked here"),
        ({}, "frontend", "an empty confirmation"),
        ("not-an-object", "frontend", "cnf that is not an object"),
    ],
)
def test_a_bound_token_elsewhere_is_401_token_binding(
    trust: Trust, cnf: object, workload: str | None, why: str
) -> None:
    if cnf == "billing" or cnf == "frontend":
        cnf = {"x5t#S256": thumbprint(trust, "frontend")}
    tok = trust.token(cnf=cnf)
    listener = "mesh" if workload else "edge"
    d = check(trust, trust.ctx("/api/orders", workload=workload, token=tok, listener=listener))
    assert outcome(d) == (False, 401, "token_binding"), why
    www = {h.header.key: h.header.value for h in render(d).denied_response.headers}["www-authenticate"]
    assert 'error="invalid_token"' in www


def test_an_issuer_may_require_binding(trust: Trust) -> None:
    cfg = yaml.safe_load((trust.dir / "trust.yaml").read_text())
    cfg["issuers"][ISSUER]["binding"] = "required"
    path = trust.dir / "bound.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    required = load_engine(path)
    plain = trust.token()
    d = check(trust, trust.ctx("/api/orders", workload="frontend", token=plain), engine=required)
    assert outcome(d) == (False, 401, "token_binding")
    bound = trust.token(cnf={"x5t#S256": thumbprint(trust)})
    assert check(trust, trust.ctx("/api/orders", workload="frontend", token=bound), engine=required).allowed
    assert check(trust, trust.ctx("/api/orders", workload="frontend", token=plain)).allowed  # optional
