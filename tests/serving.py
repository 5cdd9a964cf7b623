"""`ext-authz serve` as a process, on the ports it takes itself: its config may say port 0, and the
addresses it bound come back from `serve --ready-file`, so no other process can take a port between a
test choosing it and the server binding it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from tests.waiting import until_sync

CLI = [sys.executable, "-m", "ext_authz.cli"]


def spawn_serve(
    config: Path, *, stdout: int | IO[Any] | None = None, stderr: int | IO[Any] | None = None, **kw: Any
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """Start `serve --config CONFIG` and wait until it is ready: the process and where it listens
    ({"check", "http", "admin"} as HOST:PORT or unix://PATH). A server that exits while starting fails
    the test with what it printed, when that went to a file or a pipe."""
    ready = config.with_name(f"{config.stem}.ready.json")
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [*CLI, "serve", "--config", str(config), "--ready-file", str(ready)],
        stdout=stdout,
        stderr=stderr,
        **kw,
    )
    try:
        until_sync(lambda: ready.exists() or proc.poll() is not None, f"{config.name} serving")
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    if proc.poll() is not None:
        out = b""
        if stdout == subprocess.PIPE or stderr == subprocess.PIPE:
            out = b"".join(x or b"" for x in proc.communicate())
        elif hasattr(stdout, "name"):
            out = Path(stdout.name).read_bytes()  # type: ignore[union-attr]
        raise AssertionError(f"serve exited with {proc.returncode} while starting:\n{out.decode()[-2000:]}")
    reported = json.loads(ready.read_text())
    assert reported["pid"] == proc.pid
    return proc, {k: v for k, v in reported.items() if k != "pid"}
