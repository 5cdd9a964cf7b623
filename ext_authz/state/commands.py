"""State commands: validation and record building, pure, shared by the admin API and the CLI.

Every function either returns a well-formed record (or canonical value) or raises InvalidArgument with
one line a person can act on. The same checks re-validate records a replica reads from a shared store
(:func:`check_record`): a record another writer made is input like any other.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..errors import Error
from ..identity.names import NameError_, parse_name, parse_serial
from ..match import HostPattern, PatternError, parse_host, path_pattern
from ..principal import PrincipalError, parse_principal, parse_scoped
from ..settings import GrantsSettings, QuarantineSettings, Settings, SignalsSettings
from ..spiffe_id import SpiffeIdError, workload_id
from .records import (
    NARROWING_KINDS,
    REVOCATION_KINDS,
    REVOCATION_SOURCES,
    SIGNAL_SUBJECTS,
    ExceptionGrant,
    Grant,
    Record,
    Revocation,
    Scope,
    SeenEvent,
    Signal,
)

A = TypeVar("A", Grant, ExceptionGrant)

__all__ = [
    "EXCEPTIONS",
    "GRANTS",
    "InvalidArgument",
    "Lifecycle",
    "approve_exception",
    "approve_grant",
    "check_record",
    "close_exception",
    "create_grant",
    "end_grant",
    "end_revocation",
    "known_issuer",
    "may_approve",
    "new_id",
    "open_exception",
    "put_signal",
    "quarantine",
    "reason",
    "revocation_value",
    "revoke",
    "same_revocation",
    "scope",
    "signal_id",
    "unmatched",
]

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_OPERATOR_KINDS = tuple(k for k in REVOCATION_KINDS if k != "quarantine")
_MAX_TEXT = 1024  # reasons, approvers, signal keys and values
_MAX_TICKET = 200
_MAX_LEAD = 7 * 86400.0  # a grant may be made for a window that starts at most this far ahead
# A JWS or JWE in compact form, whole or cut short: a base64url JSON header ('{"' is 'eyJ'), a dot, and
# the start of its payload.
_TOKENISH = re.compile(r"eyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{8,}")


class InvalidArgument(Error, ValueError):
    """Input the state cannot take; the message is one line for the person who gave it."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


def no_token(value: str, what: str) -> None:
    """Refuse a whole token where a claim's value (or a person's words) belongs. The message never
    repeats the value: a pasted token is a secret, and it must not reach a log or a terminal again."""
    if _TOKENISH.search(value):
        raise InvalidArgument(f"{what} {_WHOLE_JWT_MESSAGE}")


_WHOLE_JWT_MESSAGE = (
    "looks like a whole token (a JWT), not a value: pass the claim's value instead"
    " (the token was neither stored nor logged)"
)


def principal(value: str) -> str:
    no_token(value, "the principal")
    try:
        return parse_principal(value)
    except PrincipalError as exc:
        raise InvalidArgument(str(exc)) from exc


def _spiffe_id(value: str) -> str:
    try:
        return str(workload_id(value))
    except SpiffeIdError as exc:
        raise InvalidArgument(f"not a workload's SPIFFE ID: {exc}") from exc


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
        no_token(value, f"the {kind}")
        try:
            return kind, parse_scoped(value, f"a {kind}")
        except PrincipalError as exc:
            raise InvalidArgument(str(exc)) from exc
    return kind, value  # device ids are not tied to an issuer


def _text(value: str, what: str, limit: int = _MAX_TEXT) -> str:
    try:
        return _plain_text(value, limit)
    except ValueError as exc:
        raise InvalidArgument(f"{what} {exc}") from None


@functools.lru_cache(maxsize=1024)
def _plain_text(value: str, limit: int) -> str:
    """``value`` stripped, if it is bounded, not empty and no token (ValueError saying what is wrong).
    Remembered: the same few makers and reasons recur across a million stored records, each checked
    again when they are read. Only accepted text is remembered (a refusal raises), so no token is."""
    value = value.strip()
    if not value:
        raise ValueError("is required")
    if len(value) > limit:
        raise ValueError(f"is longer than {limit} characters")
    if _TOKENISH.search(value):
        raise ValueError(_WHOLE_JWT_MESSAGE)
    return value


