"""A stranger holding hundreds of slow connections to http_listen cannot starve its probes or a signed
push (issue 29): `ext-authz serve` as a process, and from loopback 300 (then 2,000) clients that send one
byte of a request a second and connect again as soon as they are dropped or every 6 s. Meanwhile
`/healthz`, `/readyz` and a signed SSF push must each be answered within 1 s, every time. The flood
runs in its own process (tests/slowloris.py), so what is timed is the server, not this test's loop."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ext_authz.serve.http import MAX_CONNECTIONS
from tests.component.test_server import write_config
from tests.conftest import REPO
from tests.serving import spawn_serve
from tests.ssfkit import CAEP, jwks_file, mint_set, new_key

TX = "https://ssf.idp.example.com"
US = "https://authz.example.com"
SECRET = "s3cret-push-token-0123456789"
DEADLINE = 1.0


async def _exchange(host: str, port: int, request: bytes) -> int:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readline()
        assert head, "the connection was closed unanswered"
        return int(head.split()[1])
    finally:
        writer.close()


@pytest.mark.parametrize("clients", [300, 2000])
async def test_slow_strangers_cannot_starve_probes_or_a_signed_push(
    clients: int, demo_dir: Path, tmp_path: Path
) -> None:
    key = new_key()
    (tmp_path / "push-secret").write_text(SECRET + "\n")
    shared = {
        "receivers": [
            {
                "issuer": TX,
                "jwks": str(jwks_file(tmp_path / "ssf-jwks.json", key)),
                "audience": US,
                "for_issuers": ["https://idp.example.com"],
                "authorization_file": str(tmp_path / "push-secret"),
            }
        ]
    }
    config = write_config(demo_dir, tmp_path / "authz", shared_signals=shared)
    proc, addresses = spawn_serve(config, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    host, _, port_text = addresses["http"].rpartition(":")
    port = int(port_text)
    flood = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.slowloris",
        host,
        str(port),
        str(clients),
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        # The flood is on (in its own process): more connections are held than the server keeps.
        assert flood.stdout is not None
        held = 0
        started = time.monotonic()
        while held < MAX_CONNECTIONS and time.monotonic() - started < 30:
            held = int(await asyncio.wait_for(flood.stdout.readline(), 5))
        assert held >= MAX_CONNECTIONS, f"only {held} slow connections were ever held"
        timings: dict[str, list[float]] = {"healthz": [], "readyz": [], "push": []}
        for round_ in range(8):
            push = mint_set(
                key,
                {
                    "iss": TX,
                    "aud": US,
                    "iat": int(time.time()),
                    "jti": f"starve-{clients}-{round_}",
                    "sub_id": {"format": "iss_sub", "iss": "https://idp.example.com", "sub": f"u{round_}"},
                    "events": {CAEP + "session-revoked": {}},
                },
            ).encode()
            requests = {
                "healthz": b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                "readyz": b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                "push": b"POST /ssf/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Content-Type: application/secevent+jwt\r\nAuthorization: Bearer "
                + SECRET.encode()
                + b"\r\n"
                b"Content-Length: " + str(len(push)).encode() + b"\r\n\r\n" + push,
            }
            for name, request in requests.items():
                t0 = time.monotonic()
                status = await asyncio.wait_for(_exchange(host, port, request), DEADLINE)
                timings[name].append(time.monotonic() - t0)
                assert status == (202 if name == "push" else 200), (name, status)
            await asyncio.sleep(0.25)
        assert flood.returncode is None, "the flood stopped before the probes were done"
        print({k: f"max {max(v) * 1000:.0f} ms" for k, v in timings.items()})
    finally:
        if flood.returncode is None:
            flood.kill()
        await flood.wait()
        proc.terminate()
        proc.wait(timeout=30)
