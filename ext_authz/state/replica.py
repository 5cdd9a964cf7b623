"""The replica: this process's view of continuous-trust state, kept current from a change log.

It writes records (sealed, see integrity.py) through its backend, follows the backend's change log,
opens and re-validates everything it reads against its own settings (a record that fails is ignored,
logged and counted, never applied), prunes what ended past the retention, and builds the immutable
snapshot the Check path reads. Checks never wait on a store: if the backend is unreachable they go on
with the last snapshot and ``healthy`` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType
from typing import TypeVar

from ..clock import Clock, SystemClock
from ..errors import StateError
from ..settings import Settings
from .audit import AuditEntry, AuditRow, entry_id, expiry_entry, new_entry
from .backends.base import Change, ChangeLog, Loaded
from .commands import InvalidArgument, check_record
from .integrity import IntegrityError, Sealer
from .records import (
    RECORD_TYPES,
    ExceptionGrant,
    Grant,
    Record,
    RecordError,
    Revocation,
    SeenEvent,
    Signal,
    as_of,
    decode,
    encode,
)
from .snapshot import StateSnapshot

__all__ = ["Replica", "RevocationEvent"]

log = logging.getLogger("ext_authz.state")
_LEGACY_SESSION = re.compile(r"-?[0-9.e+]+")
R = TypeVar("R", bound=Record)
MAINTENANCE_EVERY = 30.0


@dataclass(frozen=True, slots=True)
class RevocationEvent:
    op: str  # created | removed
    revocation: Revocation
    at: float


def _made(record: Record) -> tuple[str, str]:
    """The audit action and actor of making ``record``."""
    if isinstance(record, Revocation):
        return ("quarantine" if record.kind == "quarantine" else "revoke"), record.created_by
    if isinstance(record, Grant):
        return "grant", record.created_by
    if isinstance(record, ExceptionGrant):
        return "open", record.opened_by
    if isinstance(record, SeenEvent):
        return "seen", f"ssf:{record.issuer}"
    return "signal", record.set_by


class Replica:
    def __init__(
        self,
        backend: ChangeLog,
        settings: Callable[[], Settings],
        *,
        sealer: Sealer | None = None,
        clock: Clock | None = None,
        retention: float | None = None,
    ) -> None:
        self.backend = backend
        self.settings = settings
        self.sealer = sealer or Sealer(None)
        self.clock = clock or SystemClock()
        self.retention = settings().state_retention if retention is None else retention
        self.snapshot = StateSnapshot()
        self.rejected: Counter[tuple[str, str]] = Counter()  # (kind, reason) -> records ignored
        self.connected = False
        self.errors = 0  # failed attempts to follow the change log (the follower retries)
        self._records: dict[str, dict[str, Record]] = {k: {} for k in RECORD_TYPES}
        self._bodies: dict[tuple[str, str], str] = {}  # what the store holds for each record we hold
        self._sessions: dict[str, float] = {}
        self._pending_sessions: dict[str, float] = {}
        self._forgotten: list[tuple[str, str, str]] = []
        self._position = ""
        self._revision = 0
        self._watchers: list[Callable[[RevocationEvent], None]] = []
        self._follower: asyncio.Task[None] | None = None
        self._applying = asyncio.Lock()
        self._maintained = 0.0
        self._legacy = 0  # records read that an earlier version wrote (see _load)
        self._legacy_sessions = 0  # sessions it wrote: skipped (their sid has no issuer), not fatal
        self._expiries_noted: set[tuple[str, str]] = set()  # records whose expiry is in the audit log
        self.audit_rejected = 0  # audit entries read whose MAC or shape did not hold

    # -- reading -----------------------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        """False while a shared store is unreachable (Checks go on with the last snapshot)."""
        return self.connected

    def get(self, cls: type[R], rid: str) -> R | None:
        record = self._records[cls.RECORD].get(rid)
        return record if isinstance(record, cls) else None

    def all(self, cls: type[R]) -> list[R]:
        return [r for r in self._records[cls.RECORD].values() if isinstance(r, cls)]

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def watch(self, callback: Callable[[RevocationEvent], None]) -> Callable[[], None]:
        self._watchers.append(callback)
        return lambda: self._watchers.remove(callback) if callback in self._watchers else None

    def _emit(self, event: RevocationEvent) -> None:
        for cb in list(self._watchers):
            try:
                cb(event)
            except Exception:  # a broken watcher must not break the store
                log.exception("revocation watcher failed")

    def _now(self) -> float:
        return self.clock.now().timestamp()

    def _revocation_event(self, known: Record | None, record: Record, at: float) -> None:
        """``created`` for a new revocation, ``removed`` when one is lifted (ended early); nothing else."""
        if not isinstance(record, Revocation) or known == record:
            return
        if record.ended_at is None:
            if known is None:
                self._emit(RevocationEvent("created", record, at))
        elif not isinstance(known, Revocation) or known.ended_at is None:
            self._emit(RevocationEvent("removed", record, at))

    # -- what the store holds, opened and checked --------------------------------------------------------
    def _reject(self, kind: str, rid: str, reason: str, detail: str) -> None:
        self.rejected[(kind if kind in RECORD_TYPES or kind == "session" else "unknown", reason)] += 1
        log.warning("state: ignoring %s %r: %s (%s)", kind, rid[:80], detail, reason)

    def _open(self, op: str, kind: str, rid: str, body: str) -> Record | None:
        """The record a stored body holds, if it is authentic and one our settings would have made."""
        if kind not in RECORD_TYPES:
            self._reject(kind, rid, "unknown_kind", "not a kind of record this version knows")
            return None
        try:
            data = self.sealer.open(op, kind, rid, body)
            record = decode(kind, data)
        except IntegrityError as exc:
            self._legacy += exc.reason == "legacy"
            self._reject(kind, rid, exc.reason, str(exc))
            return None
        except RecordError as exc:
            self._reject(kind, rid, "malformed", str(exc))
            return None
        if record.record_id != rid:
            self._reject(kind, rid, "malformed", "stored under another id than its own")
            return None
        try:
            check_record(record, self.settings())
        except InvalidArgument as exc:
            self._reject(kind, rid, "invalid", str(exc))
            return None
        return record

    def _open_session(self, key: str, body: str) -> float | None:
        if _LEGACY_SESSION.fullmatch(body):  # a bare first use, written before principal keys: unusable
            self._legacy_sessions += 1
            return None
        try:
            value = self.sealer.open("session", "session", key, body)
        except IntegrityError as exc:
            self._reject("session", key, exc.reason, str(exc))
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._reject("session", key, "malformed", "a first use is a number")
            return None
        return float(value)

    def _load(self, loaded: Loaded) -> None:
        legacy_before = self._legacy
        records: dict[str, dict[str, Record]] = {k: {} for k in RECORD_TYPES}
        bodies: dict[tuple[str, str], str] = {}
        for kind, rid, body in loaded.records:
            record = self._open("put", kind, rid, body)
            if record is not None:
                records[kind][rid] = record
                bodies[(kind, rid)] = body
        legacy = self._legacy - legacy_before
        if legacy:
            raise StateError(
                f"the state store holds {legacy} records written by a version of ext-authz before principal"
                " keys, which named users by a bare subject: they are not read, because the issuer they"
                " meant cannot be known. `ext-authz state legacy --config FILE` lists them; point state.url"
                " at a new store and make again those still needed (users as ISSUER#SUBJECT)"
            )
        self._records, self._bodies = records, bodies
        for key, body in loaded.sessions.items():
            first = self._open_session(key, body)
            if first is not None:
                self._sessions[key] = min(first, self._sessions.get(key, first))
        self._position = loaded.position

    async def snapshot_at(self, at: float) -> StateSnapshot:
        """Read the store once (no follower, nothing written) and build the snapshot as it stood at
        ``at``: for ``ext-authz check --state``. Only what the store still holds can be reproduced."""
        await self.backend.open()
        try:
            self._load(await self.backend.load())
        finally:
            with contextlib.suppress(StateError):
                await self.backend.close()
        then = [
            r
            for rec in (rr for kind in self._records.values() for rr in kind.values())
            if (r := as_of(rec, at))
        ]
        return StateSnapshot.build(
            0,
            revocations=[r for r in then if isinstance(r, Revocation)],
            grants=[r for r in then if isinstance(r, Grant)],
            exceptions=[r for r in then if isinstance(r, ExceptionGrant)],
            signals=[r for r in then if isinstance(r, Signal)],
            sessions={k: v for k, v in self._sessions.items() if v <= at},
        )

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the backend and load everything: a replica that cannot read its store does not start."""
        await self.backend.open()
        self._load(await self.backend.load())
        self.connected = True
        self._maintained = self._now()
        self._rebuild()
        self._follower = asyncio.create_task(self._follow())

    async def close(self) -> None:
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.cancel()
            await asyncio.wait({follower}, timeout=2.0)
        with contextlib.suppress(StateError, TimeoutError):
            await asyncio.wait_for(self._flush_sessions(), 2)
        with contextlib.suppress(StateError, TimeoutError):
            await asyncio.wait_for(self.backend.close(), 3)

    async def reload(self) -> None:
        """Read everything again (after the settings changed: re-validate under the new ones)."""
        self._load(await self.backend.load())
        self._rebuild()

    async def sync(self) -> bool:
        """One step of following the change log now, without waiting: True if the snapshot changed.
        Raises StateError if the store cannot be read (the follower retries by itself)."""
        return await self._step(wait=False)

    async def _step(self, *, wait: bool) -> bool:
        await self._flush_sessions()
        await self._maintain()
        batch = await self.backend.follow(self._position, wait=wait)
        async with self._applying:  # a sync() and the follower never interleave their batches
            if batch.behind:
                log.warning("the state change log was pruned past our position: loading all state")
                self._load(await self.backend.load())
                self._rebuild()
                return True
            if not batch.changes:
                self._position = batch.position
                return False
            changed = self._apply(batch.changes)
            self._position = batch.position
            if changed:
                self._rebuild()
            return changed

    async def _follow(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._step(wait=True)
                if not self.connected:
                    self.connected = True
                    log.info("state store reachable again; caught up to %s", self._position)
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except StateError as exc:
                if self.connected:
                    log.warning("state store unreachable, serving the last snapshot: %s", exc.detail)
                self.connected = False
                self.errors += 1
                await asyncio.sleep(backoff + random.uniform(0, backoff / 2))  # noqa: S311 - jitter
                backoff = min(backoff * 2, 5.0)
            except Exception:  # never let the follower die: a dead follower stops enforcing news
                self.errors += 1
                log.exception("state follower failed unexpectedly; retrying")
                await asyncio.sleep(backoff)

    def _apply(self, changes: list[Change]) -> bool:
        changed = False
        for ch in changes:
            if ch.op == "session":
                first = self._open_session(ch.id, ch.body)
                if first is not None and first < self._sessions.get(ch.id, float("inf")):
                    self._sessions[ch.id] = first
                continue
            record = self._open(ch.op, ch.kind, ch.id, ch.body)
            if record is None:
                continue
            records = self._records[ch.kind]
            known = records.get(ch.id)
            if ch.op == "put":
                if known != record:
                    records[ch.id] = record
                    self._bodies[(ch.kind, ch.id)] = ch.body
                    changed = True
                    self._revocation_event(known, record, ch.at)
            elif known is not None:
                del records[ch.id]
                self._bodies.pop((ch.kind, ch.id), None)
                changed = True
                if isinstance(known, Revocation):
                    self._emit(RevocationEvent("removed", known, ch.at))
        return changed

    async def maintain(self) -> None:
        """Audit expiries, forget what ended past the retention, prune the audit log: now."""
        self._maintained = 0.0
        await self._maintain()

    async def _maintain(self) -> None:
        now = self._now()
        if now - self._maintained < MAINTENANCE_EVERY:
            return
        self._maintained = now
        await self._audit_expiries(now)
        forgotten, self._forgotten = self._forgotten, []
        try:
            await self.backend.forget(forgotten, now, now - self.settings().audit_retention)
        except StateError:
            self._forgotten[:0] = forgotten  # try again next time
            raise
        for kind, rid, _ in forgotten:
            self._expiries_noted.discard((kind, rid))

    async def _audit_expiries(self, now: float) -> None:
        """Append an ``expire`` entry for each record that ran out by itself (signals excepted: their
        freshness is continuous by design). Every replica may; the entry id makes them one."""
        rows: list[tuple[tuple[str, str], AuditRow]] = []
        for kind, records in self._records.items():
            if kind in (Signal.RECORD, SeenEvent.RECORD):
                continue
            for rid, rec in records.items():
                if (kind, rid) in self._expiries_noted or getattr(rec, "ended_at", None) is not None:
                    continue
                if getattr(rec, "closed_at", None) is not None:
                    continue
                end = rec.finished_at()
                if end is not None and end <= now:
                    rows.append(((kind, rid), self._row(expiry_entry(rec, end))))
        if rows:
            await self.backend.add_audit([row for _, row in rows])
            self._expiries_noted.update(key for key, _ in rows)

    def _prune(self, now: float) -> None:
        """Forget records that ended more than ``retention`` ago: memory stays bounded under churn."""
        horizon = now - self.retention
        for kind, records in self._records.items():
            gone = [
                rid
                for rid, rec in records.items()
                if (end := rec.finished_at()) is not None and end < horizon
            ]
            for rid in gone:
                body = self._bodies.pop((kind, rid), None)
                if body is not None:
                    self._forgotten.append((kind, rid, body))
                del records[rid]

    def _rebuild(self) -> None:
        self._prune(self._now())
        self._revision += 1
        snapshot = StateSnapshot.build(
            self._revision,
            revocations=self.all(Revocation),
            grants=self.all(Grant),
            exceptions=self.all(ExceptionGrant),
            signals=self.all(Signal),
        )
        # First uses of sessions are only ever added (or moved earlier), never withdrawn: the snapshot
        # reads them live, so a session counts from its first request rather than from the next
        # unrelated change that happens to rebuild the snapshot.
        object.__setattr__(snapshot, "sessions", MappingProxyType(self._sessions))
        self.snapshot = snapshot

    # -- the audit log -------------------------------------------------------------------------------------
    def _row(self, entry: AuditEntry) -> AuditRow:
        return AuditRow(
            entry.id,
            entry.at,
            entry.principal,
            self.sealer.seal("audit", "audit", entry.id, entry.canonical()),
        )

    async def audit(self, since: float = 0.0, principal: str = "", limit: int = 1000) -> list[AuditEntry]:
        """The latest ``limit`` audit entries at or after ``since`` (about ``principal`` if given),
        oldest first. An entry that is not authentic is skipped and counted (``audit_rejected``)."""
        entries = []
        for row in await self.backend.read_audit(since, principal, limit):
            try:
                entry = AuditEntry.decode(self.sealer.open("audit", "audit", row.id, row.body))
            except (IntegrityError, ValueError) as exc:
                self.audit_rejected += 1
                log.warning("audit: ignoring entry %r: %s", row.id[:80], exc)
                continue
            if entry.id != row.id or entry.principal != row.principal:
                self.audit_rejected += 1
                continue
            entries.append(entry)
        return entries

    # -- writing -------------------------------------------------------------------------------------------
    async def put(self, record: Record, *, action: str = "", actor: str = "", reason: str = "") -> None:
        """Write a record (made by the admin API or by ext-authz itself) and apply it here at once, with
        the audit entry that says who did ``action``, and why (for a record being made, by default: its
        maker, making it). A record this replica would not accept from the store is refused here too
        (InvalidArgument)."""
        check_record(record, self.settings())
        if not action:
            action, actor = _made(record)
        kind, rid, at = record.RECORD, record.record_id, self._now()
        body = self.sealer.seal("put", kind, rid, encode(record))
        known = self._records[kind].get(rid)
        entry: AuditRow | None = self._row(new_entry(entry_id(at), at, actor, action, known, record, reason))
        if (
            isinstance(record, Signal)
            and isinstance(known, Signal)
            and known.fresh(at)
            and known.value == record.value
        ):
            entry = None  # a refresh of the same fact is not a change worth an entry
        if isinstance(record, SeenEvent):
            entry = None  # what the SET changed is audited; that it was seen is bookkeeping
        await self.backend.append(Change("put", kind, rid, body, at), entry)
        self._records[kind][rid] = record
        self._bodies[(kind, rid)] = body
        self._rebuild()
        self._revocation_event(known, record, at)

    async def delete(self, cls: type[R], rid: str, *, action: str, actor: str, reason: str = "") -> R | None:
        record = self.get(cls, rid)
        if record is None:
            return None
        kind, at = cls.RECORD, self._now()
        body = self.sealer.seal("delete", kind, rid, encode(record))
        entry = self._row(new_entry(entry_id(at), at, actor, action, record, None, reason))
        await self.backend.append(Change("delete", kind, rid, body, at), entry)
        self._records[kind].pop(rid, None)
        self._bodies.pop((kind, rid), None)
        self._rebuild()
        if isinstance(record, Revocation):
            self._emit(RevocationEvent("removed", record, at))
        return record

    def note_session(self, key: str, first_seen: float) -> float:
        """First use of a session (kept if already known). Never waits: written by the follower."""
        known = self._sessions.get(key)
        if known is not None:
            return known
        self._sessions[key] = first_seen
        if self.backend.durable:
            self._pending_sessions[key] = first_seen
        return first_seen

    async def _flush_sessions(self) -> None:
        """Write newly seen sessions. The queue is swapped on the event loop (where Checks add to it) and
        only the detached batch is written; on failure it is kept for the next attempt."""
        if not self._pending_sessions:
            return
        pending, self._pending_sessions = self._pending_sessions, {}
        sealed = {k: self.sealer.seal("session", "session", k, json.dumps(v)) for k, v in pending.items()}
        try:
            await self.backend.add_sessions(sealed, self._now())
        except BaseException:
            for key, first in pending.items():
                self._pending_sessions.setdefault(key, first)
            raise
