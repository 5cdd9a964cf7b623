"""The gRPC server in-process: Check, health, /healthz /readyz, reloads, faults, unix sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ext_authz._proto.envoy import external_auth_pb2_grpc
from ext_authz._proto.envoy.external_auth_pb2 import CheckRequest
from ext_authz.clock import Clock
from ext_authz.dev import pki
from ext_authz.loader import load_engine
from ext_authz.observe.decision_log import DecisionLog
from ext_authz.serve.app import Server, build_runtime
from ext_authz.serve.check import AUTH_SERVICE
from ext_authz.serve.runtime import Runtime
from tests.component.checkreq import check_request
from tests.waiting import until

UNAUTHENTICATED = 16
PERMISSION_DENIED = 7


def write_config(demo: Path, dest: Path, *, listen: str | None = None, **overrides: Any) -> Path:
    """A copy of the demo config in ``dest`` with its own ports and absolute trust file paths."""
    cfg = yaml.safe_load((demo / "config.yaml").read_text())
    cfg["listen"] = listen or "127.0.0.1:0"  # port 0: the server takes a free one and says which
    if not cfg["listen"].startswith("unix://"):
        cfg["check"] = {"plaintext": True}  # a test's own loopback port (overrides may name check.tls)
    cfg["http_listen"] = "127.0.0.1:0"
    cfg["admin_listen"] = f"unix://{dest}/admin.sock"
    cfg["state"] = "memory://"
    cfg["reload_interval"] = "50ms"
    cfg["shutdown_grace"] = "2s"
    cfg["drain_delay"] = "0s"
    cfg["decision_log"] = {"path": "stdout"}  # the demo's own file is its run's, not a test's
    dest.mkdir(parents=True, exist_ok=True)
    bundle = dest / "bundle.json"
    shutil.copy(demo / "bundle/example.org.spiffe.json", bundle)
    jwks = dest / "jwks.json"
    shutil.copy(demo / "idp/jwks.json", jwks)
    cfg["trust_domains"]["example.org"] = {"x509_bundle": str(bundle), "jwt_bundle": str(bundle)}
    for iss in cfg["issuers"].values():
        iss["jwks"] = str(jwks)
    cfg.update(overrides)
    path = dest / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@dataclasses.dataclass
class Running:
    server: Server
    runtime: Runtime
    config: Path
    channel: grpc.aio.Channel
    log: io.StringIO

    @property
    def stub(self) -> Any:
        return external_auth_pb2_grpc.AuthorizationStub(self.channel)

    @property
    def health(self) -> Any:
        return health_pb2_grpc.HealthStub(self.channel)

    @property
    def http(self) -> str:
        """Where http_listen is bound (HOST:PORT)."""
        return self.server.addresses["http"]

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]


async def start(config: Path, *, log: DecisionLog | None = None, clock: Clock | None = None) -> Running:
    """A Server from ``config``, started, and a channel to its Check port. Decisions are logged to
    ``Running.log`` unless another ``log`` is given."""
    buf = io.StringIO()
    runtime = build_runtime(load_engine(config), log if log is not None else DecisionLog(buf), clock)
    server = Server(config, runtime)
    await server.start()
    channel = grpc.aio.insecure_channel(server.addresses["check"])
    return Running(server, runtime, config, channel, buf)


@pytest.fixture
async def running(demo_dir: Path, tmp_path: Path) -> AsyncIterator[Running]:
    r = await start(write_config(demo_dir, tmp_path))
    yield r
    await r.channel.close()
    await r.server.stop(0)


async def test_allowed_check_sets_identity_headers_and_metadata(running: Running, demo_dir: Path) -> None:
    resp = await running.stub.Check(check_request(demo_dir, workload="frontend"))
    assert resp.status.code == 0
    headers = {h.header.key: h.header.value for h in resp.ok_response.headers}
    assert headers["x-spiffe-id"] == "spiffe://example.org/ns/frontend/sa/web"
    md = resp.dynamic_metadata.fields
    assert md["decision_id"].string_value == headers["x-ext-authz-decision-id"]
    assert md["rule"].string_value == "frontend-reads"
    assert md["identity_kind"].string_value == "x509_svid"


async def test_denied_workload_gets_403_with_reason(running: Running, demo_dir: Path) -> None:
    resp = await running.stub.Check(check_request(demo_dir, workload="billing"))
    assert resp.status.code == PERMISSION_DENIED
    assert resp.denied_response.status.code == 403
    assert {h.header.key: h.header.value for h in resp.denied_response.headers}[
        "x-ext-authz-reason"
    ] == "no_rule"
    assert (
        resp.dynamic_metadata.fields["shadow_matched"].list_value.values[0].string_value
        == "billing-reads-shadow"
    )


async def test_l4_check_without_http_is_decided(running: Running) -> None:
    resp = await running.stub.Check(CheckRequest())
    assert resp.status.code == UNAUTHENTICATED
    assert resp.denied_response.status.code == 401
    assert resp.dynamic_metadata.fields["reason"].string_value == "no_credential"


async def test_one_decision_record_per_check_without_the_token(running: Running, demo_dir: Path) -> None:
    token = (demo_dir / "tokens/alice.jwt").read_text().strip()
    await running.stub.Check(
        check_request(demo_dir, token=token, path="/user/me?session=s3cr3t", listener="edge")
    )
    await running.stub.Check(check_request(demo_dir, token="not.a.token"))
    bare = "bare-s3cr3t-after-the-question-mark"  # a query that is not key=value is a secret too
    await running.stub.Check(check_request(demo_dir, workload="frontend", path=f"/api/x?{bare}#frag-s3cr3t"))
    records = running.records()
    assert [r["decision"] for r in records] == ["allow", "deny", "allow"]
    assert records[0]["identity"]["subject"] == "alice"
    assert records[0]["identity"]["principals"] == ["https://idp.example.com#alice"]
    assert records[0]["path"] == "/user/me"  # the path only: no query string, whatever its shape
    assert records[1]["reason"] == "token_signature" or records[1]["reason"] == "token_malformed"
    assert records[2]["path"] == "/api/x"
    text = running.log.getvalue()
    assert token not in text and token.split(".")[2] not in text and "s3cr3t" not in text


async def test_health_is_serving_for_both_services_and_watch_sees_shutdown(running: Running) -> None:
    for service in ("", AUTH_SERVICE):
        resp = await running.health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    watch = running.health.Watch(health_pb2.HealthCheckRequest(service=AUTH_SERVICE))
    first = await watch.read()
    assert first.status == health_pb2.HealthCheckResponse.SERVING
    stopping = asyncio.create_task(running.server.stop(1))
    second = await asyncio.wait_for(watch.read(), 5)
    assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
    await stopping


async def _http_get(address: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{head}\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_healthz_and_readyz(running: Running) -> None:
    http = running.http
    assert http is not None
    assert await _http_get(http, "/healthz") == (200, "ok\n")
    code, body = await _http_get(http, "/readyz")
    assert code == 200 and str(running.runtime.engine.revision) in body
    assert (await _http_get(http, "/nope"))[0] == 404
    running.runtime.ready = False
    assert (await _http_get(http, "/readyz"))[0] == 503


async def test_unix_socket_listen(demo_dir: Path, tmp_path: Path) -> None:
    sock = tmp_path / "authz.sock"
    r = await start(write_config(demo_dir, tmp_path, listen=f"unix://{sock}"))
    try:
        assert sock.exists()
        resp = await r.stub.Check(check_request(demo_dir, workload="frontend"))
        assert resp.status.code == 0
    finally:
        await r.channel.close()
        await r.server.stop(0)


async def test_policy_reload_applies_and_broken_config_keeps_last_good(
    running: Running, demo_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    billing = check_request(demo_dir, workload="billing")
    assert (await running.stub.Check(billing)).status.code == PERMISSION_DENIED
    cfg = yaml.safe_load(running.config.read_text())
    cfg["rules"].append({"name": "billing-too", "match": {"paths": ["/api/*"]}})
    running.config.write_text(yaml.safe_dump(cfg))
    assert await running.server.reloader.check()
    assert (await running.stub.Check(billing)).status.code == 0

    good = running.runtime.engine.revision
    running.config.write_text(running.config.read_text() + "\nrules: [ {name: x, when: 'identity.(' } ]\n")
    assert not await running.server.reloader.check()
    assert running.runtime.engine.revision == good
    assert running.runtime.reloads_failed == 1
    assert "keeping the last good" in caplog.text and "rules" in caplog.text
    assert (await running.stub.Check(billing)).status.code == 0


async def test_a_truncated_config_is_refused_and_the_failure_is_visible(
    running: Running, demo_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A config file emptied to 0 bytes (an interrupted write, a bad ConfigMap) must not replace a good
    one: every key is optional, so only `allow_empty` tells an empty file on purpose from an accident."""
    caplog.set_level(logging.INFO, logger="ext_authz")
    http = running.http
    assert http is not None
    frontend = check_request(demo_dir, workload="frontend")
    good_text, good = running.config.read_text(), running.runtime.engine.revision
    running.config.write_text("")
    assert not await running.server.reloader.check()
    assert running.runtime.engine.revision == good
    assert (await running.stub.Check(frontend)).status.code == 0  # the last good config still decides
    code, body = await _http_get(http, "/readyz")
    assert code == 200 and body.startswith("degraded: last reload failed") and "allow_empty" in body
    assert (await _http_get(http, "/readyz?strict"))[0] == 503  # for probes told to act on it
    running.config.write_text(good_text.replace("frontend-reads", "frontend-reads-v2"))
    assert await running.server.reloader.check()
    code, body = await _http_get(http, "/readyz")
    assert code == 200 and body.startswith("ready")
    assert (await _http_get(http, "/readyz?strict"))[0] == 200
    assert "rules added: frontend-reads-v2" in caplog.text and "rules removed: frontend-reads" in caplog.text


