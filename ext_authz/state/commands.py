"""State commands: validation and record building, pure, shared by the admin API and the CLI.

Every function either returns a well-formed record (or canonical value) or raises InvalidArgument with
one line a person can act on. The same checks re-validate records a replica reads from a shared store
(:func:`check_record`): a record another writer made is input like any other.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from collections.abc import Iterable

from ..identity.names import NameError_, parse_name, parse_serial
from ..identity.spiffe_id import SpiffeId, SpiffeIdError
from ..match import PatternError
from ..principal import PrincipalError, parse_principal, parse_scoped
from ..settings import QuarantineSettings, Settings
from .records import (
    REVOCATION_KINDS,
    REVOCATION_SOURCES,
    SIGNAL_SUBJECTS,
    ExceptionGrant,
    Grant,
    Record,
    Revocation,
    Scope,
    Signal,
)

__all__ = [
    "InvalidArgument",
    "check_record",
    "close_exception",
    "create_grant",
    "end_grant",
    "new_id",
    "open_exception",
    "put_signal",
    "quarantine",
    "revocation_value",
    "revoke",
    "scope",
]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_OPERATOR_KINDS = tuple(k for k in REVOCATION_KINDS if k != "quarantine")
_MAX_TEXT = 1024  # reasons, approvers, signal keys and values


class InvalidArgument(ValueError):
    """Input the state cannot take; the message is one line for the person who gave it."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


def principal(value: str) -> str:
    try:
        return parse_principal(value)
    except PrincipalError as exc:
        raise InvalidArgument(str(exc)) from exc


def _spiffe_id(value: str) -> str:
    try:
        sid = SpiffeId.parse(value)
    except SpiffeIdError as exc:
        raise InvalidArgument(f"not a valid SPIFFE ID: {exc}") from exc
    if not sid.path:
        raise InvalidArgument(f"{value} names a trust domain, not a workload")
    return str(sid)


def _cert(value: str) -> str:
    fingerprint = value.lower().replace(":", "")
    if fingerprint.startswith("sha256"):
        fingerprint = fingerprint[len("sha256") :].lstrip("=:")
    if _HEX64.match(fingerprint):
        return fingerprint
    serial, at, issuer = value.partition("@")
    if not at:
        raise InvalidArgument(
            "a cert revocation is a SHA-256 fingerprint (64 hex digits) or SERIAL@ISSUER"
            " (serial in hex; issuer as RFC 4514 or as openssl prints it)"
        )
    try:
        return f"{parse_serial(serial)}@{parse_name(issuer)}"
    except NameError_ as exc:
        raise InvalidArgument(f"cert revocation {value!r}: {exc}") from exc


def revocation_value(kind: str, value: str) -> tuple[str, str]:
    """Check and canonicalise what a revocation names (``kind`` inferred for ``spiffe://`` values)."""
    value = value.strip()
    if not kind:
        kind = "spiffe_id" if value.startswith("spiffe://") else ""
        if not kind:
            raise InvalidArgument("--kind is required unless the value is a spiffe:// ID")
    if kind not in _OPERATOR_KINDS:
        raise InvalidArgument(f"unknown kind {kind!r}; expected one of {', '.join(_OPERATOR_KINDS)}")
    if not value:
        raise InvalidArgument("a revocation needs a value")
    if kind == "spiffe_id":
        return kind, _spiffe_id(value)
    if kind == "cert":
        return kind, _cert(value)
    if kind == "sub":
        key = principal(value)
        if key.startswith("spiffe://"):
            raise InvalidArgument(
                "a workload is revoked by --kind spiffe_id; sub names a user as ISSUER#SUBJECT"
            )
        return kind, key
    if kind in ("jti", "sid"):
        try:
            return kind, parse_scoped(value, f"a {kind}")
        except PrincipalError as exc:
            raise InvalidArgument(str(exc)) from exc
    return kind, value  # device ids are not tied to an issuer


