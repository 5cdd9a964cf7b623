"""A DPoP proof is used once across a fleet (issue 34; RFC 9449 §11.1): two replicas on one real Redis,
one answering Check on the native transport and one on grpcio. A proof used at one is a replay at the
other; a store that cannot say fails the Check closed; workers on one SQLite file share the claims too."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from joserfc import jws
from joserfc.jwk import ECKey, RSAKey

from ext_authz.dev.pki import mint_jwt
from ext_authz.identity.dpop import token_hash
from ext_authz.state.backends.memory import MemoryLog
from ext_authz.state.backends.sqlite import SqliteLog
from tests.component.checkreq import check_request
from tests.component.test_server import Running, write_config
from tests.component.test_server import start as start_server
from tests.redis_server import RedisServer

ISSUER = "https://idp.example.com"
URL = "https://backend.internal/user/profile"
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
    idp = RSAKey.import_key(json.loads((demo / "idp/idp.key.json").read_text()))
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": "backend-api",
        "sub": "alice",
        "roles": ["reader"],
        "iat": now - 10,
        "exp": now + 3600,
        "cnf": {"jkt": HOLDER.thumbprint()},
    }
    return mint_jwt(idp, claims, alg="RS256")


def proof(token: str) -> str:
    head = {"typ": "dpop+jwt", "alg": "ES256", "jwk": HOLDER.as_dict(private=False)}
    body = {
        "jti": uuid.uuid4().hex,
        "htm": "GET",
        "htu": URL,
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
