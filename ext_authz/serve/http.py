"""One small HTTP/1.1 piece for health, metrics and the SSF endpoints: a server (one request per
connection, no framework; bounded request line, headers and body) and a client with an overall deadline."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from ..httpclient import BodyTooLarge, HttpError, fetch

__all__ = [
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


async def _line(reader: asyncio.StreamReader) -> bytes | None:
    """One line, or None when it is longer than the reader allows (never an exception)."""
    try:
        return await reader.readline()
    except ValueError:  # asyncio.LimitOverrunError: longer than the stream's buffer limit
        return None


async def _read_request(reader: asyncio.StreamReader) -> Request | Response:
    line = await _line(reader)
    if line is None or len(line) > MAX_LINE:
        return Response(400, "request line too long\n")
    parts = line.decode("latin-1").split()
    if len(parts) < 2:
        return Response(400, "bad request\n")
    headers: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        raw = await _line(reader)
        if raw in (b"\r\n", b"\n", b""):
            break
        if raw is None or len(raw) > MAX_LINE:
            return Response(400, "header too long\n")
        name, sep, value = raw.decode("latin-1").partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), value.strip())
    else:
        return Response(400, "too many headers\n")
    body = b""
    if "transfer-encoding" in headers:
        return Response(400, "chunked bodies are not accepted: send Content-Length\n")
    length = headers.get("content-length", "0")
    if not _DIGITS.fullmatch(length):  # ASCII digits only: str.isdigit() takes '²'
        return Response(400, "bad Content-Length\n")
    size = int(length)
    if size > MAX_BODY:
        return Response(413, "body too large\n")
    if size:
        body = await reader.readexactly(size)
    return Request(parts[0].upper(), parts[1], headers, body)


_DIGITS = re.compile(r"[0-9]{1,12}")
MAX_CONNECTIONS = 256  # served at once; more are closed unanswered (Check shares this process's files)
_open = 0


async def serve_http(
    handler: RequestHandler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    global _open
    if _open >= MAX_CONNECTIONS:
        writer.close()
        return
    _open += 1
    try:
        async with asyncio.timeout(5):  # the whole request: a slow client cannot hold the connection
            request = await _read_request(reader)
        if isinstance(request, Response):
            response = request
        else:
            try:
                response = await handler(request)
            except Exception:  # a handler's fault is a 500, logged by type; never a bare close
                log.exception("HTTP %s %s failed", request.method, request.path[:200])
                response = Response(500, "internal error\n")
        data = response.body.encode() if isinstance(response.body, str) else response.body
        head = f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Error')}\r\n"
        if response.status != 204:
            head += f"Content-Type: {response.content_type}\r\n"
        for name, value in response.headers.items():
            head += f"{name}: {value}\r\n"
        writer.write(f"{head}Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        await writer.drain()
    except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        _open -= 1
        writer.close()


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
