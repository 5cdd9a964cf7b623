"""Outbound HTTP for the edges that fetch (remote JWKS, SSF transmitters and receivers, the supervisor's
forwarding to a worker): one exchange, bounded as a whole, whatever the peer does.

- **One deadline for the whole exchange.** A socket timeout bounds each read, not their sum: a server
  dripping a byte every 0.6 s would stretch a 1 s timeout without end. Here every step — connecting (each
  address tried in the time left), the proxy's CONNECT, the TLS handshake, sending, the status line and
  headers, each read of the body — waits at most the time left, and past it the exchange ends with
  ``DeadlineExceeded``.
- **A bounded body.** A ``Content-Length`` over ``max_body`` is refused before anything is read, and
  reading stops (``BodyTooLarge``) at the first byte past it, chunked or not.
- **Redirects are never followed.** A redirect could lead from https to plaintext, or carry a bearer
  secret to another host: a 3xx is returned as a status like any other, and nothing asks its Location.
- **Every status is an answer.** A 404 or a 503 comes back as an ``HttpResponse``; ``HttpError`` (naming
  the URL) is every failure to get one.

Proxies from the environment (``https_proxy``, ``no_proxy``…) are honoured as urllib does, except for
loopback (``127.0.0.1``, ``::1``, ``localhost``): a worker, or a transmitter beside us, is reached
directly, never through a proxy that would see its secrets and could answer for it. Name
resolution is the one step not bounded here (``getaddrinfo`` takes no timeout; the resolver's own
timeouts bound it).
"""

from __future__ import annotations

import http.client
import io
import math
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import Error

__all__ = ["BodyTooLarge", "DeadlineExceeded", "HttpError", "HttpResponse", "fetch", "is_loopback_url"]

CHUNK = 64 * 1024


class HttpError(Error):
    """No answer: unreachable, refused, a TLS failure, a malformed response, too slow, too large. The
    message names the URL."""


class DeadlineExceeded(HttpError):
    """The exchange did not finish within its deadline."""


class BodyTooLarge(HttpError):
    """The body is larger than allowed. ``status`` is the status the server answered with."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: http.client.HTTPMessage  # case-insensitive ``get``; ``items()`` as sent
    body: bytes


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineExceeded("the deadline passed")
    return left


class _DeadlineReader(io.RawIOBase):
    """A socket's reader whose every read waits at most until the deadline."""

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._raw, self._sock, self._deadline = raw, sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(_remaining(self._deadline))
        try:
            return self._raw.readinto(buffer)
        except TimeoutError as exc:
            raise DeadlineExceeded("the deadline passed while reading") from exc

    def close(self) -> None:
        self._raw.close()  # the socket closes once its connection has let go of it too
        super().close()


def _response_class(deadline: float) -> type[http.client.HTTPResponse]:
    class _Response(http.client.HTTPResponse):
        def __init__(
            self, sock: socket.socket, debuglevel: int = 0, method: str | None = None, url: str | None = None
        ) -> None:
            super().__init__(sock, debuglevel, method, url)
            # The same socket reader (and its reference to the socket), every read under the deadline.
            raw = self.fp.detach()
            assert isinstance(raw, io.RawIOBase)
            self.fp = io.BufferedReader(_DeadlineReader(raw, sock, deadline))

    return _Response


def _connect(
    address: tuple[str, int], timeout: object = None, source: Any = None, *, deadline: float
) -> socket.socket:
    """``socket.create_connection`` where all the addresses together get the time left, not each."""
    host, port = address
    last: OSError | None = None
    for family, kind, proto, _, sockaddr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        left = _remaining(deadline)
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(left)
            if source:
                sock.bind(source)
            sock.connect(sockaddr)
            sock.settimeout(_remaining(deadline))  # what is left for TLS (its handshake has one timeout)
        except OSError as exc:  # refused, unreachable, or out of time: the next address, if any time is left
            sock.close()
            last = exc
            continue
        except DeadlineExceeded:
            sock.close()
            raise
        return sock
    if isinstance(last, TimeoutError):
        raise DeadlineExceeded(f"connecting to {host}:{port}: the deadline passed") from last
    raise last or OSError(f"{host}: no address")