async def test_corrupt_bundle_keeps_last_good_and_new_root_drops_cached_identities(
    running: Running, demo_dir: Path, tmp_path: Path
) -> None:
    frontend = check_request(demo_dir, workload="frontend")
    assert (await running.stub.Check(frontend)).status.code == 0
    assert (await running.stub.Check(frontend)).status.code == 0
    assert running.runtime.caches.x509.hits == 1

    bundle = tmp_path / "bundle.json"
    original = bundle.read_text()
    bundle.write_text("{ this is not json")
    assert not await running.server.reloader.check()
    assert (await running.stub.Check(frontend)).status.code == 0  # last good trust still in force

    other_root = pki.make_ca("rotated root", spiffe_td="example.org")
    doc = json.loads(original)
    rotated = json.loads(pki.spiffe_bundle([other_root.cert], []))["keys"]
    doc["keys"] = [k for k in doc["keys"] if k["use"] != "x509-svid"] + rotated
    bundle.write_text(json.dumps(doc))
    assert await running.server.reloader.check()
    resp = await running.stub.Check(frontend)
    assert resp.status.code == UNAUTHENTICATED
    assert resp.dynamic_metadata.fields["reason"].string_value == "cert_untrusted"


class _ExplodingPolicy:
    uses_cel = False

    def evaluate(self, *args: object) -> None:
        raise RuntimeError("boom")


