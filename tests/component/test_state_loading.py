"""A large load verified beside it by a second process (ext_authz/state/loading.py).

The same store is loaded three ways: alone (the reference), with a verifier answering its pages, and
with the verifier killed part-way. Each holds the same records and counts the same refusals: forged,
tampered, moved, legacy, over this replica's caps, of an unknown kind. The verifier is handed the MAC
key over its pipe, never on its command line or in its environment; if it cannot start, the load goes on
here.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import os
import pickle
import secrets
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from ext_authz.state.backends.sqlite import SqliteLog
from ext_authz.state.integrity import Sealer
from ext_authz.state.loading import Verifier, cores, serve_verifier
from ext_authz.state.records import RECORD_TYPES, Record, SeenEvent, encode
from ext_authz.state.replica import Replica
from tests import factories
from tests.unit.state.test_replica import BILLING, EXCEPTION, GRANT, SETTINGS, SIGNAL, T
from tests.waiting import until

KEY = f"verifier-test-key-{secrets.token_hex(16)}".encode()
GOOD = 600  # revocations, besides one of each other kind
PAGE = 50  # rows a page: a dozen pages and more


class Paged(SqliteLog):
    """A SQLite store read in small pages, with ``between(n)`` awaited after the n-th page is taken."""

    def __init__(self, path: Path, between: Callable[[int], Awaitable[None]]) -> None:
        super().__init__(path, poll_interval=3600)
        self.between = between

    async def records(self, page: int = PAGE) -> AsyncIterator[list[tuple[str, str, str]]]:
        n = 0
        async for rows in super().records(page=PAGE):
            yield rows
            n += 1
            await self.between(n)


def put(db: sqlite3.Connection, kind: str, rid: str, body: str) -> None:
    db.execute("INSERT OR REPLACE INTO records (kind, id, body) VALUES (?, ?, ?)", (kind, rid, body))


def sealed(record: Record, key: bytes | None = KEY, rid: str | None = None) -> str:
    return Sealer(key).seal("put", record.RECORD, rid or record.record_id, encode(record))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good records of every kind, spread through the pages, among every refusal a load counts."""
    path = tmp_path_factory.mktemp("loading") / "s.db"

    async def create() -> None:
        backend = SqliteLog(path)
        await backend.open()
        await backend.close()

    asyncio.run(create())
    db = sqlite3.connect(path, isolation_level=None)
    forged = factories.revocation("rev_forged", "spiffe_id", BILLING, created_at=T)
    bad: list[tuple[str, str, str]] = [
        ("revocation", "rev_forged", sealed(forged, b"x" * 32)),  # another key
        ("revocation", "rev_nomac", sealed(dataclasses.replace(forged, id="rev_nomac"), None)),
        (
            "revocation",
            "rev_tampered",
            sealed(dataclasses.replace(forged, id="rev_tampered")).replace("leaked", "lost"),
        ),
        ("revocation", "rev_moved", sealed(dataclasses.replace(forged, id="rev_elsewhere"), rid="rev_moved")),
        ("revocation", "rev_notjson", "{not json"),
        (
            "exception",
            "exc_long",
            sealed(dataclasses.replace(EXCEPTION, id="exc_long", expires_at=T + 10 * 365 * 86400)),
        ),
        ("grant", "grt_alice", sealed(dataclasses.replace(GRANT, id="grt_alice", principal="alice"))),
        ("certificate", "crt_1", sealed(dataclasses.replace(forged, id="crt_1"))),
    ]
    others: list[Record] = [GRANT, EXCEPTION, SIGNAL]
    for i in range(GOOD):
        value = f"spiffe://example.org/ns/n{i}/sa/w"
        rev = factories.revocation(f"rev_{i:04d}", "spiffe_id", value, created_at=T, expires_at=T + 86400)
        put(db, "revocation", rev.id, sealed(rev))
        if i % 70 == 35 and bad:  # refusals in the middle of pages, far from the first
            put(db, *bad.pop())
        if i % 200 == 100 and others:
            other = others.pop()
            put(db, other.RECORD, other.record_id, sealed(other))
    for row in bad:
        put(db, *row)
    db.close()
    return path


def replica(backend: SqliteLog, aside: int | None) -> Replica:
    return Replica(backend, lambda: SETTINGS, sealer=Sealer(KEY), verify_aside_after=aside)


async def load(path: Path, aside: int | None, between: Callable[[Replica, int], Awaitable[None]]) -> Replica:
    """A replica started on a copy of the store (the verifier, if any, as ``between`` lets it)."""
    holder: list[Replica] = []

    async def hook(n: int) -> None:
        await between(holder[0], n)

    r = replica(Paged(path, hook), aside)
    holder.append(r)
    await r.start()
    return r


async def nothing(r: Replica, n: int) -> None:
    return None


async def ready(r: Replica, n: int) -> None:
    """After the first page: wait until the verifier answers, so the other pages go to it."""
    if n == 1:
        await until(lambda: r.verifier is not None and r.verifier.ready, "the verifier is ready")


