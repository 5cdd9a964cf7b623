"""A fleet that survives losing its Redis primary (issue 33): a real primary, a replica and three
Sentinels on loopback, two ext-authz replicas with ``state.sentinels`` and ``wait_replicas: 1``. Under a
Check load the primary is killed; Sentinel fails over; every revocation that was acknowledged is
enforced by both ext-authz replicas afterwards, and no Check was answered allowed for a token its replica
had acknowledged revoking."""

from __future__ import annotations

import asyncio
import secrets
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from ext_authz._proto import admin_pb2 as pb
from ext_authz._proto import admin_pb2_grpc
from ext_authz.state.records import Revocation
from tests.component.checkreq import check_request
from tests.component.test_server import Running
from tests.component.test_ssf import alice_token
from tests.component.test_streams import start
from tests.redis_server import RedisServer, SentinelServer
from tests.waiting import until, until_sync

ISSUER = "https://idp.example.com"


@dataclass
class Redis:
    primary: RedisServer
    replica: RedisServer
    sentinels: list[SentinelServer] = field(default_factory=list)

    def master_port(self) -> int:
        out = self.sentinels[0].cli("SENTINEL", "get-master-addr-by-name", SentinelServer.MASTER).split()
        return int(out[1]) if len(out) == 2 else 0

    def state(self) -> dict[str, Any]:
        return {
            "url": f"redis://{SentinelServer.MASTER}/0",
            "sentinels": [f"127.0.0.1:{s.port}" for s in self.sentinels],
            "hmac_key_file": str(self.primary.hmac_key),
            "wait_replicas": 1,
            "wait_timeout": "1s",
        }


def linked(server: RedisServer) -> bool:
    try:
        info = server.cli("INFO", "replication")
    except RuntimeError:
        return False
    return "role:slave" in info and "master_link_status:up" in info