async def test_internal_fault_is_a_grpc_error_and_still_logged(running: Running, demo_dir: Path) -> None:
    running.runtime.engine = dataclasses.replace(running.runtime.engine, policy=_ExplodingPolicy())  # type: ignore[arg-type]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await running.stub.Check(check_request(demo_dir, workload="frontend"))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    await until(lambda: len(running.records()) == 1, "the fault recorded")  # abort answers before finally
    (rec,) = running.records()
    assert rec["decision"] == "error" and rec["reason"] == "internal" and rec["fault"] == "RuntimeError"


async def test_a_file_written_while_it_is_being_loaded_is_loaded_again(
    running: Running, demo_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that lands during a reload must not be recorded as seen and then never loaded."""
    import ext_authz.serve.reload as server_module

    real_load = server_module.load_engine  # type: ignore[attr-defined]
    cfg = yaml.safe_load(running.config.read_text())
    cfg["rules"].append({"name": "billing-too", "match": {"paths": ["/api/*"]}})
    late_write = yaml.safe_dump(cfg)

    def load_then_someone_writes(path: Path, **kwargs: Any) -> Any:
        engine = real_load(path, **kwargs)
        running.config.write_text(late_write)  # lands after we read the file
        return engine

    running.config.write_text(running.config.read_text() + "\n# touched\n")
    monkeypatch.setattr(server_module, "load_engine", load_then_someone_writes)
    assert await running.server.reloader.check()
    monkeypatch.setattr(server_module, "load_engine", real_load)
    billing = check_request(demo_dir, workload="billing")

    # The late write is picked up by a later tick (the test's or the background reloader's), not
    # recorded as seen and then never loaded.
    async def billing_allowed() -> bool:
        await running.server.reloader.check()
        return bool((await running.stub.Check(billing)).status.code == 0)

    await until(billing_allowed, "the late write loaded: billing allowed")


@pytest.mark.parametrize("fault", ["deleted", "corrupted", "emptied"])
@pytest.mark.parametrize("file", ["bundle.json", "jwks.json"])
async def test_a_trust_file_broken_while_serving_keeps_the_last_good_and_is_reported(
    running: Running, demo_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, file: str, fault: str
) -> None:
    frontend = check_request(demo_dir, workload="frontend")
    alice = check_request(
        demo_dir, token=(demo_dir / "tokens/alice.jwt").read_text().strip(), path="/user/me"
    )
    assert (await running.stub.Check(frontend)).status.code == 0
    assert (await running.stub.Check(alice)).status.code == 0
    good = running.runtime.engine.revision

    target = tmp_path / file
    original = target.read_bytes()
    if fault == "deleted":
        target.unlink()
    else:
        target.write_text("{ not json" if fault == "corrupted" else "")
    assert not await running.server.reloader.check()

    assert running.runtime.engine.revision == good
    assert running.runtime.reloads_failed == 1
    assert "keeping the last good" in caplog.text and file in caplog.text
    assert (await running.stub.Check(frontend)).status.code == 0  # both credentials still verify
    assert (await running.stub.Check(alice)).status.code == 0
    target.write_bytes(original)  # the next good write is picked up
    assert await running.server.reloader.check()


async def test_native_transport_serves_check_and_health_itself(
    demo_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """pygrpc-native hands a method it was not given as a *registered* handler to a grpcio server
    behind it, which would cost more than grpcio alone: Check and health must be its own. On TCP, the
    operator is told what native does with a large request."""
    r = await start(write_config(demo_dir, tmp_path, transport="native"))
    try:
        assert "reads a whole request before its size limit refuses it" in caplog.text
        assert r.server.grpc._fallback is None
        resp = await r.stub.Check(check_request(demo_dir, workload="frontend"))
        assert resp.status.code == 0
        assert len(resp.dynamic_metadata.fields["decision_id"].string_value) == 32
    finally:
        await r.channel.close()
        await r.server.stop(0)
