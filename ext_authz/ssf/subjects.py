"""RFC 9493 subject identifiers (and SSF 1.0's complex subjects) → what state names.

A SET's ``sub_id`` says whom an event is about; state names principals exactly (ext_authz/principal.py).
This module is the one place that turns the first into the second, and it is strict about whose
subjects a transmitter may name: a receiver's events apply only to subjects of its ``for_issuers``
(token issuers, and ``spiffe://TRUST-DOMAIN`` for workloads). A subject outside them names nobody here.

A subject resolves to *readings*: each one set of parts that hold together, kind → value, with the
kinds state keys (``sub`` ISSUER#SUBJECT, ``spiffe_id``, ``sid`` ISSUER#sid, ``jti`` ISSUER#jti,
``device``, ``tenant``). A simple subject gives one reading of one part (an ``aliases`` subject, one per
alias); a complex subject gives readings of several parts, which apply *together* (SSF 1.0 §3.3.2,
CAEP 1.0 §3.1: "any session derived from matching those combined claims"): {user: jane, device: D} is
jane's credentials on D, not jane everywhere nor D for everyone.

- ``user`` is the principal. One this receiver may not name (another issuer, a format that names no
  user here) makes the whole subject name nobody: dropping it would widen the event to everyone.
- ``session`` is an opaque id of the user's issuer (of every token issuer of the receiver without a user).
- ``device`` is an opaque id (or the ``sub`` of an ``iss_sub`` of one of for_issuers, as CAEP's examples
  name devices). With a user or session it only narrows; on its own it names a device for whoever uses
  it, which only a receiver with ``devices: true`` may.
- ``tenant`` (opaque) narrows to requests whose token has that tenant (``tenant.claim``).
- anything else (``application``, ``group``, ``org_unit``, a format we cannot read) is not applied: the
  event applies without that part (SSF's wildcard), noted, unless the transmitter marked it critical
  (``critical_subject_members``): then the whole event is discarded (SSF 1.0 §3.4).

An opaque subject on its own is read as what the event is about (``opaque_as``): a session in
session-revoked, a device in device-compliance-change; a receiver overrides that with ``opaque_subject``.

Legacy spellings still met in the field are read (``subject_type`` for ``format``, ``iss-sub``,
``jwt-id``, a complex subject without ``format``); nothing is ever written in them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import Error
from ..spiffe_id import SpiffeId, SpiffeIdError

__all__ = ["Reading", "Subject", "SubjectError", "resolve"]

_FORMAT_ALIASES = {
    "iss-sub": "iss_sub",
    "jwt-id": "jwt_id",
    "phone-number": "phone_number",
    "phone": "phone_number",
}
_COMPLEX_PARTS = ("user", "device", "session", "application", "tenant", "org_unit", "group")
_APPLIED_PARTS = ("user", "session", "device", "tenant")
_MAX_VALUE = 1024
_MAX_ALIASES = 16
_MAX_READINGS = 64
_NO_DEVICES = "device: this receiver's events may not name devices on their own (devices: false)"

Reading = tuple[tuple[str, str], ...]  # (kind, value) pairs, one per kind, in a fixed kind order
_KIND_ORDER = {k: i for i, k in enumerate(("sid", "jti", "sub", "spiffe_id", "device", "tenant"))}


class SubjectError(Error, ValueError):
    """A ``sub_id`` that is not a subject identifier (the SET is ``invalid_request``)."""


@dataclass(frozen=True, slots=True)
class Subject:
    """Whom an event names, as state keys them."""

    readings: tuple[Reading, ...] = ()
    devices_allowed: bool = False  # a device on its own (a fact about it, a revocation of it) may be named
    ignored: tuple[str, ...] = field(default=())  # parts we cannot or may not apply, for the log
    discard: str = ""  # why the whole event is discarded (a critical member we cannot process), or ""

    def _values(self, kind: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v for r in self.readings for k, v in r if k == kind))

    @property
    def users(self) -> tuple[str, ...]:
        return self._values("sub")

    @property
    def workloads(self) -> tuple[str, ...]:
        return self._values("spiffe_id")

    @property
    def sessions(self) -> tuple[str, ...]:
        return self._values("sid")

    @property
    def tokens(self) -> tuple[str, ...]:
        return self._values("jti")

    @property
    def devices(self) -> tuple[str, ...]:
        """Devices the event may state facts about (``devices: true``), named with or without a user."""
        return self._values("device") if self.devices_allowed else ()

    @property
    def principals(self) -> tuple[str, ...]:
        return self.users + self.workloads

    @property
    def empty(self) -> bool:
        return not self.readings


def _text(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > _MAX_VALUE:
        raise SubjectError(f"{key} is required: a non-empty string")
    if not value.isprintable():  # control characters name no one, and would reach logs and terminals
        raise SubjectError(f"{key} holds a control character")
    return value


def _format(obj: Mapping[str, Any]) -> str:
    fmt = obj.get("format", obj.get("subject_type"))
    if fmt is None and any(part in obj for part in _COMPLEX_PARTS):
        return "complex"  # SSF ID1: a complex subject had no format member
    if not isinstance(fmt, str):
        raise SubjectError("a subject identifier has a format")
    return _FORMAT_ALIASES.get(fmt, fmt)


def _reading(parts: Mapping[str, str]) -> Reading:
    return tuple(sorted(parts.items(), key=lambda kv: _KIND_ORDER[kv[0]]))


@dataclass
class _Resolver:
    for_issuers: frozenset[str]
    email_issuers: frozenset[str]
    devices_allowed: bool
    ignored: list[str] = field(default_factory=list)

    def token_issuers(self) -> list[str]:
        return sorted(i for i in self.for_issuers if not i.startswith("spiffe://"))

    # -- simple subject identifiers -> (kind, value) ---------------------------------------------------
    def principals(self, obj: Mapping[str, Any], role: str) -> list[tuple[str, str]]:
        """The users (``sub``) and workloads (``spiffe_id``) an identifier names here."""
        fmt = _format(obj)
        if fmt == "iss_sub":
            iss, sub = _text(obj, "iss"), _text(obj, "sub")
            if iss in self.for_issuers and not iss.startswith("spiffe://"):
                return [("sub", f"{iss}#{sub}")]
            self.ignored.append(f"{role}: issuer {iss} is not one of this receiver's for_issuers")
        elif fmt == "email":
            email = _text(obj, "email")
            if self.email_issuers:  # only issuers whose subjects are email addresses (subject_claim: email)
                return [("sub", f"{iss}#{email}") for iss in sorted(self.email_issuers)]
            self.ignored.append(
                f"{role}: an email names no user here (no for_issuer has subject_claim: email)"
            )
        elif fmt == "uri":
            return self.workload(_text(obj, "uri"), role)
        elif fmt == "aliases":
            out: list[tuple[str, str]] = []
            for item in self.alias_items(obj):
                if _format(item) == "jwt_id":
                    self.ignored.append(f"{role}: a jwt_id alias names a token, not a {role}")
                else:
                    out += self.principals(item, role)
            return out
        else:
            self.ignored.append(f"{role}: format {fmt!r} is not applied")
        return []

    def workload(self, uri: str, role: str) -> list[tuple[str, str]]:
        try:
            sid = SpiffeId.parse(uri)
        except SpiffeIdError:
            self.ignored.append(f"{role}: the uri is not a SPIFFE ID")
            return []
        if not sid.path:
            self.ignored.append(f"{role}: a trust domain, not a workload")
        elif f"spiffe://{sid.trust_domain.name}" in self.for_issuers:
            return [("spiffe_id", str(sid))]
        else:
            self.ignored.append(f"{role}: trust domain {sid.trust_domain.name} is not in for_issuers")
        return []

    @staticmethod
    def alias_items(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        ids = obj.get("identifiers")
        if not isinstance(ids, list) or not ids or len(ids) > _MAX_ALIASES:
            raise SubjectError(f"aliases: identifiers is a list of 1 to {_MAX_ALIASES} subject identifiers")
        for item in ids:
            if not isinstance(item, dict) or _format(item) in ("aliases", "complex"):
                raise SubjectError("aliases: each identifier is a simple subject identifier")
        return ids

    def token(self, obj: Mapping[str, Any]) -> list[tuple[str, str]]:
        iss, jti = _text(obj, "iss"), _text(obj, "jti")
        if iss in self.for_issuers and not iss.startswith("spiffe://"):
            return [("jti", f"{iss}#{jti}")]
        self.ignored.append(f"jwt_id: issuer {iss} is not one of this receiver's for_issuers")
        return []

    def device_id(self, obj: Mapping[str, Any]) -> str | None:
        """The device id a device identifier names (None: not one we can read; noted)."""
        fmt = _format(obj)
        if fmt == "opaque":
            return _text(obj, "id")
        if fmt == "iss_sub":  # as CAEP's examples name devices: the device id is the sub
            iss, sub = _text(obj, "iss"), _text(obj, "sub")
            if iss in self.for_issuers:
                return sub
            self.ignored.append(f"device: issuer {iss} is not one of this receiver's for_issuers")
            return None
        # The device id ext-authz sees is a token claim or a header: an opaque string.
        self.ignored.append(f"device: format {fmt!r} is not applied (a device is an opaque id)")
        return None

    def simple(self, obj: Mapping[str, Any], opaque_as: str) -> list[Reading]:
        fmt = _format(obj)
        if fmt == "opaque":
            value = _text(obj, "id")
            if opaque_as == "session":
                return [(("sid", f"{iss}#{value}"),) for iss in self.token_issuers()]
            if opaque_as == "device":
                if self.devices_allowed:
                    return [(("device", value),)]
                self.ignored.append(_NO_DEVICES)
                return []
            self.ignored.append(
                "an opaque subject names nothing for this event (opaque_subject: session or device reads it)"
            )
            return []
        if fmt == "jwt_id":
            return [(pair,) for pair in self.token(obj)]
        if fmt == "aliases":
            out: list[Reading] = []
            for item in self.alias_items(obj):
                out += self.simple(item, opaque_as)
            return out
        return [(pair,) for pair in self.principals(obj, "subject")]

    # -- complex subjects ------------------------------------------------------------------------------
    def complex(
        self, obj: Mapping[str, Any], critical: Collection[str], wildcards: Collection[str] = ()
    ) -> tuple[list[Reading], str]:
        """(readings, why the event is discarded or '')."""
        parts = {k: v for k, v in obj.items() if k not in ("format", "subject_type")}
        if not parts:
            raise SubjectError("a complex subject names at least one part")
        for name, part in parts.items():
            if not isinstance(part, dict):
                raise SubjectError(f"complex subject: {name} is a subject identifier")
            if _format(part) == "complex":
                raise SubjectError("complex subjects do not nest")
        unprocessed: list[str] = []

        users: list[tuple[str, str]] = []
        if "user" in parts:
            users = self.principals(parts["user"], "user")
            if not users:  # a principal we may not (or cannot) name: the event is not about anyone here
                return [], ""
        session = ""
        if "session" in parts:
            if _format(parts["session"]) == "opaque":
                session = _text(parts["session"], "id")
                if session in wildcards:
                    if not users:
                        self.ignored.append("session: every session of nobody in particular is not applied")
                        return [], ""
                    session = ""  # every session of the user: the user's credentials
            else:
                self.ignored.append(f"session: format {_format(parts['session'])!r} is not applied")
                unprocessed.append("session")
        device = None
        if "device" in parts:
            device = self.device_id(parts["device"])
            if device is None:
                unprocessed.append("device")
        tenant = ""
        if "tenant" in parts:
            if _format(parts["tenant"]) == "opaque":
                tenant = _text(parts["tenant"], "id")
            else:
                self.ignored.append(f"tenant: format {_format(parts['tenant'])!r} is not applied")
                unprocessed.append("tenant")
        for other in sorted(set(parts) - set(_APPLIED_PARTS)):
            self.ignored.append(f"{other}: not applied (the event applies without it)")
            unprocessed.append(other)
        lost = sorted(set(unprocessed) & set(critical))
        if lost:
            return [], f"critical subject members it cannot process: {', '.join(lost)}"

        readings: list[Reading] = []
        principals: list[tuple[str, str] | None] = [*users] if users else [None]
        for user in principals:
            got: dict[str, str] = {}
            if user is not None:
                got[user[0]] = user[1]
            if session:
                if user is None:
                    issuers = self.token_issuers()
                elif user[0] == "sub":
                    issuers = [user[1].partition("#")[0]]
                else:
                    self.ignored.append("session: a workload's session is not applied")
                    issuers = []
                for iss in issuers:
                    readings.append(self.finish({**got, "sid": f"{iss}#{session}"}, device, tenant))
                if issuers:
                    continue
            if got or session:
                readings.append(self.finish(got, device, tenant))
            elif device is not None:  # a device named on its own (perhaps within a tenant)
                if self.devices_allowed:
                    readings.append(self.finish(got, device, tenant))
                else:
                    self.ignored.append(
                        "device: this receiver's events may not name devices (devices: false)"
                    )
            else:
                self.ignored.append("the subject names no user, session or device")
        return [r for r in readings if r], ""

    @staticmethod
    def finish(got: dict[str, str], device: str | None, tenant: str) -> Reading:
        if device is not None:
            got = {**got, "device": device}
        if tenant:
            got = {**got, "tenant": tenant}
        return _reading(got)


def resolve(
    sub_id: object,
    for_issuers: frozenset[str],
    email_issuers: frozenset[str] = frozenset(),
    *,
    devices: bool = True,
    opaque_as: str = "",
    critical: Collection[str] = (),
    session_wildcards: Collection[str] = (),
) -> Subject:
    """What ``sub_id`` names, limited to ``for_issuers`` (and devices on their own only where
    ``devices``); an opaque subject on its own is read as ``opaque_as`` (``session``, ``device``, or ''
    for nothing); a session id in ``session_wildcards`` means every session of the subject's user.
    Raises SubjectError for a malformed identifier (an unknown *format* is not malformed:
    ignored)."""
    if not isinstance(sub_id, dict):
        raise SubjectError("sub_id is a JSON object")
    r = _Resolver(for_issuers, email_issuers, devices)
    discard = ""
    if _format(sub_id) == "complex":
        readings, discard = r.complex(sub_id, critical, session_wildcards)
    else:
        readings = r.simple(sub_id, opaque_as)
    unique = tuple(dict.fromkeys(readings))
    if len(unique) > _MAX_READINGS:
        raise SubjectError(f"the subject names more than {_MAX_READINGS} principals")
    return Subject(readings=unique, devices_allowed=devices, ignored=tuple(r.ignored), discard=discard)
