"""Continuous-trust records and the snapshot: scopes, validity windows at their edges, index lookups.

Nothing here reads the clock: every answer is "in force at ``now``" for the ``now`` given.
"""

from __future__ import annotations

import pytest

from ext_authz.match import Target, parse_host
from ext_authz.model import path_without_query
from ext_authz.state.records import ExceptionGrant, Grant, Revocation, Scope, Signal
from ext_authz.state.snapshot import StateSnapshot
from tests import factories

T = 1_900_000_000.0
FRONTEND = "spiffe://example.org/ns/frontend/sa/web"
BILLING = "spiffe://example.org/ns/billing/sa/worker"


def revocation(
    rid: str, kind: str = "spiffe_id", value: str = FRONTEND, *, expires_at: float | None = None
) -> Revocation:
    return factories.revocation(
        rid, kind, value, created_at=T - 100, expires_at=expires_at, reason="compromised", created_by="ops"
    )


def grant(
    gid: str,
    principal: str = FRONTEND,
    *,
    not_before: float = T,
    not_after: float = T + 3600,
    ended_at: float | None = None,
    pending: bool = False,
) -> Grant:
    return factories.grant(
        gid, principal, Scope(paths=("/reports/*",)), created_at=T - 10, not_before=not_before,
        not_after=not_after, ended_at=ended_at, pending=pending,
    )  # fmt: skip


def exception(
    eid: str,
    principal: str = FRONTEND,
    *,
    opened_at: float = T,
    expires_at: float = T + 600,
    closed_at: float | None = None,
    pending: bool = False,
) -> ExceptionGrant:
    return factories.exception(
        eid, principal, ("/payroll/*",), opened_at=opened_at, expires_at=expires_at, closed_at=closed_at,
        pending=pending, reason="outage",
    )  # fmt: skip


def signal(
    key: str,
    value: str,
    *,
    subject_kind: str = "device",
    subject: str = "LAPTOP-7",
    set_at: float = T - 10,
    expires_at: float = T + 60,
) -> Signal:
    return factories.signal(subject_kind, subject, key, value, set_at=set_at, expires_at=expires_at)


# --- Scope: the one matcher (ext_authz/match.py) ---------------------------------------------------


def covers(scope: Scope, method: str, host: str, path: str) -> bool:
    """Does ``scope`` cover a request, matched as the pipeline matches it?"""
    parsed = parse_host(host) if host else None
    assert parsed is not None or not host, f"not a host: {host!r}"
    return scope.matches(Target(method.upper(), parsed, path_without_query(path)))


def test_empty_scope_covers_any_request() -> None:
    assert covers(Scope(), "DELETE", "anything.example:1234", "/any/path?q=1")
    assert covers(Scope(), "", "", "")


@pytest.mark.parametrize(
    ("method", "covered"),
    [("GET", True), ("get", True), ("HEAD", True), ("POST", False), ("DELETE", False)],
)
def test_scope_methods(method: str, covered: bool) -> None:
    assert covers(Scope(methods=("GET", "HEAD")), method, "h", "/") is covered


@pytest.mark.parametrize(
    ("host", "covered"),
    [
        ("api.example.com", True),
        ("API.Example.COM", True),  # host names are case-insensitive
        ("api.example.com:8443", True),  # a pattern without a port matches any port
        ("deep.api.example.com", True),
        ("example.com", False),
        ("api.example.com.evil.net", False),
        ("evil.net", False),
    ],
)
def test_scope_host_glob(host: str, covered: bool) -> None:
    assert covers(Scope(hosts=("*.example.com",)), "GET", host, "/") is covered


@pytest.mark.parametrize(
    ("host", "covered"),
    [("db.internal:5432", True), ("db.internal:5433", False), ("db.internal", False)],
)
def test_scope_host_pattern_with_port_needs_that_port(host: str, covered: bool) -> None:
    assert covers(Scope(hosts=("db.internal:5432",)), "GET", host, "/") is covered


