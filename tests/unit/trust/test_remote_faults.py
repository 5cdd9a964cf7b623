"""A remote key set that answers with anything at all — JSON nested past the recursion limit, a key on
a curve nobody knows — is a failed refresh: counted, logged, the last keys kept. It never stops the
server from starting, nor the refresh loop that keeps every other key set fresh."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from ext_authz.dev import pki
from ext_authz.errors import TrustError
from ext_authz.trust.bundles import parse_jwks
from ext_authz.trust.remote import RemoteJwks, TransmitterKeys, refresh_jwks
from tests.httpserver import QuietHandler, base_url, serving
from tests.waiting import until

GOOD = json.dumps({"keys": [pki.jwk_public(pki.new_jwt_key(), use="sig")]}).encode()
HOSTILE = {
    "/nested": b"[" * 100_000,
    "/curve": json.dumps({"keys": [{"kty": "EC", "crv": "P-999", "x": "AA", "y": "AA"}]}).encode(),
    "/good": GOOD,
}


@pytest.fixture
def server() -> Iterator[str]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:
            self.reply(200, HOSTILE[self.path])

    with serving(Handler) as srv:
        yield base_url(srv)


def remote(url: str) -> RemoteJwks:
    return RemoteJwks(url, ca=None, refresh=60, max_stale=3600, loopback_http=True)


@pytest.mark.parametrize("path", ["/nested", "/curve"])
async def test_a_hostile_document_is_a_failed_refresh(server: str, path: str) -> None:
    jwks = remote(server + path)
    assert await refresh_jwks(jwks, "test keys") is None
    assert jwks.failures == 1 and jwks.keys is None and jwks.last_error


@pytest.mark.parametrize("path", ["/nested", "/curve"])
def test_the_same_document_in_a_file_is_a_trust_error(path: str) -> None:
    with pytest.raises(TrustError):
        parse_jwks(HOSTILE[path], "bundle.json", require_use=None)


async def test_one_hostile_transmitter_neither_stops_start_nor_the_others(server: str) -> None:
    changes: list[int] = []
    source = TransmitterKeys(lambda: changes.append(1))
    source.issuers = {"https://evil": remote(server + "/nested"), "https://good": remote(server + "/good")}
    await source.start()  # does not raise
    try:
        assert source.issuers["https://good"].keys is not None and changes
        evil = source.issuers["https://evil"]
        evil.last_attempt = 0.0  # due again: the loop retries it, and lives on
        await until(lambda: evil.failures >= 2, "the loop retried the hostile key set")
        assert source._task is not None and not source._task.done()
    finally:
        await source.stop()
