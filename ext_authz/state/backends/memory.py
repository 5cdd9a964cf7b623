"""``memory://``: one process, nothing survives a restart. For tests and throwaway demos."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from ...settings import StateSettings
from .base import PAGE, AuditRow, Batch, Change

__all__ = ["MemoryLog"]


class MemoryLog:
    durable = False

    def __init__(self, *, interval: float = 1.0) -> None:
        self.wait = interval
        self._records: dict[tuple[str, str], str] = {}
        self._sessions: dict[str, str] = {}
        self._seq = 0
        self._audit: dict[str, AuditRow] = {}
        self._claims: dict[str, float] = {}

    @classmethod
    def from_settings(cls, settings: StateSettings) -> MemoryLog:
        return cls()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def position(self) -> str:
        return str(self._seq)

    async def records(self, page: int = PAGE) -> AsyncIterator[list[tuple[str, str, str]]]:
        items = [(kind, rid, body) for (kind, rid), body in self._records.items()]
        for i in range(0, len(items), page):
            yield items[i : i + page]

    async def sessions(self, page: int = PAGE) -> AsyncIterator[list[tuple[str, str]]]:
        items = list(self._sessions.items())
        for i in range(0, len(items), page):
            yield items[i : i + page]

    async def append(self, changes: Sequence[Change], audit: Sequence[AuditRow] = ()) -> None:
        for row in audit:
            self._audit.setdefault(row.id, row)
        for change in changes:
            if change.op == "put":
                self._records[(change.kind, change.id)] = change.body
            elif change.op == "delete":
                self._records.pop((change.kind, change.id), None)
            self._seq += 1

    async def confirm(self) -> None:
        return None  # a write here is acknowledged once committed: nothing more to wait for

    async def claim_once(self, key: str, until: float, now: float) -> bool:
        if len(self._claims) > 10_000:
            self._claims = {k: u for k, u in self._claims.items() if u >= now}
        if self._claims.get(key, 0.0) >= now:
            return False
        self._claims[key] = until
        return True

    async def follow(self, position: str, *, wait: bool = True) -> Batch:
        # This process is the only writer, and the replica applies its own writes as it makes them.
        if wait:
            await asyncio.sleep(self.wait)
        return Batch(str(self._seq))

    async def add_sessions(self, sessions: dict[str, str], now: float) -> None:
        for key, body in sessions.items():
            self._sessions.setdefault(key, body)

    async def add_audit(self, rows: list[AuditRow]) -> None:
        for row in rows:
            self._audit.setdefault(row.id, row)

    async def read_audit(self, since: float, principal: str, limit: int) -> list[AuditRow]:
        rows = sorted(
            (
                r
                for r in self._audit.values()
                if r.at >= since and (not principal or r.principal == principal)
            ),
            key=lambda r: (r.at, r.id),
        )
        return rows[-limit:] if limit else rows

    async def forget(self, items: list[tuple[str, str, str]], now: float, audit_before: float) -> None:
        for kind, rid, body in items:
            if self._records.get((kind, rid)) == body:
                del self._records[(kind, rid)]
        for aid in [aid for aid, row in self._audit.items() if row.at < audit_before]:
            del self._audit[aid]