def test_scope_exact_host_and_several_patterns() -> None:
    scope = Scope(hosts=("backend.internal", "*.svc.cluster.local"))
    assert covers(scope, "GET", "backend.internal", "/")
    assert covers(scope, "GET", "orders.svc.cluster.local", "/")
    assert not covers(scope, "GET", "frontend.internal", "/")


@pytest.mark.parametrize(
    ("path", "covered"),
    [
        ("/reports/q1", True),
        ("/reports/2033/q1.pdf", True),  # * crosses segments, as in rule globs
        ("/reports/", True),
        ("/reports", False),
        ("/reportsx", False),
        ("/other/reports/q1", False),
        ("/", False),
    ],
)
def test_scope_path_glob(path: str, covered: bool) -> None:
    assert covers(Scope(paths=("/reports/*",)), "GET", "h", path) is covered


@pytest.mark.parametrize(
    ("path", "covered"),
    [
        ("/reports/q1?format=pdf", True),
        ("/reports/q1#top", True),
        ("/reports/q1?next=/x#y", True),
        ("/other?next=/reports/q1", False),  # the query string cannot smuggle a covered path in
        ("/other#/reports/q1", False),
    ],
)
def test_scope_path_ignores_query_and_fragment(path: str, covered: bool) -> None:
    assert covers(Scope(paths=("/reports/*",)), "GET", "h", path) is covered


def test_scope_exact_path_pattern_is_exact() -> None:
    scope = Scope(paths=("/healthz",))
    assert covers(scope, "GET", "h", "/healthz")
    assert covers(scope, "GET", "h", "/healthz?verbose=1")
    assert not covers(scope, "GET", "h", "/healthz/deep")


def test_scope_needs_every_dimension_to_match() -> None:
    scope = Scope(hosts=("backend.internal",), paths=("/reports/*",), methods=("GET",))
    assert covers(scope, "GET", "backend.internal", "/reports/q1")
    assert not covers(scope, "POST", "backend.internal", "/reports/q1")
    assert not covers(scope, "GET", "other.internal", "/reports/q1")
    assert not covers(scope, "GET", "backend.internal", "/admin/q1")


# --- validity windows ----------------------------------------------------------------------------


def test_revocation_without_expiry_is_active_for_ever() -> None:
    rev = revocation("r1")
    assert rev.active(T)
    assert rev.active(T + 10 * 365 * 86400)


@pytest.mark.parametrize(("now", "active"), [(T + 59.999, True), (T + 60, False), (T + 61, False)])
def test_revocation_expiry_boundary(now: float, active: bool) -> None:
    rev = revocation("r1", expires_at=T + 60)
    assert rev.active(now) is active
    snap = StateSnapshot.build(1, revocations=[rev])
    assert (snap.revoked("spiffe_id", FRONTEND, now) is rev) is active
    assert (snap.active_revocations(now) == [rev]) is active


@pytest.mark.parametrize(
    ("now", "active"),
    [(T - 0.001, False), (T, True), (T + 1800, True), (T + 3599.999, True), (T + 3600, False)],
)
def test_grant_window_is_half_open(now: float, active: bool) -> None:
    g = grant("g1", not_before=T, not_after=T + 3600)
    assert g.active(now) is active
    assert (StateSnapshot.build(1, grants=[g]).grants_for([FRONTEND], now) == [g]) is active


def test_grant_ended_early_is_no_longer_active() -> None:
    g = grant("g1", not_before=T, not_after=T + 3600)
    ended = grant("g1", not_before=T, not_after=T + 3600, ended_at=T + 100)
    assert g.active(T + 200)
    assert not ended.active(T + 200)
    assert StateSnapshot.build(1, grants=[ended]).grants_for([FRONTEND], T + 200) == []


