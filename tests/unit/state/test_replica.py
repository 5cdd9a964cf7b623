"""The state replica over its backends (memory, SQLite): one set of tests, then what only SQLite
promises, then what a replica refuses to read.

SQLite is durable (a restart keeps every record and session) and shared: replicas on one file, in this
process or another, see each other's changes when they follow the change log, and a locked database
only delays that while the last snapshot keeps being served. Whatever a store holds is input: a record
that is not authentic, not well formed, or over this replica's own caps is ignored and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ext_authz.clock import FixedClock
from ext_authz.errors import StateError
from ext_authz.settings import QuarantineSettings, Settings, StateSettings
from ext_authz.state.backends import BACKENDS, open_log
from ext_authz.state.backends.memory import MemoryLog
from ext_authz.state.backends.sqlite import SqliteLog
from ext_authz.state.commands import InvalidArgument
from ext_authz.state.integrity import Sealer
from ext_authz.state.records import ExceptionGrant, Grant, Revocation, Scope, Signal, encode
from ext_authz.state.replica import Replica, RevocationEvent
from tests import factories
from tests.waiting import until

T = 1_900_000_000.0
FRONTEND = "spiffe://example.org/ns/frontend/sa/web"
BILLING = "spiffe://example.org/ns/billing/sa/worker"
ALICE = "https://idp.example.com#alice"
KEY = b"k" * 32
QUIET = 3600.0  # a poll interval that never fires during a test: only explicit syncs happen


def at(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def revocation(rid: str, value: str = FRONTEND, *, expires_at: float | None = None) -> Revocation:
    return factories.revocation(
        rid, "spiffe_id", value, created_at=T, expires_at=expires_at, reason="key leaked"
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
    approved_at=T,
)
EXCEPTION = ExceptionGrant(
    id="exc_1",
    principal=ALICE,
    scope=Scope(paths=("/payroll/*",)),
    reason="payroll run blocked",
    opened_by="oncall",
    opened_at=T,
    expires_at=T + 600,
    approved_by="lead",
    approved_at=T,
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
SETTINGS = Settings(quarantine=QuarantineSettings(denials=3, duration=900))


def replica_on(
    backend: MemoryLog | SqliteLog,
    *,
    clock: FixedClock | None = None,
    key: bytes | None = KEY,
    settings: Settings = SETTINGS,
    retention: float = 3600.0,
) -> Replica:
    return Replica(
        backend,
        lambda: settings,
        sealer=Sealer(key),
        clock=clock or FixedClock(at(T)),
        retention=retention,
    )


@contextlib.asynccontextmanager
async def running(replica: Replica) -> AsyncIterator[Replica]:
    await replica.start()
    try:
        yield replica
    finally:
        await replica.close()


def sqlite_replica(path: Path, poll_interval: float = QUIET, **kw: object) -> Replica:
    return replica_on(SqliteLog(path, poll_interval=poll_interval), **kw)  # type: ignore[arg-type]


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Replica]:
    backend = (
        MemoryLog(interval=QUIET)
        if request.param == "memory"
        else SqliteLog(tmp_path / "s.db", poll_interval=QUIET)
    )
    async with running(replica_on(backend)) as replica:
        yield replica


# --- the backend registry -----------------------------------------------------------------------


def test_a_backend_is_chosen_by_the_url_scheme(tmp_path: Path) -> None:
    assert set(BACKENDS) == {"memory", "sqlite", "redis", "rediss"}
    assert isinstance(open_log(StateSettings(url="memory://")), MemoryLog)
    sql = open_log(StateSettings(url=f"sqlite://{tmp_path}/state.db"))
    assert isinstance(sql, SqliteLog)
    assert sql.path == tmp_path / "state.db"


# --- both backends ------------------------------------------------------------------------------


async def test_put_and_delete_rebuild_the_snapshot(store: Replica) -> None:
    before = store.snapshot
    rev = revocation("rev_1")
    await store.put(rev)
    after_put = store.snapshot
    assert after_put is not before
    assert after_put.revision > before.revision
    assert after_put.revoked("spiffe_id", FRONTEND, T) == rev
    assert before.revoked("spiffe_id", FRONTEND, T) is None  # a snapshot never changes once served
    assert store.get(Revocation, "rev_1") == rev
    assert store.all(Revocation) == [rev]

    removed = await store.delete(Revocation, "rev_1", action="delete", actor="test")
    assert removed == rev
    assert store.snapshot.revision > after_put.revision
    assert store.snapshot.revoked("spiffe_id", FRONTEND, T + 1) is None
    assert after_put.revoked("spiffe_id", FRONTEND, T + 1) == rev
    assert store.get(Revocation, "rev_1") is None
    assert store.all(Revocation) == []


async def test_delete_of_an_unknown_id_changes_nothing(store: Replica) -> None:
    await store.put(revocation("rev_1"))
    snap = store.snapshot
    assert await store.delete(Revocation, "rev_missing", action="delete", actor="test") is None
    assert store.snapshot is snap


async def test_every_record_kind_reaches_the_snapshot(store: Replica) -> None:
    await store.put(GRANT)
    await store.put(EXCEPTION)
    await store.put(SIGNAL)
    snap = store.snapshot
    assert snap.grants_for([FRONTEND], T) == [GRANT]
    assert snap.exceptions_for([ALICE], T) == [EXCEPTION]
    assert snap.signals_for("device", "LAPTOP-7", T) == {"posture": "compliant"}

    ended = dataclasses.replace(GRANT, ended_at=T + 5, ended_by="alice")
    await store.put(ended)  # same id: replaces the grant
    assert store.all(Grant) == [ended]
    assert store.snapshot.grants_for([FRONTEND], T + 5) == []


async def test_a_signal_is_replaced_by_a_newer_value_for_the_same_key(store: Replica) -> None:
    await store.put(SIGNAL)
    newer = dataclasses.replace(SIGNAL, value="noncompliant", set_at=T + 1)
    other_key = dataclasses.replace(SIGNAL, key="os", value="15.2")
    await store.put(newer)
    await store.put(other_key)
    assert len(store.all(Signal)) == 2
    assert store.snapshot.signals_for("device", "LAPTOP-7", T + 1) == {
        "posture": "noncompliant",
        "os": "15.2",
    }


async def test_watch_receives_created_and_removed_revocations(store: Replica) -> None:
    events: list[RevocationEvent] = []
    unsubscribe = store.watch(events.append)
    rev = revocation("rev_1")
    await store.put(rev)
    await store.put(GRANT)  # only revocations are watched
    await store.delete(Grant, GRANT.id, action="delete", actor="test")
    await store.delete(Revocation, "rev_1", action="delete", actor="test")
    assert [(e.op, e.revocation, e.at) for e in events] == [("created", rev, T), ("removed", rev, T)]

    unsubscribe()
    await store.put(revocation("rev_2"))
    assert len(events) == 2
    unsubscribe()  # a second call is harmless


async def test_a_failing_watcher_does_not_break_the_store_or_other_watchers(store: Replica) -> None:
    def broken(event: RevocationEvent) -> None:
        raise RuntimeError("watcher bug")

    events: list[RevocationEvent] = []
    store.watch(broken)
    store.watch(events.append)
    await store.put(revocation("rev_1"))
    assert [e.op for e in events] == ["created"]
    assert store.snapshot.revoked("spiffe_id", FRONTEND, T) is not None


async def test_a_session_keeps_its_first_use(store: Replica) -> None:
    assert store.note_session("s#1", T) == T
    assert store.note_session("s#1", T + 50) == T
    assert store.note_session("s#2", T + 50) == T + 50


async def test_a_new_session_is_in_the_snapshot_at_once(store: Replica) -> None:
    """The Check path reads sessions from the snapshot: a session must count from its first use,
    not from whenever some unrelated record change happens to rebuild the snapshot."""
    store.note_session("s#1", T)
    assert store.snapshot.sessions.get("s#1") == T
    store.note_session("s#1", T + 50)
    assert store.snapshot.sessions.get("s#1") == T
    await store.put(revocation("rev_1"))
    assert store.snapshot.sessions.get("s#1") == T


async def test_a_record_this_replica_would_not_read_is_not_written(store: Replica) -> None:
    with pytest.raises(InvalidArgument, match=r"exceptions\.max_duration"):
        await store.put(dataclasses.replace(EXCEPTION, expires_at=T + 5 * 3600))
    with pytest.raises(InvalidArgument, match="ambiguous"):
        await store.put(dataclasses.replace(GRANT, principal="alice"))
    assert store.all(ExceptionGrant) == [] and store.all(Grant) == []


async def test_records_that_ended_past_the_retention_are_forgotten() -> None:
    now = T
    long_ago = Revocation("r-old", "device", "a", "x", "ops", now - 9000, expires_at=now - 7200)
    recently = Revocation("r-recent", "device", "b", "x", "ops", now - 900, expires_at=now - 600)
    forever = Revocation("r-forever", "device", "c", "x", "ops", now - 9000)
    old_grant = Grant(
        "g-old",
        FRONTEND,
        Scope(paths=("/x",)),
        now - 9000,
        now - 7200,
        "r",
        "a",
        "c",
        now - 9000,
        approved_at=now - 9000,
    )
    async with running(replica_on(MemoryLog(interval=QUIET))) as store:
        for rec in (long_ago, recently, forever, old_grant):
            await store.put(rec)
        assert {r.id for r in store.all(Revocation)} == {"r-recent", "r-forever"}
        assert store.all(Grant) == []
        assert store.snapshot.revoked("device", "c", now) is not None


# --- SQLite: durable ---------------------------------------------------------------------------------


async def test_restart_keeps_every_record_kind_and_sessions(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    expiring = revocation("rev_exp", BILLING, expires_at=T + 60)
    ended = dataclasses.replace(GRANT, id="grt_2", ended_at=T + 5, ended_by="alice")
    async with running(sqlite_replica(db)) as first:
        await first.put(revocation("rev_1"))
        await first.put(expiring)
        await first.put(revocation("rev_gone", "spiffe://example.org/x"))
        await first.delete(Revocation, "rev_gone", action="delete", actor="test")
        for rec in (GRANT, ended, EXCEPTION, SIGNAL):
            await first.put(rec)
        first.note_session("s#1", T + 7)  # written on the next step of the follower, or at close
        records = {cls: first.all(cls) for cls in (Revocation, Grant, ExceptionGrant, Signal)}

    async with running(sqlite_replica(db)) as again:
        for cls, expected in records.items():
            assert sorted(again.all(cls), key=repr) == sorted(expected, key=repr), cls
        assert again.get(Revocation, "rev_gone") is None
        assert again.get(Revocation, "rev_exp") == expiring
        assert again.get(Grant, "grt_2") == ended
        assert again.get(Signal, "device\0LAPTOP-7\0posture") == SIGNAL
        snap = again.snapshot
        assert snap.revoked("spiffe_id", FRONTEND, T) == revocation("rev_1")
        assert snap.revoked("spiffe_id", BILLING, T + 60) is None
        assert snap.grants_for([FRONTEND], T + 10) == [GRANT]
        assert snap.exceptions_for([ALICE], T) == [EXCEPTION]
        assert snap.signals_for("device", "LAPTOP-7", T) == {"posture": "compliant"}
        assert dict(snap.sessions) == {"s#1": T + 7}
        assert again.note_session("s#1", T + 100) == T + 7


async def test_the_state_file_is_not_readable_by_other_users(tmp_path: Path) -> None:
    async with running(sqlite_replica(tmp_path / "state.db")):
        assert (tmp_path / "state.db").stat().st_mode & 0o077 == 0


# --- SQLite: shared ----------------------------------------------------------------------------------


async def test_two_replicas_on_one_file_see_each_others_changes(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    async with running(sqlite_replica(db)) as a, running(sqlite_replica(db)) as b:
        seen_by_b: list[RevocationEvent] = []
        b.watch(seen_by_b.append)
        rev = revocation("rev_1")

        await a.put(rev)
        assert b.snapshot.revoked("spiffe_id", FRONTEND, T) is None  # not before b follows
        assert await b.sync() is True
        assert b.snapshot.revoked("spiffe_id", FRONTEND, T) == rev
        assert [(e.op, e.revocation) for e in seen_by_b] == [("created", rev)]
        assert await b.sync() is False  # nothing new

        await b.put(GRANT)
        await b.delete(Revocation, "rev_1", action="delete", actor="test")
        assert await a.sync() is True
        assert a.snapshot.revoked("spiffe_id", FRONTEND, T + 1) is None
        assert a.snapshot.grants_for([FRONTEND], T + 1) == [GRANT]
        await b.sync()  # its own changes come back: applying them again is harmless
        assert [e.op for e in seen_by_b] == ["created", "removed"]
        assert b.snapshot.grants_for([FRONTEND], T + 1) == [GRANT]

        a.note_session("s#1", T)
        await a.sync()  # writes the session, and logs it for the others
        await b.sync()
        assert b.snapshot.sessions.get("s#1") == T


CHILD = """
import asyncio, sys
from datetime import UTC, datetime
from pathlib import Path
from ext_authz.clock import FixedClock
from ext_authz.settings import Settings
from ext_authz.state.backends.sqlite import SqliteLog
from ext_authz.state.integrity import Sealer
from ext_authz.state.records import Revocation
from ext_authz.state.replica import Replica

