"""The change-log protocol every state backend implements (memory, SQLite, Redis, …).

A backend stores the current records (kind, id → sealed body), the sessions' first uses, and an
ordered change log with opaque positions. It knows nothing of record types, keys or validation: the
replica (``state/replica.py``) seals what it writes, opens and checks what it reads, applies changes
and builds snapshots. A backend translates its driver's failures into :class:`~ext_authz.errors.StateError`
and nothing else escapes it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from ..audit import AuditRow

__all__ = ["PAGE", "AuditRow", "Batch", "Change", "ChangeLog"]

PAGE = 2000  # records or sessions read per request when loading: each request has its own deadline

Op = Literal["put", "delete", "session"]


@dataclass(frozen=True, slots=True)
class Change:
    op: Op
    kind: str  # a record kind, or "session"
    id: str
    body: str  # the sealed envelope (state/integrity.py)
    at: float


@dataclass(frozen=True, slots=True)
class Batch:
    """Changes after a position. ``behind``: entries we never read were pruned; load everything."""

    position: str
    changes: list[Change] = field(default_factory=list)
    behind: bool = False


class ChangeLog(Protocol):
    durable: bool  # records and sessions outlive the process

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def position(self) -> str:
        """The change log's position now. A full load reads it first, then the records: a change
        committed in between is read again from the log (harmless), never counted as read while
        missing."""

    def records(self, page: int = PAGE) -> AsyncIterator[list[tuple[str, str, str]]]:
        """Every stored record as (kind, id, sealed body), ``page`` at a time, each page read under its
        own deadline: a million records take many short reads, never one long one. A record may come
        twice (Redis's HSCAN); the last one read wins."""

    def sessions(self, page: int = PAGE) -> AsyncIterator[list[tuple[str, str]]]:
        """Every stored first use as (session key, sealed body), ``page`` at a time."""

    async def append(self, changes: Sequence[Change], audit: Sequence[AuditRow] = ()) -> None:
        """Apply ``changes`` to the stored records and append them to the log (and ``audit`` to the
        audit log), in order, atomically: all of them or none."""

    async def add_audit(self, rows: list[AuditRow]) -> None:
        """Append audit entries; an entry whose id is already stored is kept as it is (idempotent)."""

    async def read_audit(self, since: float, principal: str, limit: int) -> list[AuditRow]:
        """The latest ``limit`` entries at or after ``since`` (about ``principal`` if given), oldest
        first."""

    async def follow(self, position: str, *, wait: bool = True) -> Batch:
        """Changes after ``position``; with ``wait``, first waiting up to the backend's own interval
        for some (a poll interval, or a blocking read)."""

    async def add_sessions(self, sessions: dict[str, str], now: float) -> None:
        """Record first uses (the first write of a key wins) and log them for the other replicas."""

    async def confirm(self) -> None:
        """StateError unless what the store took so far is as safe as an acknowledged write must be (a
        store that waits for replicas: on them); nothing to do for the others."""

    async def claim_once(self, key: str, until: float, now: float) -> bool:
        """Hold ``key`` until ``until`` unless it is held already (by any replica): True when this call
        took it. What is used once fleet-wide (a DPoP proof) is claimed here; the claim is forgotten after
        ``until``, so the store holds only what could still be replayed."""

    async def forget(self, items: list[tuple[str, str, str]], now: float, audit_before: float) -> None:
        """Delete records that ended past the retention, each only if it still holds that body; prune
        the log's old entries, and audit entries older than ``audit_before``."""