def reason(value: str) -> str:
    """A person's reason for a change: required, one bounded line of text, never a token."""
    return _text(value, "a reason")


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g}h" if seconds >= 3600 else f"{int(seconds)}s"


# Requests unlike each other in every way a pattern can tell: a pattern that matches all of them
# matches every request (only `*` is special, so a path glob that takes both "/" and a long path is all
# `*` with at most one "/"; a host glob that takes every kind of host is `*`).
_ANY_PATHS = ("/", "/zz9/q.r")
_ANY_HOSTS = tuple(h for h in map(parse_host, ("a", "zz9.q.example", "[::1]:1", "192.0.2.1:65535")) if h)


def _every_host(pattern: str) -> bool:
    """Does a host pattern name no host in particular: every one, or every one of a shape (``*.*``,
    ``*.*.*:443``)? Its name is nothing but `*` and dots."""
    name = pattern if pattern.endswith("]") else pattern.rsplit(":", 1)[0]
    return set(name) <= {"*", "."} or all(HostPattern.parse(pattern).match(t) for t in _ANY_HOSTS)


def _everything(what: Scope) -> tuple[str, str]:
    """The host and the path pattern of ``what`` that match every request ('' where none does)."""
    host = next((h for h in what.hosts if _every_host(h)), "")
    path = next((p for p in what.paths if all(path_pattern(p).match(t) for t in _ANY_PATHS)), "")
    return host, path


def _scoped(what: Scope, record: str) -> Scope:
    """A scope that names something: a host or a path that is not every host or every path. ``*``,
    ``/*`` and ``/**`` are everything, and a list that holds one of them is too."""
    host, path = _everything(what)
    hosts = bool(what.hosts) and not host
    paths = bool(what.paths) and not path
    if not (hosts or paths):
        every = f" (--host {host!r} is every host)" if host else ""
        every += f" (--path {path!r} is every path)" if path else ""
        raise InvalidArgument(
            f"{record} names a scope: at least a host (--host) or a path (--path) that is not"
            f" everything{every}"
        )
    return what


def may_approve(actor: str, local_approvals: bool) -> None:
    """Who may approve at all: a caller whose name is its own claim (``local:``, the unix socket) only
    where ``admin.local_approvals`` says there is one operator; over TCP a verified SPIFFE ID."""
    if actor.startswith("local:") and not local_approvals:
        raise InvalidArgument(
            "approvals over the unix socket are refused: every local caller names itself, so one"
            " person could be two; approve over the TCP admin API with your own SVID (or set"
            " admin.local_approvals: true for one operator or a demo)"
        )


def _second_person(actor: str, first: str, what: str) -> None:
    if actor == first:
        raise InvalidArgument(
            f"{what} was made by {actor}; it must be approved by a different caller (two people)"
        )


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
    """A revocation of ``kind``/``value``; ``duration`` 0 means until it is unrevoked."""
    kind, value = revocation_value(kind, value)
    if duration < 0:
        raise InvalidArgument("a revocation's duration must be positive (or none: until unrevoked)")
    return Revocation(
        id=new_id("rev"),
        kind=kind,
        value=value,
        reason=_text(reason, "a reason"),
        created_by=actor,
        created_at=now,
        expires_at=now + duration if duration else None,
    )


def same_revocation(new: Revocation, known: Revocation, now: float) -> bool:
    """Is ``known`` (in force) already everything ``new`` asks for? Then ``new`` adds nothing. Only a
    revocation by the same maker counts: another's (an identity provider's, which it may lift again)
    is no stand-in for this one."""
    if not known.active(now) or (known.kind, known.value) != (new.kind, new.value):
        return False
    if (known.created_by, known.source) != (new.created_by, new.source):
        return False
    if known.issued_before != new.issued_before:
        return False
    return known.expires_at is None or (new.expires_at is not None and known.expires_at >= new.expires_at)


