"""Small real HTTP servers for tests: started on a loopback port in a thread, stopped at the end."""

from __future__ import annotations

import contextlib
import ssl
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["QuietHandler", "base_url", "serving", "start", "stop"]


class QuietHandler(BaseHTTPRequestHandler):
    """Logs nothing, and answers in one call."""

    def reply(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def start(
    handler: type[BaseHTTPRequestHandler],
    *,
    port: int = 0,
    tls: ssl.SSLContext | None = None,
    poll_interval: float = 0.5,
) -> ThreadingHTTPServer:
    """Serve ``handler`` on 127.0.0.1 (a free port unless ``port``), over TLS if ``tls`` is given."""
    srv = ThreadingHTTPServer(("127.0.0.1", port), handler)
    srv.daemon_threads = True
    if tls is not None:
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True).start()
    return srv


def stop(srv: ThreadingHTTPServer) -> None:
    """Stop serving and close the socket (again harmless: a test may have stopped it already)."""
    srv.shutdown()
    srv.server_close()


@contextlib.contextmanager
def serving(
    handler: type[BaseHTTPRequestHandler],
    *,
    port: int = 0,
    tls: ssl.SSLContext | None = None,
    poll_interval: float = 0.5,
) -> Iterator[ThreadingHTTPServer]:
    srv = start(handler, port=port, tls=tls, poll_interval=poll_interval)
    try:
        yield srv
    finally:
        stop(srv)


def base_url(srv: ThreadingHTTPServer, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{srv.server_address[1]}"
