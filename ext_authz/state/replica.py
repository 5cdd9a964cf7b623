"""The replica: this process's view of continuous-trust state, kept current from a change log.

It writes records (sealed, see integrity.py) through its backend, follows the backend's change log,
opens and re-validates everything it reads against its own settings (a record that fails is ignored,
logged and counted, never applied), and keeps the immutable snapshot the Check path reads.

Nothing here rebuilds the world for one change:

- a change becomes the next snapshot by updating the persistent indexes of the records it touches
  (snapshot.py); a batch of changes is one snapshot swap;
- writes made at about the same time share one store transaction (``put`` waits for its own to be
  persisted: acknowledged still means persisted);
- what ended is found in a time-ordered queue (timeline.py), for the audit's expiry entries, the
  metrics and for forgetting records past the retention;
- loading reads the store in pages, each under its own deadline, and a replica that fell behind the
  change log loads again that way while it keeps serving its last snapshot.

Work that runs on the event loop (where Checks are answered) is cut into slices of about a
millisecond, with the loop free between them. Checks never wait on a store: if the backend is
unreachable they go on with the last snapshot and ``healthy`` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from ..clock import Clock, SystemClock
from ..collect import paused_collection
from ..errors import StateError
from ..settings import Settings
from .audit import AuditEntry, AuditLog, AuditRow, entry_id, expiry_entry, new_entry
from .backends.base import Change, ChangeLog
from .commands import check_record
from .integrity import Sealer
from .loading import (
    AHEAD,
    VERIFY_ASIDE_AFTER,
    Answer,
    Refusal,
    Verifier,
    open_stored,
    read_ahead,
)
from .records import (
    RECORD_TYPES,
    ExceptionGrant,
    Grant,
    Record,
    Revocation,
    SeenEvent,
    Signal,
    as_of,
    decode_verified,
    encode,
)
from .sessions import Sessions
from .snapshot import Builder, StateSnapshot, fold_steps, rebase
from .timeline import Timeline

__all__ = ["Replica", "RevocationEvent"]

log = logging.getLogger("ext_authz.state")
R = TypeVar("R", bound=Record)
MAINTENANCE_EVERY = 30.0
SLICE = 0.001  # seconds of work on the event loop before it is let go (Checks are answered there)
CLAIM_MARGIN = 60.0  # seconds a claim outlives its own time (replicas' clocks differ)
WRITE_BATCH = 256  # writes that share one store transaction, at most
FORGET_BATCH = 5000  # records forgotten from the store per maintenance, at most
OWN_KEPT = 20_000
FOLD_FROM = 50_000  # keys changed since the snapshot's bases were built: fold them in (in slices)


_Loaded = tuple[StateSnapshot, dict[str, dict[str, Record]], "_Tracking"]  # what _load read


@dataclass(frozen=True, slots=True)
class RevocationEvent:
    op: str  # created | removed
    revocation: Revocation
    at: float


@dataclass(slots=True)
class _Write:
    """Changes that go to the store together (one transaction: all of them or none)."""

    changes: list[Change]
    audit: list[AuditRow]
    records: list[Record]  # what each change puts, or for a delete, the record it deletes
    done: asyncio.Future[None]
    chained: bool = False  # decided on writes queued before it: fails if one of them fails


class _Tracking:
    """When held records end, and how many revocations are in force: kept as records change."""

    def __init__(self, retention: float) -> None:
        self.retention = retention
        # records by when they end (expiry audit entries, counts), then by when they are past the retention
        self.ending: Timeline[Record] = Timeline(lambda r: r.finished_at())
        self.forgetting: Timeline[Record] = Timeline(self._forget_at)
        self.expired_until = 0.0  # every end at or before this was noted (counted, filed to forget)
        self.open_revocations: Counter[str] = Counter()  # by kind: not lifted (in force, or expired)
        self.expired_revocations: Counter[str] = Counter()  # by kind: not lifted, and expired

    def _forget_at(self, record: Record) -> float | None:
        end = record.finished_at()
        return None if end is None else end + self.retention

    def track(self, known: Record | None, record: Record | None) -> None:
        """File a record that changed by when it ends, and keep the revocation counts."""
        for rec, sign in ((known, -1), (record, 1)):
            if isinstance(rec, Revocation) and rec.ended_at is None:
                self.open_revocations[rec.kind] += sign
                if rec.expires_at is not None and rec.expires_at <= self.expired_until:
                    self.expired_revocations[rec.kind] += sign
        if record is not None:
            end = record.finished_at()
            if end is None or (known is not None and known.finished_at() == end):
                return  # never ends; or filed already under this end, and that filing finds it as it is now
            if end <= self.expired_until:
                self.forgetting.file(record)
            else:
                self.ending.file(record)

    def active(self) -> dict[str, int]:
        return {
            kind: n - self.expired_revocations[kind]
            for kind, n in self.open_revocations.items()
            if n - self.expired_revocations[kind] > 0
        }


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


async def _breathe(started: float) -> float:
    """Let the loop answer Checks if this slice of work has run for ``SLICE``; the new slice's start."""
    if time.perf_counter() - started >= SLICE:
        await asyncio.sleep(0)
        return time.perf_counter()
    return started


