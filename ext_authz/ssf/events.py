"""What a verified security event changes in continuous-trust state: pure, one table.

An event becomes records (revocations and signals, ``source: ssf``, ``ref``: the SET's ``jti``) or the
end of records (RISC ``account-enabled`` lifts what *this* transmitter revoked, never an operator's
revocation). Records made from one SET get ids derived from it, so a SET applied twice (two replicas
received it, or a transmitter resent it) makes the same records, not more.

A subject's readings (subjects.py) say what each record names: the most specific part the event acts on,
narrowed by the reading's other parts (``Revocation.also``): a session-revoked for {user: jane, device: D}
refuses jane's credentials on D issued before the event, not jane elsewhere, nor anyone else on D.

- CAEP session-revoked, RISC sessions-revoked: the session (``sid``), else the token (``jti``), else
  the user, workload or device (``devices: true``): what was issued before the event is refused.
- CAEP credential-change with ``change_type`` revoke, delete or update, and RISC credential-compromise:
  the user's or workload's credentials issued before the event are refused. With ``create`` (a
  credential was added) nothing is refused: the signal ``credential_change`` says ``create TYPE``.
- RISC account-disabled, account-purged: the user or workload is revoked (every credential) until this
  transmitter's account-enabled, which lifts what its earlier account events revoked.
- CAEP device-compliance-change: the device's signal ``compliance``.
- CAEP assurance-level-change: the user's signals ``assurance_level``, ``assurance_direction`` and
  ``assurance_namespace``.
- CAEP token-claims-change: a user's signals ``claims.NAME``; about one token (``jwt_id``), the token's
  signals ``claims.NAME`` (JSON values), which policy sees in that token's ``identity.claims``.
- CAEP risk-level-change: the user's or device's signal ``risk``.

Account events are ordered by ``event_timestamp`` per transmitter and principal (a signal
``account@TRANSMITTER`` holds the newest): an older one arriving late is acknowledged and not applied.
Revocations bounded by ``issued_before`` expire ``hold`` after the event (by then every credential they
could refuse has expired); account revocations last until lifted.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from ..state.records import Revocation, Signal
from .sets import SecurityEvent, SetError
from .subjects import Subject

__all__ = ["APPLIED", "Changes", "changes_for", "event_key"]

_PREFIXES = (
    "https://schemas.openid.net/secevent/",
    "http://schemas.openid.net/secevent/",  # older examples
)
# event key (profile/name) → how it is applied; everything else is acknowledged and ignored
SESSION = frozenset({"caep/session-revoked", "risc/sessions-revoked"})
CREDENTIAL = frozenset({"caep/credential-change", "risc/credential-compromise"})
DISABLE = frozenset({"risc/account-disabled", "risc/account-purged"})
ENABLE = frozenset({"risc/account-enabled"})
SIGNALS = frozenset(
    {
        "caep/device-compliance-change",
        "caep/assurance-level-change",
        "caep/token-claims-change",
        "caep/risk-level-change",
    }
)
APPLIED = SESSION | CREDENTIAL | DISABLE | ENABLE | SIGNALS
VERIFICATION = frozenset({"ssf/verification", "sse/verification", "risc/verification"})
STREAM_UPDATED = frozenset({"ssf/stream-updated", "sse/stream-updated", "caep/stream-updated"})
_MAX_CLAIMS = 32
_MAX_SIGNAL_VALUE = 1024


def event_key(event_type: str) -> str:
    """``caep/session-revoked`` for the event-type URI (either scheme); '' for one of no known profile."""
    for prefix in _PREFIXES:
        if event_type.startswith(prefix):
            profile, _, rest = event_type[len(prefix) :].partition("/event-type/")
            return f"{profile}/{rest}" if rest and "/" not in rest else ""
    return ""


MAX_CHANGES = 64  # records one SET may make or end: more is refused, not applied in part


@dataclass(frozen=True, slots=True)
class Changes:
    revocations: tuple[Revocation, ...] = ()
    signals: tuple[Signal, ...] = ()
    # (kind, value, narrowing) whose revocations by this transmitter end: those narrowed to at least
    # the same parts (an enable for jane ends jane's disable in every tenant; one for jane in tenant T,
    # only that one)
    lift: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = ()
    at: float = 0.0  # when the event happened: ``lift`` ends only revocations from events before it
    # RISC account state per principal: (marker, the revocation it brings or None). The marker is a
    # signal ``account@TRANSMITTER`` set at the event's time: an account event older than the marker
    # held is acknowledged and not applied (a late disable never undoes a newer enable, nor the reverse)
    accounts: tuple[tuple[Signal, Revocation | None], ...] = ()
    notes: tuple[str, ...] = field(default=())  # what was not applied, and why (for the log)

    @property
    def empty(self) -> bool:
        return not (self.revocations or self.signals or self.lift or self.accounts)

    @property
    def size(self) -> int:
        return len(self.revocations) + len(self.signals) + len(self.lift) + 2 * len(self.accounts)


def _rid(event: SecurityEvent, kind: str, value: str, also: tuple[tuple[str, str], ...] = ()) -> str:
    narrowed = "".join(f"\0{k}={v}" for k, v in also)
    digest = hashlib.sha256(f"{event.issuer}\0{event.jti}\0{kind}\0{value}{narrowed}".encode()).hexdigest()
    return f"ssf_{digest[:12]}"


def _reason(event: SecurityEvent) -> str:
    admin = event.payload.get("reason_admin")
    text = ""
    if isinstance(admin, dict):
        en = admin.get("en") or next((v for v in admin.values() if isinstance(v, str)), "")
        text = en if isinstance(en, str) else ""
    elif isinstance(admin, str):  # older transmitters: a plain string
        text = admin
    base = f"{event.name} from {event.issuer}"
    return f"{base}: {' '.join(text.split())[:200]}" if text else base


def account_key(issuer: str, also: tuple[tuple[str, str], ...] = ()) -> str:
    """The signal that holds a principal's account state as ``issuer`` last said it (and when): per
    narrowing too, named by a digest of its parts (bounded, and no value can pass for two parts)."""
    if not also:
        return f"account@{issuer}"
    digest = hashlib.sha256(json.dumps(also, separators=(",", ":")).encode()).hexdigest()[:16]
    return f"account@{issuer}#{digest}"


# The part of a reading each kind of event acts on, most specific first; the reading's other parts
# narrow it (Revocation.also).
_SESSION_TARGETS = ("sid", "jti", "sub", "spiffe_id", "device")
_PRINCIPAL_TARGETS = ("sub", "spiffe_id")
# credential-change by change_type: create adds a credential (nothing to refuse: a signal only);
# revoke, delete and update end or replace one, so what was issued before the event is refused (as is
# any change_type CAEP does not define: fail closed).
CREDENTIAL_ADDS = frozenset({"create"})


def _targets(subject: Subject, kinds: tuple[str, ...]) -> list[tuple[str, str, tuple[tuple[str, str], ...]]]:
    out = []
    for reading in subject.readings:
        parts = dict(reading)
        primary = next((k for k in kinds if k in parts), None)
        if primary is None:
            continue
        also = tuple((k, v) for k, v in reading if k != primary and k != "jti")
        out.append((primary, parts[primary], also))
    return out


def changes_for(
    event: SecurityEvent,
    subject: Subject,
    *,
    now: float,
    hold: float,
    signal_ttl: float,
    account_ttl: float | None = None,
    max_ttl: float | None = None,
) -> Changes:
    """The state changes ``event`` about ``subject`` makes (SetError for a payload the event's
    definition does not allow, or for more changes than one SET may make). ``account_ttl``: how long
    past now an account marker is kept (as long as a late SET could still be accepted; ``signal_ttl``
    if None), but never longer than ``max_ttl`` past the event (signals.max_ttl)."""
    changes = _changes_for(
        event,
        subject,
        now=now,
        hold=hold,
        signal_ttl=signal_ttl,
        account_ttl=signal_ttl if account_ttl is None else account_ttl,
        max_ttl=max_ttl,
    )
    if changes.size > MAX_CHANGES:
        raise SetError("invalid_request", f"the event names more than {MAX_CHANGES} things to change")
    return changes


def _changes_for(
    event: SecurityEvent,
    subject: Subject,
    *,
    now: float,
    hold: float,
    signal_ttl: float,
    account_ttl: float,
    max_ttl: float | None,
) -> Changes:
    key = event_key(event.event_type)
    at = min(event.event_time, now)  # an event cannot have happened after we received it
    actor = f"ssf:{event.issuer}"
    reason = _reason(event)

    def revoke(kind: str, value: str, also: tuple[tuple[str, str], ...], *, bounded: bool) -> Revocation:
        return Revocation(
            id=_rid(event, kind, value, also),
            kind=kind,
            value=value,
            reason=reason,
            created_by=actor,
            created_at=at,  # when the event happened: a later account-enabled lifts it, an earlier one not
            expires_at=at + hold if bounded else None,
            source="ssf",
            ref=event.jti,
            issued_before=at if bounded else None,
            also=also,
        )

    if key in SESSION:
        targets = _targets(subject, _SESSION_TARGETS)
        if not subject.devices_allowed:
            targets = [t for t in targets if t[0] != "device"]
        return Changes(revocations=tuple(revoke(k, v, a, bounded=True) for k, v, a in targets))
    if key in CREDENTIAL:
        targets = _targets(subject, _PRINCIPAL_TARGETS)
        if key == "caep/credential-change":
            _need(event, "credential_type", "change_type")
            change = event.payload["change_type"]
            if change in CREDENTIAL_ADDS:
                # create (a new credential enrolled): nothing is refused; a signal says what happened
                sigs = [
                    Signal(
                        "user" if k == "sub" else "workload",
                        v,
                        "credential_change",
                        f"{change} {_value(event.payload['credential_type'])}"[:_MAX_SIGNAL_VALUE],
                        actor,
                        at,
                        at + signal_ttl,
                        source="ssf",
                        ref=event.jti,
                    )
                    for k, v, _ in targets
                ]
                return Changes(signals=tuple(sigs))
        else:
            _need(event, "credential_type")
        return Changes(revocations=tuple(revoke(k, v, a, bounded=True) for k, v, a in targets))
    if key in DISABLE or key in ENABLE:
        disable = key in DISABLE
        accounts = []
        # Kept while a late SET could still come, and no longer than a signal may be fresh: an event
        # older than that is applied without a marker (nothing later can still be late against it).
        until = now + account_ttl if max_ttl is None else min(now + account_ttl, at + max_ttl)
        for kind, value, also in _targets(subject, _PRINCIPAL_TARGETS):
            marker = Signal(
                "user" if kind == "sub" else "workload",
                value,
                account_key(event.issuer, also),
                "disabled" if disable else "enabled",
                actor,
                at,
                until,
                source="ssf",
                ref=event.jti,
            )
            accounts.append((marker, revoke(kind, value, also, bounded=False) if disable else None))
        lift = () if disable else tuple(_targets(subject, _PRINCIPAL_TARGETS))
        return Changes(accounts=tuple(accounts), lift=lift, at=at)
    if key in SIGNALS:
        return Changes(signals=tuple(_signals(event, key, subject, at, signal_ttl, actor)))
    return Changes(notes=(f"event {event.event_type} is not applied",))


def _need(event: SecurityEvent, *names: str) -> None:
    for name in names:
        if not isinstance(event.payload.get(name), str) or not event.payload[name]:
            raise SetError("invalid_request", f"{event.name} requires {name}")


def _value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), sort_keys=True)
    if len(text) > _MAX_SIGNAL_VALUE:
        raise SetError("invalid_request", f"a claim value is longer than {_MAX_SIGNAL_VALUE} characters")
    return text


def _json(value: object) -> str:
    text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    if len(text) > _MAX_SIGNAL_VALUE:
        raise SetError("invalid_request", f"a claim value is longer than {_MAX_SIGNAL_VALUE} characters")
    return text


def _signals(
    event: SecurityEvent, key: str, subject: Subject, at: float, ttl: float, actor: str
) -> list[Signal]:
    def sig(kind: str, who: str, name: str, value: str) -> Signal:
        return Signal(kind, who, name, value, actor, at, at + ttl, source="ssf", ref=event.jti)

    p = event.payload
    out: list[Signal] = []
    # A fact about a user is kept per user: one the subject narrows (jane's session S, jane on device D,
    # jane in tenant T) cannot be kept that narrowly, and applied to all of jane it could widen access
    # (an assurance increase, a lower risk). Such readings make no user signals.
    users = tuple(dict(r)["sub"] for r in subject.readings if "sub" in dict(r) and len(r) == 1)
    if key == "caep/device-compliance-change":
        _need(event, "current_status")
        status = p["current_status"]
        if status not in ("compliant", "not-compliant"):
            raise SetError("invalid_request", "current_status is compliant or not-compliant")
        out += [sig("device", d, "compliance", status) for d in subject.devices]
    elif key == "caep/assurance-level-change":
        _need(event, "namespace", "current_level")
        direction = p.get("change_direction")
        for u in users:
            out.append(sig("user", u, "assurance_level", _value(p["current_level"])))
            out.append(sig("user", u, "assurance_namespace", _value(p["namespace"])))
            if direction in ("increase", "decrease"):
                out.append(sig("user", u, "assurance_direction", direction))
    elif key == "caep/token-claims-change":
        claims = p.get("claims")
        if not isinstance(claims, dict) or not claims or len(claims) > _MAX_CLAIMS:
            raise SetError("invalid_request", f"token-claims-change requires claims (1 to {_MAX_CLAIMS})")
        for u in users:
            out += [sig("user", u, f"claims.{name}", _value(v)) for name, v in sorted(claims.items())]
        # About one token (jwt_id): kept as JSON, exactly (false stays a boolean, "false" a string). From
        # the token's own issuer it is what policy sees of that token (identity.claims); from another
        # transmitter it is kept under its own name (claims.NAME@TRANSMITTER), so it can neither stand in
        # for nor overwrite what the issuer said.
        for t in subject.tokens:
            suffix = "" if t.partition("#")[0] == event.issuer else f"@{event.issuer}"
            out += [sig("token", t, f"claims.{name}{suffix}", _json(v)) for name, v in sorted(claims.items())]
    elif key == "caep/risk-level-change":
        _need(event, "current_level")
        level = p["current_level"]
        for u in users:
            out.append(sig("user", u, "risk", _value(level)))
        out += [sig("device", d, "risk", _value(level)) for d in subject.devices]
    return out