def held(r: Replica) -> dict[str, dict[str, Record]]:
    return {kind: dict(r._by_id[kind]) for kind in RECORD_TYPES}


async def reference(store: Path) -> Replica:
    return await load(store, None, nothing)


async def like_alone(
    store: Path, between: Callable[[Replica, int], Awaitable[None]], *, within: float | None = None
) -> tuple[Replica, Replica]:
    """``store`` loaded alone, and with a verifier as ``between`` lets it: the same records held and the
    same refusals counted. Both replicas, closed (what they held stays readable)."""
    alone = await reference(store)
    try:
        other = await asyncio.wait_for(load(store, 0, between), within)
        try:
            assert held(other) == held(alone)
            assert other.rejected == alone.rejected
        finally:
            await other.close()
    finally:
        await alone.close()
    return alone, other


async def test_a_page_verified_beside_is_held_and_refused_as_one_verified_here(
    store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "ext_authz.state")
    alone, beside = await like_alone(store, ready)
    assert sum(len(v) for v in held(alone).values()) == GOOD + 3
    assert sum(alone.rejected.values()) == 8
    assert alone.rejected[("revocation", "unauthenticated")] == 3
    assert alone.rejected[("revocation", "malformed")] == 2
    assert alone.rejected[("unknown", "unknown_kind")] == 1
    assert beside.snapshot.revoked("spiffe_id", "spiffe://example.org/ns/n7/sa/w", T) is not None
    assert beside.snapshot.revoked("spiffe_id", BILLING, T) is None  # only forged ones named it
    verified = [r.getMessage() for r in caplog.records if "verified beside" in r.getMessage()]
    assert len(verified) == 1 and "of 13 pages" in verified[0], verified
    assert not verified[0].split(" pages verified")[0].endswith(" 0 of 13")


async def test_the_key_reaches_the_verifier_over_its_pipe_only(store: Path) -> None:
    seen: dict[str, bytes] = {}

    async def look(r: Replica, n: int) -> None:
        if n == 1:
            await ready(r, n)
            assert r.verifier is not None
            pid = r.verifier._process.pid
            seen["cmdline"] = Path(f"/proc/{pid}/cmdline").read_bytes()
            seen["environ"] = Path(f"/proc/{pid}/environ").read_bytes()

    r = await load(store, 0, look)
    await r.close()
    assert b"ext_authz.state.loading" in seen["cmdline"]
    for where in ("cmdline", "environ"):
        assert KEY not in seen[where]
        assert KEY.hex().encode() not in seen[where]


