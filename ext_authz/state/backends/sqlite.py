"""``sqlite:///PATH``: durable, and shared by every process on the host that uses the file.

Records and sessions live in tables; every change is also a row of the ``changes`` log, which each
process polls (every 50 ms by default) from the position it last read. A reader whose position was
pruned away loads everything again. The file is created with mode 0600.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from ...errors import StateError
from ...settings import StateSettings
from .base import PAGE, AuditRow, Batch, Change

__all__ = ["SqliteLog"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
                                    PRIMARY KEY (kind, id));
CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
                                    op TEXT NOT NULL, kind TEXT NOT NULL, id TEXT NOT NULL,
                                    body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (sid TEXT PRIMARY KEY, first_seen TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (id TEXT PRIMARY KEY, at REAL NOT NULL, principal TEXT NOT NULL,
                                  body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audit_at ON audit (at);
CREATE INDEX IF NOT EXISTS audit_principal ON audit (principal, at);
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, until REAL NOT NULL);
"""
_Row = tuple[int, float, str, str, str, str]
FOLLOW_BATCH = 1000  # change-log entries read per follow: a burst is applied a batch at a time


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction. The connection is in autocommit mode (``isolation_level=None``),
    where ``with db:`` opens none and every statement would commit on its own."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _last_seq(db: sqlite3.Connection) -> int:
    """The last change-log position ever assigned: AUTOINCREMENT remembers it when every entry has
    been pruned (sqlite_sequence only exists once a first entry was written)."""
    last = int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])
    with contextlib.suppress(sqlite3.OperationalError):
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        if row:
            last = max(last, int(row[0]))
    return last


