"""Continuous-trust records: typed, frozen, and each the same shape in memory, on disk and on the wire.

Every record says who made it, when and why, and names its principal exactly (ext_authz/principal.py).
Nothing here reads the clock: a record answers "am I in force at ``now``" for the ``now`` it is given.
Records are encoded as canonical JSON (sorted keys) so that a store's bytes, and the MAC over them, are
the same on every replica (see integrity.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from ..errors import Error
from ..match import Selector, Target

__all__ = [
    "APPROVAL_WAIT",
    "NARROWING_KINDS",
    "RECORD_TYPES",
    "REVOCATION_KINDS",
    "REVOCATION_SOURCES",
    "SIGNAL_SUBJECTS",
    "ExceptionGrant",
    "Grant",
    "Record",
    "RecordError",
    "Revocation",
    "Scope",
    "SeenEvent",
    "Signal",
    "as_of",
    "decode",
    "decode_verified",
    "encode",
    "finished_at",
]

# What a revocation can name. "quarantine" revocations are made by ext-authz itself.
REVOCATION_KINDS = ("spiffe_id", "cert", "jti", "sub", "sid", "device", "quarantine")
REVOCATION_SOURCES = ("api", "quarantine", "ssf")
# What a revocation may be narrowed to (``Revocation.also``): the user, the workload, the session
# (ISSUER#sid), the device or the tenant (the token's tenant claim) a request also has.
NARROWING_KINDS = ("sub", "spiffe_id", "sid", "device", "tenant")
SIGNAL_SUBJECTS = ("device", "workload", "user", "token")


# How long a grant or an exception waits for its second person; its window starts at approval.
APPROVAL_WAIT = 24 * 3600.0


class RecordError(Error, ValueError):
    """Stored text that is not a record of its kind."""


@dataclass(frozen=True, slots=True)
class Scope:
    """What a grant or exception covers: host, path and method patterns (empty = any), in the one
    matcher's syntax (ext_authz/match.py)."""

    hosts: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    selector: Selector = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Raises match.PatternError for a pattern outside the syntax: such a scope never exists.
        object.__setattr__(self, "selector", Selector.compile(self.hosts, self.paths, self.methods))

    @property
    def any(self) -> bool:
        return self.selector.any

    def matches(self, target: Target) -> bool:
        return self.selector.matches(target)

    def as_dict(self) -> dict[str, list[str]]:
        return {"hosts": list(self.hosts), "paths": list(self.paths), "methods": list(self.methods)}


@dataclass(frozen=True, slots=True)
class Revocation:
    RECORD: ClassVar[str] = "revocation"

    id: str
    kind: str
    value: str
    reason: str
    created_by: str
    created_at: float
    expires_at: float | None = None
    source: str = "api"  # api | quarantine | ssf
    ref: str = ""  # an outside reference: the SET's jti for ssf, a ticket
    issued_before: float | None = None  # only tokens issued (iat) before this: older sessions, not new ones
    ended_at: float | None = None  # lifted early (unrevoked, released): kept, listed, audited
    ended_by: str = ""
    end_reason: str = ""
    # Only a request that also has each of these (kind, value): a complex subject's other parts (jane's
    # credentials on device D; session S of user U). Kinds: NARROWING_KINDS.
    also: tuple[tuple[str, str], ...] = ()

    @property
    def record_id(self) -> str:
        return self.id

    def active(self, now: float) -> bool:
        return self.ended_at is None and (self.expires_at is None or now < self.expires_at)

    def narrows_to(self, context: Mapping[str, str]) -> bool:
        """Is a request with ``context`` (what it has of each narrowing kind) within the narrowing? Only a
        part the request shows to be different takes it out: a request that does not say (no device id, no
        tenant claim) is within it, to fail closed."""
        for kind, value in self.also:
            got = context.get(kind)
            if got is not None and got != value:
                return False
        return True

    def covers(self, issued_at: int | None) -> bool:
        """Does it refuse a credential issued at ``issued_at``? (Without an iat: yes, to fail closed.)"""
        return self.issued_before is None or issued_at is None or issued_at < self.issued_before

    def finished_at(self) -> float | None:
        return self.ended_at if self.ended_at is not None else self.expires_at