def _text(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument(f"{what} is required")
    if len(value) > _MAX_TEXT:
        raise InvalidArgument(f"{what} is longer than {_MAX_TEXT} characters")
    return value


def scope(hosts: Iterable[str] = (), paths: Iterable[str] = (), methods: Iterable[str] = ()) -> Scope:
    try:
        return Scope(
            hosts=tuple(h.strip().lower() for h in hosts),
            paths=tuple(p.strip() for p in paths),
            methods=tuple(m.strip().upper() for m in methods),
        )
    except PatternError as exc:
        raise InvalidArgument(str(exc)) from exc


def revoke(kind: str, value: str, reason: str, duration: float, actor: str, now: float) -> Revocation:
    kind, value = revocation_value(kind, value)
    if duration < 0:
        raise InvalidArgument("duration cannot be negative")
    return Revocation(
        id=new_id("rev"),
        kind=kind,
        value=value,
        reason=_text(reason, "a reason"),
        created_by=actor,
        created_at=now,
        expires_at=now + duration if duration else None,
    )


def create_grant(
    who: str,
    what: Scope,
    not_before: float,
    duration: float,
    reason: str,
    approver: str,
    actor: str,
    now: float,
) -> Grant:
    if duration <= 0:
        raise InvalidArgument("a grant needs a duration: it must expire by itself")
    start = not_before or now
    return Grant(
        id=new_id("grt"),
        principal=principal(who),
        scope=what,
        not_before=start,
        not_after=start + duration,
        reason=_text(reason, "a reason"),
        approver=_text(approver, "an approver"),
        created_by=actor,
        created_at=now,
    )


def end_grant(grant: Grant, actor: str, now: float) -> Grant:
    if grant.ended_at is not None:
        return grant
    return dataclasses.replace(grant, ended_at=now, ended_by=actor)


def open_exception(
    who: str, what: Scope, reason: str, duration: float, actor: str, now: float, max_duration: float
) -> ExceptionGrant:
    if duration <= 0:
        raise InvalidArgument("an exception needs a duration: exceptions are never permanent")
    if duration > max_duration:
        raise InvalidArgument(
            f"duration {int(duration)}s is over the cap exceptions.max_duration={int(max_duration)}s"
        )
    return ExceptionGrant(
        id=new_id("exc"),
        principal=principal(who),
        scope=what,
        reason=_text(reason, "a reason"),
        opened_by=actor,
        opened_at=now,
        expires_at=now + duration,
    )


def close_exception(exc: ExceptionGrant, actor: str, now: float) -> ExceptionGrant:
    if exc.closed_at is not None:
        return exc
    return dataclasses.replace(exc, closed_at=now, closed_by=actor)


def _signal_subject(subject_kind: str, subject: str) -> str:
    if subject_kind not in SIGNAL_SUBJECTS:
        raise InvalidArgument(f"unknown subject kind {subject_kind!r}; expected device, workload or user")
    subject = subject.strip()
    if not subject:
        raise InvalidArgument("a signal needs a subject")
    if subject_kind == "workload":
        return _spiffe_id(subject)
    if subject_kind == "user":
        key = principal(subject)
        if key.startswith("spiffe://"):
            raise InvalidArgument(
                "a user signal names a user as ISSUER#SUBJECT; use workload: for a SPIFFE ID"
            )
        return key
    return subject


def put_signal(
    subject_kind: str, subject: str, key: str, value: str, ttl: float, actor: str, now: float
) -> Signal:
    if ttl <= 0:
        raise InvalidArgument("a signal needs a time-to-live: a stale signal is unknown")
    if len(value) > _MAX_TEXT:
        raise InvalidArgument(f"a signal value is at most {_MAX_TEXT} characters")
    return Signal(
        subject_kind=subject_kind,
        subject=_signal_subject(subject_kind, subject),
        key=_text(key, "a signal key"),
        value=value,
        set_by=actor,
        set_at=now,
        expires_at=now + ttl,
    )


def quarantine(who: str, cfg: QuarantineSettings, now: float) -> Revocation:
    """The revocation ext-authz makes when ``who`` exceeds its denial budget."""
    return Revocation(
        id=new_id("qtn"),
        kind="quarantine",
        value=who,
        reason=f"{cfg.denials} denials within {int(cfg.window)}s",
        created_by="ext-authz quarantine",
        created_at=now,
        expires_at=now + cfg.duration,
        source="quarantine",
    )


# --- re-validation of what a replica reads ------------------------------------------------------------


def _canonical(ok: bool, what: str) -> None:
    if not ok:
        raise InvalidArgument(f"{what} is not in canonical form")


def _check_revocation(r: Revocation, settings: Settings) -> None:
    if r.source not in REVOCATION_SOURCES:
        raise InvalidArgument(f"unknown source {r.source!r}")
    if r.kind == "quarantine":
        q = settings.quarantine
        if q is None:
            raise InvalidArgument("a quarantine, and quarantine is not configured here")
        if r.expires_at is None or r.expires_at - r.created_at > q.duration + 1:
            raise InvalidArgument(f"a quarantine longer than quarantine.duration ({int(q.duration)}s)")
        _canonical(principal(r.value) == r.value, "the quarantined principal")
    else:
        _canonical(revocation_value(r.kind, r.value) == (r.kind, r.value), f"the {r.kind} value")
    _text(r.reason, "a reason")
    if r.expires_at is not None and r.expires_at < r.created_at:
        raise InvalidArgument("expires before it was created")


def _check_exception(e: ExceptionGrant, settings: Settings) -> None:
    _canonical(principal(e.principal) == e.principal, "the principal")
    cap = settings.exceptions.max_duration
    if not 0 < e.expires_at - e.opened_at <= cap + 1:
        raise InvalidArgument(f"an exception longer than exceptions.max_duration ({int(cap)}s)")
    _text(e.reason, "a reason")


def _check_grant(g: Grant, settings: Settings) -> None:
    _canonical(principal(g.principal) == g.principal, "the principal")
    if not g.not_after > g.not_before:
        raise InvalidArgument("a grant that ends before it starts")
    _text(g.reason, "a reason")
    _text(g.approver, "an approver")


def _check_signal(s: Signal, settings: Settings) -> None:
    _canonical(_signal_subject(s.subject_kind, s.subject) == s.subject, "the subject")
    _text(s.key, "a signal key")
    if not s.expires_at > s.set_at:
        raise InvalidArgument("a signal without a time-to-live")


def check_record(record: Record, settings: Settings) -> None:
    """Raise InvalidArgument unless ``record`` is one this replica's own settings would have made."""
    for audit in ("created_by", "opened_by", "set_by"):
        if hasattr(record, audit):
            _text(getattr(record, audit), audit)
    if isinstance(record, Revocation):
        _check_revocation(record, settings)
    elif isinstance(record, ExceptionGrant):
        _check_exception(record, settings)
    elif isinstance(record, Grant):
        _check_grant(record, settings)
    else:
        _check_signal(record, settings)