@pytest.mark.parametrize(
    ("now", "active"),
    [(T - 0.001, False), (T, True), (T + 599.999, True), (T + 600, False), (T + 3600, False)],
)
def test_exception_is_time_boxed(now: float, active: bool) -> None:
    e = exception("e1", opened_at=T, expires_at=T + 600)
    assert e.active(now) is active
    assert (StateSnapshot.build(1, exceptions=[e]).exceptions_for([FRONTEND], now) == [e]) is active


def test_closed_exception_is_no_longer_active() -> None:
    closed = exception("e1", closed_at=T + 5)
    assert exception("e1").active(T + 10)
    assert not closed.active(T + 10)
    assert StateSnapshot.build(1, exceptions=[closed]).exceptions_for([FRONTEND], T + 10) == []


# --- signals ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("now", "fresh"), [(T + 59.999, True), (T + 60, False)])
def test_signal_freshness_boundary(now: float, fresh: bool) -> None:
    s = signal("posture", "compliant", expires_at=T + 60)
    assert s.fresh(now) is fresh
    expected = {"posture": "compliant"} if fresh else {}
    assert StateSnapshot.build(1, signals=[s]).signals_for("device", "LAPTOP-7", now) == expected


def test_stale_signal_is_absent_and_fresh_keys_remain() -> None:
    snap = StateSnapshot.build(
        1,
        signals=[
            signal("posture", "compliant", expires_at=T - 1),
            signal("os", "15.2", expires_at=T + 60),
        ],
    )
    assert snap.signals_for("device", "LAPTOP-7", T) == {"os": "15.2"}


def test_latest_signal_wins_for_the_same_key() -> None:
    older = signal("posture", "compliant", set_at=T - 30)
    newer = signal("posture", "noncompliant", set_at=T - 5)
    for order in ([older, newer], [newer, older]):
        snap = StateSnapshot.build(1, signals=order)
        assert snap.signals_for("device", "LAPTOP-7", T) == {"posture": "noncompliant"}


def test_signals_are_per_subject_kind_and_subject() -> None:
    snap = StateSnapshot.build(
        1,
        signals=[
            signal("posture", "compliant", subject="LAPTOP-7"),
            signal("posture", "jailbroken", subject="PHONE-1"),
            signal("risk", "high", subject_kind="workload", subject=FRONTEND),
            signal("training", "done", subject_kind="user", subject="LAPTOP-7"),
        ],
    )
    assert snap.signals_for("device", "LAPTOP-7", T) == {"posture": "compliant"}
    assert snap.signals_for("device", "PHONE-1", T) == {"posture": "jailbroken"}
    assert snap.signals_for("workload", FRONTEND, T) == {"risk": "high"}
    assert snap.signals_for("user", "LAPTOP-7", T) == {"training": "done"}
    assert snap.signals_for("device", FRONTEND, T) == {}
    assert snap.signals_for("device", "", T) == {}


# --- snapshot lookups ------------------------------------------------------------------------------


def test_revoked_looks_up_by_kind_and_value() -> None:
    revs = [
        revocation("r-spiffe", "spiffe_id", FRONTEND),
        revocation("r-jti", "jti", "jti-1"),
        revocation("r-sub", "sub", "alice"),
        revocation("r-dev", "device", "LAPTOP-7"),
    ]
    snap = StateSnapshot.build(7, revocations=revs)
    assert snap.revision == 7
    for r in revs:
        assert snap.revoked(r.kind, r.value, T) is r
    assert snap.revoked("spiffe_id", BILLING, T) is None
    assert snap.revoked("sub", FRONTEND, T) is None  # the kind is part of the key
    assert snap.revoked("jti", "alice", T) is None
    assert snap.revoked("sid", "jti-1", T) is None


def test_revoked_skips_an_expired_record_for_an_active_one() -> None:
    expired = revocation("r-old", expires_at=T - 1)
    active = revocation("r-new", expires_at=T + 60)
    snap = StateSnapshot.build(1, revocations=[expired, active])
    assert snap.revoked("spiffe_id", FRONTEND, T) is active
    assert snap.active_revocations(T) == [active]
    assert snap.revoked("spiffe_id", FRONTEND, T + 60) is None
    assert snap.active_revocations(T + 60) == []