class _DeadlineConnection(http.client.HTTPConnection):
    def __init__(self, host: str, *, deadline: float = math.inf, **kwargs: Any) -> None:
        super().__init__(host, **kwargs)
        self.deadline = deadline
        self.response_class = _response_class(deadline)
        self._create_connection = self._connect_address

    def _connect_address(self, address: tuple[str, int], timeout: object, source: Any) -> socket.socket:
        return _connect(address, timeout, source, deadline=self.deadline)

    def send(self, data: Any) -> None:
        if self.sock is not None:  # sendall: the timeout bounds the whole send
            self.sock.settimeout(_remaining(self.deadline))
        super().send(data)


class _DeadlineHTTPSConnection(_DeadlineConnection, http.client.HTTPSConnection):
    """TCP (and a proxy's CONNECT) under the deadline, then the TLS handshake within what is left."""


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_DeadlineConnection, req, deadline=self.deadline)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: float, context: ssl.SSLContext | None) -> None:
        super().__init__()
        self.deadline, self.ssl_context = deadline, context

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_DeadlineHTTPSConnection, req, deadline=self.deadline, context=self.ssl_context)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Never asked (every status is passed through), and refusing if it were."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


class _EveryStatus(urllib.request.HTTPErrorProcessor):
    """Every status is returned, none raised, none handled (so no redirect is ever followed)."""

    def http_response(
        self, request: urllib.request.Request, response: http.client.HTTPResponse
    ) -> http.client.HTTPResponse:
        return response

    https_response = http_response


def _read_body(resp: http.client.HTTPResponse, url: str, deadline: float, max_body: int) -> bytes:
    status = resp.status
    length = resp.headers.get("Content-Length", "").strip()
    if length.isascii() and length.isdigit() and int(length) > max_body:
        raise BodyTooLarge(f"{url}: the body ({length} bytes) is larger than {max_body} bytes", status)
    chunks: list[bytes] = []
    size = 0
    while True:
        _remaining(deadline)
        chunk = resp.read(min(CHUNK, max_body + 1 - size))
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_body:
            raise BodyTooLarge(f"{url}: the body is larger than {max_body} bytes", status)
        chunks.append(chunk)


def is_loopback_url(url: str) -> bool:
    """Is ``url``'s host this machine (where plain http cannot be intercepted on the way)?"""
    return (urllib.parse.urlsplit(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


def fetch(
    url: str,
    *,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float,
    max_body: int,
    context: ssl.SSLContext | None = None,
) -> HttpResponse:
    """One HTTP(S) exchange, finished within ``timeout`` seconds overall, its body at most ``max_body``
    bytes; a redirect is returned, not followed. Raises ``HttpError`` (``DeadlineExceeded``,
    ``BodyTooLarge``) when there is no such answer."""
    deadline = time.monotonic() + timeout
    if not url.startswith(("https://", "http://")):
        raise HttpError(f"{url[:200]}: only http:// and https:// URLs are fetched")
    try:
        req = urllib.request.Request(url, data=body, headers=dict(headers or {}), method=method)  # noqa: S310
        handlers: list[urllib.request.BaseHandler] = [
            _NoRedirects(),
            _EveryStatus(),
            _HTTPHandler(deadline),
            _HTTPSHandler(deadline, context),
        ]
        if is_loopback_url(url):  # never through a proxy: plain http on this machine is only safe unproxied
            handlers.append(urllib.request.ProxyHandler({}))
        opener = urllib.request.build_opener(*handlers)
        with opener.open(req, timeout=timeout) as resp:
            assert isinstance(resp, http.client.HTTPResponse)
            return HttpResponse(resp.status, resp.headers, _read_body(resp, url, deadline, max_body))
    except BodyTooLarge:
        raise
    except DeadlineExceeded as exc:
        raise DeadlineExceeded(f"{url}: no complete answer within {timeout:g}s") from exc
    except urllib.error.URLError as exc:  # every socket timeout is the time left: one is the deadline
        if isinstance(exc.reason, (DeadlineExceeded, TimeoutError)):
            raise DeadlineExceeded(f"{url}: no complete answer within {timeout:g}s") from exc
        raise HttpError(f"{url}: {exc.reason}") from exc
    except TimeoutError as exc:
        raise DeadlineExceeded(f"{url}: no complete answer within {timeout:g}s") from exc
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise HttpError(f"{url}: {type(exc).__name__}: {str(exc)[:200]}") from exc
