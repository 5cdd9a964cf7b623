"""MemoryStore and SqliteStore through one set of tests, then what only SQLite promises.

SQLite is durable (a restart keeps every record and session) and shared: stores on one file, in
this process or another, see each other's changes when they poll, and a locked database only
delays that while the last snapshot keeps being served.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ext_authz.state.model import ExceptionGrant, Grant, Revocation, Scope, Signal
from ext_authz.state.store import MemoryStore, RevocationEvent, SqliteStore, Store, open_store

T = 1_900_000_000.0
FRONTEND = "spiffe://example.org/ns/frontend/sa/web"
BILLING = "spiffe://example.org/ns/billing/sa/worker"
QUIET = 3600.0  # a poll interval that never fires during a test: only explicit polls happen


def revocation(rid: str, value: str = FRONTEND, *, expires_at: float | None = None) -> Revocation:
    return Revocation(
        id=rid,
        kind="spiffe_id",
        value=value,
        reason="key leaked",
        created_by="ops@example.org",
        created_at=T,
        expires_at=expires_at,
    )


GRANT = Grant(
    id="grt_1",
    principal=FRONTEND,
    scope=Scope(hosts=("backend.internal",), paths=("/reports/*",), methods=("GET",)),
    not_before=T,
    not_after=T + 3600,
    reason="INC-42",
    approver="bob",
    created_by="alice",
    created_at=T,
)
EXCEPTION = ExceptionGrant(
    id="exc_1",
    principal="alice",
    scope=Scope(paths=("/payroll/*",)),
    reason="payroll run blocked",
    opened_by="oncall",
    opened_at=T,
    expires_at=T + 600,
)
SIGNAL = Signal(
    subject_kind="device",
    subject="LAPTOP-7",
    key="posture",
    value="compliant",
    set_by="mdm",
    set_at=T,
    expires_at=T + 300,
)


@contextlib.asynccontextmanager
async def sqlite_store(path: Path, poll_interval: float = QUIET) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(path, poll_interval=poll_interval)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        mem = MemoryStore()
        await mem.start()
        yield mem
        await mem.close()
    else:
        async with sqlite_store(tmp_path / "state.db") as sql:
            yield sql


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"condition not met within {timeout}s")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


# --- both stores ------------------------------------------------------------------------------------


def test_open_store_by_url(tmp_path: Path) -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    sql = open_store(f"sqlite://{tmp_path}/state.db")
    assert isinstance(sql, SqliteStore)
    assert sql.path == tmp_path / "state.db"
    with pytest.raises(ValueError, match="unsupported state store"):
        open_store("postgres://db/state")


async def test_put_and_delete_rebuild_the_snapshot(store: Store) -> None:
    before = store.snapshot
    rev = revocation("rev_1")
    await store.put("revocation", rev, at=T)
    after_put = store.snapshot
    assert after_put is not before
    assert after_put.revision > before.revision
    assert after_put.revoked("spiffe_id", FRONTEND, T) == rev
    assert before.revoked("spiffe_id", FRONTEND, T) is None  # a snapshot never changes once served
    assert store.get("revocation", "rev_1") == rev
    assert store.all("revocation") == [rev]

    removed = await store.delete("revocation", "rev_1", at=T + 1)
    assert removed == rev
    assert store.snapshot.revision > after_put.revision
    assert store.snapshot.revoked("spiffe_id", FRONTEND, T + 1) is None
    assert after_put.revoked("spiffe_id", FRONTEND, T + 1) == rev
    assert store.get("revocation", "rev_1") is None
    assert store.all("revocation") == []


async def test_delete_of_an_unknown_id_changes_nothing(store: Store) -> None:
    await store.put("revocation", revocation("rev_1"), at=T)
    snap = store.snapshot
    assert await store.delete("revocation", "rev_missing", at=T) is None
    assert store.snapshot is snap


async def test_every_record_kind_reaches_the_snapshot(store: Store) -> None:
    await store.put("grant", GRANT, at=T)
    await store.put("exception", EXCEPTION, at=T)
    await store.put("signal", SIGNAL, at=T)
    snap = store.snapshot
    assert snap.grants_for([FRONTEND], T) == [GRANT]
    assert snap.exceptions_for(["alice"], T) == [EXCEPTION]
    assert snap.signals_for("device", "LAPTOP-7", T) == {"posture": "compliant"}

    ended = Grant(**{**_fields(GRANT), "ended_at": T + 5, "ended_by": "alice"})
    await store.put("grant", ended, at=T + 5)  # same id: replaces the grant
    assert store.all("grant") == [ended]
    assert store.snapshot.grants_for([FRONTEND], T + 5) == []


async def test_a_signal_is_replaced_by_a_newer_value_for_the_same_key(store: Store) -> None:
    await store.put("signal", SIGNAL, at=T)
    newer = Signal(**{**_fields(SIGNAL), "value": "noncompliant", "set_at": T + 1})
    other_key = Signal(**{**_fields(SIGNAL), "key": "os", "value": "15.2"})
    await store.put("signal", newer, at=T + 1)
    await store.put("signal", other_key, at=T + 1)
    assert len(store.all("signal")) == 2
    assert store.snapshot.signals_for("device", "LAPTOP-7", T + 1) == {
        "posture": "noncompliant",
        "os": "15.2",
    }


async def test_watch_receives_created_and_removed_revocations(store: Store) -> None:
    events: list[RevocationEvent] = []
    unsubscribe = store.watch(events.append)
    rev = revocation("rev_1")
    await store.put("revocation", rev, at=T)
    await store.put("grant", GRANT, at=T)  # only revocations are watched
    await store.delete("grant", GRANT.id, at=T)
    await store.delete("revocation", "rev_1", at=T + 2)
    assert [(e.op, e.revocation, e.at) for e in events] == [("created", rev, T), ("removed", rev, T + 2)]

    unsubscribe()
    await store.put("revocation", revocation("rev_2"), at=T + 3)
    assert len(events) == 2
    unsubscribe()  # a second call is harmless


async def test_a_failing_watcher_does_not_break_the_store_or_other_watchers(store: Store) -> None:
    def broken(event: RevocationEvent) -> None:
        raise RuntimeError("watcher bug")

    events: list[RevocationEvent] = []
    store.watch(broken)
    store.watch(events.append)
    await store.put("revocation", revocation("rev_1"), at=T)
    assert [e.op for e in events] == ["created"]
    assert store.snapshot.revoked("spiffe_id", FRONTEND, T) is not None


async def test_a_session_keeps_its_first_use(store: Store) -> None:
    assert store.note_session("sess-1", T) == T
    assert store.note_session("sess-1", T + 50) == T
    assert store.note_session("sess-2", T + 50) == T + 50


async def test_a_new_session_is_in_the_snapshot_at_once(store: Store) -> None:
    """The Check path reads sessions from the snapshot: a session must count from its first use,
    not from whenever some unrelated record change happens to rebuild the snapshot."""
    store.note_session("sess-1", T)
    assert store.snapshot.sessions.get("sess-1") == T
    store.note_session("sess-1", T + 50)
    assert store.snapshot.sessions.get("sess-1") == T
    await store.put("revocation", revocation("rev_1"), at=T + 60)
    assert store.snapshot.sessions.get("sess-1") == T


def _fields(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


# --- SQLite: durable ------------------------------------------------------------------------------


async def test_restart_keeps_every_record_kind_and_sessions(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    expiring = revocation("rev_exp", BILLING, expires_at=T + 60)
    ended = Grant(**{**_fields(GRANT), "id": "grt_2", "ended_at": T + 5, "ended_by": "alice"})
    async with sqlite_store(db) as first:
        await first.put("revocation", revocation("rev_1"), at=T)
        await first.put("revocation", expiring, at=T)
        await first.put("revocation", revocation("rev_gone", "spiffe://example.org/x"), at=T)
        await first.delete("revocation", "rev_gone", at=T + 1)
        await first.put("grant", GRANT, at=T)
        await first.put("grant", ended, at=T)
        await first.put("exception", EXCEPTION, at=T)
        await first.put("signal", SIGNAL, at=T)
        first.note_session("sess-1", T + 7)  # written on the next poll or at close
        records = {kind: first.all(kind) for kind in ("revocation", "grant", "exception", "signal")}

    async with sqlite_store(db) as again:
        for kind, expected in records.items():
            assert sorted(again.all(kind), key=repr) == sorted(expected, key=repr), kind
        assert again.get("revocation", "rev_gone") is None
        assert again.get("revocation", "rev_exp") == expiring
        assert again.get("grant", "grt_2") == ended
        assert again.get("signal", "device\0LAPTOP-7\0posture") == SIGNAL
        snap = again.snapshot
        assert snap.revoked("spiffe_id", FRONTEND, T) == revocation("rev_1")
        assert snap.revoked("spiffe_id", BILLING, T + 60) is None
        assert snap.grants_for([FRONTEND], T + 10) == [GRANT]
        assert snap.exceptions_for(["alice"], T) == [EXCEPTION]
        assert snap.signals_for("device", "LAPTOP-7", T) == {"posture": "compliant"}
        assert dict(snap.sessions) == {"sess-1": T + 7}
        assert again.note_session("sess-1", T + 100) == T + 7


# --- SQLite: shared -------------------------------------------------------------------------------


async def test_two_stores_on_one_file_see_each_others_changes_after_poll(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    async with sqlite_store(db) as a, sqlite_store(db) as b:
        seen_by_b: list[RevocationEvent] = []
        b.watch(seen_by_b.append)
        rev = revocation("rev_1")

        await a.put("revocation", rev, at=T)
        assert b.snapshot.revoked("spiffe_id", FRONTEND, T) is None  # not before b polls
        assert await b.poll() is True
        assert b.snapshot.revoked("spiffe_id", FRONTEND, T) == rev
        assert [(e.op, e.revocation) for e in seen_by_b] == [("created", rev)]
        assert await b.poll() is False  # nothing new

        await b.put("grant", GRANT, at=T)
        await b.delete("revocation", "rev_1", at=T + 1)
        assert await a.poll() is True
        assert a.snapshot.revoked("spiffe_id", FRONTEND, T + 1) is None
        assert a.snapshot.grants_for([FRONTEND], T + 1) == [GRANT]
        assert await b.poll() is True  # its own changes come back: applying them again is harmless
        assert [e.op for e in seen_by_b] == ["created", "removed"]
        assert b.snapshot.grants_for([FRONTEND], T + 1) == [GRANT]

        a.note_session("sess-1", T)
        await a.poll()  # writes the session
        await b.put("signal", SIGNAL, at=T + 2)  # any change: b rebuilds
        await b.poll()
        assert b.snapshot.sessions.get("sess-1") == T


CHILD = """
import asyncio, sys, time
from pathlib import Path
from ext_authz.state.model import Revocation
from ext_authz.state.store import SqliteStore

