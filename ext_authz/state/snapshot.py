"""The immutable state snapshot the Check path reads: the records in force or held, indexed by what a
Check looks up, and changed by the record, never rebuilt whole.

Each index is two layers:

- a **base**, a plain dict built once (at load, or by a compaction) and never changed after;
- a **top**, a persistent map (``immutables.Map``, a hash array mapped trie) of the keys changed since
  the base was built. A change makes a new snapshot whose top shares all but a few nodes with the old
  one, in time logarithmic in the number of changes, and a reader holding the old snapshot sees it
  unchanged. A key's value in the top replaces the base's (an empty bucket: gone).

A plain dict alone would have to be copied whole for each change (tens of milliseconds at a million
records), or be mutated under readers; a persistent map alone costs several microseconds per insert at a
million entries, which makes a full load slow. When the top grows, the replica folds it into a new base
in slices, off the Check path's way (:meth:`fold`), and keeps applying changes meanwhile.

- ``revoked``: the value a revocation names → the revocations naming it (of any kind; usually one);
- ``grants`` and ``exceptions``: principal → records; ``signals``: (subject kind, subject) → signals.

A bucket is a small tuple in a fixed order, replaced whole when one of its records changes. A record's
index key follows from its id (a revocation's value, a grant's principal, a signal's subject never change
under one id), so a record applied again over itself replaces itself.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from immutables import Map

from .records import ExceptionGrant, Grant, Record, Revocation, Signal

__all__ = ["Index", "StateSnapshot"]

R = TypeVar("R", bound=Record)
_MISSING: Any = object()
_NO_CONTEXT: Mapping[str, str] = {}

# (index name, record type, the record's key in that index, its order within a bucket). A bucket is kept
# in that order, so every question has one answer however the records arrived.
_INDEXES: tuple[tuple[str, type[Record], Callable[[Any], Hashable], Callable[[Any], Any]], ...] = (
    ("revoked", Revocation, lambda r: r.value, lambda r: (r.created_at, r.id)),
    ("grants", Grant, lambda g: g.principal, lambda g: (g.created_at, g.id)),
    ("exceptions", ExceptionGrant, lambda e: e.principal, lambda e: (e.opened_at, e.id)),
    ("signals", Signal, lambda s: (s.subject_kind, s.subject), lambda s: (s.set_at, s.key)),
)
_BY_KIND = {cls.RECORD: (name, key, order) for name, cls, key, order in _INDEXES}
INDEXED = tuple(cls for _, cls, _, _ in _INDEXES)


def _without(bucket: tuple[Any, ...], record_id: str) -> tuple[Any, ...]:
    if len(bucket) == 1:
        return () if bucket[0].record_id == record_id else bucket
    return tuple([r for r in bucket if r.record_id != record_id])


@dataclass(frozen=True, slots=True)
class Index:
    """One index: an unchanging base dict, and the persistent top of keys changed since."""

    base: Mapping[Hashable, tuple[Any, ...]] = field(default_factory=dict)
    top: Map[Hashable, tuple[Any, ...]] = field(default_factory=Map)

    def get(self, key: Hashable) -> tuple[Any, ...]:
        found = self.top.get(key, _MISSING)
        if found is _MISSING:
            return self.base.get(key, ())
        return found

    def buckets(self) -> Iterator[tuple[Any, ...]]:
        top = self.top
        for key, bucket in self.base.items():
            if key not in top:
                yield bucket
        yield from top.values()

    def folded(self) -> dict[Hashable, tuple[Any, ...]]:
        """Base and top as one plain dict (in one go: for small indexes and tests)."""
        out = dict(self.base)
        for key, bucket in self.top.items():
            if bucket:
                out[key] = bucket
            else:
                out.pop(key, None)
        return out


class _Editing:
    """An index being changed: reads see the edits so far, writes go to the new top."""

    __slots__ = ("base", "top")

    def __init__(self, index: Index) -> None:
        self.base = index.base
        self.top = index.top.mutate()

    def get(self, key: Hashable) -> tuple[Any, ...]:
        found = self.top.get(key, _MISSING)
        if found is _MISSING:
            return self.base.get(key, ())
        return found

    def set(self, key: Hashable, bucket: tuple[Any, ...]) -> None:
        if bucket or key in self.base:
            self.top[key] = bucket  # an empty bucket hides the base's
        else:
            self.top.pop(key, None)

    def finish(self) -> Index:
        return Index(self.base, self.top.finish())


def _place(index: Any, key: Any, order: Callable[[Any], Any], old: Record | None, new: Record | None) -> None:
    """Move a record within an index (``index`` is an _Editing, or a plain dict being built)."""
    some = new if new is not None else old
    assert some is not None
    rid = some.record_id
    if old is not None:
        k = key(old)
        bucket = _without(index.get(k, ()) if isinstance(index, dict) else index.get(k), rid)
        if isinstance(index, dict):
            if bucket:
                index[k] = bucket
            else:
                index.pop(k, None)
        else:
            index.set(k, bucket)
    if new is not None:
        k = key(new)
        bucket = index.get(k, ()) if isinstance(index, dict) else index.get(k)
        placed = (new,) if not bucket else tuple(sorted((*_without(bucket, rid), new), key=order))
        if isinstance(index, dict):
            index[k] = placed
        else:
            index.set(k, placed)


@dataclass(frozen=True)
class StateSnapshot:
    """What the Check path reads about state. Never changed: :meth:`apply` makes the next one."""

    revision: int = 0
    sessions: Mapping[str, float] = field(default_factory=dict)  # ISSUER#sid -> first use
    revoked_index: Index = field(default_factory=Index, repr=False)
    grants_index: Index = field(default_factory=Index, repr=False)
    exceptions_index: Index = field(default_factory=Index, repr=False)
    signals_index: Index = field(default_factory=Index, repr=False)

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
        """A snapshot of exactly these records (for a policy test, ``check --state``, a test). Two records
        under one id (a signal set twice): the later signal, or else the last given, is held."""
        held: dict[tuple[str, str], Record] = {}
        for r in (*revocations, *grants, *exceptions, *signals, *others):
            k = (r.RECORD, r.record_id)
            known = held.get(k)
            if isinstance(known, Signal) and isinstance(r, Signal) and known.set_at > r.set_at:
                continue
            held[k] = r
        builder = Builder()
        for r in held.values():
            builder.add(r)
        return builder.finish(revision, dict(sessions or {}))

    # -- changing: a new snapshot ---------------------------------------------------------------------------
    def apply(self, revision: int, changes: Iterable[tuple[Record | None, Record | None]]) -> StateSnapshot:
        """The next snapshot: each change replaces ``old`` (None: a new record) with ``new`` (None: the
        record is gone). ``old`` must be what this snapshot holds under that id."""
        editing: dict[str, _Editing] = {}
        for old, new in changes:
            some = new if new is not None else old
            if some is None:
                continue
            spec = _BY_KIND.get(some.RECORD)
            if spec is None:
                continue
            name, key, order = spec
            index = editing.get(name)
            if index is None:
                index = editing[name] = _Editing(getattr(self, f"{name}_index"))
            _place(index, key, order, old, new)
        if not editing:
            return StateSnapshot(
                revision,
                self.sessions,
                self.revoked_index,
                self.grants_index,
                self.exceptions_index,
                self.signals_index,
            )
        parts = {f"{name}_index": e.finish() for name, e in editing.items()}
        return StateSnapshot(
            revision,
            self.sessions,
            parts.get("revoked_index", self.revoked_index),
            parts.get("grants_index", self.grants_index),
            parts.get("exceptions_index", self.exceptions_index),
            parts.get("signals_index", self.signals_index),
        )

    @property
    def changed(self) -> int:
        """Keys changed since the bases were built: what a fold would move into them."""
        return sum(len(i.top) for i in self._indexes())

    def _indexes(self) -> tuple[Index, ...]:
        return (self.revoked_index, self.grants_index, self.exceptions_index, self.signals_index)

    # -- the Check path -------------------------------------------------------------------------------------
    def revoked(
        self,
        kind: str,
        value: str,
        now: float,
        issued_at: int | None = None,
        context: Mapping[str, str] = _NO_CONTEXT,
    ) -> Revocation | None:
        """The revocation in force for ``value`` that covers a credential issued at ``issued_at``, and
        whose narrowing (if any) the request's ``context`` (its user, device, session, tenant) meets."""
        if not value:
            return None
        for r in self.revoked_index.get(value):
            if r.kind != kind or not r.active(now) or not r.covers(issued_at):
                continue
            if not r.also or r.narrows_to(context):
                return r  # type: ignore[no-any-return]
        return None

    def grants_for(self, principals: Iterable[str], now: float) -> list[Grant]:
        return [g for p in principals if p for g in self.grants_index.get(p) if g.active(now)]

    def exceptions_for(self, principals: Iterable[str], now: float) -> list[ExceptionGrant]:
        return [e for p in principals if p for e in self.exceptions_index.get(p) if e.active(now)]

    def signal(self, subject_kind: str, subject: str, key: str, now: float) -> Signal | None:
        """The latest fresh signal ``key`` about ``subject`` (with when it was set)."""
        found = None
        for s in self.signals_index.get((subject_kind, subject)) if subject else ():
            if s.key == key and s.fresh(now) and (found is None or s.set_at >= found.set_at):
                found = s
        return found

    def signals_for(self, subject_kind: str, subject: str, now: float) -> dict[str, str]:
        return {k: s.value for k, s in self.fresh_signals(subject_kind, subject, now).items()}

    def fresh_signals(self, subject_kind: str, subject: str, now: float) -> dict[str, Signal]:
        """The newest fresh signal of each key about ``subject``."""
        if not subject:
            return {}
        latest: dict[str, Signal] = {}
        for s in self.signals_index.get((subject_kind, subject)):
            if s.fresh(now) and (s.key not in latest or s.set_at >= latest[s.key].set_at):
                latest[s.key] = s
        return latest

    def named(self, value: str) -> tuple[Revocation, ...]:
        """Every revocation held that names ``value`` (in force or not), of any kind."""
        return self.revoked_index.get(value)

    # -- everything held (listings, tests): not for the Check path -------------------------------------------
    def all(self, cls: type[R]) -> Iterator[R]:
        name = _BY_KIND[cls.RECORD][0]
        for bucket in getattr(self, f"{name}_index").buckets():
            yield from bucket

    @property
    def any_revocations(self) -> bool:
        """Whether a revocation may be held (O(1): the Check path asks it before any lookup)."""
        index = self.revoked_index
        return bool(index.base) or bool(index.top)

    @property
    def revocations(self) -> tuple[Revocation, ...]:
        """Every revocation held: a walk over all of them, never for the Check path."""
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


