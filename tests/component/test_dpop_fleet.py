"""A DPoP proof is used once across a fleet (issue 34; RFC 9449 §11.1): two replicas on one real Redis,
one answering Check on the native transport and one on grpcio. A proof used at one is a replay at the
other; a store that cannot say fails the Check closed; workers on one SQLite file share the claims too."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from joserfc import jws
from joserfc.jwk import ECKey

from ext_authz.identity.dpop import token_hash
from ext_authz.state.backends.memory import MemoryLog
from ext_authz.state.backends.sqlite import SqliteLog
from tests.component.checkreq import check_request
from tests.component.test_server import Running, write_config
from tests.component.test_server import start as start_server
from tests.component.test_ssf import alice_token
from tests.redis_server import RedisServer
from tests.waiting import until

HOLDER = ECKey.generate_key("P-256")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def fleet(demo_dir: Path, tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[list[Running]]:
    state = redis_server.settings()
    native = write_config(
        demo_dir, tmp_path / "a", listen=f"unix://{tmp_path}/a.sock", transport="native", state=state
    )
    grpcio = write_config(demo_dir, tmp_path / "b", transport="grpcio", state=state)
    replicas = [await start_server(native), await start_server(grpcio)]
    yield replicas
    for r in replicas:
        await r.channel.close()
        await r.server.stop(0)


def bound_token(demo: Path) -> str:
    """alice's token from the demo's issuer, bound to HOLDER's key (cnf jkt)."""
    return alice_token(demo, iat=int(time.time()) - 10, cnf={"jkt": HOLDER.thumbprint()})


def proof(token: str, path: str = "/user/profile") -> str:
    head = {"typ": "dpop+jwt", "alg": "ES256", "jwk": HOLDER.as_dict(private=False)}
    body = {
        "jti": uuid.uuid4().hex,
        "htm": "GET",
        "htu": f"https://backend.internal{path}",
        "iat": int(time.time()),
        "ath": token_hash(token),
    }
    return jws.serialize_compact(head, json.dumps(body), HOLDER, algorithms=["ES256"])


async def reason(r: Running, demo: Path, token: str, dpop: str) -> str:
    headers = {"authorization": f"DPoP {token}", "dpop": dpop}
    req = check_request(demo, path="/user/profile", listener="edge", headers=headers)
    resp = await r.stub.Check(req, timeout=10)
    return str(resp.dynamic_metadata.fields["reason"].string_value)


async def test_a_proof_used_at_one_replica_is_a_replay_at_the_other(
    fleet: list[Running], demo_dir: Path
) -> None:
    a, b = fleet
    token = bound_token(demo_dir)
    first = proof(token)
    assert await reason(a, demo_dir, token, first) == "allowed"
    assert await reason(b, demo_dir, token, first) == "dpop_proof"  # replayed to the other replica
    second = proof(token)
    assert await reason(b, demo_dir, token, second) == "allowed"
    assert await reason(a, demo_dir, token, second) == "dpop_proof"  # and the other way round
    records = [json.loads(line) for line in b.log.getvalue().splitlines() if line.startswith("{")]
    replayed = [d for d in records if d.get("reason") == "dpop_proof"]
    assert replayed and "another replica" in replayed[0]["detail"]


async def test_a_store_that_cannot_claim_fails_the_check_closed(
    fleet: list[Running], demo_dir: Path, redis_server: RedisServer
) -> None:
    a, b = fleet
    token = bound_token(demo_dir)
    redis_server.stop()
    for r in (a, b):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await reason(r, demo_dir, token, proof(token))
        assert err.value.code() == grpc.StatusCode.INTERNAL
        # Checks without a proof to claim are answered from the last snapshot, as ever.
        plain = await r.stub.Check(check_request(demo_dir, workload="frontend"), timeout=10)
        assert plain.dynamic_metadata.fields["reason"].string_value == "allowed"