@dataclass(frozen=True, slots=True)
class Grant:
    """A just-in-time grant: ``principal`` may do ``scope`` from ``not_before`` until ``not_after``."""

    RECORD: ClassVar[str] = "grant"

    id: str
    principal: str
    scope: Scope
    not_before: float
    not_after: float
    reason: str
    approver: str  # who approved it (the approving caller; or, where approval is off, who was named)
    created_by: str
    created_at: float
    ended_at: float | None = None
    ended_by: str = ""
    ticket: str = ""  # a change or incident reference
    approved_at: float | None = None  # None: pending, no effect until a second person approves
    end_reason: str = ""

    @property
    def record_id(self) -> str:
        return self.id

    @property
    def pending(self) -> bool:
        return self.approved_at is None

    def active(self, now: float) -> bool:
        return not self.pending and self.ended_at is None and self.not_before <= now < self.not_after

    def finished_at(self) -> float | None:
        if self.ended_at is not None:
            return self.ended_at
        if self.pending:  # waiting for a second person: its window starts when they approve
            return max(self.not_after, self.created_at + APPROVAL_WAIT)
        return self.not_after


@dataclass(frozen=True, slots=True)
class ExceptionGrant:
    """Break-glass: a time-boxed allow for a named principal and scope, always visible."""

    RECORD: ClassVar[str] = "exception"

    id: str
    principal: str
    scope: Scope
    reason: str
    opened_by: str
    opened_at: float
    expires_at: float
    closed_at: float | None = None
    closed_by: str = ""
    approved_by: str = ""
    approved_at: float | None = None  # None: pending, no effect until a second person approves
    close_reason: str = ""

    @property
    def record_id(self) -> str:
        return self.id

    @property
    def pending(self) -> bool:
        return self.approved_at is None

    def active(self, now: float) -> bool:
        return not self.pending and self.closed_at is None and self.opened_at <= now < self.expires_at

    def finished_at(self) -> float | None:
        if self.closed_at is not None:
            return self.closed_at
        if self.pending:  # waiting for a second person: its window starts when they approve
            return max(self.expires_at, self.opened_at + APPROVAL_WAIT)
        return self.expires_at


@dataclass(frozen=True, slots=True)
class Signal:
    """A fact about a device, workload, user or token, valid until ``expires_at`` (then: unknown)."""

    RECORD: ClassVar[str] = "signal"

    subject_kind: str  # device | workload | user | token
    subject: str  # a device id, a SPIFFE ID, ISSUER#SUBJECT, or ISSUER#jti
    key: str
    value: str
    set_by: str
    set_at: float
    expires_at: float
    source: str = "api"  # api | ssf
    ref: str = ""  # the SET's jti for ssf

    @property
    def record_id(self) -> str:
        return f"{self.subject_kind}\0{self.subject}\0{self.key}"

    def fresh(self, now: float) -> bool:
        return now < self.expires_at

    def finished_at(self) -> float | None:
        return self.expires_at


@dataclass(frozen=True, slots=True)
class SeenEvent:
    """A Security Event Token a receiver applied, kept until its ``iat`` is too old to be accepted anyway:
    a replay within that window is recognised (and changes nothing), so the ids kept stay bounded."""

    RECORD: ClassVar[str] = "seen"

    id: str
    issuer: str
    jti: str
    event: str
    seen_at: float
    expires_at: float

    @staticmethod
    def id_for(issuer: str, jti: str) -> str:
        return "set_" + hashlib.sha256(f"{issuer}\0{jti}".encode()).hexdigest()[:32]

    @property
    def record_id(self) -> str:
        return self.id

    def finished_at(self) -> float | None:
        return self.expires_at


Record = Revocation | Grant | ExceptionGrant | Signal | SeenEvent
RECORD_TYPES: dict[str, type[Record]] = {
    t.RECORD: t for t in (Revocation, Grant, ExceptionGrant, Signal, SeenEvent)
}
R = TypeVar("R", bound=Record)
_SPECS: dict[type[Record], _Spec] = {}  # filled below, once the types are defined


def finished_at(record: Record) -> float | None:
    """When a record stopped being in force for good, or None if it has not (or never will by itself)."""
    return record.finished_at()


