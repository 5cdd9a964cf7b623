"""What a verified security event changes in continuous-trust state: pure, one table.

An event becomes records (revocations and signals, ``source: ssf``, ``ref``: the SET's ``jti``) or the
end of records (RISC ``account-enabled`` lifts what *this* transmitter revoked, never an operator's
revocation). Records made from one SET get ids derived from it, so a SET applied twice (two replicas
received it, or a transmitter resent it) makes the same records, not more.

- CAEP session-revoked (and RISC sessions-revoked): a session (a complex subject's `session`) or a
  token (`jwt_id`) is revoked; a user, workload or device without them: its credentials issued before
  the event are refused (`issued_before`).
- CAEP credential-change, RISC credential-compromise: a user's or workload's credentials issued before
  the event are refused.
- RISC account-disabled, account-purged: the user or workload is revoked (every credential) until
  RISC account-enabled, which lifts what this transmitter revoked.
- CAEP device-compliance-change: the device's signal `compliance` holds the current status.
- CAEP assurance-level-change: the user's signals `assurance_level`, `assurance_direction` and
  `assurance_namespace`.
- CAEP token-claims-change: the user's signals `claims.NAME`; risk-level-change: `risk`.

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
    lift: tuple[tuple[str, str], ...] = ()  # (kind, value) whose revocations by this transmitter end
    at: float = 0.0  # when the event happened: ``lift`` ends only revocations from events before it
    notes: tuple[str, ...] = field(default=())  # what was not applied, and why (for the log)

    @property
    def empty(self) -> bool:
        return not (self.revocations or self.signals or self.lift)


def _rid(event: SecurityEvent, kind: str, value: str) -> str:
    digest = hashlib.sha256(f"{event.issuer}\0{event.jti}\0{kind}\0{value}".encode()).hexdigest()
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


def changes_for(
    event: SecurityEvent, subject: Subject, *, now: float, hold: float, signal_ttl: float
) -> Changes:
    """The state changes ``event`` about ``subject`` makes (SetError for a payload the event's
    definition does not allow, or for more changes than one SET may make)."""
    changes = _changes_for(event, subject, now=now, hold=hold, signal_ttl=signal_ttl)
    if len(changes.revocations) + len(changes.signals) + len(changes.lift) > MAX_CHANGES:
        raise SetError("invalid_request", f"the event names more than {MAX_CHANGES} things to change")
    return changes


def _changes_for(
    event: SecurityEvent, subject: Subject, *, now: float, hold: float, signal_ttl: float
) -> Changes:
    key = event_key(event.event_type)
    at = min(event.event_time, now)  # an event cannot have happened after we received it
    actor = f"ssf:{event.issuer}"
    reason = _reason(event)

    def revoke(kind: str, value: str, *, bounded: bool) -> Revocation:
        return Revocation(
            id=_rid(event, kind, value),
            kind=kind,
            value=value,
            reason=reason,
            created_by=actor,
            created_at=at,  # when the event happened: a later account-enabled lifts it, an earlier one not
            expires_at=at + hold if bounded else None,
            source="ssf",
            ref=event.jti,
            issued_before=at if bounded else None,
        )

    def principals_kinds() -> list[tuple[str, str]]:
        return [("sub", u) for u in subject.users] + [("spiffe_id", w) for w in subject.workloads]

    if key in SESSION:
        if subject.sessions or subject.tokens:  # the narrowest the event names
            revs = [revoke("sid", s, bounded=True) for s in subject.sessions]
            revs += [revoke("jti", t, bounded=True) for t in subject.tokens]
        else:
            revs = [revoke(k, v, bounded=True) for k, v in principals_kinds()]
            revs += [revoke("device", d, bounded=True) for d in subject.devices]
        return Changes(revocations=tuple(revs))
    if key in CREDENTIAL:
        if key == "caep/credential-change":
            _need(event, "credential_type", "change_type")
        else:
            _need(event, "credential_type")
        return Changes(revocations=tuple(revoke(k, v, bounded=True) for k, v in principals_kinds()))
    if key in DISABLE:
        return Changes(revocations=tuple(revoke(k, v, bounded=False) for k, v in principals_kinds()))
    if key in ENABLE:
        return Changes(lift=tuple(principals_kinds()), at=at)
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


def _signals(
    event: SecurityEvent, key: str, subject: Subject, at: float, ttl: float, actor: str
) -> list[Signal]:
    def sig(kind: str, who: str, name: str, value: str) -> Signal:
        return Signal(kind, who, name, value, actor, at, at + ttl, source="ssf", ref=event.jti)

    p = event.payload
    out: list[Signal] = []
    if key == "caep/device-compliance-change":
        _need(event, "current_status")
        status = p["current_status"]
        if status not in ("compliant", "not-compliant"):
            raise SetError("invalid_request", "current_status is compliant or not-compliant")
        out += [sig("device", d, "compliance", status) for d in subject.devices]
    elif key == "caep/assurance-level-change":
        _need(event, "namespace", "current_level")
        direction = p.get("change_direction")
        for u in subject.users:
            out.append(sig("user", u, "assurance_level", _value(p["current_level"])))
            out.append(sig("user", u, "assurance_namespace", _value(p["namespace"])))
            if direction in ("increase", "decrease"):
                out.append(sig("user", u, "assurance_direction", direction))
    elif key == "caep/token-claims-change":
        claims = p.get("claims")
        if not isinstance(claims, dict) or not claims or len(claims) > _MAX_CLAIMS:
            raise SetError("invalid_request", f"token-claims-change requires claims (1 to {_MAX_CLAIMS})")
        for u in subject.users:
            out += [sig("user", u, f"claims.{name}", _value(v)) for name, v in sorted(claims.items())]
    elif key == "caep/risk-level-change":
        _need(event, "current_level")
        level = p["current_level"]
        for u in subject.users:
            out.append(sig("user", u, "risk", _value(level)))
        out += [sig("device", d, "risk", _value(level)) for d in subject.devices]
    return out