class Builder:
    """A snapshot's bases, built as plain dicts record by record (a full load), then frozen."""

    def __init__(self) -> None:
        self.bases: dict[str, dict[Hashable, tuple[Any, ...]]] = {name: {} for name, _, _, _ in _INDEXES}

    def add(self, record: Record, old: Record | None = None) -> None:
        spec = _BY_KIND.get(record.RECORD)
        if spec is not None:
            name, key, order = spec
            _place(self.bases[name], key, order, old, record)

    def finish(self, revision: int, sessions: Mapping[str, float]) -> StateSnapshot:
        b = self.bases
        return StateSnapshot(
            revision,
            sessions,
            Index(b["revoked"]),
            Index(b["grants"]),
            Index(b["exceptions"]),
            Index(b["signals"]),
        )


def fold_steps(snapshot: StateSnapshot, chunk: int = 5000) -> Iterator[StateSnapshot | None]:
    """Fold every index's top into a new base, a chunk of keys per step (yield None between steps, so the
    caller can let the loop run), ending with the folded snapshot (same answers, empty tops).

    Changes applied to later snapshots meanwhile are not in it: see :func:`rebase`."""
    folded: dict[str, dict[Hashable, tuple[Any, ...]]] = {}
    for name, _, _, _ in _INDEXES:
        index: Index = getattr(snapshot, f"{name}_index")
        out: dict[Hashable, tuple[Any, ...]] = {}
        items = iter(index.base.items())
        while True:
            n = 0
            for key, bucket in items:
                out[key] = bucket
                n += 1
                if n >= chunk:
                    break
            yield None
            if n < chunk:
                break
        for key, bucket in index.top.items():
            if bucket:
                out[key] = bucket
            else:
                out.pop(key, None)
        folded[name] = out
    yield StateSnapshot(
        snapshot.revision,
        snapshot.sessions,
        *(Index(folded[name]) for name, _, _, _ in _INDEXES),
    )


def rebase(folded: StateSnapshot, since: StateSnapshot, now: StateSnapshot) -> StateSnapshot:
    """``now`` (a later snapshot than ``since``) on the bases of ``folded`` (``since`` folded): the keys
    ``now`` changed after ``since`` stay in the top."""
    parts = []
    for name, _, _, _ in _INDEXES:
        attr = f"{name}_index"
        before, after, base = getattr(since, attr).top, getattr(now, attr).top, getattr(folded, attr).base
        top: Any = Map().mutate()
        for key, bucket in after.items():
            if before.get(key, _MISSING) is not bucket:
                top[key] = bucket
        for key in before:  # changed before the fold began, and since undone: hide the base's
            if key not in after and key in base:
                top[key] = ()
        parts.append(Index(base, top.finish()))
    return StateSnapshot(now.revision, now.sessions, *parts)