def end_revocation(rev: Revocation, reason: str, actor: str, now: float) -> Revocation:
    """Lift a revocation early. The record is kept (listed with ``--all``, audited), not deleted."""
    if rev.ended_at is not None:
        return rev
    return dataclasses.replace(rev, ended_at=now, ended_by=actor, end_reason=_text(reason, "a reason"))


def create_grant(
    who: str,
    what: Scope,
    not_before: float,
    duration: float,
    reason: str,
    approver: str,
    actor: str,
    now: float,
    cfg: GrantsSettings | None = None,
    ticket: str = "",
) -> Grant:
    """A just-in-time grant. Where ``grants.require_approval`` (the default) it is pending until a
    different caller approves it (:func:`approve_grant`); otherwise ``approver`` names who approved."""
    cfg = cfg or GrantsSettings()
    if duration <= 0:
        raise InvalidArgument("a grant needs a duration: it must expire by itself")
    if duration > cfg.max_duration:
        raise InvalidArgument(
            f"a grant of {_hours(duration)} is over the cap grants.max_duration={_hours(cfg.max_duration)}"
        )
    start = not_before or now
    if start > now + _MAX_LEAD:
        raise InvalidArgument(f"a grant starts at most {_hours(_MAX_LEAD)} from now")
    if cfg.require_approval and approver.strip():
        raise InvalidArgument(
            "grants are approved by a second caller (grants.require_approval): drop --approver and have"
            " them run `ext-authz grant approve ID --reason TEXT`"
        )
    return Grant(
        id=new_id("grt"),
        principal=principal(who),
        scope=_scoped(what, "a grant"),
        not_before=start,
        not_after=start + duration,
        reason=_text(reason, "a reason"),
        approver="" if cfg.require_approval else _text(approver, "an approver (--approver)"),
        created_by=actor,
        created_at=now,
        ticket=_text(ticket, "a ticket", _MAX_TICKET) if ticket.strip() else "",
        approved_at=None if cfg.require_approval else now,
    )


# --- what grants and exceptions share: made, approved by a second person, ended early -----------------


@dataclass(frozen=True, slots=True)
class Lifecycle(Generic[A]):
    """An approvable record's steps, and what they are called for it."""

    noun: str  # grant, exception
    cls: type[A]
    approve: Callable[[A, str, str, float], A]
    end: Callable[[A, str, str, float], A]
    end_action: str  # the audit action (and command) of ending one early: end, close
    ended: str  # what it is once ended: ended, closed


def _may_be_approved(
    record: Grant | ExceptionGrant, approved_by: str, maker: str, ended: str | None, *, actor: str, now: float
) -> None:
    """A pending record, not ended (``ended`` says how, if it was) nor waited past APPROVAL_WAIT, approved
    by someone other than its maker."""
    name = f"{record.RECORD} {record.id}"
    if not record.pending:
        raise InvalidArgument(f"{name} is already approved (by {approved_by})")
    if ended is not None or now >= (record.finished_at() or 0):
        raise InvalidArgument(f"{name} {ended or 'has ended'} or waited too long; make a new one")
    _second_person(actor, maker, name)


def _may_end(record: Grant | ExceptionGrant, ended: str, by: str | None) -> None:
    """Ending one already ended (``by`` someone) is refused, as lifting a lifted revocation is."""
    if by is not None:
        raise InvalidArgument(f"{record.RECORD} {record.id} {ended} (by {by})")


def approve_grant(grant: Grant, reason: str, actor: str, now: float) -> Grant:
    """Approve a pending grant. Its window starts now if it was to start earlier: a 2-minute grant
    approved an hour after it was asked for lasts 2 minutes from the approval. A request waits for its
    approval at most APPROVAL_WAIT (24h)."""
    ended = "has ended" if grant.ended_at is not None else None
    _may_be_approved(grant, grant.approver, grant.created_by, ended, actor=actor, now=now)
    _text(reason, "a reason")
    start = max(now, grant.not_before)
    return dataclasses.replace(
        grant,
        approver=actor,
        approved_at=now,
        not_before=start,
        not_after=start + (grant.not_after - grant.not_before),
    )


