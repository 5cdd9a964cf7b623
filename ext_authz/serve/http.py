"""One small HTTP/1.1 piece for health and metrics: a GET server (one request per connection, no
framework) and a GET client with an overall deadline."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import Awaitable, Callable

__all__ = ["Handler", "free_port", "get", "serve_get"]

# path -> (status, body, content type)
Handler = Callable[[str], Awaitable[tuple[int, str, str]]]
_REASONS = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}


async def serve_get(handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        async with asyncio.timeout(5):  # the whole request: a slow client cannot hold the connection
            line = await reader.readline()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
        parts = line.decode("latin-1").split()
        code, body, ctype = await handler(parts[1] if len(parts) >= 2 else "")
        data = body.encode()
        head = f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\nContent-Type: {ctype}\r\n"
        writer.write(f"{head}Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
        await writer.drain()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


def _get_blocking(url: str, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - our own loopback addresses
            return r.status, r.read().decode()
    except OSError:
        return 0, ""


async def get(url: str, deadline: float) -> tuple[int, str]:
    """(status, body) of a GET, or (0, "") if it failed or did not finish within ``deadline`` seconds."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(_get_blocking, url, deadline), deadline)
    except TimeoutError:
        return 0, ""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
