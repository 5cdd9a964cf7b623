"""The Redis store with a real redis-server: propagation, restart, outage and catch-up."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ext_authz.state.model import Grant, Revocation, Scope
from ext_authz.state.redis_store import RedisStore
from ext_authz.state.store import RevocationEvent, open_store
from tests.component.checkreq import check_request
from tests.component.test_server import _http_get
from tests.component.test_streams import sample, scrape, start
from tests.redis_server import RedisServer

FRONTEND = "spiffe://example.org/ns/frontend/sa/web"
T = time.time()


def rev(rid: str, value: str = FRONTEND) -> Revocation:
    return Revocation(rid, "spiffe_id", value, "test", "tester", T)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[Callable[[], RedisStore]]:
    made: list[RedisStore] = []

    def make() -> RedisStore:
        s = RedisStore(redis_server.url, block_ms=200, max_backoff=0.5)
        made.append(s)
        return s

    yield make
    for s in made:
        await s.close()


async def until(pred: Callable[[], bool], timeout: float = 10) -> float:
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        await asyncio.sleep(0.002)
    return time.monotonic() - t0


def test_open_store_understands_redis_urls() -> None:
    assert isinstance(open_store("redis://127.0.0.1:6379/0"), RedisStore)
    assert isinstance(open_store("rediss://redis.internal:6380/1"), RedisStore)


async def test_a_change_reaches_every_replica_with_events(stores: Callable[[], RedisStore]) -> None:
    a, b, c = stores(), stores(), stores()
    for s in (a, b, c):
        await s.start()
    events: list[RevocationEvent] = []
    c.watch(events.append)
    await a.put("revocation", rev("r1"), at=T)
    took = await until(lambda: all(s.snapshot.revoked("spiffe_id", FRONTEND, T) for s in (b, c)))
    print(f"revocation on every replica after {took * 1000:.1f} ms")
    assert [e.op for e in events] == ["created"]
    await b.delete("revocation", "r1", at=T)
    await until(lambda: a.snapshot.revoked("spiffe_id", FRONTEND, T) is None and len(events) == 2)
    assert events[1].op == "removed"
    grant = Grant("g1", FRONTEND, Scope(paths=("/x/*",)), T - 1, T + 60, "r", "a", "t", T)
    await c.put("grant", grant, at=T)
    await until(lambda: len(a.snapshot.grants_for([FRONTEND], T)) == 1)


async def test_a_new_replica_loads_everything(stores: Callable[[], RedisStore]) -> None:
    a = stores()
    await a.start()
    await a.put("revocation", rev("r1"), at=T)
    a.note_session("sess-1", T)
    await asyncio.sleep(0.4)  # the follower flushes sessions
    late = stores()
    await late.start()
    assert late.snapshot.revoked("spiffe_id", FRONTEND, T) is not None
    assert late.snapshot.sessions.get("sess-1") == T


async def test_no_revocation_is_lost_across_a_redis_restart(
    redis_server: RedisServer, stores: Callable[[], RedisStore]
) -> None:
    a, b = stores(), stores()
    await a.start()
    await b.start()
    await a.put("revocation", rev("before"), at=T)
    await until(lambda: b.snapshot.revoked("spiffe_id", FRONTEND, T) is not None)

    redis_server.stop()
    await until(lambda: not b.healthy)
    assert b.snapshot.revoked("spiffe_id", FRONTEND, T) is not None  # the last snapshot keeps enforcing
    with pytest.raises((OSError, ConnectionError, Exception)):
        await a.put("revocation", rev("while-down", "spiffe://example.org/ns/x/sa/y"), at=T)

    redis_server.start()  # same data directory: AOF persistence brings back what was written
    writer = stores()
    await writer.start()
    assert writer.snapshot.revoked("spiffe_id", FRONTEND, T) is not None
    await writer.put("revocation", rev("after", "spiffe://example.org/ns/billing/sa/worker"), at=T)
    await until(
        lambda: (
            b.healthy
            and b.snapshot.revoked("spiffe_id", "spiffe://example.org/ns/billing/sa/worker", T) is not None
        ),
        timeout=20,
    )
    assert b.snapshot.revoked("spiffe_id", FRONTEND, T) is not None
    assert b.reconnects >= 1


async def test_server_on_redis_keeps_enforcing_and_reports_degraded(
    demo_dir: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    from ext_authz._proto import admin_pb2 as pb
    from ext_authz._proto import admin_pb2_grpc

    r = await start(demo_dir, tmp_path, state=redis_server.url)
    try:
        assert "RedisStore" in type(r.runtime.store).__name__
        async with grpc.aio.insecure_channel(r.runtime.engine.config.admin_listen) as ch:
            await admin_pb2_grpc.AdminStub(ch).Revoke(pb.RevokeRequest(value=FRONTEND, reason="incident"))
        check = check_request(demo_dir, workload="frontend")
        assert (await r.stub.Check(check)).dynamic_metadata.fields["reason"].string_value == "revoked"

        redis_server.stop()
        await until(lambda: not r.runtime.store.healthy)
        # Still enforcing on the last snapshot.
        assert (await r.stub.Check(check)).dynamic_metadata.fields["reason"].string_value == "revoked"
        billing = await r.stub.Check(check_request(demo_dir, workload="billing"))
        assert billing.dynamic_metadata.fields["reason"].string_value == "no_rule"
        http = r.runtime.engine.config.http_listen
        assert http is not None
        code, body = await _http_get(http, "/readyz")
        assert code == 200 and body.startswith("degraded")
        await asyncio.sleep(0.5)
        health = health_pb2_grpc.HealthStub(r.channel)
        state = await health.Check(health_pb2.HealthCheckRequest(service="ext_authz.state"))
        assert state.status == health_pb2.HealthCheckResponse.NOT_SERVING
        main = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert main.status == health_pb2.HealthCheckResponse.SERVING
        assert sample(await scrape(r), "ext_authz_state_connected") == 0

        redis_server.start()
        await until(lambda: r.runtime.store.healthy, timeout=20)
        code, body = await _http_get(http, "/readyz")
        assert code == 200 and body.startswith("ready")
    finally:
        await r.channel.close()
        await r.server.stop(0)


async def test_redis_killed_and_restarted_under_load_loses_nothing_and_replicas_catch_up(
    demo_dir: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    from ext_authz._proto import admin_pb2 as pb
    from ext_authz._proto import admin_pb2_grpc

    a = await start(demo_dir, tmp_path / "a", state=redis_server.url)
    b = await start(demo_dir, tmp_path / "b", state=redis_server.url)
    billing = "spiffe://example.org/ns/billing/sa/worker"
    checks = {
        "frontend": check_request(demo_dir, workload="frontend"),
        "billing": check_request(demo_dir, workload="billing"),
    }
    seen: list[tuple[float, str, str]] = []  # (when, who, reason) from both replicas
    failures: list[str] = []
    stop = asyncio.Event()

    async def load(r: Any) -> None:
        while not stop.is_set():
            for who, req in checks.items():
                try:
                    resp = await r.stub.Check(req, timeout=5)
                    seen.append((time.monotonic(), who, resp.dynamic_metadata.fields["reason"].string_value))
                except grpc.aio.AioRpcError as exc:
                    failures.append(f"{who}: {exc.code()}")
            await asyncio.sleep(0.002)

    async def revoke(r: Any, value: str) -> None:
        async with grpc.aio.insecure_channel(r.runtime.engine.config.admin_listen) as ch:
            await admin_pb2_grpc.AdminStub(ch).Revoke(pb.RevokeRequest(value=value, reason="incident"))

    loaders = [asyncio.create_task(load(r)) for r in (a, b)]
    try:
        await revoke(a, FRONTEND)
        await until(lambda: b.runtime.store.snapshot.revoked("spiffe_id", FRONTEND, time.time()) is not None)
        settled = time.monotonic()

        redis_server.stop()  # killed under load
        await until(lambda: not a.runtime.store.healthy and not b.runtime.store.healthy)
        with pytest.raises(grpc.aio.AioRpcError):
            await revoke(a, billing)  # refused while Redis is down: never silently dropped
        await asyncio.sleep(0.5)
        redis_server.start()
        await until(lambda: a.runtime.store.healthy and b.runtime.store.healthy, timeout=20)

        await revoke(b, billing)  # after the restart, on the other replica
        await until(
            lambda: a.runtime.store.snapshot.revoked("spiffe_id", billing, time.time()) is not None,
            timeout=20,
        )
        caught_up = time.monotonic()
        await asyncio.sleep(0.3)
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


async def test_records_forgotten_past_the_retention_leave_redis_unless_set_again(
    stores: Callable[[], RedisStore], redis_server: RedisServer
) -> None:
    from ext_authz.state.model import Signal

    now = time.time()
    a = stores()
    a.retention = 3600
    await a.start()
    old = Revocation("r-old", "jti", "a", "x", "ops", now - 9000, expires_at=now - 7200)
    await a.put("revocation", old, at=now)  # ended long ago: forgotten at once
    old_signal = Signal("device", "LAPTOP-7", "risk", "high", "mdm", now - 9000, now - 7200)
    await a.put("signal", old_signal, at=now)
    await a.put("signal", Signal("device", "LAPTOP-7", "risk", "high", "mdm", now, now + 600), at=now)
    await a.put("revocation", rev("r-live"), at=now)

    def stored() -> set[str]:
        client = redis.Redis.from_url(redis_server.url, decode_responses=True)
        try:
            return {str(k) for k in client.hkeys("ext-authz:records")}
        finally:
            client.close()

    await until(lambda: not any(f.endswith("r-old") for f in stored()))
    assert any(f.startswith("signal") for f in stored())  # set again since: it stays
    late = stores()
    await late.start()
    assert {r.id for r in late.all("revocation")} == {"r-live"}
    assert [s.expires_at for s in late.all("signal")] == [now + 600]
