"""The command line as a user runs it: real processes, real files, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ext_authz._proto.envoy import external_auth_pb2_grpc
from tests.component.checkreq import check_request
from tests.component.test_server import write_config
from tests.serving import spawn_serve

CLI = [sys.executable, "-m", "ext_authz.cli"]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, input=stdin, timeout=60, check=False)


def test_validate_ok_and_invalid(demo_dir: Path, tmp_path: Path) -> None:
    ok = run("validate", str(demo_dir / "config.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "7 rules" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - name: r\n    effect: maybe\n")
    res = run("validate", str(bad))
    assert res.returncode == 3
    assert str(bad) in res.stderr and "rules[0].effect" in res.stderr and "allow" in res.stderr
    assert "Traceback" not in res.stderr


def test_validate_names_a_missing_bundle(demo_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trust_domains:\n  example.org:\n    x509_bundle: nowhere.pem\nrules: [{name: r}]\n")
    res = run("validate", str(cfg))
    assert res.returncode == 3
    assert str(tmp_path / "nowhere.pem") in res.stderr and "Traceback" not in res.stderr


def test_validate_refuses_an_empty_file_unless_it_says_allow_empty(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("")
    res = run("validate", str(cfg))
    assert res.returncode == 3 and "no trust source" in res.stderr and "allow_empty" in res.stderr
    cfg.write_text("allow_empty: true\n")
    assert run("validate", str(cfg)).returncode == 0


def test_validate_warns_when_no_rule_reads_grants(demo_dir: Path, tmp_path: Path) -> None:
    assert "grants" not in run("validate", str(demo_dir / "config.yaml")).stderr  # the demo has one
    cfg = yaml.safe_load((demo_dir / "config.yaml").read_text())
    cfg["rules"] = [r for r in cfg["rules"] if "grants" not in (r.get("when") or "")]
    path = demo_dir / "no-grants.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = run("validate", str(path))
    assert res.returncode == 0 and "no enforced rule reads `grants`" in res.stderr


def test_check_offline_allow_and_deny(demo_dir: Path, tmp_path: Path) -> None:
    allow = tmp_path / "allow.json"
    allow.write_text(json_format.MessageToJson(check_request(demo_dir, workload="frontend")))
    res = run("check", "--config", str(demo_dir / "config.yaml"), "--request", str(allow))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["allowed"] is True and out["rule"] == "frontend-reads"
    assert out["identity"]["spiffe_id"] == "spiffe://example.org/ns/frontend/sa/web"

    deny = json_format.MessageToJson(check_request(demo_dir, workload="frontend", path="/admin/users"))
    res = run("check", "--config", str(demo_dir / "config.yaml"), "--request", "-", stdin=deny)
    assert res.returncode == 1
    assert json.loads(res.stdout)["reason"] == "policy_denied"


def test_check_with_pinned_time_sees_an_expired_certificate(demo_dir: Path, tmp_path: Path) -> None:
    req = tmp_path / "r.json"
    req.write_text(json_format.MessageToJson(check_request(demo_dir, workload="frontend")))
    res = run("check", "-c", str(demo_dir / "config.yaml"), "-r", str(req), "--now", "2099-01-01T00:00:00Z")
    assert res.returncode == 1
    assert json.loads(res.stdout)["reason"] == "cert_expired"


def test_check_rejects_a_malformed_request_file(demo_dir: Path, tmp_path: Path) -> None:
    req = tmp_path / "r.json"
    req.write_text('{"attributes": {"request": {"http": {"nope": 1}}}}')
    res = run("check", "-c", str(demo_dir / "config.yaml"), "-r", str(req))
    assert res.returncode == 3 and "nope" in res.stderr and "Traceback" not in res.stderr


def test_dev_init_writes_a_working_demo_and_refuses_to_overwrite(tmp_path: Path) -> None:
    d = tmp_path / "demo"
    res = run("dev", "init", str(d))
    assert res.returncode == 0, res.stderr
    for f in ("config.yaml", "bundle/root.pem", "svid/frontend.pem", "tokens/alice.jwt", "idp/jwks.json"):
        assert (d / f).exists(), f
    assert (d / "svid/frontend.key").stat().st_mode & 0o077 == 0  # private keys are not world-readable
    assert run("validate", str(d / "config.yaml")).returncode == 0
    again = run("dev", "init", str(d))
    assert again.returncode == 3 and "--force" in again.stderr


@pytest.mark.parametrize(
    ("transport", "event_loop"), [("grpcio", "uvloop"), ("native", "uvloop"), ("grpcio", "asyncio")]
)
def test_serve_turns_not_serving_on_sigterm_then_exits(
    demo_dir: Path, tmp_path: Path, transport: str, event_loop: str
) -> None:
    config = write_config(
        demo_dir, tmp_path, transport=transport, event_loop=event_loop, drain_delay="1500ms"
    )
    proc, bound = spawn_serve(config, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with grpc.insecure_channel(bound["check"]) as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            health = health_pb2_grpc.HealthStub(channel)
            check = external_auth_pb2_grpc.AuthorizationStub(channel).Check
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=20)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            os.kill(proc.pid, signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
            # NOT_SERVING, yet still answering while Envoy moves away (drain_delay).
            answer = check(check_request(demo_dir, workload="frontend"), timeout=5)
            assert answer.status.code == 0
            assert proc.poll() is None
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate()
    assert b"draining" in err and b"stopped" in err
    assert f"over {transport} on {event_loop}".encode() in err


def test_serve_refuses_to_start_on_a_broken_config(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("listen: nowhere\n")
    res = run("serve", "--config", str(cfg))  # exits, not serves: run()'s timeout fails a hang
    assert res.returncode == 3 and "listen" in res.stderr and "Traceback" not in res.stderr


def test_a_second_signal_cuts_the_drain_short(demo_dir: Path, tmp_path: Path) -> None:
    config = write_config(demo_dir, tmp_path, drain_delay="60s")
    proc, bound = spawn_serve(config, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with grpc.insecure_channel(bound["check"]) as channel:
            grpc.channel_ready_future(channel).result(timeout=20)
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            os.kill(proc.pid, signal.SIGTERM)
            assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        os.kill(proc.pid, signal.SIGINT)  # an operator's Ctrl-C: stop now, not in 60 s
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
