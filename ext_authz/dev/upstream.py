"""A demo upstream that echoes what reached it (method, path, headers) as JSON."""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

__all__ = ["EchoHandler", "main"]


class EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _echo(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        body = (
            json.dumps(
                {
                    "upstream": "demo",
                    "method": self.command,
                    "path": self.path,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                },
                indent=2,
            ).encode()
            + b"\n"
        )
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _echo

    def log_message(self, format: str, *args: object) -> None:
        pass  # Envoy's access log already records every request


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0: any free port (see --ready-file)")
    parser.add_argument("--ready-file", type=Path, help="once listening, write the port bound here")
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer((args.host, args.port), EchoHandler)
    if args.ready_file is not None:
        tmp = args.ready_file.with_name(f".{args.ready_file.name}.tmp")
        tmp.write_text(f"{server.server_address[1]}\n")
        tmp.replace(args.ready_file)  # whole, or not at all
    server.serve_forever()


if __name__ == "__main__":
    main()