class Replica:
    def __init__(
        self,
        backend: ChangeLog,
        settings: Callable[[], Settings],
        *,
        sealer: Sealer | None = None,
        clock: Clock | None = None,
        retention: float | None = None,
        verify_aside_after: int | None = VERIFY_ASIDE_AFTER,
    ) -> None:
        self.backend = backend
        # records a load reads before it starts a second process to verify beside it (None: never)
        self.verify_aside_after = verify_aside_after
        self.verifier: Verifier | None = None  # the one verifying beside the load under way, if any
        self.settings = settings
        self.sealer = sealer or Sealer(None)
        self.clock = clock or SystemClock()
        self.retention = settings().state_retention if retention is None else retention
        self.rejected: Counter[tuple[str, str]] = Counter()  # (kind, reason) -> records ignored
        self.connected = False
        self.errors = 0  # failed attempts to follow the change log (the follower retries)
        self.audit_log = AuditLog(backend, self.sealer)
        self.sessions = Sessions(self.sealer, durable=backend.durable, reject=self._reject)
        self.snapshot = StateSnapshot(0, self.sessions.view)
        # Every record held, by kind and id: this replica's own (the Check path reads the snapshot).
        self._by_id: dict[str, dict[str, Record]] = {kind: {} for kind in RECORD_TYPES}
        self._folding: asyncio.Task[None] | None = None
        self._position = ""
        self._revision = 0
        self._watchers: list[Callable[[RevocationEvent], None]] = []
        self._follower: asyncio.Task[None] | None = None
        self._applying = asyncio.Lock()
        self._maintained = 0.0
        self._legacy = 0  # records read that an earlier version wrote (see _load)
        self._tracking = _Tracking(self.retention)
        self._forgotten: list[tuple[str, str, Record]] = []  # to delete from the store, if unchanged
        self._pending_expiries: list[Record] = []  # ran out by themselves: for the audit log
        self._written_while_loading: list[tuple[Record | None, Record | None, float]] | None = None
        self._writes: list[_Write] = []
        # What this replica wrote, as written, until the follower reads it back from the log: applied
        # already, it is not opened and checked again (bounded: cleared past OWN_KEPT).
        self._own: dict[tuple[str, str, str], str] = {}
        self._writer: asyncio.Task[None] | None = None

    # -- reading -----------------------------------------------------------------------------------------
    @property
    def healthy(self) -> bool:
        """False while a shared store is unreachable (Checks go on with the last snapshot)."""
        return self.connected

    def get(self, cls: type[R], rid: str) -> R | None:
        record = self._by_id[cls.RECORD].get(rid)
        return record if isinstance(record, cls) else None

    def all(self, cls: type[R]) -> list[R]:
        return [r for r in self._by_id[cls.RECORD].values() if isinstance(r, cls)]

    def active_revocations(self, now: float) -> dict[str, int]:
        """Revocations in force now, by kind: counted as records change and end, never by a walk."""
        self._note_expired(now)
        return self._tracking.active()

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

    def _revocation_event(self, known: Record | None, record: Record | None, at: float) -> None:
        """``created`` for a new revocation, ``removed`` when one is lifted or deleted; nothing else."""
        if record is None:
            if isinstance(known, Revocation):
                self._emit(RevocationEvent("removed", known, at))
            return
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
        opened = open_stored(self.sealer, self.settings(), op, kind, rid, body)
        if isinstance(opened, Refusal):
            self._refused(kind, rid, opened)
            return None
        return opened

    def _refused(self, kind: str, rid: str, refusal: Refusal) -> None:
        self._legacy += refusal.reason == "legacy"
        self._reject(kind, rid, refusal.reason, refusal.detail)

    async def _load(self) -> _Loaded:
        """Everything the store holds, opened and checked: a snapshot (not yet in force), the records by
        id and when they end. Read in pages; the loop is let go every ``SLICE``."""
        legacy_before = self._legacy
        self._written_while_loading = []  # what this replica writes meanwhile is applied again after
        position = await self.backend.position()
        builder = Builder()
        by_id: dict[str, dict[str, Record]] = {kind: {} for kind in RECORD_TYPES}
        tracking = _Tracking(self.retention)
        began = started = time.perf_counter()
        # Pages in the order read, each with the verifier's answer to come (None: verified here).
        queue: deque[tuple[list[tuple[str, str, str]], Answer | None]] = deque()
        aside = 0  # pages the verifier answered

        async def file(rows: list[tuple[str, str, str]], answer: Answer | None) -> None:
            nonlocal started, aside
            refused: dict[int, Refusal] = {}
            if answer is not None and self.verifier is not None:
                try:
                    refused = {
                        i: Refusal(why, detail) for i, why, detail in await self.verifier.refusals(answer)
                    }
                    aside += 1
                except Exception as exc:  # a broken verifier: this process verifies instead
                    self.verifier.fail("failed", exc)
                    answer = None
            for i, (kind, rid, body) in enumerate(rows):
                if answer is None:
                    record = self._open("put", kind, rid, body)
                elif i in refused:
                    self._refused(kind, rid, refused[i])
                    record = None
                else:
                    data = self.sealer.read_verified(body)  # None: laid out otherwise, opened here
                    record = (
                        self._open("put", kind, rid, body) if data is None else decode_verified(kind, data)
                    )
                if record is not None:
                    held = by_id[kind]
                    known = held.get(rid)  # read twice (a scan may): the last one is held
                    builder.add(record, known)
                    tracking.track(known, record)
                    held[rid] = record
                if not i % 64:
                    started = await _breathe(started)

        read, pages, tried = 0, 0, False
        try:
            async for page in read_ahead(self.backend.records()):
                read, pages = read + len(page), pages + 1
                after = self.verify_aside_after
                if not tried and after is not None and read > after:  # once a load: it may not start
                    tried = True
                    self.verifier = await Verifier.start(self.sealer.key, self.settings())
                answer = None
                if self.verifier is not None and (queue or self.verifier.ready):
                    answer = self.verifier.verify(page)
                queue.append((page, answer))
                while queue and (queue[0][1] is None or queue[0][1].done() or len(queue) > AHEAD):
                    await file(*queue.popleft())
            while queue:
                await file(*queue.popleft())
        finally:
            verifier, self.verifier = self.verifier, None
            if verifier is not None:
                await verifier.close()
        if aside:
            log.info(
                "state: read %d records in %.1f s, %d of %d pages verified beside by a second process",
                read,
                time.perf_counter() - began,
                aside,
                pages,
            )
        legacy = self._legacy - legacy_before
        if legacy:
            raise StateError(
                f"the state store holds {legacy} records written by a version of ext-authz before principal"
                " keys, which named users by a bare subject: they are not read, because the issuer they"
                " meant cannot be known. `ext-authz state legacy --config FILE` lists them; point state.url"
                " at a new store and make again those still needed (users as ISSUER#SUBJECT)"
            )
        async for sessions in self.backend.sessions():
            for key, body in sessions:
                self.sessions.read(key, body)
            started = await _breathe(started)
        self._position = position
        return builder.finish(self._revision + 1, self.sessions.view), by_id, tracking

    def _install(self, loaded: _Loaded) -> None:
        """Put a whole new snapshot in force (at start, or after loading again). Its records were filed
        while it loaded, while the last snapshot was still served; it replaces that one with no pause in
        between, together with what this replica wrote while it was loading (those writes are persisted,
        but after the log position the load started from: without this they would be missing until the
        next read of the log)."""
        snapshot, by_id, tracking = loaded
        self._tracking = tracking
        self._revision = snapshot.revision
        self.snapshot = snapshot
        self._by_id = by_id
        written, self._written_while_loading = self._written_while_loading or [], None
        if written:
            self._swap(written)
        self._settle(self._now())

    async def snapshot_at(self, at: float) -> StateSnapshot:
        """Read the store once (no follower, nothing written) and build the snapshot as it stood at
        ``at``: for ``ext-authz check --state``. Only what the store still holds can be reproduced."""
        await self.backend.open()
        try:
            _, by_id, _ = await self._load()
        finally:
            with contextlib.suppress(StateError):
                await self.backend.close()
        then = [
            r
            for records in by_id.values()
            for rec in records.values()
            if (r := as_of(rec, at)) is not None and not isinstance(r, SeenEvent)
        ]
        return StateSnapshot.build(0, others=then, sessions=self.sessions.at(at))

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the backend and load everything: a replica that cannot read its store does not start."""
        await self.backend.open()
        with paused_collection():
            self._install(await self._load())
        self.connected = True
        self._maintained = self._now()
        self._follower = asyncio.create_task(self._follow())

    async def close(self) -> None:
        follower, self._follower = self._follower, None
        if follower is not None:
            follower.cancel()
            await asyncio.wait({follower}, timeout=2.0)
        if self._writer is not None:
            with contextlib.suppress(StateError, TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._writer), 2)
        with contextlib.suppress(StateError, TimeoutError):
            await asyncio.wait_for(self.sessions.flush(self.backend, self._now()), 2)
        with contextlib.suppress(StateError, TimeoutError):
            await asyncio.wait_for(self.backend.close(), 3)

    async def reload(self) -> None:
        """Read everything again (after the settings changed: re-validate under the new ones)."""
        async with self._applying:
            with paused_collection():
                self._install(await self._load())

    async def sync(self) -> bool:
        """One step of following the change log now, without waiting: True if the snapshot changed.
        Raises StateError if the store cannot be read (the follower retries by itself)."""
        return await self._step(wait=False)

    async def _step(self, *, wait: bool) -> bool:
        await self.sessions.flush(self.backend, self._now())
        await self._maintain()
        batch = await self.backend.follow(self._position, wait=wait)
        async with self._applying:  # a sync() and the follower never interleave their batches
            if batch.behind:
                log.warning("the state change log was pruned past our position: loading all state")
                with paused_collection():
                    self._install(await self._load())  # the last snapshot is served meanwhile
                return True
            changed = await self._apply(batch.changes) if batch.changes else False
            self._position = batch.position
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

    async def _apply(self, changes: list[Change]) -> bool:
        """Changes other replicas made, opened and checked, in slices: one snapshot swap per slice."""
        changed = False
        started = time.perf_counter()
        slice_: list[tuple[Record | None, Record | None, float]] = []
        own = self._own
        for ch in changes:
            if ch.op == "session":
                self.sessions.read(ch.id, ch.body)
                continue
            if own and own.pop((ch.op, ch.kind, ch.id), None) == ch.body:
                continue  # our own write, applied when it was made
            record = self._open(ch.op, ch.kind, ch.id, ch.body)
            if record is not None:
                slice_.append((None, record if ch.op == "put" else None, ch.at))
                if ch.op == "delete":  # what is deleted is the record held under that id
                    slice_[-1] = (record, None, ch.at)
            if time.perf_counter() - started >= SLICE:
                changed |= self._swap(slice_)
                slice_ = []
                started = await _breathe(started)
        changed |= self._swap(slice_)
        return changed

    def _swap(self, items: Iterable[tuple[Record | None, Record | None, float]]) -> bool:
        """Apply (_, new record or None to delete, at) items: one new snapshot, the events, the filing."""
        changes: list[tuple[Record | None, Record | None]] = []
        events: list[tuple[Record | None, Record | None, float]] = []
        current: dict[tuple[str, str], Record | None] = {}
        for deleted, new, at in items:
            some = new if new is not None else deleted
            if some is None:
                continue
            key = (some.RECORD, some.record_id)
            known = current[key] if key in current else self._by_id[some.RECORD].get(some.record_id)
            if new is None and known is None:
                continue
            if new is not None and known == new:
                continue
            changes.append((known, new))
            events.append((known, new, at))
            current[key] = new
        if not changes:
            return False
        self._revision += 1
        self.snapshot = self.snapshot.apply(self._revision, changes)
        for known, new in changes:
            some = new if new is not None else known
            assert some is not None
            if new is None:
                self._by_id[some.RECORD].pop(some.record_id, None)
            else:
                self._by_id[some.RECORD][some.record_id] = new
            self._track(known, new)
        self._fold_if_due()
        for known, new, at in events:
            self._revocation_event(known, new, at)
        self._settle(self._now())
        return True

    # -- time: what ends, what is forgotten ----------------------------------------------------------------
    def _track(self, known: Record | None, record: Record | None) -> None:
        self._tracking.track(known, record)

    def _current(self, filed: Record, end: float | None) -> Record | None:
        """The record held under a filing's id, if it still ends when the filing said."""
        record = self._by_id[filed.RECORD].get(filed.record_id)
        if record is None or end is None or record.finished_at() != end:
            return None
        return record

    def _note_expired(self, now: float) -> list[Record]:
        """Records whose end has passed since the last call: counted, and filed for forgetting."""
        ended: list[Record] = []
        t = self._tracking
        for filed in t.ending.due(now, inclusive=True):
            record = self._current(filed, filed.finished_at())
            if record is None:
                continue  # gone, or its end moved: filed again under the new one
            ended.append(record)
            if isinstance(record, Revocation) and record.ended_at is None:
                t.expired_revocations[record.kind] += 1
            t.forgetting.file(record)
        t.expired_until = max(t.expired_until, now)
        return ended

    def _settle(self, now: float) -> list[Record]:
        """Count what ended and forget what ended more than ``retention`` ago (memory stays bounded under
        churn). Returns what ended since the last call, for the audit."""
        ended = self._note_expired(now)
        gone: list[tuple[Record | None, Record | None]] = []
        for filed in self._tracking.forgetting.due(now):
            record = self._current(filed, filed.finished_at())
            if record is None:
                continue
            gone.append((record, None))
            self._forgotten.append((record.RECORD, record.record_id, record))
        if gone:
            self._revision += 1
            self.snapshot = self.snapshot.apply(self._revision, gone)
            for record, _ in gone:
                assert record is not None
                self._by_id[record.RECORD].pop(record.record_id, None)
                self._track(record, None)
        self._pending_expiries.extend(r for r in ended if self._audits_expiry(r))
        return ended

    def _fold_if_due(self) -> None:
        """Once many keys changed since the snapshot's bases were built, fold them in, in slices."""
        if self.snapshot.changed >= FOLD_FROM and (self._folding is None or self._folding.done()):
            with contextlib.suppress(RuntimeError):  # no running loop (a test building by hand)
                self._folding = asyncio.get_running_loop().create_task(self._fold())

    async def _fold(self) -> None:
        since = self.snapshot
        for step in fold_steps(since):
            if step is None:
                await asyncio.sleep(0)
                continue
            self.snapshot = rebase(step, since, self.snapshot)

    @staticmethod
    def _audits_expiry(record: Record) -> bool:
        """An ``expire`` entry is written for what ran out by itself; not for signals (their freshness
        is continuous by design), seen SETs, or what someone ended first."""
        if isinstance(record, Signal | SeenEvent):
            return False
        return getattr(record, "ended_at", None) is None and getattr(record, "closed_at", None) is None

    async def maintain(self) -> None:
        """Audit expiries, forget what ended past the retention, prune the audit log: now."""
        self._maintained = 0.0
        await self._maintain()

    async def _maintain(self) -> None:
        now = self._now()
        if now - self._maintained < MAINTENANCE_EVERY:
            return
        self._maintained = now
        self._settle(now)
        expiries = self._pending_expiries[:FORGET_BATCH]
        self._pending_expiries = self._pending_expiries[FORGET_BATCH:]
        if expiries:  # every replica may write them; the entry id makes them one
            rows = [
                self.audit_log.row(expiry_entry(r, end))
                for r in expiries
                if (end := r.finished_at()) is not None
            ]
            try:
                await self.backend.add_audit(rows)
            except StateError:
                self._pending_expiries[:0] = expiries
                raise
        forgotten, self._forgotten = self._forgotten[:FORGET_BATCH], self._forgotten[FORGET_BATCH:]
        # The store deletes each only if it still holds this very record: sealing is deterministic, so
        # the body is made again here rather than kept in memory for every record.
        items = [(kind, rid, self.sealer.seal("put", kind, rid, encode(rec))) for kind, rid, rec in forgotten]
        try:
            await self.backend.forget(items, now, now - self.settings().audit_retention)
        except StateError:
            self._forgotten[:0] = forgotten  # try again next time
            raise

    # -- the audit log (audit.py) ---------------------------------------------------------------------------
    @property
    def audit_rejected(self) -> int:
        """Audit entries read whose MAC or shape did not hold."""
        return self.audit_log.rejected

    async def audit(self, since: float = 0.0, principal: str = "", limit: int = 1000) -> list[AuditEntry]:
        """The latest ``limit`` audit entries at or after ``since`` (about ``principal`` if given),
        oldest first. An entry that is not authentic is skipped and counted (``audit_rejected``)."""
        return await self.audit_log.read(since, principal, limit)

    async def confirm(self) -> None:
        """StateError unless everything the store took is as safe as an acknowledged write (with
        ``state.wait_replicas``: on that many Redis replicas). Before answering "already done" for a
        change whose own write may not have been acknowledged."""
        await self.backend.confirm()

    async def claim_once(self, key: str, until: float) -> bool:
        """Take ``key`` in the store until ``until`` unless another replica (or this one) holds it:
        True when taken here. StateError if the store cannot say. Held CLAIM_MARGIN longer: another
        replica's clock may run behind this one's, and would take the same thing for fresh that long."""
        return await self.backend.claim_once(key, until + CLAIM_MARGIN, self._now())

    # -- writing -------------------------------------------------------------------------------------------
    async def put(self, record: Record, *, action: str = "", actor: str = "", reason: str = "") -> None:
        """Write a record (made by the admin API or by ext-authz itself) and apply it here once the store
        has it, with the audit entry that says who did ``action``, and why (for a record being made, by
        default: its maker, making it). A record this replica would not accept from the store is refused
        here too (InvalidArgument)."""
        await self.put_all([(record, action, actor, reason)])

    async def put_all(self, items: list[tuple[Record, str, str, str]], *, chained: bool = False) -> None:
        """Write records (each with its audit action, actor and reason, as for :meth:`put`) in one store
        transaction: all of them or none. Every one is checked before any is written. ``chained``: it was
        decided on writes queued before it (the SSF receiver's, against what is in flight), and fails
        with any of them."""
        settings = self.settings()
        for record, _, _, _ in items:
            check_record(record, settings)
        at = self._now()
        changes: list[Change] = []
        audit: list[AuditRow] = []
        held: dict[tuple[str, str], Record | None] = {}
        for record, action, actor, reason in items:
            if not action:
                action, actor = _made(record)
            kind, rid = record.RECORD, record.record_id
            changes.append(Change("put", kind, rid, self.sealer.seal("put", kind, rid, encode(record)), at))
            known = held[(kind, rid)] if (kind, rid) in held else self.get(type(record), rid)
            held[(kind, rid)] = record
            if isinstance(record, SeenEvent):
                continue  # what the SET changed is audited; that it was seen is bookkeeping
            if (
                isinstance(known, Signal)
                and isinstance(record, Signal)
                and known.value == record.value
                and known.fresh(at)
            ):
                continue  # a refresh of the same fact is not a change worth an entry
            audit.append(
                self.audit_log.row(new_entry(entry_id(at), at, actor, action, known, record, reason))
            )
        await self._write(_Write(changes, audit, [r for r, _, _, _ in items], self._future(), chained))

    async def delete(self, cls: type[R], rid: str, *, action: str, actor: str, reason: str = "") -> R | None:
        record = self.get(cls, rid)
        if record is None:
            return None
        kind, at = cls.RECORD, self._now()
        body = self.sealer.seal("delete", kind, rid, encode(record))
        entry = self.audit_log.row(new_entry(entry_id(at), at, actor, action, record, None, reason))
        await self._write(_Write([Change("delete", kind, rid, body, at)], [entry], [record], self._future()))
        return record

    @staticmethod
    def _future() -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    async def _write(self, write: _Write) -> None:
        """Queue a write and wait until the store has it (and this replica applied it). Writes queued
        together share one transaction and one snapshot swap."""
        self._writes.append(write)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())
        await write.done

    def _next_batch(self) -> list[_Write]:
        """Queued writes for one transaction: about WRITE_BATCH changes, never a write split."""
        batch: list[_Write] = []
        size = 0
        while self._writes and (not batch or size + len(self._writes[0].changes) <= WRITE_BATCH):
            w = self._writes.pop(0)
            batch.append(w)
            size += len(w.changes)
        return batch

    async def _drain(self) -> None:
        while self._writes:
            batch = self._next_batch()
            try:
                await self.backend.append(
                    [c for w in batch for c in w.changes], [a for w in batch for a in w.audit]
                )
            except BaseException as exc:
                # Every chained write queued behind it fails too: it was decided after this one, perhaps
                # on it (an SSF event that saw this one's records in flight); each writer tries again.
                # Others (an operator's, a quarantine) are still written.
                failed = [*batch, *(w for w in self._writes if w.chained)]
                self._writes = [w for w in self._writes if not w.chained]
                for w in failed:
                    if not w.done.done():
                        w.done.set_exception(exc if isinstance(exc, Exception) else StateError(str(exc)))
                if not isinstance(exc, Exception):
                    raise
                continue
            applied: list[tuple[Record | None, Record | None, float]] = [
                (record, None, c.at) if c.op == "delete" else (None, record, c.at)
                for w in batch
                for c, record in zip(w.changes, w.records, strict=True)
            ]
            self._swap(applied)
            if len(self._own) > OWN_KEPT:
                self._own.clear()  # (a backend that does not read our writes back: memory stays bounded)
            for w in batch:
                for c in w.changes:
                    self._own[(c.op, c.kind, c.id)] = c.body
            if self._written_while_loading is not None:
                self._written_while_loading += applied
            for w in batch:
                if not w.done.done():
                    w.done.set_result(None)

    def note_session(self, key: str, first_seen: float) -> float:
        """First use of a session (kept if already known). Never waits: written by the follower."""
        return self.sessions.note(key, first_seen)
