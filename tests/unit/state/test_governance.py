"""Governance of state changes: break-glass needs two people, grants have a cap and a scope, input
that is a secret (a pasted token) is refused without being repeated, and a store's records are
re-checked against the same rules (a record one person approved alone is not read)."""

from __future__ import annotations

import dataclasses

import pytest

from ext_authz.settings import GrantsSettings, Settings, SignalsSettings
from ext_authz.state import commands
from ext_authz.state.commands import InvalidArgument, check_record
from ext_authz.state.records import ExceptionGrant, Grant, Revocation, Scope, Signal, as_of

T = 1_900_000_000.0
FRONTEND = "spiffe://example.org/ns/frontend/sa/web"
ALICE = "https://idp.example.com#alice"
PAYROLL = Scope(paths=("/payroll/*",))
# A real-looking compact JWS: what an operator pastes by mistake where a jti or subject belongs.
TOKEN = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6ImlkcC0xIn0."
    "eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlLmNvbSIsInN1YiI6ImFsaWNlIn0."
    "c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU"
)


def open_exc(actor: str = "oncall", scope: Scope = PAYROLL, *, approval: bool = True) -> ExceptionGrant:
    return commands.open_exception(FRONTEND, scope, "payroll blocked", 600, actor, T, 4 * 3600, approval)


# --- break-glass: two people ---------------------------------------------------------------------------


def test_an_exception_is_pending_until_someone_else_approves_it() -> None:
    e = open_exc()
    assert e.pending and not e.active(T + 1)
    with pytest.raises(InvalidArgument, match="approved by a different caller"):
        commands.approve_exception(e, "looks right", "oncall", T + 1)
    approved = commands.approve_exception(e, "checked the incident", "lead", T + 1)
    assert approved.active(T + 2) and approved.approved_by == "lead"
    with pytest.raises(InvalidArgument, match="already approved"):
        commands.approve_exception(approved, "again", "someone", T + 2)


def test_an_approval_needs_a_reason_and_an_open_exception() -> None:
    e = open_exc()
    with pytest.raises(InvalidArgument, match="reason"):
        commands.approve_exception(e, " ", "lead", T + 1)
    with pytest.raises(InvalidArgument, match="waited too long"):
        commands.approve_exception(e, "late", "lead", T + 24 * 3600)
    closed = commands.close_exception(e, "not needed", "oncall", T + 5)
    with pytest.raises(InvalidArgument, match="already closed"):
        commands.close_exception(closed, "again", "oncall", T + 6)
    assert closed.close_reason == "not needed"
    with pytest.raises(InvalidArgument, match="closed"):
        commands.approve_exception(closed, "late", "lead", T + 6)


def test_an_exception_names_a_host_or_a_path() -> None:
    with pytest.raises(InvalidArgument, match="at least a host"):
        open_exc(scope=Scope())
    with pytest.raises(InvalidArgument, match="at least a host"):
        open_exc(scope=Scope(methods=("GET",)))  # a method alone still covers every path of every host
    assert open_exc(scope=Scope(hosts=("payroll.internal",))).scope.hosts == ("payroll.internal",)


def test_where_approval_is_off_an_exception_is_in_force_at_once() -> None:
    assert open_exc(approval=False).active(T + 1)


def test_an_exception_over_the_cap_is_refused_in_one_line() -> None:
    with pytest.raises(InvalidArgument) as info:
        commands.open_exception(FRONTEND, PAYROLL, "r", 5 * 3600, "oncall", T, 4 * 3600)
    assert str(info.value) == "an exception of 5h is over the cap exceptions.max_duration=4h"


# --- grants ------------------------------------------------------------------------------------------


def grant(
    duration: float = 3600,
    scope: Scope = PAYROLL,
    approver: str = "",
    *,
    cfg: GrantsSettings | None = None,
    ticket: str = "",
) -> Grant:
    return commands.create_grant(ALICE, scope, 0, duration, "INC-42", approver, "alice", T, cfg, ticket)


def test_a_grant_has_a_cap_and_a_scope() -> None:
    with pytest.raises(InvalidArgument) as info:
        grant(duration=10 * 365 * 86400)
    assert str(info.value) == "a grant of 87600h is over the cap grants.max_duration=8h"
    with pytest.raises(InvalidArgument, match="at least a host"):
        grant(scope=Scope())
    assert grant(duration=8 * 3600).not_after == T + 8 * 3600