@pytest.fixture
def replicated(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and its replica, in sync."""
    primary = RedisServer(tmp_path / "primary")
    primary.start()
    replica = RedisServer(tmp_path / "replica", replica_of=primary.port)
    replica.start()
    try:
        until_sync(lambda: linked(replica), "the replica in sync with the primary")
        yield primary, replica
    finally:
        replica.stop()
        primary.stop()


@pytest.fixture
def redis(tmp_path: Path, replicated: tuple[RedisServer, RedisServer]) -> Iterator[Redis]:
    r = Redis(*replicated)
    primary = r.primary
    try:
        for i in range(3):
            sentinel = SentinelServer(tmp_path / f"sentinel-{i}", primary.port)
            sentinel.start()
            r.sentinels.append(sentinel)

        def ready(s: SentinelServer) -> bool:
            master = s.cli("SENTINEL", "master", SentinelServer.MASTER).split()
            facts = dict(zip(master[::2], master[1::2], strict=False))
            return facts.get("num-slaves") == "1" and facts.get("num-other-sentinels") == "2"

        until_sync(
            lambda: all(ready(s) for s in r.sentinels), "every Sentinel knows the replica and the others"
        )
        yield r
    finally:
        for s in r.sentinels:
            s.stop()


@pytest.fixture
async def fleet(demo_dir: Path, tmp_path: Path, redis: Redis) -> AsyncIterator[list[Running]]:
    replicas = [await start(demo_dir, tmp_path / name, state=redis.state()) for name in ("a", "b")]
    yield replicas
    for r in replicas:
        await r.channel.close()
        await r.server.stop(0)


def token(demo: Path, jti: str) -> str:
    return alice_token(demo, jti=jti, iat=int(time.time()) - 5)


async def acknowledged(admin: Any, request: Any) -> Any:
    """The admin call's answer, once a replica has caught up and WAIT says so: until then UNAVAILABLE."""
    answers: list[Any] = []

    async def taken() -> bool:
        try:
            answers.append(await admin.Revoke(request, timeout=10))
        except grpc.aio.AioRpcError:
            return False
        return True

    await until(taken, "the revocation acknowledged, a replica holding it")
    return answers[-1]


async def reason(r: Running, demo: Path, tok: str) -> str:
    resp = await r.stub.Check(
        check_request(demo, token=tok, path="/user/profile", listener="edge"), timeout=5
    )
    return str(resp.dynamic_metadata.fields["reason"].string_value)


async def test_acknowledged_revocations_survive_the_primary_failing(
    fleet: list[Running], redis: Redis, demo_dir: Path, tmp_path: Path
) -> None:
    tokens = {f"jti-{i}-{secrets.token_hex(4)}": "" for i in range(50)}
    for jti in tokens:
        tokens[jti] = token(demo_dir, jti)
    acked: dict[str, tuple[int, float]] = {}  # jti -> (the replica that acknowledged it, when)
    answers: list[tuple[int, str, str, float]] = []  # (replica, jti, reason, when asked)
    stop = asyncio.Event()

    async def revoke(jti: str, i: int) -> bool:
        r = fleet[i % 2]
        async with grpc.aio.insecure_channel(r.runtime.engine.config.admin_listen) as ch:
            try:
                await admin_pb2_grpc.AdminStub(ch).Revoke(
                    pb.RevokeRequest(kind="jti", value=f"{ISSUER}#{jti}", reason="leaked"), timeout=5
                )
            except grpc.aio.AioRpcError:
                return False  # not acknowledged: the operator tries again
        acked[jti] = (i % 2, time.monotonic())
        return True

    async def load() -> None:
        """Checks of every token at both replicas, as fast as they come, until told to stop."""
        names = list(tokens)
        n = 0
        while not stop.is_set():
            jti = names[n % len(names)]
            for i, r in enumerate(fleet):
                asked = time.monotonic()
                answers.append((i, jti, await reason(r, demo_dir, tokens[jti]), asked))
            n += 1

    loader = asyncio.create_task(load())
    names = list(tokens)
    for i, jti in enumerate(names[:20]):  # before: every one is acknowledged
        assert await revoke(jti, i)

    assert redis.primary.proc is not None and redis.replica.proc is not None
    # The replica falls behind (frozen): what is written now reaches the primary only. Acknowledged, it
    # would be lost in the failover; with wait_replicas it is not acknowledged.
    redis.replica.proc.send_signal(signal.SIGSTOP)
    redis.primary.cli("CLIENT", "KILL", "TYPE", "replica")  # (nothing waits in its socket for later)
    for i, jti in enumerate(names[20:23], start=20):
        assert not await revoke(jti, i)
    redis.primary.proc.kill()  # under load, with no goodbye
    redis.primary.proc.wait()
    redis.replica.proc.send_signal(signal.SIGCONT)
    for i, jti in enumerate(names[23:30], start=23):  # during: some are refused, never half-taken
        await revoke(jti, i)
    await until(
        lambda: redis.master_port() == redis.replica.port, "Sentinel promoted the replica", timeout=60
    )
    # Back, as a replica of the new primary: started as one, as an operator (or Sentinel, in its own
    # time) would make it.
    redis.primary.replica_of = redis.replica.port
    redis.primary.start()
    await until(lambda: linked(redis.primary), "the old primary follows the new one", timeout=60)
    for i, jti in enumerate(names[30:], start=30):  # after: acknowledged again, with a replica to wait for

        async def taken(jti: str = jti, i: int = i) -> bool:
            return jti in acked or await revoke(jti, i)

        await until(taken, f"revoking {jti} acknowledged after the failover", timeout=30)

    async def enforced_everywhere() -> bool:
        for jti in acked:
            for r in fleet:
                if await reason(r, demo_dir, tokens[jti]) != "revoked":
                    return False
        return True

    await until(enforced_everywhere, "every acknowledged revocation enforced by both replicas", timeout=30)
    # A replica started now knows only what the new primary holds: every acknowledged revocation.
    fresh = await start(demo_dir, tmp_path / "c", state=redis.state())
    try:
        lost = [jti for jti in acked if await reason(fresh, demo_dir, tokens[jti]) != "revoked"]
    finally:
        await fresh.channel.close()
        await fresh.server.stop(0)
    assert not lost, f"acknowledged, then lost in the failover: {lost[:5]}"
    stop.set()
    await loader
    assert len(acked) >= 37
    # No Check failed open: a replica never allowed a token after it had acknowledged revoking it.
    opened = [
        (i, jti)
        for i, jti, why, asked in answers
        if jti in acked and acked[jti][0] == i and asked > acked[jti][1] and why != "revoked"
    ]
    assert not opened, opened[:5]
    assert len(answers) > 100


async def test_a_change_no_replica_has_is_not_acknowledged(
    demo_dir: Path, tmp_path: Path, replicated: tuple[RedisServer, RedisServer]
) -> None:
    """wait_replicas: 1 with the replica gone: the revocation is refused (UNAVAILABLE, the operator tries
    again), not acknowledged while only the primary holds it; with the replica back it is."""
    primary, replica = replicated
    state = {**primary.settings(), "wait_replicas": 1, "wait_timeout": "300ms"}
    r = await start(demo_dir, tmp_path / "a", state=state)
    try:
        request = pb.RevokeRequest(kind="jti", value=f"{ISSUER}#jti-wait", reason="leaked")
        async with grpc.aio.insecure_channel(r.runtime.engine.config.admin_listen) as ch:
            admin = admin_pb2_grpc.AdminStub(ch)
            replica.stop()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await admin.Revoke(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "not acknowledged" in (err.value.details() or "")
            replica.start()
            until_sync(lambda: linked(replica), "the replica back in sync")
            await acknowledged(admin, request)
        assert await reason(r, demo_dir, token(demo_dir, "jti-wait")) == "revoked"
    finally:
        await r.channel.close()
        await r.server.stop(0)


async def test_a_change_found_made_is_acknowledged_only_once_a_replica_has_it(
    demo_dir: Path, tmp_path: Path, replicated: tuple[RedisServer, RedisServer]
) -> None:
    """A write WAIT refused is on the primary all the same, and read back: the transmitter's retry of
    that SET, or the operator's of that revocation, finds it made. Neither is acknowledged until a
    replica has it (from the second review's reproduction)."""
    from ext_authz.state.records import SeenEvent
    from tests.component.ssfstack import start_stack
    from tests.component.test_ssf_semantics import IDP, TX, a_set, user
    from tests.ssfkit import CAEP

    primary, replica = replicated
    state = {**primary.settings(), "wait_replicas": 1, "wait_timeout": "300ms"}
    stack = await start_stack(demo_dir, tmp_path / "s", transmitters=[TX], issuers=[IDP], state=state)
    try:
        replica.stop()
        body = a_set(CAEP + "session-revoked", user("jane"), {"event_timestamp": int(time.time())})
        assert (await stack.push(body))[0] == 503
        held = stack.running.runtime.replica
        await until(lambda: bool(held.all(SeenEvent)), "the unacknowledged change read back")
        assert (await stack.push(body))[0] == 503  # no replica has it yet: not a 202 duplicate
        request = pb.RevokeRequest(kind="jti", value=f"{ISSUER}#jti-once", reason="leaked")
        async with grpc.aio.insecure_channel(stack.running.runtime.engine.config.admin_listen) as ch:
            admin = admin_pb2_grpc.AdminStub(ch)
            with pytest.raises(grpc.aio.AioRpcError):
                await admin.Revoke(request, timeout=10)
            await until(lambda: len(held.all(Revocation)) == 2, "the revocation read back")
            with pytest.raises(grpc.aio.AioRpcError) as err:  # found made: still not acknowledged
                await admin.Revoke(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            replica.start()
            until_sync(lambda: linked(replica), "the replica back")
            assert (await acknowledged(admin, request)).existing
        assert (await stack.push(body))[0] == 202  # now a duplicate, safe on a replica
    finally:
        await stack.close()
