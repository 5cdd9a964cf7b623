"""End to end: an identity provider's Security Event Token, pushed to ext-authz, makes the very next
request through the real Envoy with that user's token fail — containment without anyone at a keyboard."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ext_authz.dev.stack import Ports, Stack
from tests.component.test_ssf import alice_token
from tests.conftest import REPO
from tests.e2e.test_envoy import request
from tests.ssfkit import CAEP, jwks_file, mint_set, new_key
from tests.waiting import until_sync

pytestmark = pytest.mark.e2e

TRANSMITTER = "https://ssf.idp.example.com"
KEY = new_key()


@pytest.fixture(scope="module")
def stack(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run = tmp_path_factory.mktemp("ssf-run")
    (run / "push-secret").write_text("e2e-secret-0123456789abc")
    shared = {
        "receivers": [
            {
                "issuer": TRANSMITTER,
                "jwks": str(jwks_file(run / "ssf-jwks.json", KEY)),
                "audience": "https://authz.example.com",
                "for_issuers": ["https://idp.example.com"],
                "authorization_file": str(run / "push-secret"),
            }
        ]
    }
    with Stack(demo_dir, REPO / "envoy.yaml", run, Ports.free(), overrides={"shared_signals": shared}) as s:
        yield s


def push(stack: Stack, token: str) -> int:
    req = urllib.request.Request(
        f"http://127.0.0.1:{stack.ports.ext_authz_http}/ssf/events",
        data=token.encode(),
        headers={
            "Content-Type": "application/secevent+jwt",
            "Authorization": "Bearer e2e-secret-0123456789abc",
        },
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
        return int(resp.status)


def test_a_pushed_session_revoked_event_refuses_the_next_proxied_request(stack: Stack) -> None:
    token = alice_token(stack.demo_dir, iat=int(time.time()) - 30)
    assert request(stack, "/user/profile", listener="edge", workload=None, token=token).status == 200
    event = mint_set(
        KEY,
        {
            "iss": TRANSMITTER,
            "aud": "https://authz.example.com",
            "iat": int(time.time()),
            "jti": "e2e-1",
            "sub_id": {"format": "iss_sub", "iss": "https://idp.example.com", "sub": "alice"},
            "events": {CAEP + "session-revoked": {"event_timestamp": int(time.time())}},
        },
    )
    assert push(stack, event) == 202
    r = request(stack, "/user/profile", listener="edge", workload=None, token=token)
    assert r.status == 403 and r.headers["x-ext-authz-reason"] == "revoked"

    def logged() -> bool:  # the decision log is written off the Check path
        lines = stack.log_path("decisions").read_text().splitlines()
        records = [json.loads(line) for line in lines if line.startswith('{"')]
        return any((rec.get("revocation") or {}).get("kind") == "sub" for rec in records)

    until_sync(logged, "the refused request in the decision log, naming the revocation")