async def main():
    t = float(sys.argv[2])
    replica = Replica(SqliteLog(Path(sys.argv[1])), Settings, sealer=Sealer(b"k" * 32),
                      clock=FixedClock(datetime.fromtimestamp(t, UTC)))
    await replica.start()
    await replica.put(Revocation(id="rev_child", kind="jti", value="https://idp.example.com#jti-1",
                                 reason="stolen token", created_by="child", created_at=t))
    await replica.close()

asyncio.run(main())
"""


async def test_a_revocation_from_another_process_appears_in_the_snapshot(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    jti = "https://idp.example.com#jti-1"
    async with running(sqlite_replica(db, poll_interval=0.05)) as store:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, str(db), str(T), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            # Stop waiting early if the child failed: its stderr says why.
            await until(
                lambda: store.snapshot.revoked("jti", jti, T) is not None or proc.returncode not in (None, 0),
                "the child's revocation in our snapshot",
            )
        finally:
            _, err = await asyncio.wait_for(proc.communicate(), timeout=10)
        assert proc.returncode == 0, err.decode()
        rev = store.snapshot.revoked("jti", jti, T)
        assert rev is not None
        assert (rev.id, rev.created_by, rev.reason) == ("rev_child", "child", "stolen token")


async def test_a_locked_database_delays_changes_but_the_snapshot_is_still_served(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    backend = SqliteLog(db, poll_interval=0.05)
    async with running(replica_on(backend)) as store:
        held = revocation("rev_1")
        await store.put(held)
        await store.sync()  # consume our own change-log entry (the background follower may not have yet)
        assert backend._db is not None
        backend._db.execute("PRAGMA busy_timeout=100")  # do not wait the default 5 s for the lock
        locker = sqlite3.connect(db, isolation_level=None)
        try:
            locker.execute("BEGIN EXCLUSIVE")

            # A write fails as a whole and leaves nothing behind, in memory or on disk.
            with pytest.raises(StateError, match="locked"):
                await store.put(revocation("rev_2", BILLING))
            assert store.get(Revocation, "rev_2") is None
            assert store.snapshot.revoked("spiffe_id", BILLING, T) is None

            # A session to persist makes the follower write: it fails, is counted, and is retried.
            store.note_session("s#locked", T + 1)
            errors = store.errors
            await until(lambda: store.errors >= errors + 2, "two failed attempts of the follower")
            assert not store.healthy
            assert store.snapshot.revoked("spiffe_id", FRONTEND, T) == held
            assert store.snapshot.sessions.get("s#locked") == T + 1
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        await until(lambda: store.healthy, "the follower working again")

    async with running(sqlite_replica(db)) as again:
        assert again.get(Revocation, "rev_2") is None
        assert again.get(Revocation, "rev_1") == held
        assert dict(again.snapshot.sessions) == {"s#locked": T + 1}  # retried, not lost


async def test_a_failed_write_leaves_neither_the_record_nor_its_change(tmp_path: Path) -> None:
    """A record and its change-log entry are one transaction: a failure of the second must not
    leave the first on disk (it would surface at the next restart, unseen by other processes)."""
    db = tmp_path / "state.db"
    async with running(sqlite_replica(db)) as store:
        await store.put(revocation("rev_1"))
        saboteur = sqlite3.connect(db, isolation_level=None)
        try:
            saboteur.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON changes BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
            with pytest.raises(StateError, match="refused"):
                await store.put(revocation("rev_2", BILLING))
            with pytest.raises(StateError, match="refused"):
                await store.delete(Revocation, "rev_1", action="delete", actor="test")
            rows = saboteur.execute("SELECT id FROM records WHERE kind = 'revocation'").fetchall()
            saboteur.execute("DROP TRIGGER refuse")
        finally:
            saboteur.close()
        assert rows == [("rev_1",)]
        assert store.get(Revocation, "rev_1") == revocation("rev_1")
        assert store.get(Revocation, "rev_2") is None


async def test_sqlite_deletes_forgotten_records_and_old_changes_from_the_file(tmp_path: Path) -> None:
    clock = FixedClock(at(T))
    backend = SqliteLog(tmp_path / "s.db", poll_interval=QUIET)
    backend.CHANGE_LOG_KEEP = 0  # every entry already read may go
    async with running(replica_on(backend, clock=clock)) as store:
        await store.put(Revocation("r-old", "device", "a", "x", "ops", T - 9000, T - 7200))
        await store.put(Revocation("r-live", "device", "b", "x", "ops", T))
        clock.at = at(T + 60)  # past the maintenance interval
        await store.sync()

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
    async with running(sqlite_replica(path)) as writer, running(sqlite_replica(path)) as reader:
        await writer.put(revocation("r1"))
        await writer.put(revocation("r2", BILLING))
        # The reader has not followed; the log entries it needs are pruned away meanwhile.
        db = sqlite3.connect(path)
        try:
            db.execute("DELETE FROM changes")
            db.commit()
        finally:
            db.close()
        await writer.put(revocation("r3", "spiffe://example.org/ns/x/sa/y"))

        assert await reader.sync()
        assert {r.id for r in reader.all(Revocation)} == {"r1", "r2", "r3"}
        assert reader.snapshot.revoked("spiffe_id", BILLING, T) is not None


async def test_sqlite_keeps_a_signal_set_again_after_its_old_copy_was_forgotten(tmp_path: Path) -> None:
    clock = FixedClock(at(T))
    old = Signal("device", "LAPTOP-7", "risk", "high", "mdm", T - 9000, T - 7200)
    async with running(replica_on(SqliteLog(tmp_path / "s.db", poll_interval=QUIET), clock=clock)) as store:
        await store.put(old)  # forgotten from memory at once: it ended long ago
        again = Signal("device", "LAPTOP-7", "risk", "high", "mdm", T, T + 600)  # the same id
        await store.put(again)
        clock.at = at(T + 60)
        await store.sync()  # maintenance deletes what was forgotten, if it is still that record

    async with running(sqlite_replica(tmp_path / "s.db")) as reopened:
        assert [s.expires_at for s in reopened.all(Signal)] == [again.expires_at]


async def test_a_reader_behind_an_emptied_change_log_reloads_everything(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with running(sqlite_replica(path)) as writer, running(sqlite_replica(path)) as reader:
        await writer.put(revocation("r1"))
        db = sqlite3.connect(path)
        try:
            db.execute("DELETE FROM changes")  # every entry pruned, none written since
            db.commit()
        finally:
            db.close()

        assert await reader.sync()
        assert reader.snapshot.revoked("spiffe_id", FRONTEND, T) is not None
        assert not await reader.sync()  # and then it is level again


# --- what a replica refuses to read ------------------------------------------------------------------


def forge(path: Path, kind: str, rid: str, body: str, op: str = "put") -> None:
    """Write as someone with access to the store but not to the key would: straight into the file."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        if op == "put":
            db.execute("INSERT OR REPLACE INTO records (kind, id, body) VALUES (?, ?, ?)", (kind, rid, body))
        else:
            db.execute("DELETE FROM records WHERE kind = ? AND id = ?", (kind, rid))
        db.execute(
            "INSERT INTO changes (at, op, kind, id, body) VALUES (?, ?, ?, ?, ?)", (T, op, kind, rid, body)
        )
    finally:
        db.close()