def test_an_empty_value_is_never_revoked() -> None:
    snap = StateSnapshot.build(1, revocations=[revocation("r-empty", "sid", "")])
    assert snap.revoked("sid", "", T) is None


def test_grants_for_several_principals_only_active_ones() -> None:
    g_front = grant("g-front")
    g_front_ended = grant("g-front-ended", ended_at=T - 1)
    g_front_later = grant("g-front-later", not_before=T + 60)
    g_alice = grant("g-alice", principal="alice")
    g_billing = grant("g-billing", principal=BILLING)
    snap = StateSnapshot.build(1, grants=[g_front, g_front_ended, g_front_later, g_alice, g_billing])
    assert snap.grants_for([FRONTEND], T) == [g_front]
    assert snap.grants_for([FRONTEND, "alice", ""], T) == [g_front, g_alice]
    assert snap.grants_for([FRONTEND], T + 60) == [g_front, g_front_later]
    assert snap.grants_for(["nobody"], T) == []
    assert snap.grants_for([], T) == []


def test_exceptions_for_several_principals_only_open_ones() -> None:
    e_front = exception("e-front")
    e_closed = exception("e-closed", closed_at=T - 1)
    e_alice = exception("e-alice", principal="alice")
    snap = StateSnapshot.build(1, exceptions=[e_front, e_closed, e_alice])
    assert snap.exceptions_for([FRONTEND], T) == [e_front]
    assert snap.exceptions_for(["alice", FRONTEND], T) == [e_alice, e_front]
    assert snap.exceptions_for([BILLING, ""], T) == []


def test_snapshot_keeps_its_own_copy_of_sessions() -> None:
    sessions = {"sess-1": T - 30}
    snap = StateSnapshot.build(1, sessions=sessions)
    sessions["sess-2"] = T
    assert dict(snap.sessions) == {"sess-1": T - 30}


def test_empty_snapshot_answers_nothing() -> None:
    snap = StateSnapshot()
    assert snap.revoked("spiffe_id", FRONTEND, T) is None
    assert snap.grants_for([FRONTEND], T) == []
    assert snap.exceptions_for([FRONTEND], T) == []
    assert snap.signals_for("device", "LAPTOP-7", T) == {}
    assert snap.active_revocations(T) == []


def test_an_envelope_is_the_json_encoding_of_its_parts() -> None:
    """seal() puts the envelope together as text, and open() reads it by position: both must be exactly
    json.dumps of {"mac", "record", "v"} (sorted, compact), whatever the record holds."""
    import json

    from ext_authz.state.integrity import IntegrityError, Sealer
    from ext_authz.state.records import encode

    records = [
        Revocation("rev_é", "sub", 'https://idp.example.com#zoë "quoted" \\ back', "réason ✓", "ops", 1.5e9),
        Revocation("rev_2", "jti", "https://idp.example.com#x", "r", "ops", 1900000000.25, expires_at=2e9),
    ]
    for key in (None, b"k" * 32):
        sealer = Sealer(key)
        for r in records:
            canonical = encode(r)
            env: dict[str, object] = {"v": 2, "record": json.loads(canonical)}
            if key is not None:
                env["mac"] = sealer._mac("put", "revocation", r.id, canonical)
            assert sealer.seal("put", "revocation", r.id, canonical) == json.dumps(
                env, separators=(",", ":"), sort_keys=True
            )
            body = sealer.seal("put", "revocation", r.id, canonical)
            assert sealer.open("put", "revocation", r.id, body) == json.loads(canonical)
            if key is not None:
                tampered = body.replace('"ops"', '"eve"')
                with pytest.raises(IntegrityError):
                    sealer.open("put", "revocation", r.id, tampered)
