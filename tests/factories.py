"""Continuous-trust records for tests, built in one place: each factory makes a record the way the
commands would (a reason, a maker, approved unless ``pending``), at the time a test names. Test modules
bind their own defaults (their clock, their principals) in one line each."""

from __future__ import annotations

from ext_authz.state.records import ExceptionGrant, Grant, Revocation, Scope, Signal

__all__ = ["FRONTEND", "exception", "grant", "revocation", "signal"]

FRONTEND = "spiffe://example.org/ns/frontend/sa/web"


def revocation(
    rid: str,
    kind: str,
    value: str,
    *,
    created_at: float,
    expires_at: float | None = None,
    source: str = "api",
    reason: str = "credential leaked",
    created_by: str = "ops@example.org",
) -> Revocation:
    return Revocation(
        id=rid,
        kind=kind,
        value=value,
        reason=reason,
        created_by=created_by,
        created_at=created_at,
        expires_at=expires_at,
        source=source,
    )


def grant(
    gid: str,
    principal: str,
    scope: Scope,
    *,
    created_at: float,
    not_before: float,
    not_after: float,
    ended_at: float | None = None,
    reason: str = "INC-42",
    pending: bool = False,
) -> Grant:
    """Asked for by alice; approved by bob (its window from ``not_before``) unless ``pending``."""
    return Grant(
        id=gid,
        principal=principal,
        scope=scope,
        not_before=not_before,
        not_after=not_after,
        reason=reason,
        approver="bob",
        created_by="alice",
        created_at=created_at,
        ended_at=ended_at,
        ended_by="alice" if ended_at is not None else "",
        approved_at=None if pending else not_before,
    )


def exception(
    eid: str,
    principal: str,
    paths: tuple[str, ...],
    *,
    opened_at: float,
    expires_at: float,
    closed_at: float | None = None,
    pending: bool = False,
    reason: str = "payroll run blocked by a policy bug",
) -> ExceptionGrant:
    """Opened by on-call; approved by the lead when opened unless ``pending``."""
    return ExceptionGrant(
        id=eid,
        principal=principal,
        scope=Scope(paths=paths),
        reason=reason,
        opened_by="oncall",
        opened_at=opened_at,
        expires_at=expires_at,
        closed_at=closed_at,
        closed_by="oncall" if closed_at is not None else "",
        approved_by="" if pending else "lead",
        approved_at=None if pending else opened_at,
    )


def signal(
    subject_kind: str, subject: str, key: str, value: str, *, set_at: float, expires_at: float
) -> Signal:
    """A fact an MDM set."""
    return Signal(
        subject_kind=subject_kind,
        subject=subject,
        key=key,
        value=value,
        set_by="mdm",
        set_at=set_at,
        expires_at=expires_at,
    )