def end_grant(grant: Grant, reason: str, actor: str, now: float) -> Grant:
    """End a grant early."""
    _may_end(grant, "has already ended", grant.ended_by if grant.ended_at is not None else None)
    return dataclasses.replace(grant, ended_at=now, ended_by=actor, end_reason=_text(reason, "a reason"))


def open_exception(
    who: str,
    what: Scope,
    reason: str,
    duration: float,
    actor: str,
    now: float,
    max_duration: float,
    require_approval: bool = True,
) -> ExceptionGrant:
    """Break-glass for one principal and scope. Pending, with no effect, until a different caller
    approves it (:func:`approve_exception`) where ``exceptions.require_approval`` (the default)."""
    if duration <= 0:
        raise InvalidArgument("an exception needs a duration: exceptions are never permanent")
    if duration > max_duration:
        raise InvalidArgument(
            f"an exception of {_hours(duration)} is over the cap"
            f" exceptions.max_duration={_hours(max_duration)}"
        )
    return ExceptionGrant(
        id=new_id("exc"),
        principal=principal(who),
        scope=_scoped(what, "an exception"),
        reason=_text(reason, "a reason"),
        opened_by=actor,
        opened_at=now,
        expires_at=now + duration,
        approved_at=None if require_approval else now,
    )


def approve_exception(exc: ExceptionGrant, reason: str, actor: str, now: float) -> ExceptionGrant:
    """Approve a pending exception: its time box starts now, as long as it was asked for. A request
    waits for its approval at most APPROVAL_WAIT (24h)."""
    closed = "is closed" if exc.closed_at is not None else None
    _may_be_approved(exc, exc.approved_by or "config", exc.opened_by, closed, actor=actor, now=now)
    _text(reason, "a reason")
    return dataclasses.replace(
        exc, approved_by=actor, approved_at=now, expires_at=now + (exc.expires_at - exc.opened_at)
    )


def close_exception(exc: ExceptionGrant, reason: str, actor: str, now: float) -> ExceptionGrant:
    """Close an exception."""
    _may_end(exc, "is already closed", exc.closed_by if exc.closed_at is not None else None)
    return dataclasses.replace(exc, closed_at=now, closed_by=actor, close_reason=_text(reason, "a reason"))


GRANTS: Lifecycle[Grant] = Lifecycle("grant", Grant, approve_grant, end_grant, "end", "ended")
EXCEPTIONS: Lifecycle[ExceptionGrant] = Lifecycle(
    "exception", ExceptionGrant, approve_exception, close_exception, "close", "closed"
)


def _signal_subject(subject_kind: str, subject: str) -> str:
    if subject_kind not in SIGNAL_SUBJECTS:
        raise InvalidArgument(f"unknown subject kind {subject_kind!r}; expected {', '.join(SIGNAL_SUBJECTS)}")
    subject = subject.strip()
    if not subject:
        raise InvalidArgument("a signal needs a subject")
    if subject_kind == "workload":
        return _spiffe_id(subject)
    if subject_kind == "token":  # one token: ISSUER#jti
        return revocation_value("jti", subject)[1]
    if subject_kind == "user":
        key = principal(subject)
        if key.startswith("spiffe://"):
            raise InvalidArgument(
                "a user signal names a user as ISSUER#SUBJECT; use workload: for a SPIFFE ID"
            )
        return key
    return subject


def signal_id(subject_kind: str, subject: str, key: str) -> str:
    """The id of the signal ``subject_kind``/``subject``/``key`` (checked and canonical)."""
    return f"{subject_kind}\0{_signal_subject(subject_kind, subject)}\0{_text(key, 'a signal key')}"