async def main():
    store = SqliteStore(Path(sys.argv[1]))
    await store.start()
    rev = Revocation(id="rev_child", kind="jti", value="jti-from-child", reason="stolen token",
                     created_by="child", created_at=float(sys.argv[2]))
    await store.put("revocation", rev, at=float(sys.argv[2]))
    print(time.time(), flush=True)
    await store.close()

asyncio.run(main())
"""


async def test_a_revocation_from_another_process_appears_in_the_snapshot(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    async with sqlite_store(db, poll_interval=0.05) as store:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, str(db), str(T), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            # Stop waiting early if the child failed: its stderr says why.
            await wait_for(
                lambda: (
                    store.snapshot.revoked("jti", "jti-from-child", T) is not None
                    or proc.returncode not in (None, 0)
                )
            )
            seen = time.time()
        finally:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=10)
        assert proc.returncode == 0, err.decode()
        rev = store.snapshot.revoked("jti", "jti-from-child", T)
        assert rev is not None
        assert (rev.id, rev.created_by, rev.reason) == ("rev_child", "child", "stolen token")
        latency_ms = (seen - float(out.decode().split()[0])) * 1000
        print(f"cross-process revocation visible after {latency_ms:.1f} ms (poll interval 50 ms)")


async def test_a_locked_database_delays_changes_but_the_snapshot_is_still_served(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    async with sqlite_store(db, poll_interval=0.05) as store:
        # Do not wait the default 5 s for the lock: the behaviour is the same, only faster.
        store._run(lambda conn: conn.execute("PRAGMA busy_timeout=100"))
        held = revocation("rev_1")
        await store.put("revocation", held, at=T)
        await store.poll()  # consume our own change-log entry (the background poller may not have yet)
        locker = sqlite3.connect(db, isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")

            # A write fails as a whole and leaves nothing behind, in memory or on disk.
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                await store.put("revocation", revocation("rev_2", BILLING), at=T)
            assert store.get("revocation", "rev_2") is None
            assert store.snapshot.revoked("spiffe_id", BILLING, T) is None
            # WAL: reading the change log is not blocked by a writer.
            assert await store.poll() is False

            # A session to persist makes the poll write: it fails, is counted, and is retried.
            store.note_session("sess-locked", T + 1)
            await wait_for(lambda: store.poll_errors >= 2)
            poller = store._poller
            assert poller is not None
            assert not poller.done()
            assert store.snapshot.revoked("spiffe_id", FRONTEND, T) == held
            assert store.snapshot.sessions.get("sess-locked") == T + 1
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        errors = store.poll_errors
        await asyncio.sleep(0.3)  # a few poll intervals: polling works again
        assert store.poll_errors == errors
        assert not poller.done()

    async with sqlite_store(db) as again:
        assert again.get("revocation", "rev_2") is None
        assert again.get("revocation", "rev_1") == held
        assert dict(again.snapshot.sessions) == {"sess-locked": T + 1}  # retried, not lost


async def test_a_failed_write_leaves_neither_the_record_nor_its_change(tmp_path: Path) -> None:
    """A record and its change-log entry are one transaction: a failure of the second must not
    leave the first on disk (it would surface at the next restart, unseen by other processes)."""
    db = tmp_path / "state.db"
    async with sqlite_store(db) as store:
        await store.put("revocation", revocation("rev_1"), at=T)
        saboteur = sqlite3.connect(db, isolation_level=None)
        try:
            saboteur.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON changes BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
            with pytest.raises(sqlite3.IntegrityError, match="refused"):
                await store.put("revocation", revocation("rev_2", BILLING), at=T)
            with pytest.raises(sqlite3.IntegrityError, match="refused"):
                await store.delete("revocation", "rev_1", at=T)
            rows = saboteur.execute("SELECT id FROM records WHERE kind = 'revocation'").fetchall()
            saboteur.execute("DROP TRIGGER refuse")
        finally:
            saboteur.close()
        assert rows == [("rev_1",)]
        assert store.get("revocation", "rev_1") == revocation("rev_1")
        assert store.get("revocation", "rev_2") is None


async def test_records_that_ended_past_the_retention_are_forgotten() -> None:
    now = time.time()
    store = MemoryStore()
    store.retention = 3600
    await store.start()
    long_ago = Revocation("r-old", "jti", "a", "x", "ops", now - 9000, expires_at=now - 7200)
    recently = Revocation("r-recent", "jti", "b", "x", "ops", now - 900, expires_at=now - 600)
    forever = Revocation("r-forever", "jti", "c", "x", "ops", now - 9000)
    old_grant = Grant("g-old", FRONTEND, Scope(), now - 9000, now - 7200, "r", "a", "c", now - 9000)
    for rec in (long_ago, recently, forever):
        await store.put("revocation", rec, at=now)
    await store.put("grant", old_grant, at=now)

    assert {r.id for r in store.all("revocation")} == {"r-recent", "r-forever"}
    assert store.all("grant") == []
    assert store.snapshot.revoked("jti", "c", now) is not None


async def test_sqlite_deletes_forgotten_records_and_old_changes_from_the_file(tmp_path: Path) -> None:
    now = time.time()
    async with sqlite_store(tmp_path / "s.db") as store:
        store.retention = 3600
        store.MAINTENANCE_EVERY = 0
        store.CHANGE_LOG_KEEP = 0  # every entry already read may go
        await store.put(
            "revocation", Revocation("r-old", "jti", "a", "x", "ops", now - 9000, now - 7200), at=now
        )
        await store.put("revocation", Revocation("r-live", "jti", "b", "x", "ops", now), at=now)
        await store.poll()

        db = sqlite3.connect(tmp_path / "s.db")
        try:
            ids = {r[0] for r in db.execute("SELECT id FROM records")}
            changes = db.execute("SELECT COUNT(*) FROM changes").fetchone()[0]
        finally:
            db.close()
    assert ids == {"r-live"}
    assert changes == 0


async def test_a_reader_behind_a_pruned_change_log_reloads_everything(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with sqlite_store(path) as writer, sqlite_store(path) as reader:
        await writer.put("revocation", revocation("r1"), at=T)
        await writer.put("revocation", revocation("r2", BILLING), at=T)
        # The reader has not polled; the log entries it needs are pruned away meanwhile.
        db = sqlite3.connect(path)
        try:
            db.execute("DELETE FROM changes")
            db.commit()
        finally:
            db.close()
        await writer.put("revocation", revocation("r3", "spiffe://example.org/ns/x/sa/y"), at=T)

        assert await reader.poll()
        assert {r.id for r in reader.all("revocation")} == {"r1", "r2", "r3"}
        assert reader.snapshot.revoked("spiffe_id", BILLING, T) is not None


async def test_sqlite_keeps_a_signal_set_again_after_its_old_copy_was_forgotten(tmp_path: Path) -> None:
    now = time.time()
    old = Signal("device", "LAPTOP-7", "risk", "high", "mdm", now - 9000, now - 7200)
    async with sqlite_store(tmp_path / "s.db") as store:
        store.retention = 3600
        store.MAINTENANCE_EVERY = 3600  # maintenance waits, as it would for up to 30 s
        await store.put("signal", old, at=now)  # forgotten from memory at once: it ended long ago
        again = Signal("device", "LAPTOP-7", "risk", "high", "mdm", now, now + 600)  # the same id
        await store.put("signal", again, at=now)
        store.MAINTENANCE_EVERY = 0
        await store.poll()  # maintenance deletes what was forgotten, if it is still that record

    async with sqlite_store(tmp_path / "s.db") as reopened:
        assert [s.expires_at for s in reopened.all("signal")] == [again.expires_at]


async def test_a_reader_behind_an_emptied_change_log_reloads_everything(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with sqlite_store(path) as writer, sqlite_store(path) as reader:
        await writer.put("revocation", revocation("r1"), at=T)
        db = sqlite3.connect(path)
        try:
            db.execute("DELETE FROM changes")  # every entry pruned, none written since
            db.commit()
        finally:
            db.close()

        assert await reader.poll()
        assert reader.snapshot.revoked("spiffe_id", FRONTEND, T) is not None
        assert not await reader.poll()  # and then it is level again