def as_of(record: Record, at: float) -> Record | None:
    """The record as it stood at ``at`` (for reproducing a past decision), or None if it did not exist
    yet. What happened after ``at`` is undone: a later approval, end, close or lift. A signal set again
    since then holds only its new value (the old one is in the audit log, not in state)."""
    if isinstance(record, Signal):
        return record if record.set_at <= at else None
    if isinstance(record, SeenEvent):
        return record if record.seen_at <= at else None
    if isinstance(record, ExceptionGrant):
        if record.opened_at > at:
            return None
        changes: dict[str, Any] = {}
        if record.approved_at is not None and record.approved_at > at:
            changes.update(approved_at=None, approved_by="")
        if record.closed_at is not None and record.closed_at > at:
            changes.update(closed_at=None, closed_by="", close_reason="")
        return dataclasses.replace(record, **changes) if changes else record
    if record.created_at > at:
        return None
    changes = {}
    if isinstance(record, Grant) and record.approved_at is not None and record.approved_at > at:
        changes.update(approved_at=None, approver="")
    if record.ended_at is not None and record.ended_at > at:
        changes.update(ended_at=None, ended_by="", end_reason="")
    return dataclasses.replace(record, **changes) if changes else record


def as_dict(record: Record) -> dict[str, Any]:
    out = {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    if "scope" in out:
        out["scope"] = out["scope"].as_dict()
    if "also" in out:
        if out["also"]:
            out["also"] = [list(pair) for pair in out["also"]]
        else:
            del out["also"]  # as records were written before narrowing existed: the same bytes, the same MAC
    return out


def encode(record: Record) -> str:
    """Canonical JSON: the same record is the same text on every replica."""
    return json.dumps(as_dict(record), separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True, slots=True)
class _Spec:
    """What decoding a record of one type checks, worked out once per type (not per record)."""

    names: frozenset[str]
    required: frozenset[str]
    slots: tuple[tuple[str, Any, Any], ...]  # (field, its slot descriptor, default) in order
    strings: tuple[str, ...]
    numbers: tuple[str, ...]
    optional_numbers: tuple[str, ...]
    shared: tuple[str, ...]  # few distinct values across records (kinds, makers): held once, interned
    fill: Callable[[dict[str, Any]], Any]  # the record from its data: see _filler
    fill_verified: Callable[[dict[str, Any]], Any]  # the same, for data decoded once already


# Fields whose values repeat across many records: interning holds each value once (a million SSF
# revocations have one maker, one source and a handful of kinds and reasons).
_SHARED = frozenset(
    (
        "kind",
        "source",
        "created_by",
        "ended_by",
        "reason",
        "subject_kind",
        "key",
        "value",  # a signal's (a revocation's value names one credential: not shared)
        "set_by",
        "issuer",
        "event",
        "approver",
        "opened_by",
        "approved_by",
        "closed_by",
    )
)


def _spec(cls: type[Record]) -> _Spec:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    required = {
        n
        for n, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    kinds = {n: str(f.type) for n, f in fields.items() if n != "scope"}
    slots = tuple(
        (n, getattr(cls, n), None if f.default is dataclasses.MISSING else f.default)
        for n, f in fields.items()
    )
    made = _Spec(
        frozenset(fields),
        frozenset(required),
        slots,
        tuple(n for n, t in kinds.items() if t == "str"),
        tuple(n for n, t in kinds.items() if t == "float"),
        tuple(n for n, t in kinds.items() if t == "float | None"),
        tuple(
            n
            for n, t in kinds.items()
            if t == "str" and n in _SHARED and not (cls is Revocation and n == "value")
        ),
        fill=lambda data: None,
        fill_verified=lambda data: None,
    )
    return dataclasses.replace(made, fill=_filler(cls, made), fill_verified=_filler(cls, made, checked=False))


def _build(cls: type[R], data: dict[str, Any]) -> R:
    spec = _SPECS[cls]  # type: ignore[index]
    keys = data.keys()
    if not (keys <= spec.names and spec.required <= keys):
        unknown, missing = set(keys) - spec.names, spec.required - set(keys)
        raise RecordError(f"not a {cls.RECORD}: unknown fields {sorted(unknown)}, missing {sorted(missing)}")
    if "scope" in data:
        scope = data["scope"]
        if not isinstance(scope, dict) or set(scope) - {"hosts", "paths", "methods"}:
            raise RecordError("scope is not hosts/paths/methods")
        if not all(isinstance(v, list) for v in scope.values()):
            raise RecordError("scope patterns are lists")
        if not all(isinstance(x, str) for v in scope.values() for x in v):
            raise RecordError("scope patterns are strings")
        data["scope"] = Scope(**{k: tuple(v) for k, v in scope.items()})
    if "also" in data:
        also = data["also"]
        if not isinstance(also, list) or not all(
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
            for pair in also
        ):
            raise RecordError("also is a list of [kind, value] pairs")
        data["also"] = tuple((kind, value) for kind, value in also)
    return spec.fill(data)  # type: ignore[no-any-return]


_MISSING = object()


def _filler(cls: type[Record], spec: _Spec, *, checked: bool = True) -> Callable[[dict[str, Any]], Any]:
    """A record of ``cls`` from its checked-for-keys data: each field's type checked (shared strings
    interned) and set through its slot descriptor, as the dataclass's own __init__ would (records have no
    __post_init__). Written out per type, once: a loop over the fields and a frozen dataclass's __init__
    (object.__setattr__ per field) are most of the cost of reading a million records. Not ``checked``:
    for data :func:`decode` accepted already (see decode_verified), the types are not checked again."""
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls, "_intern": sys.intern, "_E": RecordError}
    env.update(_MISSING=_MISSING, _float=float, _int=int, _str=str)
    lines = ["def fill(data):", "    r = _new(_cls)"]
    for i, (name, slot, default) in enumerate(spec.slots):
        env[f"_set{i}"], env[f"_default{i}"] = slot.__set__, default
        lines.append(f"    v = data.get({name!r}, _MISSING)")
        lines.append("    if v is _MISSING:")
        lines.append(f"        v = _default{i}")
        if not checked:
            if name in spec.shared:
                lines.append("    else:")
                lines.append("        v = _intern(v)")
        elif name in spec.strings:
            lines.append("    elif type(v) is not _str:")
            lines.append(f"        raise _E({name + ' is not a string'!r})")
            if name in spec.shared:
                lines.append("    else:")
                lines.append("        v = _intern(v)")
        elif name in spec.numbers or name in spec.optional_numbers:
            none_ok = " and v is not None" if name in spec.optional_numbers else ""
            lines.append(f"    elif type(v) is not _float and type(v) is not _int{none_ok}:")
            lines.append(f"        raise _E({name + ' is not a number'!r})")
        lines.append(f"    _set{i}(r, v)")
    lines.append("    return r")
    exec("\n".join(lines), env)  # noqa: S102 - text made here from the record types' own field names
    fill: Callable[[dict[str, Any]], Any] = env["fill"]
    return fill


def decode(kind: str, data: object) -> Record:
    """A record of ``kind`` from its decoded JSON object; RecordError if it is not one."""
    cls = RECORD_TYPES.get(kind)
    if cls is None:
        raise RecordError(f"unknown record kind {kind!r}")
    if not isinstance(data, dict):
        raise RecordError(f"a {kind} is a JSON object")
    try:
        record = _build(cls, data)
    except RecordError:
        raise
    except (TypeError, ValueError) as exc:  # a bad scope pattern, a wrong shape
        raise RecordError(f"not a {kind}: {exc}") from exc
    return record


def decode_verified(kind: str, data: dict[str, Any]) -> Record:
    """The record :func:`decode` made of this same data already, in another process (the start-up
    verifier, loading.py): made again the same way, its fields and types not checked again. Only for
    data that passed decode and the checks after it."""
    spec = _SPECS[RECORD_TYPES[kind]]
    if "scope" in data:
        data["scope"] = Scope(**{k: tuple(v) for k, v in data["scope"].items()})
    if "also" in data:
        data["also"] = tuple((k, v) for k, v in data["also"])
    return spec.fill_verified(data)  # type: ignore[no-any-return]


_SPECS.update({cls: _spec(cls) for cls in RECORD_TYPES.values()})