FORGERIES: dict[str, Callable[[Revocation], str]] = {
    "no-mac": lambda r: Sealer(None).seal("put", "revocation", r.id, encode(r)),
    "other-key": lambda r: Sealer(b"x" * 32).seal("put", "revocation", r.id, encode(r)),
    "tampered": lambda r: (
        Sealer(KEY).seal("put", "revocation", r.id, encode(r)).replace("key leaked", "key lost")
    ),
    "not-json": lambda r: "{not json",
    "legacy-shape-in-a-v2-store": lambda r: json.dumps({"v": 2, "record": {"id": r.id}}),
}


@pytest.mark.parametrize("how", list(FORGERIES))
async def test_a_forged_record_is_ignored_and_counted(tmp_path: Path, how: str) -> None:
    path = tmp_path / "s.db"
    forged = revocation("rev_forged", BILLING)
    async with running(sqlite_replica(path)) as store:
        forge(path, "revocation", forged.id, FORGERIES[how](forged))
        await store.sync()
        assert store.get(Revocation, forged.id) is None
        assert store.snapshot.revoked("spiffe_id", BILLING, T) is None
        assert sum(store.rejected.values()) == 1
    async with running(sqlite_replica(path)) as restarted:  # and on a full load
        assert restarted.get(Revocation, forged.id) is None
        assert sum(restarted.rejected.values()) == 1


