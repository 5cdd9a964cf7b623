"""Outbound HTTP never follows a redirect: it could lead from https to plaintext, or carry a bearer
secret to another host."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ext_authz.httpclient import open_url

SEEN: list[str] = []


class Redirecting(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        SEEN.append(f"{self.path} auth={self.headers.get('Authorization')}")
        if self.path == "/jwks":
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.end_headers()
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Redirecting)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_a_redirect_is_an_error_and_is_not_followed(server: str) -> None:
    SEEN.clear()
    req = urllib.request.Request(f"{server}/jwks", headers={"Authorization": "Bearer secret"})  # noqa: S310
    with pytest.raises(urllib.error.HTTPError) as err:
        open_url(req, 5)
    err.value.close()
    assert err.value.code == 302
    assert SEEN == ["/jwks auth=Bearer secret"]  # /elsewhere was never asked, the secret never sent on


def test_a_plain_answer_is_read(server: str) -> None:
    with open_url(urllib.request.Request(f"{server}/ok"), 5) as resp:  # noqa: S310
        assert resp.status == 200 and resp.read() == b"{}"
