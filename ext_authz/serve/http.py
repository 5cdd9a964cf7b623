"""One small HTTP/1.1 piece for health, metrics and the SSF endpoints: a server (keep-alive, no
framework; bounded request line, headers and body; connections that prove nothing make room for those
that do, see Connections) and a client with an overall deadline."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..httpclient import BodyTooLarge, HttpError, fetch
from ..model import path_without_query
from ..observe.decision_log import redact_path

__all__ = [
    "CONNECTIONS",
    "HTTP_BACKLOG",
    "Connections",
    "Handler",
    "Request",
    "RequestHandler",
    "Response",
    "bound_address",
    "forward",
    "free_port",
    "get",
    "serve_get",
    "serve_http",
    "with_port",
]

# path -> (status, body, content type)
Handler = Callable[[str], Awaitable[tuple[int, str, str]]]
_REASONS = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    429: "Too Many Requests",
    502: "Bad Gateway",
    503: "Service Unavailable",
}
log = logging.getLogger("ext_authz.http")
MAX_LINE = 8192
MAX_HEADERS = 64
MAX_BODY = 256 * 1024
MAX_ANSWER = 16 * 1024 * 1024  # a worker's answer passed on (metrics; a poll of many SETs)


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    target: str  # path and query, as sent
    headers: dict[str, str]  # lower-case names; a repeated header keeps its first value
    body: bytes

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.target.partition("?")[2]))


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: str | bytes = ""
    content_type: str = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)


RequestHandler = Callable[[Request], Awaitable[Response]]


async def _line(reader: _Prefixed) -> bytes | None:
    """One line, or None when it is longer than the reader allows (never an exception)."""
    try:
        return await reader.readline()
    except ValueError:  # asyncio.LimitOverrunError: longer than the stream's buffer limit
        return None


async def _read_request(reader: _Prefixed) -> tuple[Request | Response, str]:
    """The request (or the error answer to it) and its HTTP version."""
    return await _read_one(reader)


async def _read_one(reader: _Prefixed) -> tuple[Request | Response, str]:
    line = await _line(reader)
    if line is None or len(line) > MAX_LINE:
        return Response(400, "request line too long\n"), ""
    parts = line.decode("latin-1").split()
    if len(parts) < 2:
        return Response(400, "bad request\n"), ""
    version = parts[2].upper() if len(parts) > 2 else "HTTP/1.0"
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        raw = await _line(reader)
        if raw in (b"\r\n", b"\n", b""):
            break
        if raw is None or len(raw) > MAX_LINE:
            return Response(400, "header too long\n"), version
        name, sep, value = raw.decode("latin-1").partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), value.strip())
    else:
        return Response(400, "too many headers\n"), version
    body = b""
    if "transfer-encoding" in headers:
        return Response(400, "chunked bodies are not accepted: send Content-Length\n"), version
    length = headers.get("content-length", "0")
    if not _DIGITS.fullmatch(length):  # ASCII digits only: str.isdigit() takes '²'
        return Response(400, "bad Content-Length\n"), version
    size = int(length)
    if size > MAX_BODY:
        return Response(413, "body too large\n"), version
    if size:
        body = await reader.readexactly(size)
    return Request(parts[0].upper(), parts[1], headers, body), version


_DIGITS = re.compile(r"[0-9]{1,12}")
MAX_CONNECTIONS = 256  # held at once (Check shares this process's files)
HTTP_BACKLOG = 4096  # connections the kernel queues for accept: a flood must not make a probe's SYN wait
REQUEST_DEADLINE = 5.0  # a request's head and body, from its first byte's wait: no trickle resets it
IDLE_TIMEOUT = 5.0  # a kept-alive connection waiting for its next request
MAX_REQUESTS = 100  # on one connection


@dataclass(eq=False)
class _Connection:
    writer: asyncio.StreamWriter
    answering: bool = False  # a whole request was read and is being answered: not to be dropped

    def drop(self) -> None:
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()


class Connections:
    """The connections a process's HTTP listeners hold, at most ``limit``.

    A connection that has not given a whole request proves nothing: under pressure it makes room. When
    the limit is reached, a new connection takes the place of the oldest one that is reading a request or
    idle between requests (never one being answered). A stranger holding hundreds of connections that
    trickle a byte a second therefore cannot keep a probe, a scrape or a signed push out: each of those
    sends its request at once, is answered within milliseconds, and only a flood of new connections
    faster than that could push it out first. Each request must arrive whole within REQUEST_DEADLINE of
    its wait starting (a byte at a time does not extend it), and an idle connection is closed after
    IDLE_TIMEOUT."""

    def __init__(self, limit: int = MAX_CONNECTIONS) -> None:
        self.limit = limit
        self._held: dict[_Connection, None] = {}  # insertion order: oldest first
        self.evicted = 0

    def admit(self, writer: asyncio.StreamWriter) -> _Connection | None:
        if len(self._held) >= self.limit:
            victim = next((c for c in self._held if not c.answering), None)
            if victim is None:  # every one is being answered: the newcomer waits its turn elsewhere
                return None
            self.release(victim)
            victim.drop()
            self.evicted += 1
        conn = _Connection(writer)
        self._held[conn] = None
        return conn

    def release(self, conn: _Connection) -> None:
        self._held.pop(conn, None)

    def __len__(self) -> int:
        return len(self._held)


CONNECTIONS = Connections()


def _keep_alive(request: Request, line_version: str) -> bool:
    connection = request.headers.get("connection", "").lower()
    if line_version == "HTTP/1.0":
        return "keep-alive" in connection
    return "close" not in connection


async def serve_http(
    handler: RequestHandler,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    connections: Connections | None = None,
) -> None:
    """Serve one connection: requests one after another (HTTP/1.1 keep-alive), each read within its
    deadline, under the process's connection limit (see Connections)."""
    pool = connections if connections is not None else CONNECTIONS
    conn = pool.admit(writer)
    if conn is None:
        writer.transport.abort()
        return
    try:
        loop = asyncio.get_running_loop()
        for served in range(MAX_REQUESTS):
            conn.answering = False
            # The first request must arrive whole within REQUEST_DEADLINE of the connection; a later one
            # within IDLE_TIMEOUT of the last answer for its first byte, then REQUEST_DEADLINE.
            deadline = loop.time() + (IDLE_TIMEOUT if served else REQUEST_DEADLINE)
            async with asyncio.timeout_at(deadline):
                first = await reader.read(1)  # the next request's first byte (b"": the client is done)
            if not first:
                return
            if served:
                deadline = loop.time() + REQUEST_DEADLINE
            async with asyncio.timeout_at(deadline):
                request, version = await _read_request(_Prefixed(first, reader))
            conn.answering = True
            keep = (
                isinstance(request, Request) and _keep_alive(request, version) and served + 1 < MAX_REQUESTS
            )
            if isinstance(request, Response):
                response = request
            else:
                try:
                    response = await handler(request)
                except Exception:  # a handler's fault is a 500, logged by type; never a bare close
                    log.exception(
                        "HTTP %s %s failed",
                        request.method,
                        redact_path(path_without_query(request.path))[:200],
                    )
                    response = Response(500, "internal error\n")
            data = response.body.encode() if isinstance(response.body, str) else response.body
            head = f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Error')}\r\n"
            if response.status != 204:
                head += f"Content-Type: {response.content_type}\r\n"
            for name, value in response.headers.items():
                head += f"{name}: {value}\r\n"
            head += f"Content-Length: {len(data)}\r\nConnection: {'keep-alive' if keep else 'close'}\r\n\r\n"
            writer.write(head.encode() + data)
            await writer.drain()
            if not keep:
                return
    except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        pool.release(conn)
        writer.close()