class SqliteLog:
    durable = True
    CHANGE_LOG_KEEP = 600.0  # seconds of change log kept; a reader further behind loads everything

    def __init__(self, path: Path, *, poll_interval: float = 0.05) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: StateSettings) -> SqliteLog:
        return cls(Path(settings.url[len("sqlite://") :]))

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))  # state is not for other users
        db = sqlite3.connect(self.path, timeout=5, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        return db

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            with self._lock:
                if self._db is None:
                    raise StateError(f"{self.path}: the store is closed")
                return fn(self._db)

        try:
            return await asyncio.to_thread(run)
        except sqlite3.Error as exc:
            raise StateError(f"{self.path}: {exc}") from exc

    async def open(self) -> None:
        try:
            self._db = await asyncio.to_thread(self._connect)
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"{self.path}: cannot open the state database ({exc})") from exc

    async def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            with self._lock, contextlib.suppress(sqlite3.Error):
                db.close()

    async def position(self) -> str:
        return str(await self._call(_last_seq))

    async def records(self, page: int = PAGE) -> AsyncIterator[list[tuple[str, str, str]]]:
        after = 0  # pages by rowid: each is one short read, and a row written meanwhile is not skipped

        def read(db: sqlite3.Connection) -> list[tuple[int, str, str, str]]:
            query = "SELECT rowid, kind, id, body FROM records WHERE rowid > ? ORDER BY rowid LIMIT ?"
            return db.execute(query, (after, page)).fetchall()

        while rows := await self._call(read):
            after = rows[-1][0]
            yield [(kind, rid, body) for _, kind, rid, body in rows]

    async def sessions(self, page: int = PAGE) -> AsyncIterator[list[tuple[str, str]]]:
        after = ""

        def read(db: sqlite3.Connection) -> list[tuple[str, str]]:
            query = "SELECT sid, first_seen FROM sessions WHERE sid > ? ORDER BY sid LIMIT ?"
            return db.execute(query, (after, page)).fetchall()

        while rows := await self._call(read):
            after = rows[-1][0]
            yield rows

    async def append(self, changes: Sequence[Change], audit: Sequence[AuditRow] = ()) -> None:
        def write(db: sqlite3.Connection) -> None:
            with _transaction(db):  # the records, their change-log and audit entries: all or nothing
                if audit:
                    _insert_audit(db, list(audit))
                for change in changes:
                    if change.op == "put":
                        db.execute(
                            "INSERT OR REPLACE INTO records (kind, id, body) VALUES (?, ?, ?)",
                            (change.kind, change.id, change.body),
                        )
                    else:
                        db.execute("DELETE FROM records WHERE kind = ? AND id = ?", (change.kind, change.id))
                db.executemany(
                    "INSERT INTO changes (at, op, kind, id, body) VALUES (?, ?, ?, ?, ?)",
                    [(c.at, c.op, c.kind, c.id, c.body) for c in changes],
                )

        await self._call(write)

    async def follow(self, position: str, *, wait: bool = True) -> Batch:
        if wait:
            await asyncio.sleep(self.poll_interval)
        after = int(position or 0)

        def read(db: sqlite3.Connection) -> Batch:
            rows: list[_Row] = db.execute(
                "SELECT seq, at, op, kind, id, body FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, FOLLOW_BATCH),
            ).fetchall()
            # Behind: the first entry is not the next one, or the log moved on and is empty.
            behind = rows[0][0] > after + 1 if rows else _last_seq(db) > after
            changes = [Change(op, kind, rid, body, at) for _, at, op, kind, rid, body in rows]  # type: ignore[arg-type]
            return Batch(str(rows[-1][0]) if rows else position, changes, behind)

        return await self._call(read)

    async def add_sessions(self, sessions: dict[str, str], now: float) -> None:
        def write(db: sqlite3.Connection) -> None:
            with _transaction(db):
                for key, body in sessions.items():
                    cur = db.execute(
                        "INSERT OR IGNORE INTO sessions (sid, first_seen) VALUES (?, ?)", (key, body)
                    )
                    if cur.rowcount:
                        db.execute(
                            "INSERT INTO changes (at, op, kind, id, body)"
                            " VALUES (?, 'session', 'session', ?, ?)",
                            (now, key, body),
                        )

        await self._call(write)

    async def confirm(self) -> None:
        return None  # a write here is acknowledged once committed: nothing more to wait for

    async def claim_once(self, key: str, until: float, now: float) -> bool:
        def claim(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                cur = db.execute(
                    "INSERT INTO claims (key, until) VALUES (?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET until = excluded.until WHERE claims.until < ?",
                    (key, until, now),
                )
                return cur.rowcount == 1

        return await self._call(claim)

    async def add_audit(self, rows: list[AuditRow]) -> None:
        def write(db: sqlite3.Connection) -> None:
            with _transaction(db):
                _insert_audit(db, rows)

        if rows:
            await self._call(write)

    async def read_audit(self, since: float, principal: str, limit: int) -> list[AuditRow]:
        def read(db: sqlite3.Connection) -> list[AuditRow]:
            where, params = "at >= ?", list[float | str]([since])
            if principal:
                where, params = where + " AND principal = ?", [*params, principal]
            rows = db.execute(
                f"SELECT id, at, principal, body FROM audit WHERE {where}"  # noqa: S608 - fixed text
                " ORDER BY at DESC, id DESC LIMIT ?",
                (*params, limit or -1),
            ).fetchall()
            return [AuditRow(*row) for row in reversed(rows)]

        return await self._call(read)

    async def forget(self, items: list[tuple[str, str, str]], now: float, audit_before: float) -> None:
        def write(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.executemany("DELETE FROM records WHERE kind = ? AND id = ? AND body = ?", items)
                db.execute("DELETE FROM changes WHERE at < ?", (now - self.CHANGE_LOG_KEEP,))
                db.execute("DELETE FROM audit WHERE at < ?", (audit_before,))
                db.execute("DELETE FROM claims WHERE until < ?", (now,))

        await self._call(write)


def _insert_audit(db: sqlite3.Connection, rows: list[AuditRow]) -> None:
    db.executemany(
        "INSERT OR IGNORE INTO audit (id, at, principal, body) VALUES (?, ?, ?, ?)",
        [(r.id, r.at, r.principal, r.body) for r in rows],
    )
