"""Stores: where continuous-trust records live. ``memory://`` and ``sqlite:///PATH``.

The Check path only ever reads ``store.snapshot`` (an immutable StateSnapshot): it never waits
on a database. Writes go to the store, then a new snapshot is swapped in. The SQLite store is
durable and shared: processes on one host pointing at the same file see each other's changes
through a change log they poll (every 50 ms by default).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

from .model import ExceptionGrant, Grant, Revocation, Scope, Signal, StateSnapshot, finished_at

__all__ = ["MemoryStore", "RevocationEvent", "SqliteStore", "Store", "open_store"]

log = logging.getLogger("ext_authz.state")

RECORD_TYPES: dict[str, type[Any]] = {
    "revocation": Revocation,
    "grant": Grant,
    "exception": ExceptionGrant,
    "signal": Signal,
}


@dataclasses.dataclass(frozen=True, slots=True)
class RevocationEvent:
    op: str  # created | removed
    revocation: Revocation
    at: float


def to_json(record: Any) -> str:
    return json.dumps(dataclasses.asdict(record), separators=(",", ":"), sort_keys=True)


def from_json(kind: str, body: str) -> Any:
    data = json.loads(body)
    if "scope" in data:
        data["scope"] = Scope(**{k: tuple(v) for k, v in data["scope"].items()})
    return RECORD_TYPES[kind](**data)


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


def signal_id(s: Signal) -> str:
    return f"{s.subject_kind}\0{s.subject}\0{s.key}"


def record_id(kind: str, record: Any) -> str:
    return signal_id(record) if kind == "signal" else str(record.id)


class Store:
    """Records by kind and id; a rebuilt snapshot after every change; revocation watchers."""

    durable = False  # True: sessions and records outlive the process
    retention = 3600.0  # seconds an ended record is still listed (set from the config's state_retention)
    deletes_forgotten = False  # True: the store also deletes pruned records from its storage

    def __init__(self) -> None:
        self._records: dict[str, dict[str, Any]] = {k: {} for k in RECORD_TYPES}
        self._sessions: dict[str, float] = {}
        self._revision = 0
        self.snapshot = StateSnapshot()
        self._watchers: list[Callable[[RevocationEvent], None]] = []
        self._pending_sessions: dict[str, float] = {}  # first uses not yet persisted (durable stores)
        # Pruned from memory as (kind, id, body); durable stores delete them too, if still unchanged.
        self._forgotten: list[tuple[str, str, str]] = []

    @property
    def healthy(self) -> bool:
        """False while a shared store is unreachable (Checks go on with the last snapshot)."""
        return True

    # -- reading -------------------------------------------------------------------------------
    def get(self, kind: str, rid: str) -> Any | None:
        return self._records[kind].get(rid)

    def all(self, kind: str) -> list[Any]:
        return list(self._records[kind].values())

    def watch(self, callback: Callable[[RevocationEvent], None]) -> Callable[[], None]:
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None

    def _emit(self, event: RevocationEvent) -> None:
        for cb in list(self._watchers):
            try:
                cb(event)
            except Exception:  # a broken watcher must not break the store
                log.exception("revocation watcher failed")

    def _prune(self, now: float) -> None:
        """Forget records that ended more than ``retention`` seconds ago: memory stays bounded under
        churn. (The decision log and the revocation stream are the lasting history.)"""
        horizon = now - self.retention
        for kind, records in self._records.items():
            gone = [
                rid for rid, rec in records.items() if (end := finished_at(rec)) is not None and end < horizon
            ]
            for rid in gone:
                if self.deletes_forgotten:
                    self._forgotten.append((kind, rid, to_json(records[rid])))
                del records[rid]

    def _rebuild(self) -> None:
        self._prune(time.time())
        self._revision += 1
        snapshot = StateSnapshot.build(
            self._revision,
            revocations=self._records["revocation"].values(),
            grants=self._records["grant"].values(),
            exceptions=self._records["exception"].values(),
            signals=self._records["signal"].values(),
        )
        # First uses of sessions are only ever added (or moved earlier), never withdrawn: the
        # snapshot reads them live, so a session counts from its first request rather than from
        # the next unrelated change that happens to rebuild the snapshot.
        self.snapshot = dataclasses.replace(snapshot, sessions=MappingProxyType(self._sessions))

    # -- writing -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._rebuild()

    async def close(self) -> None:
        return None

    async def put(self, kind: str, record: Any, *, at: float) -> None:
        rid = record_id(kind, record)
        await self._persist_put(kind, rid, record, at)
        self._records[kind][rid] = record
        self._rebuild()
        if kind == "revocation":
            self._emit(RevocationEvent("created", record, at))

    async def delete(self, kind: str, rid: str, *, at: float) -> Any | None:
        record = self._records[kind].get(rid)
        if record is None:
            return None
        await self._persist_delete(kind, rid, record, at)
        self._records[kind].pop(rid, None)
        self._rebuild()
        if kind == "revocation":
            self._emit(RevocationEvent("removed", record, at))
        return record

    def note_session(self, sid: str, first_seen: float) -> float:
        """First use of a session id (kept if already known). Never waits: persisted later."""
        known = self._sessions.get(sid)
        if known is not None:
            return known
        self._sessions[sid] = first_seen
        if self.durable:
            self._pending_sessions[sid] = first_seen
        return first_seen

    async def _flush_sessions(self) -> None:
        """Persist newly seen sessions. The queue is swapped on the event loop (where Checks add to
        it) and only the detached batch is written; on failure it is kept for the next attempt."""
        if not self._pending_sessions:
            return
        pending, self._pending_sessions = self._pending_sessions, {}
        try:
            await self._persist_sessions(pending)
        except BaseException:
            for sid, first in pending.items():
                self._pending_sessions.setdefault(sid, first)
            raise

    async def _persist_sessions(self, pending: dict[str, float]) -> None:
        return None

    async def _persist_put(self, kind: str, rid: str, record: Any, at: float) -> None:
        return None

    async def _persist_delete(self, kind: str, rid: str, record: Any, at: float) -> None:
        return None


class MemoryStore(Store):
    """``memory://``: nothing survives a restart. For tests and throwaway demos."""


