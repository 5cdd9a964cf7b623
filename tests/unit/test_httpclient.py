"""Outbound HTTP (ext_authz.httpclient) against a real local server: one deadline for the whole exchange
(a server dripping bytes cannot stretch it), a bounded body, and never a redirect followed (it could lead
from https to plaintext, or carry a bearer secret to another host)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from ext_authz.httpclient import BodyTooLarge, DeadlineExceeded, HttpError, fetch
from ext_authz.serve.http import Request, forward, get
from tests.httpserver import QuietHandler, base_url, serving

SEEN: list[str] = []
STOP = threading.Event()  # set at teardown: a dripping handler stops
DRIP_GAP = 0.05  # between two bytes: far below any timeout used here, so no single read ever times out


class Handler(QuietHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        SEEN.append(f"GET {self.path} auth={self.headers.get('Authorization')}")
        with contextlib.suppress(OSError):  # the client gave up (as it should): nothing more to send
            self._answer()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        SEEN.append(f"POST {self.path} {body.decode()}")
        if self.path == "/moved":
            self.reply(307, b"", {"Location": "/elsewhere"})
            return
        self.reply(202, b"accepted:" + body, {"Content-Type": "text/plain"})

    def _answer(self) -> None:
        if self.path == "/ok":
            self.reply(
                200, b'{"keys": []}', {"Content-Type": "application/json", "Cache-Control": "no-store"}
            )
        elif self.path == "/missing":
            self.reply(404, b"not here\n", {})
        elif self.path in ("/jwks", "/elsewhere-redirect"):
            self.reply(302, b"", {"Location": "/elsewhere"})
        elif self.path == "/absolute-redirect":
            self.reply(301, b"", {"Location": "http://127.0.0.1:1/stolen"})
        elif self.path == "/drip-body":  # headers at once, then the body a byte at a time
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.flush()
            self._drip(b"x" * 100000)
        elif self.path == "/drip-headers":  # the status line, then the headers a byte at a time
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            self.wfile.flush()
            self._drip(b"X-Slow: " + b"y" * 5000 + b"\r\nContent-Length: 0\r\n\r\n")
        elif self.path == "/declared-huge":
            self.send_response(200)
            self.send_header("Content-Length", str(1 << 40))
            self.end_headers()
            self.wfile.write(b"z" * 1024)
        elif self.path == "/endless":  # no length: the body ends when the connection does (never)
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            while not STOP.is_set():
                self.wfile.write(b"z" * 65536)
        elif self.path == "/endless-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            while not STOP.is_set():
                self.wfile.write(b"10000\r\n" + b"z" * 65536 + b"\r\n")
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        else:
            self.reply(500, b"unexpected path\n", {})

    def _drip(self, data: bytes) -> None:
        for i in range(len(data)):
            if STOP.wait(DRIP_GAP):
                return
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def served() -> Iterator[str]:
    STOP.clear()
    with serving(Handler) as srv:
        yield base_url(srv)
        STOP.set()


@pytest.fixture
def server(served: str) -> str:
    SEEN.clear()
    return served


def test_a_plain_answer_is_read(server: str) -> None:
    resp = fetch(f"{server}/ok", timeout=5, max_body=1024)
    assert resp.status == 200
    assert resp.body == b'{"keys": []}'
    assert resp.headers.get("content-type") == "application/json"
    assert resp.headers.get("Cache-Control") == "no-store"


def test_a_post_sends_its_body_and_headers(server: str) -> None:
    resp = fetch(
        f"{server}/events",
        method="POST",
        body=b"a-set",
        headers={"Content-Type": "application/secevent+jwt"},
        timeout=5,
        max_body=1024,
    )
    assert (resp.status, resp.body) == (202, b"accepted:a-set")
    assert SEEN == ["POST /events a-set"]


def test_an_error_status_is_an_answer_with_its_body(server: str) -> None:
    resp = fetch(f"{server}/missing", timeout=5, max_body=1024)
    assert (resp.status, resp.body) == (404, b"not here\n")


def test_a_chunked_body_is_read(server: str) -> None:
    assert fetch(f"{server}/chunked", timeout=5, max_body=1024).body == b"hello world"


def test_a_redirect_is_returned_and_not_followed(server: str) -> None:
    resp = fetch(f"{server}/jwks", headers={"Authorization": "Bearer secret"}, timeout=5, max_body=1024)
    assert resp.status == 302
    assert resp.headers.get("Location") == "/elsewhere"
    assert SEEN == ["GET /jwks auth=Bearer secret"]  # /elsewhere was never asked, the secret never sent on


def test_a_redirect_elsewhere_is_not_followed_either(server: str) -> None:
    assert fetch(f"{server}/absolute-redirect", timeout=5, max_body=1024).status == 301
    assert SEEN == ["GET /absolute-redirect auth=None"]


def test_a_redirected_post_is_not_sent_again(server: str) -> None:
    resp = fetch(f"{server}/moved", method="POST", body=b"secret-set", timeout=5, max_body=1024)
    assert resp.status == 307
    assert SEEN == ["POST /moved secret-set"]


def test_a_body_dripped_a_byte_at_a_time_ends_at_the_deadline(server: str) -> None:
    """Each byte comes well within the timeout, so only an overall deadline ends the exchange (a socket
    timeout alone would wait for all 100000 bytes)."""
    with pytest.raises(DeadlineExceeded, match=r"/drip-body: no complete answer within 0\.5s"):
        fetch(f"{server}/drip-body", timeout=0.5, max_body=1 << 20)


def test_headers_dripped_a_byte_at_a_time_end_at_the_deadline(server: str) -> None:
    with pytest.raises(DeadlineExceeded, match="no complete answer within"):
        fetch(f"{server}/drip-headers", timeout=0.5, max_body=1 << 20)


def test_a_tls_handshake_never_answered_ends_at_the_deadline() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts (the kernel does), never speaks
        port = silent.getsockname()[1]
        with pytest.raises(DeadlineExceeded, match="no complete answer within"):
            fetch(f"https://127.0.0.1:{port}/jwks", timeout=0.5, max_body=1024)


def test_a_declared_length_over_the_limit_is_refused_before_reading(server: str) -> None:
    with pytest.raises(BodyTooLarge, match="larger than 4096 bytes") as err:
        fetch(f"{server}/declared-huge", timeout=5, max_body=4096)
    assert err.value.status == 200


@pytest.mark.parametrize("path", ["/endless", "/endless-chunked"])
def test_an_endless_body_is_refused_past_the_limit(server: str, path: str) -> None:
    with pytest.raises(BodyTooLarge, match="larger than 100000 bytes"):
        fetch(f"{server}{path}", timeout=10, max_body=100_000)


def test_a_body_of_exactly_the_limit_is_read(server: str) -> None:
    assert fetch(f"{server}/ok", timeout=5, max_body=len(b'{"keys": []}')).body == b'{"keys": []}'


def test_nothing_listening_is_an_error_naming_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(HttpError, match=f"127.0.0.1:{port}/x"):
            fetch(f"http://127.0.0.1:{port}/x", timeout=5, max_body=1024)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.org/x", "data:,hello", "/relative"])
def test_only_http_and_https_are_fetched(url: str) -> None:
    with pytest.raises(HttpError, match="only http:// and https://"):
        fetch(url, timeout=5, max_body=1024)


# -- the supervisor's client of its workers (serve/http.py) goes through the same helper ----------------
async def test_forwarding_passes_a_redirect_back_without_following_it(server: str) -> None:
    request = Request("GET", "/jwks", {"authorization": "Bearer secret", "x-other": "dropped"}, b"")
    resp = await forward(server, request)
    assert resp.status == 302 and "Location" not in resp.headers
    assert SEEN == ["GET /jwks auth=Bearer secret"]


async def test_forwarding_passes_the_answer_and_its_headers_back(server: str) -> None:
    resp = await forward(server, Request("GET", "/ok", {}, b""))
    assert (resp.status, resp.body, resp.content_type) == (200, b'{"keys": []}', "application/json")
    assert resp.headers == {"Cache-Control": "no-store"}


async def test_forwarding_to_a_dripping_worker_ends_at_the_deadline(server: str) -> None:
    resp = await forward(server, Request("GET", "/drip-body", {}, b""), timeout=0.5)
    assert resp.status == 503


async def test_forwarding_an_endless_answer_is_refused(server: str) -> None:
    assert (await forward(server, Request("GET", "/endless", {}, b""))).status == 502


async def test_a_scrape_is_bounded_by_its_deadline(server: str) -> None:
    assert await get(f"{server}/ok", 5) == (200, '{"keys": []}')
    assert await get(f"{server}/drip-headers", 0.5) == (0, "")


def test_loopback_is_never_reached_through_a_proxy(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With http_proxy set (common in corporate pods), a worker or a transmitter on this machine is still
    reached directly: a proxy would see its bearer secrets and could answer in its place."""
    seen: list[str] = []

    class Proxy(QuietHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            self.reply(200, b"from the proxy")

    with serving(Proxy) as proxy:
        for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
            monkeypatch.setenv(var, base_url(proxy))
        for var in ("no_proxy", "NO_PROXY"):
            monkeypatch.delenv(var, raising=False)
        resp = fetch(f"{server}/ok", timeout=5, max_body=1024)
        assert resp.status == 200 and resp.body != b"from the proxy" and seen == []
        # a host that is not loopback does go through it (the proxy is honoured there)
        other = fetch("http://example.invalid/x", timeout=5, max_body=1024)
        assert other.body == b"from the proxy" and seen == ["http://example.invalid/x"]
