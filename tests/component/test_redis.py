"""The Redis backend with a real redis-server: propagation, restart, outage and catch-up; TLS and AUTH;
records forged in Redis by someone without the key are ignored."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ext_authz._proto import admin_pb2 as pb
from ext_authz._proto import admin_pb2_grpc
from ext_authz.clock import FixedClock, SystemClock
from ext_authz.errors import StateError
from ext_authz.settings import Settings, StateSettings
from ext_authz.state.backends import open_log
from ext_authz.state.backends.base import Change
from ext_authz.state.backends.redis import RedisLog
from ext_authz.state.integrity import Sealer, load_key
from ext_authz.state.records import ExceptionGrant, Grant, Revocation, Scope, Signal, encode
from ext_authz.state.replica import Replica, RevocationEvent
from tests import factories
from tests.component.checkreq import check_request
from tests.component.test_server import _http_get
from tests.component.test_streams import sample, scrape, start
from tests.redis_server import RedisServer
from tests.waiting import until

FRONTEND = "spiffe://example.org/ns/frontend/sa/web"
BILLING = "spiffe://example.org/ns/billing/sa/worker"
T = time.time()


def rev(rid: str, value: str = FRONTEND) -> Revocation:
    return factories.revocation(rid, "spiffe_id", value, created_at=T, reason="test", created_by="tester")


@pytest.fixture(params=["plain", "tls+auth"])
def redis_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", secure=request.param == "tls+auth")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def secure_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis-secure", secure=True)
    server.start()
    yield server
    server.stop()


def replica_for(server: RedisServer, clock: Any = None, retention: float = 3600.0) -> Replica:
    settings = StateSettings.model_validate(server.settings())
    log = open_log(settings)
    assert isinstance(log, RedisLog)
    log.block_ms = 200
    assert settings.hmac_key_file is not None
    return Replica(
        log,
        Settings,
        sealer=Sealer(load_key(settings.hmac_key_file)),
        clock=clock or SystemClock(),
        retention=retention,
    )


@pytest.fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[Callable[..., Replica]]:
    made: list[Replica] = []

    def make(**kw: Any) -> Replica:
        s = replica_for(redis_server, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        await s.close()


def test_redis_urls_choose_the_redis_backend() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://redis.internal:6380/1"):
        assert isinstance(open_log(StateSettings(url=url, hmac_key_file=Path("/k"))), RedisLog)


async def test_a_change_reaches_every_replica_with_events(stores: Callable[..., Replica]) -> None:
    a, b, c = stores(), stores(), stores()
    for s in (a, b, c):
        await s.start()
    events: list[RevocationEvent] = []
    c.watch(events.append)
    await a.put(rev("r1"))
    await until(lambda: all(s.snapshot.revoked("spiffe_id", FRONTEND, T) for s in (b, c)), "on every replica")
    assert [e.op for e in events] == ["created"]
    await b.delete(Revocation, "r1", action="delete", actor="test")
    await until(lambda: a.snapshot.revoked("spiffe_id", FRONTEND, T) is None and len(events) == 2, "removed")
    assert events[1].op == "removed"
    grant = Grant("g1", FRONTEND, Scope(paths=("/x/*",)), T - 1, T + 60, "r", "a", "t", T, approved_at=T)
    await c.put(grant)
    await until(lambda: len(a.snapshot.grants_for([FRONTEND], T)) == 1, "the grant on a")


async def test_the_audit_log_is_shared_kept_once_filtered_and_pruned(stores: Callable[..., Replica]) -> None:
    clock = FixedClock(datetime.fromtimestamp(T, UTC))
    a, b = stores(clock=clock), stores(clock=clock)
    await a.start()
    await b.start()
    await a.put(Revocation("r1", "spiffe_id", FRONTEND, "test", "tester", T, expires_at=T + 60))
    await b.put(rev("r2", BILLING))
    await until(lambda: b.get(Revocation, "r1") is not None, "r1 on b")
    clock.at = datetime.fromtimestamp(T + 120, UTC)
    await a.maintain()
    await b.maintain()  # both noticed the expiry: one entry
    entries = await b.audit()
    assert [(e.action, e.record_id) for e in entries] == [
        ("revoke", "r1"),
        ("revoke", "r2"),
        ("expire", "r1"),
    ]
    assert [e.record_id for e in await a.audit(principal=BILLING)] == ["r2"]
    assert [e.record_id for e in await a.audit(since=T + 1)] == ["r1"]  # the expiry, at T + 60
    assert [e.action for e in await a.audit(limit=1)] == ["expire"]  # the latest
    clock.at = datetime.fromtimestamp(T + 91 * 86400, UTC)
    await a.maintain()
    assert await b.audit() == []  # past audit_retention (90 days)


async def test_a_new_replica_loads_everything(stores: Callable[..., Replica]) -> None:
    a, b = stores(), stores()
    await a.start()
    await b.start()
    await a.put(rev("r1"))
    a.note_session("https://idp.example.com#sess-1", T)
    await until(lambda: "https://idp.example.com#sess-1" in b.snapshot.sessions, "the session on b")
    late = stores()
    await late.start()
    assert late.snapshot.revoked("spiffe_id", FRONTEND, T) is not None
    assert late.snapshot.sessions.get("https://idp.example.com#sess-1") == T


async def test_no_revocation_is_lost_across_a_redis_restart(
    redis_server: RedisServer, stores: Callable[..., Replica]
) -> None:
    a, b = stores(), stores()
    await a.start()
    await b.start()
    await a.put(rev("before"))
    await until(lambda: b.snapshot.revoked("spiffe_id", FRONTEND, T) is not None, "on b")

    redis_server.stop()
    await until(lambda: not b.healthy, "b notices")
    assert b.snapshot.revoked("spiffe_id", FRONTEND, T) is not None  # the last snapshot keeps enforcing
    with pytest.raises(StateError):
        await a.put(rev("while-down", "spiffe://example.org/ns/x/sa/y"))

    redis_server.start()  # same data directory: AOF persistence brings back what was written
    writer = stores()
    await writer.start()
    assert writer.snapshot.revoked("spiffe_id", FRONTEND, T) is not None
    await writer.put(rev("after", BILLING))
    await until(
        lambda: b.healthy and b.snapshot.revoked("spiffe_id", BILLING, T) is not None,
        "b caught up",
    )
    assert b.snapshot.revoked("spiffe_id", FRONTEND, T) is not None
    assert b.errors >= 1


async def test_records_forgotten_past_the_retention_leave_redis_unless_set_again(
    stores: Callable[..., Replica], redis_server: RedisServer
) -> None:
    clock = FixedClock(datetime.fromtimestamp(T, UTC))
    a = stores(clock=clock)
    await a.start()
    await a.put(
        Revocation("r-old", "device", "a", "x", "ops", T - 9000, expires_at=T - 7200)
    )  # forgotten at once
    await a.put(Signal("device", "LAPTOP-7", "risk", "high", "mdm", T - 9000, T - 7200))
    await a.put(Signal("device", "LAPTOP-7", "risk", "high", "mdm", T, T + 600))
    await a.put(rev("r-live"))
    clock.at = datetime.fromtimestamp(T + 60, UTC)  # past the maintenance interval

    def stored() -> set[str]:
        return set(redis_server.cli("HKEYS", "ext-authz:records").split())

    await until(lambda: not any(f.endswith("r-old") for f in stored()), "r-old deleted from Redis")
    assert any(f.startswith("signal") for f in stored())  # set again since: it stays
    late = stores()
    await late.start()
    assert {r.id for r in late.all(Revocation)} == {"r-live"}
    assert [s.expires_at for s in late.all(Signal)] == [T + 600]


# --- TLS and AUTH ------------------------------------------------------------------------------------


async def test_without_the_password_or_over_plaintext_nothing_is_read(secure_redis: RedisServer) -> None:
    good = secure_redis.settings()
    wrong_password = {**good, "password_file": str(secure_redis.dir / "wrong")}
    (secure_redis.dir / "wrong").write_text("not-the-password")
    plaintext = {**good, "url": good["url"].replace("rediss://", "redis://"), "tls": None}
    for settings in (wrong_password, plaintext):
        replica = Replica(
            open_log(StateSettings.model_validate(settings)), Settings, sealer=Sealer(b"k" * 32)
        )
        with pytest.raises(StateError):
            await replica.start()
        await replica.close()


async def test_a_server_that_is_not_the_ones_ca_vouches_for_is_refused(
    secure_redis: RedisServer, tmp_path: Path
) -> None:
    from ext_authz.dev import pki

    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_text(pki.make_ca("someone else").pem)
    settings = {**secure_redis.settings(), "tls": {"ca": str(other_ca)}}
    replica = Replica(open_log(StateSettings.model_validate(settings)), Settings, sealer=Sealer(b"k" * 32))
    with pytest.raises(StateError):
        await replica.start()
    await replica.close()


# --- forged records ----------------------------------------------------------------------------------


async def test_a_record_forged_with_redis_cli_is_ignored_logged_and_counted(
    demo_dir: Path, tmp_path: Path, secure_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Someone with Redis access but not the HMAC key writes an exception for billing (a year long,
    with an author of their choosing) and a delete entry for a real revocation. Neither counts."""
    caplog.set_level(logging.WARNING, logger="ext_authz.state")
    r = await start(demo_dir, tmp_path, state=secure_redis.settings())
    try:
        async with grpc.aio.insecure_channel(r.runtime.engine.config.admin_listen) as ch:
            real = (
                await admin_pb2_grpc.AdminStub(ch).Revoke(pb.RevokeRequest(value=FRONTEND, reason="incident"))
            ).revocation
        forged = ExceptionGrant(
            "exc_forged",
            BILLING,
            Scope(),
            "trust me",
            "spiffe://example.org/ns/ops/sa/admin",
            T,
            T + 365 * 86400,
        )
        body = Sealer(None).seal("put", "exception", forged.id, encode(forged))
        secure_redis.cli("HSET", "ext-authz:records", f"exception\x1f{forged.id}", body)
        secure_redis.cli(
            "XADD",
            "ext-authz:changes",
            "*",
            "op",
            "put",
            "kind",
            "exception",
            "id",
            forged.id,
            "body",
            body,
            "at",
            "0",
        )
        rev_body = Sealer(b"guessed-key-guessed-key-guessed!").seal(
            "delete",
            "revocation",
            real.id,
            encode(Revocation(real.id, "spiffe_id", FRONTEND, "incident", real.created_by, real.created_at)),
        )
        secure_redis.cli(
            "XADD",
            "ext-authz:changes",
            "*",
            "op",
            "delete",
            "kind",
            "revocation",
            "id",
            real.id,
            "body",
            rev_body,
            "at",
            "0",
        )
        replica = r.runtime.replica
        await until(lambda: sum(replica.rejected.values()) >= 2, "both forgeries read and refused")
        logged = [rec.getMessage() for rec in caplog.records if rec.name == "ext_authz.state"]
        assert any(
            m.startswith("state: ignoring exception 'exc_forged'") and m.endswith("(unauthenticated)")
            for m in logged
        ), logged
        assert any(
            m.startswith(f"state: ignoring revocation {real.id!r}") and m.endswith("(unauthenticated)")
            for m in logged
        ), logged
        billing = await r.stub.Check(check_request(demo_dir, workload="billing"))
        assert billing.dynamic_metadata.fields["reason"].string_value == "no_rule"  # no exception applied
        frontend = await r.stub.Check(check_request(demo_dir, workload="frontend"))
        assert frontend.dynamic_metadata.fields["reason"].string_value == "revoked"  # not lifted
        scraped = await scrape(r)
        assert (
            sample(
                scraped, "ext_authz_state_records_rejected_total", kind="exception", reason="unauthenticated"
            )
            == 1
        )
        assert (
            sample(
                scraped, "ext_authz_state_records_rejected_total", kind="revocation", reason="unauthenticated"
            )
            == 1
        )
        async with grpc.aio.insecure_channel(r.runtime.engine.config.admin_listen) as ch:
            listed = await admin_pb2_grpc.AdminStub(ch).ListExceptions(
                pb.ListExceptionsRequest(include_closed=True)
            )
        assert list(listed.exceptions) == []
    finally:
        await r.channel.close()
        await r.server.stop(0)
    second = await start(demo_dir, tmp_path / "restart", state=secure_redis.settings())  # and on a full load
    try:
        assert second.runtime.replica.all(ExceptionGrant) == []
        assert second.runtime.replica.rejected[("exception", "unauthenticated")] == 1
    finally:
        await second.channel.close()
        await second.server.stop(0)


