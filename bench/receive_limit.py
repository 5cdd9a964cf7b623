"""What a server holds for a request over its receive limit: grpcio against pygrpc-native.

`make bench-receive-limit` (or `python bench/receive_limit.py [MiB] [at once]`). Each transport serves
Check (bench/floor_server.py's allow-all) with `grpc.max_receive_message_length` at 1 MiB, the way
ext-authz's `check_server` sets a limit; a client sends requests of MiB mebibytes (default 256),
several at once (default 4), and the server's peak RSS (VmHWM) is read before and after. grpcio
refuses on the gRPC length prefix; pygrpc-native 0.5 reads the whole message before its Python side
compares it with the limit, which is why `transport: auto` keeps native to unix sockets (docs/threat-model.md
and docs/performance.md). The day pygrpc-native refuses on the prefix too, its growth here drops
to a few MiB, and auto can take native on TCP. Results go to bench/results/receive_limit.{json,md}.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ext_authz.serve.http import free_port  # noqa: E402

CHECK = "/envoy.service.auth.v3.Authorization/Check"
LIMIT = 1 << 20


def peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


async def send(port: int, size: int, count: int) -> list[str]:
    payload = b"\x00" * size
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(CHECK, request_serializer=None, response_deserializer=None)

        async def one() -> str:
            try:
                await call(payload, timeout=120)
            except grpc.aio.AioRpcError as exc:
                return exc.code().name
            return "OK"

        return list(await asyncio.gather(*(one() for _ in range(count))))


def measure(transport: str, mib: int, count: int) -> dict[str, object]:
    port = free_port()
    # The allow-all floor of `make bench-envoy`, with the receive limit ext-authz's check_server sets.
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "bench/floor_server.py"), str(port), transport, str(LIMIT)]
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        before = peak_mib(server.pid)
        started = time.perf_counter()
        codes = asyncio.run(send(port, mib << 20, count))
        after = peak_mib(server.pid)
        return {
            "transport": transport,
            "peak_before_mib": round(before, 1),
            "peak_after_mib": round(after, 1),
            "grew_mib": round(after - before, 1),
            "answers": sorted(set(codes)),
            "seconds": round(time.perf_counter() - started, 2),
        }
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    rows = [measure(t, mib, count) for t in ("grpcio", "native")]
    out = {"request_mib": mib, "at_once": count, "limit_mib": LIMIT >> 20, "results": rows}
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "receive_limit.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        f"{count} requests of {mib} MiB at once, receive limit {LIMIT >> 20} MiB;"
        f" {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        "",
        "| transport | peak RSS before MiB | after MiB | grew MiB | answers | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['transport']} | {r['peak_before_mib']} | {r['peak_after_mib']} | {r['grew_mib']} |"
            f" {', '.join(r['answers'])} | {r['seconds']} |"  # type: ignore[arg-type]
        )
    (res / "receive_limit.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