async def test_a_verifier_killed_part_way_changes_nothing_but_the_time(
    store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def kill(r: Replica, n: int) -> None:
        await ready(r, n)
        if n == 4:
            assert r.verifier is not None
            os.kill(r.verifier._process.pid, signal.SIGKILL)
            verifier = r.verifier
            await until(lambda: bool(verifier.failed), "the load notices its verifier is gone")

    await like_alone(store, kill)
    assert any("verifying the rest of this load here" in r.getMessage() for r in caplog.records)


async def test_a_verifier_that_cannot_start_leaves_the_load_to_this_process(
    store: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    await like_alone(store, nothing)
    assert any("a second process cannot start" in r.getMessage() for r in caplog.records)


def test_the_verifier_refuses_what_this_process_refuses(store: Path) -> None:
    """The verifier's own loop, run as it runs there (its stdin and stdout), page by page."""

    rows = sqlite3.connect(store).execute("SELECT kind, id, body FROM records").fetchall()

    stdin = io.BytesIO()
    for frame in (pickle.dumps((KEY, SETTINGS)), orjson.dumps(rows)):
        stdin.write(len(frame).to_bytes(4, "big") + frame)
    stdin.seek(0)
    stdout = io.BytesIO()
    serve_verifier(stdin, stdout)
    out = stdout.getvalue()
    assert out[:4] == b"\0\0\0\0"  # ready
    refused = json.loads(out[8:])
    assert len(refused) == 8
    assert {rows[i][1] for i, _, _ in refused} == {
        "rev_forged",
        "rev_nomac",
        "rev_tampered",
        "rev_moved",
        "rev_notjson",
        "exc_long",
        "grt_alice",
        "crt_1",
    }


@pytest.mark.parametrize(
    ("cpu_max", "quota"),
    [("max 100000\n", None), ("100000 100000\n", 1.0), ("50000 100000\n", 0.5), ("250000 100000\n", 2.5)],
)
def test_a_cgroup_cpu_quota_bounds_the_cores_counted(
    tmp_path: Path, cpu_max: str, quota: float | None
) -> None:
    """A sidecar limited to one CPU starts no verifier: it would compete with the load for that CPU."""
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    cpus = len(os.sched_getaffinity(0))
    assert cores(path) == (cpus if quota is None else min(cpus, quota))
    assert cores(tmp_path / "absent") == cpus


async def test_a_load_limited_to_one_core_starts_no_verifier(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[float] = []

    def one_core() -> float:
        asked.append(1.0)
        return 1.0

    monkeypatch.setattr("ext_authz.state.loading.cores", one_core)
    started: list[object] = []

    async def look(r: Replica, n: int) -> None:
        started.append(r.verifier)

    r = await load(store, 0, look)
    await r.close()
    assert started and started == [None] * len(started)
    assert asked == [1.0]  # asked once a load, not again for every page


# --- hostile rows and a hostile verifier (a security review's reproductions) ---------------------------


def small_store(tmp_path: Path, *odd: tuple[object, object, str]) -> Path:
    """300 good revocations, with ``odd`` rows written among them as someone with the store's access."""
    path = tmp_path / "s.db"

    async def create() -> None:
        backend = SqliteLog(path)
        await backend.open()
        await backend.close()

    asyncio.run(create())
    db = sqlite3.connect(path, isolation_level=None)
    for i in range(300):
        rev = factories.revocation(
            f"rev_{i:04d}", "spiffe_id", f"spiffe://example.org/ns/n{i}/sa/w", created_at=T, expires_at=T + 1
        )
        put(db, "revocation", rev.id, sealed(rev))
        if i == 200:
            for kind, rid, body in odd:
                db.execute(
                    "INSERT OR REPLACE INTO records (kind, id, body) VALUES (?, ?, ?)", (kind, rid, body)
                )
    db.close()
    return path


async def same_either_way(store: Path, caplog: pytest.LogCaptureFixture) -> Replica:
    """Load ``store`` alone and with the verifier: the same records and refusals, and the verifier kept."""
    alone, _ = await like_alone(store, ready)
    assert not any("verifying the rest" in r.getMessage() for r in caplog.records)
    return alone


def test_a_valid_mac_in_an_envelope_laid_out_otherwise_is_opened_here_with_every_check(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The MAC covers the record, not the envelope: an envelope with a deeply nested extra member (parsed
    last-wins) passes in the verifier, and must never be parsed again here without the same guards."""
    rev = factories.revocation("rev_0001", "spiffe_id", "spiffe://example.org/ns/n1/sa/w", created_at=T)
    mac = json.loads(sealed(rev))["mac"]
    deep = '{"v":' + "[" * 980 + "]" * 980 + f',"v":2,"mac":"{mac}","record":{encode(rev)}}}'
    alone = asyncio.run(same_either_way(small_store(tmp_path, ("revocation", rev.id, deep)), caplog))
    assert sum(alone.rejected.values()) <= 1


def test_a_row_whose_kind_is_not_text_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    alone = asyncio.run(same_either_way(small_store(tmp_path, (b"\xff", "x", "{}")), caplog))
    assert alone.rejected[("unknown", "unknown_kind")] == 1


@pytest.mark.parametrize("mac", ["é" * 64, "g" * 64, "A" * 64, "0" * 63, "0" * 65])
def test_a_mac_that_is_not_64_hex_digits_is_unauthenticated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mac: str
) -> None:
    """Before, a non-ASCII MAC made hmac.compare_digest raise: one row written without the key kept every
    replica from starting."""
    rev = factories.revocation("rev_odd", "spiffe_id", BILLING, created_at=T)
    fast = f'{{"mac":"{mac}","record":{encode(rev)},"v":2}}'
    general = f'{{"v":2,"record":{encode(rev)},"mac":"{mac}"}}'
    store = small_store(tmp_path, ("revocation", "rev_odd", fast), ("revocation", "rev_odd2", general))
    alone = asyncio.run(same_either_way(store, caplog))
    assert alone.rejected[("revocation", "unauthenticated")] == 2


def test_a_refusal_that_names_a_lone_surrogate_does_not_stop_the_verifier(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A key holder's SET seen from an issuer spelled with a lone surrogate: refused (not a configured
    receiver), and the refusal's text still crosses the pipe."""
    seen = SeenEvent(
        id="set_0123456789abcdef0123456789abcdef",
        issuer="https://idp\ud800.example",
        jti="jti-1",
        event="session-revoked",
        seen_at=T,
        expires_at=T + 60,
    )
    body = Sealer(KEY).seal("put", "seen", seen.id, encode(seen))
    alone = asyncio.run(same_either_way(small_store(tmp_path, ("seen", seen.id, body)), caplog))
    assert alone.rejected[("seen", "invalid")] == 1


async def test_a_stalled_verifier_is_given_up_and_the_load_finishes_here(
    store: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Verifier, "STALL", 0.5)
    stopped: list[int] = []

    async def stop(r: Replica, n: int) -> None:
        await ready(r, n)
        if n == 2:
            assert r.verifier is not None
            stopped.append(r.verifier._process.pid)
            os.kill(stopped[0], signal.SIGSTOP)

    try:
        await like_alone(store, stop, within=30)
        assert any("stalled" in r.getMessage() for r in caplog.records)
    finally:
        if stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped[0], signal.SIGCONT)
