"""RFC 9493 subject identifiers (and SSF 1.0's complex subjects) → what state names.

A SET's ``sub_id`` says whom an event is about; state names principals exactly (ext_authz/principal.py).
This module is the one place that turns the first into the second, and it is strict about whose
subjects a transmitter may name: a receiver's events apply only to subjects of its ``for_issuers``
(token issuers, and ``spiffe://TRUST-DOMAIN`` for workloads). A subject outside them names nobody here.

Legacy spellings still met in the field are read (``subject_type`` for ``format``, ``iss-sub``,
``jwt-id``, a complex subject without ``format``); nothing is ever written in them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..identity.spiffe_id import SpiffeId, SpiffeIdError

__all__ = ["Subject", "SubjectError", "resolve"]

_FORMAT_ALIASES = {
    "iss-sub": "iss_sub",
    "jwt-id": "jwt_id",
    "phone-number": "phone_number",
    "phone": "phone_number",
}
_COMPLEX_PARTS = ("user", "device", "session", "application", "tenant", "org_unit", "group")
_MAX_VALUE = 1024
_MAX_ALIASES = 16


class SubjectError(ValueError):
    """A ``sub_id`` that is not a subject identifier (the SET is ``invalid_request``)."""


@dataclass(frozen=True, slots=True)
class Subject:
    """Whom an event names, as state keys them; empty tuples for what it does not name."""

    users: tuple[str, ...] = ()  # ISSUER#SUBJECT
    workloads: tuple[str, ...] = ()  # SPIFFE IDs
    sessions: tuple[str, ...] = ()  # ISSUER#sid
    tokens: tuple[str, ...] = ()  # ISSUER#jti
    devices: tuple[str, ...] = ()  # device ids (not tied to an issuer)
    ignored: tuple[str, ...] = field(default=())  # parts we cannot or may not apply, for the log

    @property
    def principals(self) -> tuple[str, ...]:
        return self.users + self.workloads

    @property
    def empty(self) -> bool:
        return not (self.users or self.workloads or self.sessions or self.tokens or self.devices)


def _text(obj: Mapping[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value or len(value) > _MAX_VALUE:
        raise SubjectError(f"{key} is required: a non-empty string")
    return value


def _format(obj: Mapping[str, Any]) -> str:
    fmt = obj.get("format", obj.get("subject_type"))
    if fmt is None and any(part in obj for part in _COMPLEX_PARTS):
        return "complex"  # SSF ID1: a complex subject had no format member
    if not isinstance(fmt, str):
        raise SubjectError("a subject identifier has a format")
    return _FORMAT_ALIASES.get(fmt, fmt)


@dataclass
class _Collect:
    for_issuers: frozenset[str]
    email_issuers: frozenset[str]
    devices_allowed: bool = True
    users: list[str] = field(default_factory=list)
    workloads: list[str] = field(default_factory=list)
    sessions: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def issuers(self) -> list[str]:
        return sorted(i for i in self.for_issuers if not i.startswith("spiffe://"))

    def user(self, obj: Mapping[str, Any], role: str) -> None:
        fmt = _format(obj)
        if fmt == "iss_sub":
            iss, sub = _text(obj, "iss"), _text(obj, "sub")
            if iss in self.for_issuers and not iss.startswith("spiffe://"):
                self.users.append(f"{iss}#{sub}")
            else:
                self.ignored.append(f"{role}: issuer {iss} is not one of this receiver's for_issuers")
        elif fmt == "email":
            email = _text(obj, "email")
            if self.email_issuers:  # only issuers whose subjects are email addresses (subject_claim: email)
                self.users.extend(f"{iss}#{email}" for iss in sorted(self.email_issuers))
            else:
                self.ignored.append(
                    f"{role}: an email names no user here (no for_issuer has subject_claim: email)"
                )
        elif fmt == "uri":
            self.workload(_text(obj, "uri"), role)
        elif fmt == "aliases":
            self.aliases(obj, role)
        else:
            self.ignored.append(f"{role}: format {fmt!r} is not applied")

    def workload(self, uri: str, role: str) -> None:
        try:
            sid = SpiffeId.parse(uri)
        except SpiffeIdError:
            self.ignored.append(f"{role}: the uri is not a SPIFFE ID")
            return
        if not sid.path:
            self.ignored.append(f"{role}: a trust domain, not a workload")
        elif f"spiffe://{sid.trust_domain.name}" in self.for_issuers:
            self.workloads.append(str(sid))
        else:
            self.ignored.append(f"{role}: trust domain {sid.trust_domain.name} is not in for_issuers")

    def aliases(self, obj: Mapping[str, Any], role: str) -> None:
        ids = obj.get("identifiers")
        if not isinstance(ids, list) or not ids or len(ids) > _MAX_ALIASES:
            raise SubjectError(f"aliases: identifiers is a list of 1 to {_MAX_ALIASES} subject identifiers")
        for item in ids:
            if not isinstance(item, dict) or _format(item) in ("aliases", "complex"):
                raise SubjectError("aliases: each identifier is a simple subject identifier")
            self.simple(item, role)

    def session(self, obj: Mapping[str, Any], issuers: list[str]) -> None:
        fmt = _format(obj)
        if fmt != "opaque":
            self.ignored.append(f"session: format {fmt!r} is not applied")
            return
        sid = _text(obj, "id")
        self.sessions.extend(f"{iss}#{sid}" for iss in issuers)

    def device(self, obj: Mapping[str, Any]) -> None:
        fmt = _format(obj)
        if not self.devices_allowed:
            self.ignored.append("device: this receiver's events may not name devices (devices: false)")
            return
        if fmt == "opaque":
            self.devices.append(_text(obj, "id"))
        elif fmt == "iss_sub":  # as CAEP's examples name devices: the device id is the sub
            iss, sub = _text(obj, "iss"), _text(obj, "sub")
            if iss in self.for_issuers:
                self.devices.append(sub)
            else:
                self.ignored.append(f"device: issuer {iss} is not one of this receiver's for_issuers")
        else:  # the device id ext-authz sees is the token claim or header: an opaque string
            self.ignored.append(f"device: format {fmt!r} is not applied (a device is an opaque id)")

    def token(self, obj: Mapping[str, Any]) -> None:
        iss, jti = _text(obj, "iss"), _text(obj, "jti")
        if iss in self.for_issuers and not iss.startswith("spiffe://"):
            self.tokens.append(f"{iss}#{jti}")
        else:
            self.ignored.append(f"jwt_id: issuer {iss} is not one of this receiver's for_issuers")

    def simple(self, obj: Mapping[str, Any], role: str) -> None:
        fmt = _format(obj)
        if fmt == "opaque" and role == "subject":
            # An opaque subject on its own: a device (SSF names devices by opaque ids).
            self.device(obj)
        elif fmt == "jwt_id":
            self.token(obj)
        else:
            self.user(obj, role)

    def complex(self, obj: Mapping[str, Any]) -> None:
        parts = {k: v for k, v in obj.items() if k not in ("format", "subject_type")}
        if not parts:
            raise SubjectError("a complex subject names at least one part")
        for name, part in parts.items():
            if not isinstance(part, dict):
                raise SubjectError(f"complex subject: {name} is a subject identifier")
            if _format(part) in ("complex",):
                raise SubjectError("complex subjects do not nest")
        if "user" in parts:
            self.user(parts["user"], "user")
        if "device" in parts:
            self.device(parts["device"])
        if "session" in parts:
            # A session id is its issuer's: the user part's issuer when there is one (a user of an issuer
            # outside for_issuers: nobody here), else every for_issuer.
            user = parts.get("user")
            if user is None:
                self.session(parts["session"], self.issuers())
            elif _format(user) == "iss_sub" and user.get("iss") in self.for_issuers:
                self.session(parts["session"], [str(user["iss"])])
            else:
                self.ignored.append("session: of a user this receiver may not name")
        for other in sorted(set(parts) - {"user", "device", "session"}):
            self.ignored.append(f"{other}: not applied (events name users, sessions, devices and workloads)")


def resolve(
    sub_id: object,
    for_issuers: frozenset[str],
    email_issuers: frozenset[str] = frozenset(),
    *,
    devices: bool = True,
) -> Subject:
    """The principals, sessions, tokens and devices ``sub_id`` names, limited to ``for_issuers`` (and
    devices only where ``devices``). Raises SubjectError for a malformed identifier (an unknown *format*
    is not malformed: ignored)."""
    if not isinstance(sub_id, dict):
        raise SubjectError("sub_id is a JSON object")
    c = _Collect(for_issuers, email_issuers, devices)
    if _format(sub_id) == "complex":
        c.complex(sub_id)
    else:
        c.simple(sub_id, "subject")

    def uniq(items: list[str]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(items))

    return Subject(
        users=uniq(c.users),
        workloads=uniq(c.workloads),
        sessions=uniq(c.sessions),
        tokens=uniq(c.tokens),
        devices=uniq(c.devices),
        ignored=tuple(c.ignored),
    )