class SqliteStore(Store):
    """``sqlite:///PATH``: durable, and shared by every process on the host using the file."""

    durable = True

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS records (kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,
                                        PRIMARY KEY (kind, id));
    CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL,
                                        op TEXT NOT NULL, kind TEXT NOT NULL, id TEXT NOT NULL,
                                        body TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS sessions (sid TEXT PRIMARY KEY, first_seen REAL NOT NULL);
    """

    deletes_forgotten = True
    CHANGE_LOG_KEEP = 600.0  # seconds of change log kept; a reader further behind reloads everything
    MAINTENANCE_EVERY = 30.0

    def __init__(self, path: Path, *, poll_interval: float = 0.05) -> None:
        super().__init__()
        self.path = path
        self.poll_interval = poll_interval
        self._maintained = time.monotonic()
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._seq = 0
        self._poller: asyncio.Task[None] | None = None
        self.poll_errors = 0

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(self.SCHEMA)
        return db

    def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            assert self._db is not None
            return fn(self._db)

    async def start(self) -> None:
        self._db = await asyncio.to_thread(self._connect)
        await asyncio.to_thread(self._load_all)
        self._rebuild()
        self._poller = asyncio.create_task(self._poll_loop())

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        with contextlib.suppress(sqlite3.Error):
            await self._flush_sessions()
        if self._db is not None:
            self._run(lambda db: db.close())
            self._db = None

    def _load_all(self) -> None:
        def load(db: sqlite3.Connection) -> tuple[list[tuple[str, str, str]], list[tuple[str, float]], int]:
            # The position first, then the records: a change committed in between is in the records
            # *and* read again from the log (harmless), never counted as read while missing.
            seq = _last_seq(db)
            rows = db.execute("SELECT kind, id, body FROM records").fetchall()
            sessions = db.execute("SELECT sid, first_seen FROM sessions").fetchall()
            return rows, sessions, seq

        rows, sessions, seq = self._run(load)
        records: dict[str, dict[str, Any]] = {k: {} for k in RECORD_TYPES}
        for kind, rid, body in rows:
            if kind in records:
                records[kind][rid] = from_json(kind, body)
        self._records = records
        for sid, first in sessions:
            self._sessions[sid] = min(first, self._sessions.get(sid, first))
        self._seq = max(self._seq, seq)

    async def _persist_put(self, kind: str, rid: str, record: Any, at: float) -> None:
        body = to_json(record)

        def write(db: sqlite3.Connection) -> int:
            with _transaction(db):  # the record and its change-log entry, together or not at all
                db.execute(
                    "INSERT OR REPLACE INTO records (kind, id, body) VALUES (?, ?, ?)", (kind, rid, body)
                )
                cur = db.execute(
                    "INSERT INTO changes (at, op, kind, id, body) VALUES (?, 'put', ?, ?, ?)",
                    (at, kind, rid, body),
                )
                return int(cur.lastrowid or 0)

        await asyncio.to_thread(self._run, write)

    async def _persist_delete(self, kind: str, rid: str, record: Any, at: float) -> None:
        body = to_json(record)

        def write(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.execute("DELETE FROM records WHERE kind = ? AND id = ?", (kind, rid))
                db.execute(
                    "INSERT INTO changes (at, op, kind, id, body) VALUES (?, 'delete', ?, ?, ?)",
                    (at, kind, rid, body),
                )

        await asyncio.to_thread(self._run, write)

    async def _persist_sessions(self, pending: dict[str, float]) -> None:
        if self._db is None:
            raise sqlite3.ProgrammingError("the store is closed")

        def write(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.executemany(
                    "INSERT OR IGNORE INTO sessions (sid, first_seen) VALUES (?, ?)", pending.items()
                )

        await asyncio.to_thread(self._run, write)

    def _changes_since(self) -> tuple[bool, list[tuple[int, float, str, str, str, str]]]:
        """The change-log entries after our position, and whether some we never read were pruned
        (the first entry is not the next one, or the log moved on and is empty): then reload all."""

        def read(db: sqlite3.Connection) -> tuple[bool, list[tuple[int, float, str, str, str, str]]]:
            rows = db.execute(
                "SELECT seq, at, op, kind, id, body FROM changes WHERE seq > ? ORDER BY seq", (self._seq,)
            ).fetchall()
            behind = rows[0][0] > self._seq + 1 if rows else _last_seq(db) > self._seq
            return behind, rows

        result: tuple[bool, list[tuple[int, float, str, str, str, str]]] = self._run(read)
        return result

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self.poll()
            except sqlite3.Error as exc:  # locked or unavailable: keep serving the last snapshot
                self.poll_errors += 1
                log.warning("state poll failed, serving the last snapshot: %s", exc)
            except Exception:  # never let the loop die: a dead poller would stop seeing revocations
                self.poll_errors += 1
                log.exception("state poll failed unexpectedly, serving the last snapshot")

    def _maintain(self, forgotten: list[tuple[str, str, str]], now: float) -> None:
        """Keep the file bounded: drop records that ended past the retention (each process prunes by
        the same rule, so no change entry is needed) and change-log entries older than CHANGE_LOG_KEEP.
        A record is deleted only if it is still the one that ended: one set again since (a signal has a
        fixed id) stays."""

        def write(db: sqlite3.Connection) -> None:
            with _transaction(db):
                db.executemany("DELETE FROM records WHERE kind = ? AND id = ? AND body = ?", forgotten)
                db.execute("DELETE FROM changes WHERE at < ?", (now - self.CHANGE_LOG_KEEP,))

        self._run(write)

    async def poll(self) -> bool:
        """Pick up changes written by any process (our own included: re-applying is harmless)."""
        await self._flush_sessions()
        if time.monotonic() - self._maintained > self.MAINTENANCE_EVERY:
            self._maintained = time.monotonic()
            forgotten, self._forgotten = self._forgotten, []
            try:
                await asyncio.to_thread(self._maintain, forgotten, time.time())
            except sqlite3.Error:
                self._forgotten[:0] = forgotten  # try again next time
                raise
        behind, changes = await asyncio.to_thread(self._changes_since)
        if behind:
            log.warning("state change log was pruned past our position: reloading all state")
            await asyncio.to_thread(self._load_all)  # it takes the log's position first
            self._rebuild()
            return True
        if not changes:
            return False
        for seq, at, op, kind, rid, body in changes:
            self._seq = max(self._seq, seq)
            if kind not in RECORD_TYPES:
                continue
            record = from_json(kind, body)
            known = self._records[kind].get(rid)
            if op == "put":
                self._records[kind][rid] = record
                if kind == "revocation" and known != record:
                    self._emit(RevocationEvent("created", record, at))
            elif op == "delete" and known is not None:
                self._records[kind].pop(rid, None)
                if kind == "revocation":
                    self._emit(RevocationEvent("removed", record, at))
        await asyncio.to_thread(self._load_sessions)
        self._rebuild()
        return True

    def _load_sessions(self) -> None:
        rows = self._run(lambda db: db.execute("SELECT sid, first_seen FROM sessions").fetchall())
        for sid, first in rows:
            self._sessions[sid] = min(first, self._sessions.get(sid, first))


def _last_seq(db: sqlite3.Connection) -> int:
    """The last change-log position ever assigned: AUTOINCREMENT remembers it when every entry has
    been pruned (sqlite_sequence only exists once a first entry was written)."""
    last = int(db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0])
    with contextlib.suppress(sqlite3.OperationalError):
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
        if row:
            last = max(last, int(row[0]))
    return last


def open_store(url: str) -> Store:
    if url.startswith("memory://"):
        return MemoryStore()
    if url.startswith("sqlite:///"):
        return SqliteStore(Path(url[len("sqlite://") :]))
    if url.startswith(("redis://", "rediss://")):
        from .redis_store import RedisStore

        return RedisStore(url)
    raise ValueError(f"unsupported state store {url!r} (memory://, sqlite:///PATH or redis://HOST:PORT/DB)")