def put_signal(
    subject_kind: str,
    subject: str,
    key: str,
    value: str,
    ttl: float,
    actor: str,
    now: float,
    cfg: SignalsSettings | None = None,
    *,
    source: str = "api",
    ref: str = "",
) -> Signal:
    cfg = cfg or SignalsSettings()
    if ttl <= 0:
        raise InvalidArgument("a signal needs a time-to-live: a stale signal is unknown")
    if ttl > cfg.max_ttl:
        raise InvalidArgument(
            f"a time-to-live of {_hours(ttl)} is over the cap signals.max_ttl={_hours(cfg.max_ttl)}"
        )
    if len(value) > _MAX_TEXT:
        raise InvalidArgument(f"a signal value is at most {_MAX_TEXT} characters")
    no_token(value, "a signal value")
    return Signal(
        subject_kind=subject_kind,
        subject=_signal_subject(subject_kind, subject),
        key=_text(key, "a signal key"),
        value=value,
        set_by=actor,
        set_at=now,
        expires_at=now + ttl,
        source=source,
        ref=ref,
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
    if r.ended_at is not None:
        _text(r.ended_by, "ended_by")
    _check_narrowing(r.also)


_MAX_NARROWING = 4


def narrowing(kind: str, value: str) -> tuple[str, str]:
    """One part a revocation is narrowed to, checked and canonical (InvalidArgument otherwise)."""
    if kind not in NARROWING_KINDS:
        raise InvalidArgument(f"a revocation is narrowed by {', '.join(NARROWING_KINDS)}, not {kind!r}")
    if kind == "sub":
        return kind, principal(value)
    if kind == "spiffe_id":
        return kind, _spiffe_id(value)
    if kind == "sid":
        return revocation_value("sid", value)
    if not value.isprintable():
        raise InvalidArgument(f"the {kind} it is narrowed to holds a control character")
    return kind, _text(value, f"the {kind}")


def _check_narrowing(also: tuple[tuple[str, str], ...]) -> None:
    if len(also) > _MAX_NARROWING:
        raise InvalidArgument(f"a revocation is narrowed by at most {_MAX_NARROWING} parts")
    kinds = [kind for kind, _ in also]
    if len(set(kinds)) != len(kinds):
        raise InvalidArgument("a revocation is narrowed by each kind once")
    for kind, value in also:
        _canonical(narrowing(kind, value) == (kind, value), f"the {kind} it is narrowed to")


def _check_exception(e: ExceptionGrant, settings: Settings) -> None:
    _canonical(principal(e.principal) == e.principal, "the principal")
    cap = settings.exceptions.max_duration
    start = e.approved_at if e.approved_at is not None and e.approved_at > e.opened_at else e.opened_at
    if not 0 < e.expires_at - start <= cap + 1:
        raise InvalidArgument(f"an exception longer than exceptions.max_duration ({int(cap)}s)")
    _text(e.reason, "a reason")
    _scoped(e.scope, "an exception")
    if not e.pending and settings.exceptions.require_approval:
        _second_person(e.approved_by, e.opened_by, "an approved exception")
        _text(e.approved_by, "approved_by")


def _check_grant(g: Grant, settings: Settings) -> None:
    _canonical(principal(g.principal) == g.principal, "the principal")
    if not g.not_after > g.not_before:
        raise InvalidArgument("a grant that ends before it starts")
    cap = settings.grants.max_duration
    if g.not_after - g.not_before > cap + 1:
        raise InvalidArgument(f"a grant longer than grants.max_duration ({int(cap)}s)")
    _text(g.reason, "a reason")
    _scoped(g.scope, "a grant")
    if not g.pending:
        _text(g.approver, "an approver")
        if settings.grants.require_approval:
            _second_person(g.approver, g.created_by, "an approved grant")


def _check_signal(s: Signal, settings: Settings) -> None:
    _canonical(_signal_subject(s.subject_kind, s.subject) == s.subject, "the subject")
    _text(s.key, "a signal key")
    if not s.expires_at > s.set_at:
        raise InvalidArgument("a signal without a time-to-live")
    if s.expires_at - s.set_at > settings.signals.max_ttl + 1:
        raise InvalidArgument(
            f"a signal fresh for longer than signals.max_ttl ({int(settings.signals.max_ttl)}s)"
        )
    if s.source not in ("api", "ssf"):
        raise InvalidArgument(f"unknown source {s.source!r}")
    no_token(s.value, "a signal value")


def _check_seen(s: SeenEvent, settings: Settings) -> None:
    receivers = {r.issuer: r for r in settings.shared_signals.receivers}
    rc = receivers.get(s.issuer)
    if rc is None:
        raise InvalidArgument(f"a SET seen from {s.issuer}, which is not a configured receiver")
    if s.id != SeenEvent.id_for(s.issuer, s.jti):
        raise InvalidArgument("a seen SET under another id than its own")
    if not 0 <= s.expires_at - s.seen_at <= rc.max_age + 2 * rc.leeway + 1:
        raise InvalidArgument("a seen SET kept longer than its receiver's max_age")


# Per record type: the field naming who made it (checked as text), and the type's own checks.
_RECORD_CHECKS: dict[type, tuple[str, Callable[[Any, Settings], None]]] = {
    Revocation: ("created_by", _check_revocation),
    Grant: ("created_by", _check_grant),
    ExceptionGrant: ("opened_by", _check_exception),
    Signal: ("set_by", _check_signal),
    SeenEvent: ("", _check_seen),
}


def check_record(record: Record, settings: Settings) -> None:
    """Raise InvalidArgument unless ``record`` is one this replica's own settings would have made."""
    maker, check = _RECORD_CHECKS[type(record)]
    if maker:
        _text(getattr(record, maker), maker)
    check(record, settings)


# --- records that name an issuer or trust domain this config does not verify ------------------------


def _named_source(record: Record) -> str:
    """The principal key or token-scoped value a record names, whose issuer part must be configured for
    it to ever match ('' when what it names is not tied to an issuer: a certificate, a device)."""
    if isinstance(record, Revocation):
        return record.value if record.kind in ("spiffe_id", "sub", "jti", "sid", "quarantine") else ""
    if isinstance(record, Grant | ExceptionGrant):
        return record.principal
    if isinstance(record, Signal):
        return record.subject if record.subject_kind in ("workload", "user", "token") else ""
    return ""


def _source_of(name: str) -> tuple[str, str]:
    """(``trust domain`` or ``issuer``, its name) of a principal key or a token-scoped value."""
    if name.startswith("spiffe://"):
        return "trust domain", name[len("spiffe://") :].split("/", 1)[0].split("#", 1)[0]
    return "issuer", name.partition("#")[0]


def _unconfigured(record: Record, settings: Settings) -> tuple[str, str, list[str]] | None:
    """(``trust domain`` or ``issuer``, the one ``record`` names, those configured) when what it names
    is not configured; None when it is, or when it names no issuer."""
    name = _named_source(record)
    if not name:
        return None
    what, source = _source_of(name)
    configured = settings.trust_domains if what == "trust domain" else settings.issuers
    return None if source in configured else (what, source, sorted(configured))


def unmatched(record: Record, settings: Settings) -> str:
    """Why ``record`` can match no request under ``settings`` ('' when it can): it names an issuer or a
    trust domain that is not configured, so no credential this server accepts is ever about it."""
    found = _unconfigured(record, settings)
    return f"{found[0]} {found[1]!r} is not configured" if found else ""


def known_issuer(record: Record, settings: Settings) -> None:
    """Refuse a record that names an issuer or trust domain this server does not verify: it would be
    kept, listed and audited, and protect (or grant) nothing. The message lists what is configured and
    suggests a close spelling (a trailing slash, a different case)."""
    found = _unconfigured(record, settings)
    if found is None:
        return
    what, source, configured = found
    folded = {c.lower().rstrip("/"): c for c in configured}
    close = folded.get(source.lower().rstrip("/"))
    if close is None:
        near = difflib.get_close_matches(source, configured, n=1, cutoff=0.8)
        close = near[0] if near else None
    listed = ", ".join(configured) if configured else "none"
    hint = f"; did you mean {close}?" if close else ""
    raise InvalidArgument(
        f"{what} {source!r} is not configured (configured: {listed}){hint}: a record about it would match"
        " nothing; pass --allow-unknown if it will be configured later"
    )
