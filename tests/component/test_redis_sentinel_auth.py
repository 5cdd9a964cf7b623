"""Sentinels that speak TLS and ask for a password of their own, in front of a TLS primary with AUTH: a
replica configured with state.sentinel_password_file finds the primary through them and writes and
reads its state; without that password, or without TLS to them, it does not start and says why (a
StateError, no traceback, no password in the message)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ext_authz.config import parse_settings
from ext_authz.errors import ConfigError, StateError
from ext_authz.settings import QuarantineSettings, Settings, StateSettings
from ext_authz.state.backends.redis import RedisLog
from ext_authz.state.integrity import Sealer
from ext_authz.state.replica import Replica
from tests import factories
from tests.redis_server import RedisServer, SentinelServer

SETTINGS = Settings(quarantine=QuarantineSettings(denials=3, duration=900))
WORKLOAD = "spiffe://example.org/ns/billing/sa/worker"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, SentinelServer]]:
    root = tmp_path_factory.mktemp("sentinel-auth")
    primary = RedisServer(root / "primary", secure=True)
    primary.start()
    sentinel = SentinelServer(root / "sentinel", primary.port, secure=primary)
    try:
        sentinel.start()
        yield primary, sentinel
    finally:
        sentinel.stop()
        primary.stop()


def state(primary: RedisServer, sentinel: SentinelServer, **extra: Any) -> StateSettings:
    return StateSettings(
        url=f"rediss://{SentinelServer.MASTER}/0",
        sentinels=(f"127.0.0.1:{sentinel.port}",),
        password_file=primary.password_file,
        tls={"ca": primary.ca},
        hmac_key_file=primary.hmac_key,
        **extra,
    )


def replica(settings: StateSettings) -> Replica:
    key = settings.hmac_key_file.read_bytes().strip() if settings.hmac_key_file else None
    return Replica(RedisLog.from_settings(settings), lambda: SETTINGS, sealer=Sealer(key))


def test_a_replica_reaches_the_primary_through_sentinels_with_tls_and_a_password(
    secured: tuple[RedisServer, SentinelServer],
) -> None:
    primary, sentinel = secured

    async def run() -> None:
        r = replica(state(primary, sentinel, sentinel_password_file=sentinel.password_file))
        await r.start()
        try:
            rev = factories.revocation("rev_s1", "spiffe_id", WORKLOAD, created_at=r.clock.now().timestamp())
            await r.put(rev)
            assert r.snapshot.revoked("spiffe_id", WORKLOAD, r.clock.now().timestamp()) == rev
        finally:
            await r.close()
        assert "rev_s1" in primary.cli("HKEYS", "ext-authz:records")

    asyncio.run(run())


@pytest.mark.parametrize("wrong", ["no-password", "wrong-password"])
def test_without_the_sentinels_password_or_tls_a_replica_does_not_start(
    secured: tuple[RedisServer, SentinelServer], tmp_path: Path, wrong: str
) -> None:
    primary, sentinel = secured
    extra: dict[str, Any] = {}
    if wrong == "wrong-password":
        other = tmp_path / "pw"
        other.write_text("not-the-sentinels-password\n")
        extra["sentinel_password_file"] = other

    async def run() -> None:
        r = replica(state(primary, sentinel, **extra))
        try:
            with pytest.raises(StateError) as err:
                await r.start()
        finally:
            await r.close()
        message = str(err.value)
        assert sentinel.password not in message and primary.password not in message
        assert "Traceback" not in message

    asyncio.run(run())


def test_sentinel_keys_need_sentinels(tmp_path: Path) -> None:
    key_file = tmp_path / "k"
    key_file.write_text("k" * 32)
    for key, value in (("sentinel_password_env", "X"), ("sentinel_tls", "true")):
        text = f"state:\n  url: redis://127.0.0.1:6379/0\n  hmac_key_file: {key_file}\n  {key}: {value}\n"
        with pytest.raises(ConfigError, match=f"state.{key}.*only with sentinels"):
            parse_settings(text, tmp_path / "config.yaml")


def test_plaintext_sentinels_in_front_of_a_tls_primary_are_refused(tmp_path: Path) -> None:
    """A Sentinel's answer names the host the replica then sends the Redis password to: in plaintext,
    anyone on the path could name theirs (a review's finding: a certificate for another service from the
    same CA was enough)."""
    key_file = tmp_path / "k"
    key_file.write_text("k" * 32)
    text = (
        f"state:\n  url: rediss://mymaster/0\n  hmac_key_file: {key_file}\n"
        "  sentinels: ['127.0.0.1:26379']\n  sentinel_tls: false\n"
    )
    with pytest.raises(ConfigError, match=r"state\.sentinel_tls.*Speak TLS to the Sentinels"):
        parse_settings(text, tmp_path / "config.yaml")