async def test_a_record_moved_to_another_id_is_not_authentic(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with running(sqlite_replica(path)) as store:
        body = Sealer(KEY).seal("put", "revocation", "rev_1", encode(revocation("rev_1")))
        forge(path, "revocation", "rev_2", body)
        await store.sync()
        assert store.all(Revocation) == []
        assert store.rejected[("revocation", "unauthenticated")] == 1


async def test_a_forged_delete_does_not_lift_a_revocation(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    rev = revocation("rev_1")
    async with running(sqlite_replica(path)) as a, running(sqlite_replica(path)) as b:
        await a.put(rev)
        await b.sync()
        forge(
            path,
            "revocation",
            rev.id,
            Sealer(None).seal("delete", "revocation", rev.id, encode(rev)),
            "delete",
        )
        await b.sync()
        assert b.snapshot.revoked("spiffe_id", FRONTEND, T) == rev
        assert b.rejected[("revocation", "unauthenticated")] == 1


async def test_an_authentic_record_over_this_replicas_caps_is_ignored(tmp_path: Path) -> None:
    """A writer with the key but another config (or a bug) cannot open a ten-year exception here."""
    path = tmp_path / "s.db"
    long = dataclasses.replace(EXCEPTION, expires_at=T + 10 * 365 * 86400)
    ambiguous = dataclasses.replace(GRANT, id="grt_9", principal="alice")
    async with running(sqlite_replica(path)) as store:
        forge(path, "exception", long.id, Sealer(KEY).seal("put", "exception", long.id, encode(long)))
        forge(path, "grant", ambiguous.id, Sealer(KEY).seal("put", "grant", ambiguous.id, encode(ambiguous)))
        await store.sync()
        assert store.all(ExceptionGrant) == [] and store.all(Grant) == []
        assert store.rejected[("exception", "invalid")] == 1
        assert store.rejected[("grant", "invalid")] == 1


async def test_a_forged_session_cannot_age_a_session(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with running(sqlite_replica(path)) as store:
        db = sqlite3.connect(path, isolation_level=None)
        try:
            body = Sealer(None).seal("session", "session", "s#1", json.dumps(T - 86400))
            db.execute("INSERT INTO sessions (sid, first_seen) VALUES (?, ?)", ("s#1", body))
            db.execute(
                "INSERT INTO changes (at, op, kind, id, body) VALUES (?, 'session', 'session', ?, ?)",
                (T, "s#1", body),
            )
        finally:
            db.close()
        await store.sync()
        assert "s#1" not in store.snapshot.sessions
        assert store.rejected[("session", "unauthenticated")] == 1


async def test_a_store_written_before_principal_keys_is_refused_with_the_way_out(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with running(sqlite_replica(path)):
        pass
    legacy = {
        "id": "exc_1",
        "principal": "alice",
        "scope": {"hosts": [], "paths": [], "methods": []},
        "reason": "r",
        "opened_by": "o",
        "opened_at": T,
        "expires_at": T + 60,
        "closed_at": None,
        "closed_by": "",
    }
    forge(path, "exception", "exc_1", json.dumps(legacy))
    replica = sqlite_replica(path)
    with pytest.raises(StateError, match="ext-authz state legacy"):
        await replica.start()
    await replica.close()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state: sqlite://{path}\nallow_empty: true\n")
    listed = subprocess.run(
        [sys.executable, "-m", "ext_authz.cli", "state", "legacy", "--config", str(cfg)],
        capture_output=True,
        text=True,
        check=True,
    )
    (line,) = listed.stdout.splitlines()
    assert json.loads(line) == {"kind": "exception", "id": "exc_1", "record": legacy}


# --- the audit log ---------------------------------------------------------------------------------------


async def test_every_change_is_audited_with_who_why_and_the_record_before_and_after(store: Replica) -> None:
    pending = dataclasses.replace(GRANT, approver="", approved_at=None)
    await store.put(pending, action="grant", actor="alice", reason="INC-42")
    approved = dataclasses.replace(pending, approver="bob", approved_at=T + 1)
    await store.put(approved, action="approve", actor="bob", reason="checked")
    rev = revocation("rev_1")
    await store.put(rev)  # made: audited as its maker making it
    lifted = dataclasses.replace(rev, ended_at=T + 2, ended_by="lead", end_reason="rotated")
    await store.put(lifted, action="unrevoke", actor="lead", reason="rotated")

    entries = await store.audit()
    assert [(e.action, e.actor, e.reason) for e in entries] == [
        ("grant", "alice", "INC-42"),
        ("approve", "bob", "checked"),
        ("revoke", "ops@example.org", ""),
        ("unrevoke", "lead", "rotated"),
    ]
    approve = entries[1]
    assert approve.before is not None and approve.before["approved_at"] is None
    assert approve.after is not None and approve.after["approver"] == "bob"
    assert entries[0].before is None and entries[0].principal == FRONTEND
    assert [e.action for e in await store.audit(principal=FRONTEND)] == [
        "grant",
        "approve",
        "revoke",
        "unrevoke",
    ]
    assert await store.audit(principal=ALICE) == []
    # An unrevoked record is still there, ended, with its reason.
    kept = store.get(Revocation, "rev_1")
    assert kept is not None and kept.end_reason == "rotated" and not kept.active(T + 3)


async def test_the_audit_log_outlives_state_retention(tmp_path: Path) -> None:
    clock = FixedClock(at(T))
    short = revocation("rev_short", expires_at=T + 60)
    async with running(sqlite_replica(tmp_path / "s.db", clock=clock, retention=600)) as store:
        await store.put(short)
        clock.at = at(T + 3600)  # an hour later: ended 59 minutes ago, past the 10-minute retention
        await store.maintain()  # the expiry is audited…
        await store.sync()
        await store.maintain()  # …and the record forgotten from state
        assert store.get(Revocation, "rev_short") is None
        entries = await store.audit()
    assert [(e.action, e.at) for e in entries] == [("revoke", T), ("expire", T + 60)]
    async with running(sqlite_replica(tmp_path / "s.db", clock=clock)) as again:
        assert [e.action for e in await again.audit()] == ["revoke", "expire"]


async def test_an_expiry_is_audited_once_however_many_replicas_noticed(tmp_path: Path) -> None:
    clock = FixedClock(at(T))
    db = tmp_path / "s.db"
    async with running(sqlite_replica(db, clock=clock)) as a, running(sqlite_replica(db, clock=clock)) as b:
        await a.put(revocation("rev_1", expires_at=T + 60))
        await b.sync()
        clock.at = at(T + 120)
        await a.maintain()
        await b.maintain()
        assert [e.action for e in await b.audit()] == ["revoke", "expire"]


async def test_audit_retention_prunes_old_entries(tmp_path: Path) -> None:
    clock = FixedClock(at(T))
    settings = Settings(audit_retention=86400)
    async with running(sqlite_replica(tmp_path / "s.db", clock=clock, settings=settings)) as store:
        await store.put(revocation("rev_old"))
        clock.at = at(T + 2 * 86400)
        await store.put(revocation("rev_new", BILLING))
        await store.maintain()
        assert [e.record_id for e in await store.audit()] == ["rev_new"]


async def test_a_refreshed_signal_is_not_a_change_but_a_new_value_is(store: Replica) -> None:
    await store.put(SIGNAL)
    await store.put(dataclasses.replace(SIGNAL, set_at=T + 1, expires_at=T + 301))
    await store.put(dataclasses.replace(SIGNAL, value="noncompliant", set_at=T + 2, expires_at=T + 302))
    entries = await store.audit()
    assert [(e.action, (e.after or {}).get("value")) for e in entries] == [
        ("signal", "compliant"),
        ("signal", "noncompliant"),
    ]


async def test_an_audit_entry_without_a_valid_mac_is_not_shown(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    async with running(sqlite_replica(db)) as store:
        await store.put(revocation("rev_1"))
        (real,) = await store.audit()
    conn = sqlite3.connect(db, isolation_level=None)
    try:  # someone with the file but not the key rewrites history
        body = json.loads(conn.execute("SELECT body FROM audit").fetchone()[0])
        body["record"]["actor"] = "somebody-else"
        conn.execute("UPDATE audit SET body = ?", (json.dumps(body),))
    finally:
        conn.close()
    async with running(sqlite_replica(db)) as store:
        assert await store.audit() == []
        assert store.audit_rejected == 1
    assert real.actor == "ops@example.org"


async def test_the_state_as_it_stood_reproduces_a_past_decision(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    clock = FixedClock(at(T))
    async with running(sqlite_replica(db, clock=clock)) as store:
        await store.put(revocation("rev_1"))
        await store.put(
            dataclasses.replace(revocation("rev_1"), ended_at=T + 100, ended_by="lead", end_reason="rotated"),
            action="unrevoke",
            actor="lead",
        )
    then = await sqlite_replica(db).snapshot_at(T + 50)
    assert then.revoked("spiffe_id", FRONTEND, T + 50) is not None
    later = await sqlite_replica(db).snapshot_at(T + 150)
    assert later.revoked("spiffe_id", FRONTEND, T + 150) is None
    before = await sqlite_replica(db).snapshot_at(T - 1)
    assert before.revocations == ()


async def test_a_write_made_while_loading_again_is_never_missing_from_a_snapshot(tmp_path: Path) -> None:
    """A reload (or a catch-up after falling behind the log) builds a new snapshot in slices while the
    old one is served. A revocation written meanwhile, after the load read the records, is in force from
    its write on, in every snapshot after it, not only once the follower reads the log again."""
    async with running(sqlite_replica(tmp_path / "s.db")) as store:
        for i in range(50):
            await store.put(revocation(f"r{i}", f"spiffe://example.org/ns/n{i}/sa/s"))
        late = revocation("r-late", BILLING)
        read = store.backend.records
        written = asyncio.Event()

        async def records_then_a_write(page: int = 2000) -> AsyncIterator[list[tuple[str, str, str]]]:
            async for chunk in read(page):
                yield chunk
            # every record read: now another task writes, before the load is put in force
            asyncio.get_running_loop().create_task(store.put(late)).add_done_callback(lambda _: written.set())
            await written.wait()

        store.backend.records = records_then_a_write  # type: ignore[method-assign]
        seen_once = False
        reload = asyncio.create_task(store.reload())
        while not reload.done():
            held = store.snapshot.revoked("spiffe_id", BILLING, T) is not None
            assert held or not seen_once, "a revocation in force went missing during the reload"
            seen_once = seen_once or held
            await asyncio.sleep(0)
        await reload
        assert seen_once
        assert store.snapshot.revoked("spiffe_id", BILLING, T) is not None  # without reading the log again
        assert store.get(Revocation, "r-late") == late