async def test_a_sealed_record_of_an_unknown_kind_is_ignored_logged_and_counted(
    demo_dir: Path, tmp_path: Path, secure_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Written with the HMAC key, so its MAC verifies: only its kind is one this version does not know."""
    caplog.set_level(logging.WARNING, logger="ext_authz.state")
    key = load_key(secure_redis.hmac_key)
    r = await start(demo_dir, tmp_path, state=secure_redis.settings())
    try:
        body = Sealer(key).seal("put", "widget", "w1", encode(rev("w1")))
        assert Sealer(key).open("put", "widget", "w1", body) is not None  # authentic under the key
        secure_redis.cli("HSET", "ext-authz:records", "widget\x1fw1", body)
        secure_redis.cli(
            "XADD",
            "ext-authz:changes",
            "*",
            "op",
            "put",
            "kind",
            "widget",
            "id",
            "w1",
            "body",
            body,
            "at",
            "0",
        )
        replica = r.runtime.replica
        await until(lambda: replica.rejected[("unknown", "unknown_kind")] == 1, "the widget read and ignored")
        assert sum(replica.rejected.values()) == 1  # not counted as anything else
        assert replica.healthy  # ignored: the follower goes on
        assert any(
            rec.name == "ext_authz.state"
            and rec.getMessage().startswith("state: ignoring widget 'w1'")
            and rec.getMessage().endswith("(unknown_kind)")
            for rec in caplog.records
        ), caplog.text
        scraped = await scrape(r)
        assert (
            sample(scraped, "ext_authz_state_records_rejected_total", kind="unknown", reason="unknown_kind")
            == 1
        )
        frontend = await r.stub.Check(check_request(demo_dir, workload="frontend"))
        assert (
            frontend.dynamic_metadata.fields["reason"].string_value == "allowed"
        )  # its body applied nowhere
        async with grpc.aio.insecure_channel(r.runtime.engine.config.admin_listen) as ch:
            await admin_pb2_grpc.AdminStub(ch).Revoke(pb.RevokeRequest(value=BILLING, reason="after"))
        await until(
            lambda: replica.snapshot.revoked("spiffe_id", BILLING, time.time()) is not None,
            "a record after the widget applied",
        )
    finally:
        await r.channel.close()
        await r.server.stop(0)
    second = await start(demo_dir, tmp_path / "restart", state=secure_redis.settings())  # and on a full load
    try:
        assert second.runtime.replica.rejected[("unknown", "unknown_kind")] == 1
        assert second.runtime.replica.snapshot.revoked("spiffe_id", BILLING, time.time()) is not None
    finally:
        await second.channel.close()
        await second.server.stop(0)


# --- the password from the environment -----------------------------------------------------------------


async def test_the_redis_password_from_password_env_opens_the_secure_store(
    secure_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EXT_AUTHZ_TEST_REDIS_PASSWORD", secure_redis.password)
    settings = {k: v for k, v in secure_redis.settings().items() if k != "password_file"}
    settings["password_env"] = "EXT_AUTHZ_TEST_REDIS_PASSWORD"
    state = StateSettings.model_validate(settings)
    assert state.password_file is None and secure_redis.password not in json.dumps(settings)
    replica = Replica(open_log(state), Settings, sealer=Sealer(load_key(secure_redis.hmac_key)))
    try:
        await replica.start()
        await replica.put(rev("via-env"))
    finally:
        await replica.close()
    assert "revocation\x1fvia-env" in secure_redis.cli("HKEYS", "ext-authz:records")  # written under AUTH

    monkeypatch.setenv("EXT_AUTHZ_TEST_REDIS_PASSWORD", "not-the-password")  # the variable is what is used
    wrong = Replica(open_log(state), Settings, sealer=Sealer(load_key(secure_redis.hmac_key)))
    with pytest.raises(StateError):
        await wrong.start()
    await wrong.close()


def test_a_missing_password_env_variable_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EXT_AUTHZ_TEST_REDIS_PASSWORD", raising=False)
    unstarted = RedisServer(tmp_path / "redis", secure=True)  # its files only: nothing is reached
    settings = {k: v for k, v in unstarted.settings().items() if k != "password_file"}
    state = StateSettings.model_validate({**settings, "password_env": "EXT_AUTHZ_TEST_REDIS_PASSWORD"})
    with pytest.raises(StateError, match=r"state\.password_env: .*EXT_AUTHZ_TEST_REDIS_PASSWORD is not set"):
        open_log(state)


# --- a server on Redis ---------------------------------------------------------------------------------


async def test_server_on_redis_keeps_enforcing_and_reports_degraded(
    demo_dir: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    r = await start(demo_dir, tmp_path, state=redis_server.settings())
    try:
        assert isinstance(r.runtime.replica.backend, RedisLog)
        async with grpc.aio.insecure_channel(r.runtime.engine.config.admin_listen) as ch:
            await admin_pb2_grpc.AdminStub(ch).Revoke(pb.RevokeRequest(value=FRONTEND, reason="incident"))
        check = check_request(demo_dir, workload="frontend")
        assert (await r.stub.Check(check)).dynamic_metadata.fields["reason"].string_value == "revoked"

        redis_server.stop()
        await until(lambda: not r.runtime.replica.healthy, "unhealthy")
        # Still enforcing on the last snapshot.
        assert (await r.stub.Check(check)).dynamic_metadata.fields["reason"].string_value == "revoked"
        billing = await r.stub.Check(check_request(demo_dir, workload="billing"))
        assert billing.dynamic_metadata.fields["reason"].string_value == "no_rule"
        http = r.http
        assert http is not None
        code, body = await _http_get(http, "/readyz")
        assert code == 200 and body.startswith("degraded")
        health = health_pb2_grpc.HealthStub(r.channel)

        async def state_status() -> Any:
            return (await health.Check(health_pb2.HealthCheckRequest(service="ext_authz.state"))).status

        async def state_not_serving() -> bool:
            return bool(await state_status() == health_pb2.HealthCheckResponse.NOT_SERVING)

        await until(state_not_serving, "the state health service NOT_SERVING")
        main = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert main.status == health_pb2.HealthCheckResponse.SERVING
        assert sample(await scrape(r), "ext_authz_state_connected") == 0

        redis_server.start()
        await until(lambda: r.runtime.replica.healthy, "healthy again")
        code, body = await _http_get(http, "/readyz")
        assert code == 200 and body.startswith("ready")
    finally:
        await r.channel.close()
        await r.server.stop(0)


async def test_redis_killed_and_restarted_under_load_loses_nothing_and_replicas_catch_up(
    demo_dir: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    a = await start(demo_dir, tmp_path / "a", state=redis_server.settings())
    b = await start(demo_dir, tmp_path / "b", state=redis_server.settings())
    checks = {
        "frontend": check_request(demo_dir, workload="frontend"),
        "billing": check_request(demo_dir, workload="billing"),
    }
    seen: list[tuple[float, str, str]] = []  # (when sent, who, reason) from both replicas
    failures: list[str] = []
    stop = asyncio.Event()

    async def load(r: Any) -> None:
        while not stop.is_set():
            for who, req in checks.items():
                try:
                    sent = time.monotonic()  # a Check in flight when a change lands was decided before it
                    resp = await r.stub.Check(req, timeout=5)
                    seen.append((sent, who, resp.dynamic_metadata.fields["reason"].string_value))
                except grpc.aio.AioRpcError as exc:
                    failures.append(f"{who}: {exc.code()}")
            await asyncio.sleep(0.002)

    async def revoke(r: Any, value: str) -> None:
        async with grpc.aio.insecure_channel(r.runtime.engine.config.admin_listen) as ch:
            await admin_pb2_grpc.AdminStub(ch).Revoke(pb.RevokeRequest(value=value, reason="incident"))

    loaders = [asyncio.create_task(load(r)) for r in (a, b)]
    try:
        await revoke(a, FRONTEND)
        await until(
            lambda: b.runtime.replica.snapshot.revoked("spiffe_id", FRONTEND, time.time()) is not None,
            "the revocation on b",
        )
        settled = time.monotonic()

        redis_server.stop()  # killed under load
        await until(lambda: not a.runtime.replica.healthy and not b.runtime.replica.healthy, "both notice")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await revoke(a, BILLING)  # refused while Redis is down: never silently dropped
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        redis_server.start()
        await until(lambda: a.runtime.replica.healthy and b.runtime.replica.healthy, "both reconnect")

        await revoke(b, BILLING)  # after the restart, on the other replica
        await until(
            lambda: a.runtime.replica.snapshot.revoked("spiffe_id", BILLING, time.time()) is not None,
            "a caught up",
        )
        caught_up = time.monotonic()
        count = len(seen)
        await until(lambda: len(seen) > count + 50, "more Checks after catching up")
    finally:
        stop.set()
        await asyncio.gather(*loaders)
        for r in (a, b):
            await r.channel.close()
            await r.server.stop(0)

    assert failures == []  # not one Check failed while Redis was away
    frontend_after = [reason for t, who, reason in seen if who == "frontend" and t > settled]
    assert frontend_after and set(frontend_after) == {"revoked"}  # the revocation held throughout
    billing_after = [reason for t, who, reason in seen if who == "billing" and t > caught_up]
    assert billing_after and set(billing_after) == {"revoked"}
    assert len(seen) > 200


def test_the_fixtures_secrets_stay_out_of_the_settings_text(secure_redis: RedisServer) -> None:
    text = json.dumps(secure_redis.settings())
    assert secure_redis.password not in text  # the config names a file, never the password itself


async def test_a_log_that_ends_before_our_position_is_loaded_again(tmp_path: Path) -> None:
    """After a failover to a replica that never had the last entries a follower read, the log ends before
    the follower's position, and new entries may get ids below it: reading on would skip them. The
    follower loads everything again instead."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        log = RedisLog(server.url)
        await log.open()
        try:
            sealed = Sealer(b"k" * 32).seal("put", "revocation", "rev_1", "{}")
            await log.append([Change("put", "revocation", "rev_1", sealed, T)])
            await log.append([Change("put", "revocation", "rev_2", sealed, T)])
            position = await log.position()
            server.cli("XDEL", "ext-authz:changes", position)  # the entry the failover lost
            log._check_trim = True  # as after the connection failed
            assert (await log.follow(position, wait=False)).behind
            log._check_trim = True
            earlier = (await log.follow("0-0", wait=False)).position  # a position the log still has
            log._check_trim = True
            assert not (await log.follow(earlier, wait=False)).behind
        finally:
            await log.close()
    finally:
        server.stop()