class _Prefixed:
    """A reader that yields ``first`` before what ``reader`` has (the byte that ended an idle wait)."""

    def __init__(self, first: bytes, reader: asyncio.StreamReader) -> None:
        self._first = first
        self._reader = reader

    async def readline(self) -> bytes:
        if self._first:
            first, self._first = self._first, b""
            if first == b"\n":
                return first
            return first + await self._reader.readline()
        return await self._reader.readline()

    async def readexactly(self, n: int) -> bytes:
        return await self._reader.readexactly(n)


async def serve_get(handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A GET-only server over ``handler(target)``."""

    async def handle(request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, "method not allowed\n", headers={"Allow": "GET"})
        code, body, ctype = await handler(request.target)
        return Response(code, body, ctype)

    await serve_http(handle, reader, writer)


def _get_blocking(url: str, timeout: float) -> tuple[int, str]:
    try:
        resp = fetch(url, timeout=timeout, max_body=MAX_ANSWER)  # our own worker on loopback
    except HttpError:
        return 0, ""
    return resp.status, resp.body.decode(errors="replace")


async def get(url: str, deadline: float) -> tuple[int, str]:
    """(status, body) of a GET, or (0, "") if it failed or did not finish within ``deadline`` seconds."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(_get_blocking, url, deadline), deadline)
    except TimeoutError:  # waiting for a thread counts too; the exchange itself ends by its deadline
        return 0, ""


_FORWARDED = ("content-type", "accept", "authorization", "content-language", "accept-language")
_ANSWERED = ("content-language", "cache-control", "www-authenticate")


def _forward_blocking(base: str, request: Request, timeout: float) -> Response:
    headers = {k: v for k, v in request.headers.items() if k in _FORWARDED}
    try:
        resp = fetch(  # our own worker on loopback; a redirect would be passed back, not followed
            base + request.target,
            method=request.method,
            body=request.body or None,
            headers=headers,
            timeout=timeout,
            max_body=MAX_ANSWER,
        )
    except BodyTooLarge:
        return Response(502, "the worker's answer is too large to pass on\n")
    except HttpError:
        return Response(503, "the worker serving this endpoint is not reachable\n")
    extra = {k: v for k, v in resp.headers.items() if k.lower() in _ANSWERED}
    return Response(resp.status, resp.body, resp.headers.get("Content-Type", "text/plain"), extra)


async def forward(base: str, request: Request, timeout: float = 10.0) -> Response:
    """Pass ``request`` on to ``base`` (a worker's http_listen) and its answer back."""
    return await asyncio.to_thread(_forward_blocking, base, request, timeout)


def with_port(address: str, port: int) -> str:
    """``HOST:PORT`` with the port a server was actually bound to (what port 0 became)."""
    host = address.rpartition(":")[0]
    return f"{host}:{port}"


def bound_address(server: asyncio.Server) -> str:
    """Where an asyncio server listens, as ``HOST:PORT`` (``[::1]:PORT`` for IPv6)."""
    host, port = server.sockets[0].getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
