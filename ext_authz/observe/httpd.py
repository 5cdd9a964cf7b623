"""A minimal HTTP/1.1 GET endpoint for health and metrics: one request per connection, no framework."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

__all__ = ["Handler", "serve_get"]

# path -> (status, body, content type)
Handler = Callable[[str], Awaitable[tuple[int, str, str]]]
_REASONS = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}


async def serve_get(handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        line = await asyncio.wait_for(reader.readline(), 5)
        while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
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
