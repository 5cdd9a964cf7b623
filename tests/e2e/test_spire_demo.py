"""`make run SPIRE=1`: the demo with SPIRE issuing the identities. Its printed curl commands are run as
printed (with only `-w` added to read the status) and must answer what their comments promise."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from ext_authz.dev.demo import init_demo
from ext_authz.dev.spire import wait_until
from ext_authz.dev.spire_stack import SpireDemo
from ext_authz.dev.stack import Ports
from tests.conftest import REPO
from tests.e2e import walkthrough
from tests.e2e.demo_process import demo_up

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def printed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`ext-authz dev up DIR --spire` (what `make run SPIRE=1` runs), on free ports; its printed text."""
    with demo_up(tmp_path_factory.mktemp("spire-demo") / "demo", "--spire") as text:
        yield text


def test_demo_says_spire_issues_the_identities(printed: str) -> None:
    assert "SPIRE issues the identities" in printed
    assert "/spire/svid/frontend.pem" in printed
    config = re.search(r"ext-authz check --config (\S+)", printed)
    assert config is not None and "workload_api: unix://" in Path(config[1]).read_text()


def test_the_printed_walkthrough_works_as_printed(printed: str) -> None:
    """The same walkthrough as `make run`'s, with identities from SPIRE: every command as printed."""
    steps, _ = walkthrough.parse(printed)
    assert len(steps) == walkthrough.STEPS, printed
    for step in steps:
        out = walkthrough.run(step)
        if "x-spiffe-id is overwritten" in step.comment:  # the forged-header example: what upstream saw
            assert '"x-spiffe-id": "spiffe://example.org/ns/frontend/sa/web"' in out
            assert "x-ext-authz-subject" not in out


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
