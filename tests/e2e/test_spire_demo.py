"""`make run SPIRE=1`: the demo with SPIRE issuing the identities. Its printed curl commands are run as
printed (with only `-w` added to read the status) and must answer what their comments promise."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509

from ext_authz.dev.demo import init_demo
from ext_authz.dev.spire import wait_until
from ext_authz.dev.spire_stack import SpireDemo
from ext_authz.dev.stack import Ports
from tests.conftest import REPO

pytestmark = pytest.mark.e2e

STATUS = re.compile(r"(?<![\w.])([1-5]\d\d)(?![\w.-])")  # 403, not the 509 of X.509-SVID
LAST_LINE = "#    ext-authz check"  # the demo prints its commands, then this line


@dataclass
class Example:
    comment: str
    command: str
    status: int


def parse_examples(text: str) -> list[Example]:
    """Each block: a `# N. …` comment naming the statuses, then curl commands (`\\` continues a line).
    The k-th command gets the k-th status named; commands past the last status get the last one."""
    out: list[Example] = []
    for block in text.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines or not re.match(r"# \d+\.", lines[0]):
            continue
        comment = " ".join(li for li in lines if li.startswith("#"))
        commands: list[str] = []
        for li in lines:
            if li.startswith("curl "):
                commands.append(li)
            elif commands and commands[-1].endswith("\\"):
                commands[-1] += "\n" + li
        statuses = [int(s) for s in STATUS.findall(comment)] or [200]
        for i, cmd in enumerate(commands):
            out.append(Example(comment, cmd, statuses[min(i, len(statuses) - 1)]))
    return out


def test_parse_examples_pairs_statuses_with_commands() -> None:
    text = (
        "# 1. a X.509-SVID: 200\ncurl -s x \\\n   -H y z\n\n"
        "# 5. none: 401; bad: 401 invalid\ncurl a\ncurl b\ncurl c\n"
    )
    got = [(e.command, e.status) for e in parse_examples(text)]
    assert got == [("curl -s x \\\n   -H y z", 200), ("curl a", 401), ("curl b", 401), ("curl c", 401)]


@pytest.fixture(scope="module")
def printed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`ext-authz dev up DIR --spire` (what `make run SPIRE=1` runs), on free ports; its printed text."""
    demo = tmp_path_factory.mktemp("spire-demo") / "demo"
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
        "--spire",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + 120  # bounds a hang; readiness is the printed line itself
    try:
        while LAST_LINE.encode() not in out:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the SPIRE demo did not come up:\n" + out.decode(errors="replace"))
            if sel.select(timeout=1):
                chunk = os.read(proc.stdout.fileno(), 65536)
                out += chunk
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


def test_demo_says_spire_issues_the_identities(printed: str) -> None:
    assert "SPIRE issues the identities" in printed
    assert "/spire/svid/frontend.pem" in printed
    config = re.search(r"ext-authz check --config (\S+)", printed)
    assert config is not None and "workload_api: unix://" in Path(config[1]).read_text()


def test_printed_curl_commands_answer_as_their_comments_say(printed: str) -> None:
    examples = parse_examples(printed)
    assert len(examples) >= 9, printed  # every numbered example with a command was found
    for ex in examples:
        res = subprocess.run(
            ["bash", "-c", ex.command + " -w '\\nstatus=%{http_code}'"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert res.returncode == 0, (ex.command, res.stderr)
        status = int(res.stdout.rsplit("status=", 1)[1])
        assert status == ex.status, (ex.comment, ex.command, res.stdout)
        if "x-spiffe-id is overwritten" in ex.comment:  # the forged-header example: what upstream saw
            assert '"x-spiffe-id": "spiffe://example.org/ns/frontend/sa/web"' in res.stdout
            assert "x-ext-authz-subject" not in res.stdout


def test_demo_files_follow_svid_rotation(tmp_path: Path) -> None:
    """The SVID files the printed commands use are rewritten when SPIRE rotates the SVIDs."""
    init_demo(tmp_path / "demo")

    def serial() -> int:
        pem = (tmp_path / "demo/spire/svid/frontend.pem").read_bytes()
        return x509.load_pem_x509_certificates(pem)[0].serial_number

    with SpireDemo(tmp_path / "demo", REPO / "envoy.yaml", Ports.free(), x509_svid_ttl="10s") as demo:
        first = serial()
        wait_until("a rotated frontend SVID in the demo's files", lambda: serial() != first or None, 60)
        d, mesh = demo.out, demo.stack.ports.mesh
        cmd = (
            f"curl -s --cacert {d}/bundle/root.pem --cert {d}/svid/frontend.pem --key {d}/svid/frontend.key"
            f" -o /dev/null -w '%{{http_code}}' https://localhost:{mesh}/api/orders"
        )
        res = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30, check=False)
        assert res.stdout == "200", res
