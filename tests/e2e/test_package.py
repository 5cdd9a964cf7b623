"""The distribution as a user gets it: the wheel `make dist` builds, installed with its `native` and
`tracing` extras into an empty venv outside the repository, runs: `--version`, `validate` on the
cookbook's policies, and one `serve` with tracing on that answers a Check and exports its span.

Versions come from uv.lock (exported as constraints), so the test installs what CI tests, from uv's cache."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml

from ext_authz import __version__
from ext_authz._proto.envoy import external_auth_pb2_grpc
from ext_authz._proto.envoy.external_auth_pb2 import CheckRequest
from ext_authz.dev.tools import uv_executable
from tests.conftest import REPO
from tests.otlp import OtlpReceiver
from tests.waiting import until_sync

pytestmark = pytest.mark.e2e


def _uv(*args: str, cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UV_", "VIRTUAL_ENV"))}
    env["UV_PYTHON_DOWNLOADS"] = "never"
    argv = [str(uv_executable()), *args]
    res = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert res.returncode == 0, f"uv {' '.join(args)}\n{res.stdout}{res.stderr}"
    return res.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty venv outside the repository with the wheel and both extras: its bin/ directory."""
    work = tmp_path_factory.mktemp("wheel-install")
    src = work / "src"  # a copy without .venv/, as an sdist or a clean checkout has it
    skip = shutil.ignore_patterns(".venv*", ".git", "demo", "dist", "site", "__pycache__")
    shutil.copytree(REPO, src, ignore=skip)
    _uv("build", "-q", "--wheel", "--out-dir", str(work / "dist"), cwd=src)
    (wheel,) = (work / "dist").glob("ext_authz-*.whl")
    constraints = work / "constraints.txt"
    _uv(
        "export",
        "--frozen",
        "--no-default-groups",
        "--extra",
        "native",
        "--extra",
        "tracing",
        "--no-emit-project",
        "--no-hashes",
        "-q",
        "-o",
        str(constraints),
        cwd=src,
    )
    venv = work / "venv"
    _uv("venv", "-q", "--python", sys.executable, str(venv), cwd=work)
    _uv("pip", "install", "-q", "--python", str(venv / "bin/python"), "-c", str(constraints),
        f"{wheel}[native,tracing]", cwd=work)  # fmt: skip
    shutil.rmtree(src)
    return venv / "bin"


def run(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "ext-authz"), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_version(installed: Path, tmp_path: Path) -> None:
    res = run(installed, "--version", cwd=tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == f"ext-authz {__version__}", res.stdout + res.stderr
    # the install is the wheel's, not this checkout's
    where = subprocess.run(
        [str(installed / "python"), "-c", "import ext_authz; print(ext_authz.__file__)"],
        cwd=tmp_path,  # python -c puts its working directory first on sys.path
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(installed.parent) in where and str(REPO) not in where


def test_validate_the_cookbook(installed: Path, tmp_path: Path) -> None:
    shutil.copy(REPO / "docs/cookbook/policies.yaml", tmp_path / "policies.yaml")
    res = run(installed, "validate", "policies.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    rules = len(yaml.safe_load((tmp_path / "policies.yaml").read_text())["rules"])
    assert res.stdout.startswith(f"ok: policies.yaml: {rules} rules"), res.stdout
    assert not res.stderr, res.stderr  # no warning of any kind at start


def test_serve_with_tracing_answers_a_check(installed: Path, tmp_path: Path) -> None:
    otlp = OtlpReceiver().start()
    sock = tmp_path / "check.sock"
    config = {
        "listen": f"unix://{sock}",
        "http_listen": None,
        "admin_listen": f"unix://{tmp_path}/admin.sock",
        "state": "memory://",
        "allow_empty": True,
        "transport": "native",
        "tracing": {"endpoint": otlp.endpoint, "flush_interval": "50ms", "service_name": "from-the-wheel"},
        "rules": [{"name": "open", "anonymous": True, "match": {"paths": ["/public/*"]}}],
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [str(installed / "ext-authz"), "serve", "--config", "config.yaml"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        until_sync(lambda: sock.exists() or proc.poll() is not None, "the Check socket")
        assert proc.poll() is None, proc.communicate()[0].decode()
        req = CheckRequest()
        http = req.attributes.request.http
        http.method, http.path, http.host = "GET", "/public/x", "backend.internal"
        http.headers.update({":method": "GET", ":path": "/public/x", ":authority": "backend.internal"})
        with grpc.insecure_channel(f"unix://{sock}") as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            res = stub.Check(req, timeout=10, wait_for_ready=True)
        assert res.status.code == 0 and res.HasField("ok_response"), res
        until_sync(lambda: any(s.name.endswith("/Check") for s in otlp.spans), "the Check's span")
        assert {s.resource.get("service.name") for s in otlp.spans} == {"from-the-wheel"}
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0].decode()
        otlp.stop()
    assert "Traceback" not in out and "Warning" not in out, out
