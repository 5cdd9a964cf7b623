"""The immutable state snapshot the Check path reads: every record held, indexed, and changed by the
record, never rebuilt whole.

The indexes are persistent maps (``immutables.Map``, a hash array mapped trie): a change makes a new
snapshot that shares all but a few nodes with the old one, in time logarithmic in the number of
records, and a reader holding the old snapshot sees it unchanged. A plain dict would have to be copied
whole for each change (tens of milliseconds at a million records), or be mutated under readers.

- ``_records``: kind → id → record (everything the replica holds, in force or not);
- ``_revoked``: the value a revocation names → the revocations naming it (of any kind; usually one);
- ``_grants`` and ``_exceptions``: principal → records; ``_signals``: (subject kind, subject) → signals.

An index bucket is a small tuple, replaced whole when one of its records changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from immutables import Map

from .records import RECORD_TYPES, ExceptionGrant, Grant, Record, Revocation, Signal

__all__ = ["StateSnapshot"]

R = TypeVar("R", bound=Record)
_EMPTY_RECORDS: Map[str, Map[str, Record]] = Map({kind: Map() for kind in RECORD_TYPES})
# (index attribute, record type, the record's key in that index, its order within a bucket). A bucket is
# kept in that order, so every question has one answer however the records arrived.
_INDEXES: tuple[tuple[str, type[Record], Callable[[Any], Any], Callable[[Any], Any]], ...] = (
    ("_revoked", Revocation, lambda r: r.value, lambda r: (r.created_at, r.id)),
    ("_grants", Grant, lambda g: g.principal, lambda g: (g.created_at, g.id)),
    ("_exceptions", ExceptionGrant, lambda e: e.principal, lambda e: (e.opened_at, e.id)),
    ("_signals", Signal, lambda s: (s.subject_kind, s.subject), lambda s: (s.set_at, s.key)),
)


def _without(bucket: tuple[Any, ...], record_id: str) -> tuple[Any, ...]:
    return tuple(r for r in bucket if r.record_id != record_id)


@dataclass(frozen=True)
class StateSnapshot:
    """Everything held, indexed for the Check path. Never changed: :meth:`apply` makes the next one."""

    revision: int = 0
    sessions: Mapping[str, float] = field(default_factory=dict)  # ISSUER#sid -> first use
    _records: Map[str, Map[str, Record]] = field(default=_EMPTY_RECORDS, repr=False)
    _revoked: Map[str, tuple[Revocation, ...]] = field(default_factory=Map, repr=False)
    _grants: Map[str, tuple[Grant, ...]] = field(default_factory=Map, repr=False)
    _exceptions: Map[str, tuple[ExceptionGrant, ...]] = field(default_factory=Map, repr=False)
    _signals: Map[tuple[str, str], tuple[Signal, ...]] = field(default_factory=Map, repr=False)

    @classmethod
    def build(
        cls,
        revision: int,
        revocations: Iterable[Revocation] = (),
        grants: Iterable[Grant] = (),
        exceptions: Iterable[ExceptionGrant] = (),
        signals: Iterable[Signal] = (),
        sessions: Mapping[str, float] | None = None,
        *,
        others: Iterable[Record] = (),
    ) -> StateSnapshot:
        """A snapshot of exactly these records (for a policy test, or ``check --state``). Two records
        under one id (a signal set twice): the later signal, or else the last given, is held."""
        held: dict[tuple[str, str], Record] = {}
        for r in (*revocations, *grants, *exceptions, *signals, *others):
            key = (r.RECORD, r.record_id)
            known = held.get(key)
            if isinstance(known, Signal) and isinstance(r, Signal) and known.set_at > r.set_at:
                continue
            held[key] = r
        return cls(revision, dict(sessions or {})).apply(revision, ((None, r) for r in held.values()))

    # -- changing: a new snapshot ---------------------------------------------------------------------------
    def apply(self, revision: int, changes: Iterable[tuple[Record | None, Record | None]]) -> StateSnapshot:
        """The next snapshot: each change replaces ``old`` (None: a new record) with ``new`` (None: the
        record is gone). ``old`` must be what this snapshot holds under that id."""
        records = self._records.mutate()
        kinds: dict[str, Any] = {}
        indexes = {name: getattr(self, name).mutate() for name, _, _, _ in _INDEXES}
        for old, new in changes:
            some = new if new is not None else old
            if some is None:
                continue
            kind = some.RECORD
            if kind not in kinds:
                kinds[kind] = records[kind].mutate()
            by_id = kinds[kind]
            rid = some.record_id
            if new is None:
                by_id.pop(rid, None)
            else:
                by_id[rid] = new
            for name, cls, key, order in _INDEXES:
                if not isinstance(some, cls):
                    continue
                index = indexes[name]
                if old is not None:
                    k = key(old)
                    bucket = _without(index.get(k, ()), rid)
                    if bucket:
                        index[k] = bucket
                    else:
                        index.pop(k, None)
                if new is not None:
                    k = key(new)
                    index[k] = tuple(sorted((*_without(index.get(k, ()), rid), new), key=order))
        for kind, by_id in kinds.items():
            records[kind] = by_id.finish()
        return StateSnapshot(
            revision,
            self.sessions,
            records.finish(),
            **{name: m.finish() for name, m in indexes.items()},
        )

    # -- the Check path -------------------------------------------------------------------------------------
    def revoked(self, kind: str, value: str, now: float, issued_at: int | None = None) -> Revocation | None:
        """The revocation in force for ``value`` that covers a credential issued at ``issued_at``."""
        if not value:
            return None
        for r in self._revoked.get(value, ()):
            if r.kind == kind and r.active(now) and r.covers(issued_at):
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

    # -- everything held (admin listings, tests): not for the Check path ------------------------------------
    def get(self, cls: type[R], rid: str) -> R | None:
        record = self._records[cls.RECORD].get(rid)
        return record if isinstance(record, cls) else None

    def all(self, cls: type[R]) -> Iterator[R]:
        for record in self._records[cls.RECORD].values():
            if isinstance(record, cls):
                yield record

    def count(self, cls: type[Record]) -> int:
        return len(self._records[cls.RECORD])

    def named(self, value: str) -> tuple[Revocation, ...]:
        """Every revocation held that names ``value`` (in force or not), of any kind."""
        return self._revoked.get(value, ())

    @property
    def revocations(self) -> tuple[Revocation, ...]:
        return tuple(self.all(Revocation))

    @property
    def grants(self) -> tuple[Grant, ...]:
        return tuple(self.all(Grant))

    @property
    def exceptions(self) -> tuple[ExceptionGrant, ...]:
        return tuple(self.all(ExceptionGrant))

    @property
    def signals(self) -> tuple[Signal, ...]:
        return tuple(self.all(Signal))

    def active_revocations(self, now: float) -> list[Revocation]:
        return [r for r in self.all(Revocation) if r.active(now)]
