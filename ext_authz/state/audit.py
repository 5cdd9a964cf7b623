"""The audit log: every change of continuous-trust state, who made it, when, why, before and after.

It outlives the state it describes. State forgets a record ``state_retention`` after it ended; the
audit log keeps its entries for ``audit_retention`` (90 days by default). Entries are sealed like
records (integrity.py: the MAC covers the entry's id and canonical JSON), written in the same
transaction as the change they describe, and re-read with the same suspicion: an entry whose MAC does
not verify is skipped and counted, never shown as fact.

Expiries are nobody's action: every replica notices them and writes an entry whose id is derived from
the record and its end, so the backend keeps one however many replicas noticed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any, Protocol

from .integrity import IntegrityError, Sealer
from .records import ExceptionGrant, Grant, Record, Revocation, Signal, as_dict

__all__ = ["ACTIONS", "AuditEntry", "AuditLog", "AuditRow", "about", "entry_id", "expiry_entry", "new_entry"]

log = logging.getLogger("ext_authz.state")

ACTIONS = (
    "revoke",
    "unrevoke",
    "quarantine",
    "release",
    "grant",
    "open",
    "approve",
    "end",
    "close",
    "signal",
    "delete",
    "expire",
)
EXPIRY_ACTOR = "ext-authz (expired)"
_SEQUENCE = itertools.count()


def entry_id(at: float) -> str:
    """A new entry's id. Ids sort in the order entries were made (by time, then by this process's
    sequence): entries of one instant keep their order in every backend."""
    return f"aud_{int(at * 1000):012x}{next(_SEQUENCE) % 16**6:06x}{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class AuditRow:
    """An entry as a backend stores it: ``principal`` is kept beside the sealed body for filtering."""

    id: str
    at: float
    principal: str
    body: str


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: str
    at: float
    actor: str
    action: str
    kind: str  # revocation | grant | exception | signal
    record_id: str
    principal: str  # whom the record is about (a SPIFFE ID or ISSUER#SUBJECT), when it is about one
    reason: str
    before: dict[str, Any] | None  # the record before the change (None when it was created)
    after: dict[str, Any] | None  # the record after (None when it was deleted)

    def canonical(self) -> str:
        return json.dumps(
            {
                "id": self.id,
                "at": self.at,
                "actor": self.actor,
                "action": self.action,
                "kind": self.kind,
                "record_id": self.record_id,
                "principal": self.principal,
                "reason": self.reason,
                "before": self.before,
                "after": self.after,
            },
            separators=(",", ":"),
            sort_keys=True,
        )

    @classmethod
    def decode(cls, data: object) -> AuditEntry:
        if not isinstance(data, dict) or set(data) != {
            "id",
            "at",
            "actor",
            "action",
            "kind",
            "record_id",
            "principal",
            "reason",
            "before",
            "after",
        }:
            raise ValueError("not an audit entry")
        for name in ("id", "actor", "action", "kind", "record_id", "principal", "reason"):
            if not isinstance(data[name], str):
                raise ValueError(f"{name} is not a string")
        at = data["at"]
        if isinstance(at, bool) or not isinstance(at, int | float):
            raise ValueError("at is not a number")
        for name in ("before", "after"):
            if data[name] is not None and not isinstance(data[name], dict):
                raise ValueError(f"{name} is not a record")
        return cls(**data)


def about(record: Record) -> str:
    """The principal a record is about, for ``ext-authz audit --principal``; '' for other values."""
    if isinstance(record, Revocation):
        return record.value if record.kind in ("spiffe_id", "sub", "quarantine") else ""
    if isinstance(record, Grant | ExceptionGrant):
        return record.principal
    if isinstance(record, Signal):
        return record.subject if record.subject_kind in ("workload", "user") else ""
    return ""


def new_entry(
    entry_id: str,
    at: float,
    actor: str,
    action: str,
    before: Record | None,
    after: Record | None,
    reason: str = "",
) -> AuditEntry:
    record = after if after is not None else before
    assert record is not None
    return AuditEntry(
        id=entry_id,
        at=at,
        actor=actor,
        action=action,
        kind=record.RECORD,
        record_id=record.record_id,
        principal=about(record),
        reason=reason,
        before=as_dict(before) if before is not None else None,
        after=as_dict(after) if after is not None else None,
    )


def expiry_entry(record: Record, ended: float) -> AuditEntry:
    """The entry for a record that ran out by itself at ``ended``; its id is the same on every replica."""
    digest = hashlib.sha256(f"{record.RECORD}\0{record.record_id}\0{ended!r}".encode()).hexdigest()
    return new_entry(f"aud_x{digest[:20]}", ended, EXPIRY_ACTOR, "expire", record, record)


class _Stored(Protocol):
    async def read_audit(self, since: float, principal: str, limit: int) -> list[AuditRow]: ...


class AuditLog:
    """Entries sealed for the store (written by the replica, in the transaction of the change they
    describe), and read back with suspicion: one that is not authentic is skipped and counted."""

    def __init__(self, store: _Stored, sealer: Sealer) -> None:
        self.store = store
        self.sealer = sealer
        self.rejected = 0  # entries read whose MAC or shape did not hold

    def row(self, entry: AuditEntry) -> AuditRow:
        body = self.sealer.seal("audit", "audit", entry.id, entry.canonical())
        return AuditRow(entry.id, entry.at, entry.principal, body)

    async def read(self, since: float = 0.0, principal: str = "", limit: int = 1000) -> list[AuditEntry]:
        """The latest ``limit`` entries at or after ``since`` (about ``principal`` if given), oldest first."""
        entries = []
        for row in await self.store.read_audit(since, principal, limit):
            try:
                entry = AuditEntry.decode(self.sealer.open("audit", "audit", row.id, row.body))
            except (IntegrityError, ValueError) as exc:
                self.rejected += 1
                log.warning("audit: ignoring entry %r: %s", row.id[:80], exc)
                continue
            if entry.id != row.id or entry.principal != row.principal:
                self.rejected += 1
                continue
            entries.append(entry)
        return entries
