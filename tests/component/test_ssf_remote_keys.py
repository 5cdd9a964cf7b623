"""An SSF receiver whose transmitter's keys come from a URL keeps them as remote issuers keep theirs
(trust/remote.RemoteJwks): until they are fetched, and once they are stale (past max_stale of the
runtime's clock), every SET is refused and /readyz says why; a fetch that succeeds again clears both."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from ext_authz.clock import FixedClock
from ext_authz.dev import pki
from tests.component.test_server import _http_get, write_config
from tests.component.test_server import start as start_server
from tests.component.test_ssf import post
from tests.httpserver import QuietHandler, base_url, serving
from tests.ssfkit import SSF, mint_set, new_key
from tests.waiting import until

TRANSMITTER = "https://ssf.idp.example.com"
US = "https://authz.example.com"
SECRET = "s3cret-push-token-0123456789"
SERIAL = itertools.count()


class Keys:
    """A transmitter's key set over HTTP; ``serving`` False answers 503."""

    def __init__(self, key: Any) -> None:
        self.doc = json.dumps({"keys": [pki.jwk_public(key, use="sig")]}).encode()
        self.serving = False

    @property
    def handler(self) -> type[BaseHTTPRequestHandler]:
        keys = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                if keys.serving:
                    self.reply(200, keys.doc)
                else:
                    self.reply(503, b"down\n")

        return Handler


@pytest.fixture
def keyset() -> Iterator[tuple[Keys, str, Any]]:
    key = new_key()
    keys = Keys(key)
    with serving(keys.handler, poll_interval=0.05) as srv:
        yield keys, f"{base_url(srv)}/jwks.json", key


@dataclass
class Receiving:
    clock: FixedClock
    http: str
    key: Any
    keys: Keys

    async def readyz(self) -> str:
        code, body = await _http_get(self.http, "/readyz")
        assert code == 200  # degraded is still serving (503 only under ?strict)
        return body

    async def push(self) -> tuple[int, str]:
        claims = {
            "iss": TRANSMITTER,
            "aud": US,
            "iat": int(self.clock.now().timestamp()),
            "jti": f"set-{next(SERIAL)}",
            "sub_id": {"format": "opaque", "id": "stream-1"},
            "events": {SSF + "verification": {}},
        }
        headers = {"Content-Type": "application/secevent+jwt", "Authorization": f"Bearer {SECRET}"}
        status, _, body = await post(self.http, "/ssf/events", mint_set(self.key, claims).encode(), headers)
        return status, body


@pytest.fixture
async def receiving(
    demo_dir: Path, tmp_path: Path, keyset: tuple[Keys, str, Any]
) -> AsyncIterator[Receiving]:
    keys, url, key = keyset
    (tmp_path / "push-secret").write_text(SECRET + "\n")
    receiver = {
        "issuer": TRANSMITTER,
        "jwks": url,
        "audience": US,
        "for_issuers": ["spiffe://example.org"],
        "authorization_file": str(tmp_path / "push-secret"),
        "refresh": "1s",
        "max_stale": "30s",
    }
    config = write_config(demo_dir, tmp_path / "authz", shared_signals={"receivers": [receiver]})
    clock = FixedClock(datetime.now(UTC))
    running = await start_server(config, clock=clock)
    http = running.http
    assert http is not None
    try:
        yield Receiving(clock, http, key, keys)
    finally:
        await running.channel.close()
        await running.server.stop(0)


async def test_sets_wait_for_the_transmitters_keys_and_readyz_says_so(receiving: Receiving) -> None:
    assert "no fresh keys" in await receiving.readyz()
    status, body = await receiving.push()
    assert status == 400 and json.loads(body)["err"] == "invalid_key"

    receiving.keys.serving = True
    receiving.clock.at += timedelta(seconds=5)  # the next retry is due (retries run on the runtime's clock)

    async def ready() -> bool:
        return (await receiving.readyz()).startswith("ready")

    await until(ready, "the transmitter's keys fetched")
    assert await receiving.push() == (202, "")


async def test_keys_not_refreshed_within_max_stale_refuse_every_set(receiving: Receiving) -> None:
    receiving.keys.serving = True
    receiving.clock.at += timedelta(seconds=5)  # the first fetch (at start) failed: the retry is due

    async def ready() -> bool:
        return (await receiving.readyz()).startswith("ready")

    await until(ready, "the transmitter's keys fetched")
    receiving.keys.serving = False  # the transmitter is gone: the last keys serve until max_stale
    receiving.clock.at += timedelta(seconds=29)
    assert await receiving.push() == (202, "")
    receiving.clock.at += timedelta(seconds=2)
    assert "no fresh keys" in await receiving.readyz()
    status, body = await receiving.push()
    assert status == 400 and "stale" in json.loads(body)["description"]

    receiving.keys.serving = True  # back: the next retry fetches them again
    receiving.clock.at += timedelta(seconds=10)  # past any backoff so far
    await until(ready, "the transmitter's keys fetched again")
    assert await receiving.push() == (202, "")