def test_a_grant_is_approved_by_a_second_caller_never_by_a_named_one() -> None:
    with pytest.raises(InvalidArgument, match="drop --approver"):
        grant(approver="alice")  # naming yourself (or anyone) is not an approval
    g = grant(ticket="CHG-1234")
    assert g.pending and not g.active(T + 1) and g.ticket == "CHG-1234"
    with pytest.raises(InvalidArgument, match="different caller"):
        commands.approve_grant(g, "ok", "alice", T + 1)
    approved = commands.approve_grant(g, "ok", "bob", T + 1)
    assert approved.active(T + 1) and approved.approver == "bob" and approved.approved_at == T + 1
    ended = commands.end_grant(approved, "task done", "alice", T + 10)
    assert not ended.active(T + 11) and ended.end_reason == "task done"


def test_where_approval_is_off_a_grant_names_its_approver() -> None:
    cfg = GrantsSettings(require_approval=False)
    with pytest.raises(InvalidArgument, match="approver"):
        grant(cfg=cfg)
    g = grant(cfg=cfg, approver="bob")
    assert g.active(T) and g.approver == "bob"


# --- input hygiene -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("jti", f"https://idp.example.com#{TOKEN}"),
        ("sub", f"https://idp.example.com#{TOKEN}"),
        ("sid", TOKEN),
    ],
)
def test_a_whole_token_is_refused_and_never_repeated(kind: str, value: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        commands.revoke(kind, value, "leaked", 0, "ops", T)
    assert "looks like a whole token" in str(info.value)
    assert TOKEN[:20] not in str(info.value) and TOKEN[-20:] not in str(info.value)


def test_a_token_pasted_into_a_reason_or_a_principal_is_refused_too() -> None:
    with pytest.raises(InvalidArgument, match="whole token"):
        commands.revoke("spiffe_id", FRONTEND, f"leaked: {TOKEN}", 0, "ops", T)
    with pytest.raises(InvalidArgument, match="whole token"):
        commands.create_grant(TOKEN, PAYROLL, 0, 60, "r", "", "alice", T)


def test_a_revocation_duration_cannot_be_negative() -> None:
    with pytest.raises(InvalidArgument, match="positive"):
        commands.revoke("spiffe_id", FRONTEND, "r", -1, "ops", T)


def test_a_second_identical_revocation_adds_nothing() -> None:
    first = commands.revoke("spiffe_id", FRONTEND, "leaked", 0, "ops", T)
    again = commands.revoke("spiffe_id", FRONTEND, "leaked again", 3600, "ops", T + 5)
    assert commands.same_revocation(again, first, T + 5)  # the permanent one already covers it
    assert not commands.same_revocation(first, again, T + 5)  # a longer one is not the same
    lifted = commands.end_revocation(first, "rotated", "ops", T + 10)
    assert not commands.same_revocation(again, lifted, T + 11)
    # Another maker's revocation (an identity provider's, which it may lift) is no stand-in for ours.
    theirs = dataclasses.replace(first, created_by="ssf:https://idp.example.com", source="ssf")
    assert not commands.same_revocation(again, theirs, T + 5)


def test_an_unrevoked_record_is_kept_with_who_and_why() -> None:
    rev = commands.revoke("spiffe_id", FRONTEND, "leaked", 0, "ops", T)
    lifted = commands.end_revocation(rev, "key rotated", "lead", T + 60)
    assert not lifted.active(T + 61) and lifted.active(T + 59) is False  # ended is ended, live
    assert (lifted.ended_by, lifted.end_reason, lifted.ended_at) == ("lead", "key rotated", T + 60)
    assert lifted.finished_at() == T + 60
    with pytest.raises(InvalidArgument, match="reason"):
        commands.end_revocation(rev, "", "lead", T + 60)


def test_a_workload_signal_names_a_spiffe_id() -> None:
    with pytest.raises(InvalidArgument, match="SPIFFE ID"):
        commands.put_signal("workload", "frontend", "risk", "low", 60, "mdm", T)
    assert commands.put_signal("workload", FRONTEND, "risk", "low", 60, "mdm", T).subject == FRONTEND


def test_a_signal_ttl_has_a_cap() -> None:
    with pytest.raises(InvalidArgument) as info:
        commands.put_signal("device", "LAPTOP-7", "posture", "ok", 48 * 3600, "mdm", T)
    assert str(info.value) == "a time-to-live of 48h is over the cap signals.max_ttl=24h"
    cfg = SignalsSettings(max_ttl=7 * 86400)
    assert commands.put_signal("device", "LAPTOP-7", "posture", "ok", 48 * 3600, "mdm", T, cfg).expires_at


# --- a store's records meet the same rules ---------------------------------------------------------------


def approved_exception(by: str) -> ExceptionGrant:
    return dataclasses.replace(open_exc(), approved_by=by, approved_at=T + 1)


def test_a_stored_exception_approved_by_its_opener_is_not_read() -> None:
    settings = Settings()
    check_record(approved_exception("lead"), settings)
    with pytest.raises(InvalidArgument, match="different caller"):
        check_record(approved_exception("oncall"), settings)
    with pytest.raises(InvalidArgument, match="at least a host"):
        check_record(dataclasses.replace(approved_exception("lead"), scope=Scope()), settings)


def test_a_stored_grant_over_the_cap_or_self_approved_is_not_read() -> None:
    settings = Settings()
    ok = commands.approve_grant(grant(), "ok", "bob", T)
    check_record(ok, settings)
    with pytest.raises(InvalidArgument, match=r"grants\.max_duration"):
        check_record(dataclasses.replace(ok, not_after=ok.not_before + 9 * 3600), settings)
    with pytest.raises(InvalidArgument, match="different caller"):
        check_record(dataclasses.replace(ok, approver="alice"), settings)


def test_a_stored_signal_fresh_past_the_cap_is_not_read() -> None:
    s = Signal("device", "LAPTOP-7", "posture", "ok", "mdm", T, T + 25 * 3600)
    with pytest.raises(InvalidArgument, match=r"signals\.max_ttl"):
        check_record(s, Settings())


# --- a record as it stood then (ext-authz check --state) ----------------------------------------------


def test_as_of_undoes_what_happened_later() -> None:
    g = commands.approve_grant(grant(), "ok", "bob", T + 100)
    assert as_of(g, T - 1) is None  # not made yet
    pending = as_of(g, T + 50)
    assert isinstance(pending, Grant) and pending.pending
    assert as_of(g, T + 100) == g
    rev = commands.end_revocation(
        commands.revoke("device", "LAPTOP-7", "lost", 0, "ops", T), "found", "ops", T + 9
    )
    then = as_of(rev, T + 5)
    assert isinstance(then, Revocation) and then.active(T + 5)
    e = commands.close_exception(approved_exception("lead"), "done", "oncall", T + 30)
    was = as_of(e, T + 20)
    assert isinstance(was, ExceptionGrant) and was.active(T + 20)


def test_a_window_starts_when_the_second_person_approves() -> None:
    """A 10-minute exception approved 10 minutes after it was asked for lasts 10 minutes from then, and
    so does a grant (it would have ended before anyone could use it)."""
    e = open_exc()  # opened at T, for 600 s
    approved = commands.approve_exception(e, "go", "lead", T + 600)
    assert (approved.approved_at, approved.expires_at) == (T + 600, T + 1200)
    assert approved.active(T + 1199) and not approved.active(T + 1200)
    g = commands.create_grant(
        "spiffe://example.org/ns/a/sa/b", Scope(paths=("/x/*",)), 0, 120, "task", "", "alice", T
    )
    ok = commands.approve_grant(g, "go", "lead", T + 120)
    assert (ok.not_before, ok.not_after) == (T + 120, T + 240) and ok.active(T + 200)
    later = commands.create_grant(
        "spiffe://example.org/ns/a/sa/b", Scope(paths=("/x/*",)), T + 3600, 120, "task", "", "alice", T
    )
    assert commands.approve_grant(later, "go", "lead", T + 60).not_before == T + 3600  # not earlier
    from ext_authz.settings import Settings

    settings = Settings.model_validate({"allow_empty": True})
    commands.check_record(approved, settings)  # a replica reading it accepts the shifted window
