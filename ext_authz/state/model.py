"""Continuous-trust records and the immutable snapshot the Check path reads.

Every record says who made it, when and why. Nothing here reads the clock: a snapshot answers
"what is in force at ``now``" for the ``now`` it is given.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..model import path_without_query

__all__ = [
    "REVOCATION_KINDS",
    "SIGNAL_SUBJECTS",
    "ExceptionGrant",
    "Grant",
    "Revocation",
    "Scope",
    "Signal",
    "StateSnapshot",
]

# What a revocation can name. "quarantine" revocations are made by ext-authz itself.
REVOCATION_KINDS = ("spiffe_id", "cert", "jti", "sub", "sid", "device", "quarantine")
SIGNAL_SUBJECTS = ("device", "workload", "user")


@dataclass(frozen=True, slots=True)
class Scope:
    """What a grant or exception covers: hosts, path globs and methods (empty = any)."""

    hosts: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()

    def covers(self, method: str, host: str, path: str) -> bool:
        if self.methods and method.upper() not in self.methods:
            return False
        if self.hosts:
            bare = host.lower().rsplit(":", 1)[0] if host.count(":") == 1 else host.lower()
            if not any(
                fnmatch.fnmatchcase(bare, h) or fnmatch.fnmatchcase(host.lower(), h) for h in self.hosts
            ):
                return False
        if self.paths:
            p = path_without_query(path)
            if not any(fnmatch.fnmatchcase(p, g) for g in self.paths):
                return False
        return True


@dataclass(frozen=True, slots=True)
class Revocation:
    id: str
    kind: str
    value: str
    reason: str
    created_by: str
    created_at: float
    expires_at: float | None = None
    source: str = "api"  # api | quarantine | feed

    def active(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True, slots=True)
class Grant:
    """A just-in-time grant: ``principal`` (SPIFFE ID or subject) may do ``scope`` from..until."""

    id: str
    principal: str
    scope: Scope
    not_before: float
    not_after: float
    reason: str
    approver: str
    created_by: str
    created_at: float
    ended_at: float | None = None
    ended_by: str = ""

    def active(self, now: float) -> bool:
        return self.ended_at is None and self.not_before <= now < self.not_after


@dataclass(frozen=True, slots=True)
class ExceptionGrant:
    """Break-glass: a time-boxed allow for a named identity and scope, always visible."""

    id: str
    principal: str
    scope: Scope
    reason: str
    opened_by: str
    opened_at: float
    expires_at: float
    closed_at: float | None = None
    closed_by: str = ""

    def active(self, now: float) -> bool:
        return self.closed_at is None and self.opened_at <= now < self.expires_at


@dataclass(frozen=True, slots=True)
class Signal:
    """A fact about a device, workload or user, valid until ``expires_at`` (then: unknown)."""

    subject_kind: str  # device | workload | user
    subject: str
    key: str
    value: str
    set_by: str
    set_at: float
    expires_at: float

    def fresh(self, now: float) -> bool:
        return now < self.expires_at


def _index(items: Iterable[Any], key: Any) -> dict[Any, tuple[Any, ...]]:
    out: dict[Any, list[Any]] = {}
    for item in items:
        out.setdefault(key(item), []).append(item)
    return {k: tuple(v) for k, v in out.items()}


@dataclass(frozen=True)
class StateSnapshot:
    """Everything in force, indexed for the Check path. Built off the hot path, swapped whole."""

    revision: int = 0
    revocations: tuple[Revocation, ...] = ()
    grants: tuple[Grant, ...] = ()
    exceptions: tuple[ExceptionGrant, ...] = ()
    signals: tuple[Signal, ...] = ()
    sessions: Mapping[str, float] = field(default_factory=dict)  # sid -> first use
    _revoked: Mapping[tuple[str, str], tuple[Revocation, ...]] = field(default_factory=dict, repr=False)
    _grants: Mapping[str, tuple[Grant, ...]] = field(default_factory=dict, repr=False)
    _exceptions: Mapping[str, tuple[ExceptionGrant, ...]] = field(default_factory=dict, repr=False)
    _signals: Mapping[tuple[str, str], tuple[Signal, ...]] = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        revision: int,
        revocations: Iterable[Revocation] = (),
        grants: Iterable[Grant] = (),
        exceptions: Iterable[ExceptionGrant] = (),
        signals: Iterable[Signal] = (),
        sessions: Mapping[str, float] | None = None,
    ) -> StateSnapshot:
        revs, grs, exs, sigs = tuple(revocations), tuple(grants), tuple(exceptions), tuple(signals)
        return cls(
            revision=revision,
            revocations=revs,
            grants=grs,
            exceptions=exs,
            signals=sigs,
            sessions=dict(sessions or {}),
            _revoked=_index(revs, lambda r: (r.kind, r.value)),
            _grants=_index(grs, lambda g: g.principal),
            _exceptions=_index(exs, lambda e: e.principal),
            _signals=_index(sigs, lambda s: (s.subject_kind, s.subject)),
        )

    def revoked(self, kind: str, value: str, now: float) -> Revocation | None:
        if not value:
            return None
        for r in self._revoked.get((kind, value), ()):
            if r.active(now):
                return r
        return None

    def grants_for(self, principals: Iterable[str], now: float) -> list[Grant]:
        return [g for p in principals if p for g in self._grants.get(p, ()) if g.active(now)]

    def exceptions_for(self, principals: Iterable[str], now: float) -> list[ExceptionGrant]:
        return [e for p in principals if p for e in self._exceptions.get(p, ()) if e.active(now)]

    def signals_for(self, subject_kind: str, subject: str, now: float) -> dict[str, str]:
        if not subject:
            return {}
        latest: dict[str, Signal] = {}
        for s in self._signals.get((subject_kind, subject), ()):
            if s.fresh(now) and (s.key not in latest or s.set_at >= latest[s.key].set_at):
                latest[s.key] = s
        return {k: s.value for k, s in latest.items()}

    def active_revocations(self, now: float) -> list[Revocation]:
        return [r for r in self.revocations if r.active(now)]


def finished_at(record: Revocation | Grant | ExceptionGrant | Signal) -> float | None:
    """When a record stopped being in force for good, or None if it has not (or never will by itself)."""
    if isinstance(record, Revocation):
        return record.expires_at
    if isinstance(record, Grant):
        return record.ended_at if record.ended_at is not None else record.not_after
    if isinstance(record, ExceptionGrant):
        return record.closed_at if record.closed_at is not None else record.expires_at
    return record.expires_at