@pytest.fixture
async def one_host(demo_dir: Path, tmp_path: Path) -> AsyncIterator[list[Running]]:
    """Two processes' worth of servers (workers: 1 each) on one SQLite file, as docs/fleet.md allows."""
    state = f"sqlite:///{tmp_path}/state.db"
    a = write_config(demo_dir, tmp_path / "a", transport="grpcio", state=state)
    b = write_config(demo_dir, tmp_path / "b", transport="grpcio", state=state)
    replicas = [await start_server(a), await start_server(b)]
    yield replicas
    for r in replicas:
        await r.channel.close()
        await r.server.stop(0)


async def test_a_proof_replayed_to_another_server_on_the_same_sqlite_file_is_refused(
    one_host: list[Running], demo_dir: Path
) -> None:
    a, b = one_host
    token = bound_token(demo_dir)
    used = proof(token)
    assert await reason(a, demo_dir, token, used) == "allowed"
    assert await reason(b, demo_dir, token, used) == "dpop_proof"


async def test_a_denial_is_answered_whatever_the_store_says(
    fleet: list[Running], demo_dir: Path, redis_server: RedisServer
) -> None:
    """Only an allow waits for the claim: a denial with a good proof is a denial, store or no store."""
    a, _ = fleet
    token = bound_token(demo_dir)
    redis_server.stop()
    headers = {"authorization": f"DPoP {token}", "dpop": proof(token, "/admin/users")}
    req = check_request(demo_dir, path="/admin/users", listener="edge", headers=headers)
    resp = await a.stub.Check(req, timeout=10)
    assert resp.dynamic_metadata.fields["reason"].string_value == "policy_denied"


async def test_a_check_abandoned_while_its_proof_is_claimed_is_recorded_as_a_fault(
    fleet: list[Running], demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, b = fleet
    token = bound_token(demo_dir)
    store = b.runtime.replica
    real = store.claim_once
    gate = asyncio.Event()

    async def slow(key: str, until: float) -> bool:
        await gate.wait()  # a store slower than Envoy's timeout
        return await real(key, until)

    monkeypatch.setattr(store, "claim_once", slow)
    headers = {"authorization": f"DPoP {token}", "dpop": proof(token)}
    req = check_request(demo_dir, path="/user/profile", listener="edge", headers=headers)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await b.stub.Check(req, timeout=0.2)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    def recorded() -> list[dict[str, Any]]:
        return [json.loads(line) for line in b.log.getvalue().splitlines() if line.startswith("{")]

    await until(lambda: bool(recorded()), "the abandoned Check recorded")
    assert recorded()[-1]["reason"] != "allowed"  # no answer was given and nothing was claimed


async def test_workers_on_one_sqlite_file_share_their_claims(tmp_path: Path) -> None:
    one, other = SqliteLog(tmp_path / "state.db"), SqliteLog(tmp_path / "state.db")
    await one.open()
    await other.open()
    try:
        now = time.time()
        assert await one.claim_once("dpop\0k\0j1", now + 60, now)
        assert not await other.claim_once("dpop\0k\0j1", now + 60, now)
        assert not await one.claim_once("dpop\0k\0j1", now + 60, now)
        assert await other.claim_once("dpop\0k\0j2", now + 60, now)
        # Past its time a claim is forgotten: the proof could not pass for fresh any more anyway.
        assert await other.claim_once("dpop\0k\0j1", now + 200, now + 61)
        await one.forget([], now + 300, 0.0)  # pruning drops what has expired
        assert await one.claim_once("dpop\0k\0j2", now + 400, now + 300)
    finally:
        await one.close()
        await other.close()


async def test_memory_claims_hold_until_their_time() -> None:
    log: Any = MemoryLog()
    assert await log.claim_once("k", 100.0, 10.0)
    assert not await log.claim_once("k", 100.0, 50.0)
    assert await log.claim_once("k", 200.0, 101.0)
