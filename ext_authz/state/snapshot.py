"""The immutable state snapshot the Check path reads: everything in force, indexed, swapped whole."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .records import ExceptionGrant, Grant, Revocation, Signal

__all__ = ["StateSnapshot"]


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
    sessions: Mapping[str, float] = field(default_factory=dict)  # ISSUER#sid -> first use
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

    def revoked(self, kind: str, value: str, now: float, issued_at: int | None = None) -> Revocation | None:
        """The revocation in force for ``value`` that covers a credential issued at ``issued_at``."""
        if not value:
            return None
        for r in self._revoked.get((kind, value), ()):
            if r.active(now) and r.covers(issued_at):
                return r
        return None

    def grants_for(self, principals: Iterable[str], now: float) -> list[Grant]:
        return [g for p in principals if p for g in self._grants.get(p, ()) if g.active(now)]

    def exceptions_for(self, principals: Iterable[str], now: float) -> list[ExceptionGrant]:
        return [e for p in principals if p for e in self._exceptions.get(p, ()) if e.active(now)]

    def signal(self, subject_kind: str, subject: str, key: str, now: float) -> Signal | None:
        """The latest fresh signal ``key`` about ``subject`` (with when it was set)."""
        found = None
        for s in self._signals.get((subject_kind, subject), ()) if subject else ():
            if s.key == key and s.fresh(now) and (found is None or s.set_at >= found.set_at):
                found = s
        return found

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
