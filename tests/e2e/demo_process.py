"""Running `ext-authz dev up` (what `make run` runs) as a process, on free ports, and reading what it
prints: the test waits for the printed walkthrough itself, which appears only once the stack is up."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import REPO

__all__ = ["demo_up"]

LAST = "/ext-authz report "  # the walkthrough's last command: everything is printed once it is


@contextmanager
def demo_up(demo: Path, *extra: str) -> Iterator[str]:
    env = {**os.environ, "EXT_AUTHZ_DEMO_PORTS": "free"}
    cmd = [
        sys.executable,
        "-m",
        "ext_authz.cli",
        "dev",
        "up",
        str(demo),
        "--envoy-config",
        "envoy.yaml",
        *extra,
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 180  # bounds a hang; readiness is the printed text itself
    try:
        while LAST.encode() not in out or not out.endswith(b"\n"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the demo did not come up:\n" + out.decode(errors="replace"))
            if sel.select(timeout=1):
                out += os.read(proc.stdout.fileno(), 65536)
        yield out.decode()
    finally:
        sel.close()
        proc.send_signal(signal.SIGTERM)  # the demo stops everything it started on SIGTERM
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
