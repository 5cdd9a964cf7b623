"""The SSF transmitter's endpoints keep time by the runtime's clock: ``POST /ssf/verify`` is limited to
one verification every 10 s of that clock, and the verification SET it queues is issued at its time."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ext_authz.clock import FixedClock
from ext_authz.serve.app import Server
from tests.component.test_server import start as start_server
from tests.component.test_server import write_config
from tests.component.test_ssf import post
from tests.ssfkit import new_key

SECRET = "verify-secret-0123456789"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"


class Served:
    def __init__(self, server: Server, clock: FixedClock, http: str) -> None:
        self.server, self.clock, self.http = server, clock, http
        self.auth = {"Content-Type": "application/json", "Authorization": f"Bearer {SECRET}"}

    async def verify(self, state: str) -> int:
        status, _, _ = await post(self.http, "/ssf/verify", json.dumps({"state": state}).encode(), self.auth)
        return status

    async def poll(self) -> list[dict[str, Any]]:
        status, _, body = await post(self.http, "/ssf/poll", b"{}", self.auth)
        assert status == 200
        out = []
        for token in json.loads(body)["sets"].values():
            part = token.split(".")[1]
            out.append(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))
        return out


@pytest.fixture
async def served(demo_dir: Path, tmp_path: Path) -> AsyncIterator[Served]:
    (tmp_path / "key.json").write_text(json.dumps(new_key().as_dict(private=True)))
    (tmp_path / "secret").write_text(SECRET + "\n")
    stream = {
        "audience": "https://rp.example",
        "delivery": "poll",
        "authorization_file": str(tmp_path / "secret"),
    }
    config = write_config(
        demo_dir,
        tmp_path / "authz",
        shared_signals={
            "transmitter": {
                "issuer": "https://authz.example.com",
                "key": str(tmp_path / "key.json"),
                "streams": [stream],
            }
        },
    )
    clock = FixedClock(datetime.now(UTC).replace(microsecond=0))
    running = await start_server(config, clock=clock)
    http = running.http
    assert http is not None
    try:
        yield Served(running.server, clock, http)
    finally:
        await running.channel.close()
        await running.server.stop(0)


async def test_verification_is_limited_by_the_runtimes_clock(served: Served) -> None:
    start = served.clock.at
    assert await served.verify("first") == 204
    assert await served.verify("too-soon") == 429
    served.clock.at = start + timedelta(seconds=9)
    assert await served.verify("still-too-soon") == 429
    served.clock.at = start + timedelta(seconds=10)
    assert await served.verify("second") == 204
    sets = await served.poll()
    assert [(s["events"][VERIFICATION]["state"], s["iat"]) for s in sets] == [
        ("first", int(start.timestamp())),
        ("second", int(start.timestamp()) + 10),
    ]


async def test_a_clock_set_back_does_not_silence_verification(served: Served) -> None:
    start = served.clock.at
    assert await served.verify("first") == 204
    served.clock.at = start - timedelta(hours=1)  # the wall clock stepped back
    assert await served.verify("after-the-step") == 204
    assert await served.verify("too-soon") == 429
