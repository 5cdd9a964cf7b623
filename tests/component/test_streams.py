"""Metrics, the decision log, the live stream and the least-privilege report, against a real server."""

from __future__ import annotations

import asyncio
import io
import json
import re
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from ext_authz._proto import admin_pb2 as pb
from ext_authz._proto import admin_pb2_grpc
from ext_authz.observe.decision_log import DecisionLog
from tests.component.checkreq import check_request
from tests.component.test_server import Running, _http_get, write_config
from tests.component.test_server import start as start_server
from tests.waiting import until

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "ext_authz.cli"]
FRONTEND = "spiffe://example.org/ns/frontend/sa/web"


def sample(scrape: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text scrape (0 if absent)."""
    for line in scrape.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return 0.0


async def start(demo: Path, dest: Path, log: DecisionLog | None = None, **overrides: Any) -> Running:
    return await start_server(write_config(demo, dest, **overrides), log=log)


@pytest.fixture
async def running(demo_dir: Path, tmp_path: Path) -> AsyncIterator[Running]:
    r = await start(
        demo_dir,
        tmp_path,
        quarantine={"denials": 2, "window": "60s", "duration": "1m"},
        decision_log={"headers": True},
    )
    yield r
    await r.channel.close()
    await r.server.stop(0)


async def scrape(r: Running) -> str:
    http = r.http
    assert http is not None
    code, body = await _http_get(http, "/metrics")
    assert code == 200
    return body


def admin_stub(r: Running) -> tuple[grpc.aio.Channel, Any]:
    ch = grpc.aio.insecure_channel(r.runtime.engine.config.admin_listen)
    return ch, admin_pb2_grpc.AdminStub(ch)


async def test_every_revocation_kind_has_a_series_at_zero(running: Running) -> None:
    """A rate or an alert over ext_authz_active_revocations never sees a gap for a kind with none."""
    m = await scrape(running)
    for kind in ("spiffe_id", "cert", "jti", "sub", "sid", "device", "quarantine"):
        assert f'ext_authz_active_revocations{{kind="{kind}"}} 0.0' in m, kind


async def test_metrics_move_with_checks(running: Running, demo_dir: Path) -> None:
    token = (demo_dir / "tokens/alice.jwt").read_text().strip()
    forged = (demo_dir / "tokens/forged.jwt").read_text().strip()
    checks = [
        check_request(demo_dir, workload="frontend"),  # allow, x509
        check_request(demo_dir, workload="frontend"),  # allow again: cache hit
        check_request(demo_dir, workload="billing"),  # no_rule + shadow match
        check_request(demo_dir, workload="frontend", path="/admin/x"),  # policy_denied
        check_request(demo_dir, path="/user/me", listener="edge"),  # no_credential
        check_request(demo_dir, token=forged, path="/user/me", listener="edge"),  # token_signature
        check_request(demo_dir, token=token, path="/user/me", listener="edge"),  # allow, oidc
    ]
    for c in checks:
        await running.stub.Check(c)
    m = await scrape(running)
    assert sample(m, "ext_authz_decisions_total", decision="allow", reason="allowed", kind="x509_svid") == 2
    assert sample(m, "ext_authz_decisions_total", decision="allow", reason="allowed", kind="oidc") == 1
    assert sample(m, "ext_authz_decisions_total", decision="deny", reason="no_rule", kind="x509_svid") == 1
    assert sample(m, "ext_authz_decisions_total", decision="deny", reason="policy_denied") == 1
    assert sample(m, "ext_authz_decisions_total", decision="deny", reason="no_credential", kind="none") == 1
    assert sample(m, "ext_authz_decisions_total", decision="deny", reason="token_signature", kind="none") == 1
    assert sample(m, "ext_authz_shadow_decisions_total", rule="billing-reads-shadow", outcome="matched") == 1
    assert sample(m, "ext_authz_check_duration_seconds_count") == len(checks)
    assert sample(m, "ext_authz_verification_cache_total", cache="x509", result="hit") >= 1
    assert sample(m, "ext_authz_trust_bundle_age_seconds", trust_domain="example.org") >= 0
    assert "ext_authz_trust_bundle_age_seconds{" in m
    from cryptography import x509

    roots = x509.load_pem_x509_certificates((demo_dir / "bundle/root.pem").read_bytes())
    newest = max(c.not_valid_after_utc.timestamp() for c in roots)
    assert sample(m, "ext_authz_trust_bundle_expiry_timestamp_seconds", trust_domain="example.org") == newest
    assert sample(m, "ext_authz_ready") == 1
    assert sample(m, "ext_authz_state_connected") == 1
    # the process and the runtime, and which build: as on any Prometheus target
    assert sample(m, "process_resident_memory_bytes") > 0 and sample(m, "process_cpu_seconds_total") > 0
    assert sample(m, "process_start_time_seconds") > 0 and sample(m, "python_info") == 1
    assert sample(m, "python_gc_collections_total", generation="0") >= 0
    from importlib.metadata import version

    assert sample(m, "ext_authz_build_info", version=version("ext-authz")) == 1
    assert "_created" not in m.replace("ext_authz_revocations_created", "")  # no *_created series
    # No SPIFFE ID, subject or path ever becomes a label.
    assert FRONTEND not in m and "alice" not in m and "/api/orders" not in m


async def test_revocation_and_quarantine_metrics(running: Running, demo_dir: Path) -> None:
    ch, admin = admin_stub(running)
    try:
        await admin.Revoke(pb.RevokeRequest(value=FRONTEND, reason="test"))
        await running.stub.Check(check_request(demo_dir, workload="frontend"))
        for _ in range(2):  # billing: two denials by an explicit deny rule → quarantined
            await running.stub.Check(check_request(demo_dir, workload="billing", path="/admin/x"))

        async def quarantined() -> bool:  # written off the Check path
            return sample(await scrape(running), "ext_authz_active_revocations", kind="quarantine") == 1

        await until(quarantined, "the quarantine in force")
        m = await scrape(running)
        assert sample(m, "ext_authz_revocations_created_total", source="api") == 1
        assert sample(m, "ext_authz_revocations_created_total", source="quarantine") == 1
        assert sample(m, "ext_authz_active_revocations", kind="spiffe_id") == 1
        assert sample(m, "ext_authz_active_revocations", kind="quarantine") == 1
        assert sample(m, "ext_authz_revoked_denials_total", kind="spiffe_id") == 1
        scope = pb.Scope(paths=["/x"])
        e = await admin.OpenException(
            pb.OpenExceptionRequest(principal=FRONTEND, scope=scope, reason="r", duration_seconds=60)
        )
        g = await admin.CreateGrant(
            pb.CreateGrantRequest(principal=FRONTEND, scope=scope, duration_seconds=60, reason="r")
        )
        m = await scrape(running)
        assert sample(m, "ext_authz_open_exceptions") == 0 and sample(m, "ext_authz_active_grants") == 0
        assert sample(m, "ext_authz_pending_approvals", kind="grant") == 1
        assert sample(m, "ext_authz_pending_approvals", kind="exception") == 1
        lead = [("x-ext-authz-actor", "lead")]
        await admin.ApproveException(
            pb.ApproveExceptionRequest(id=e.exception.id, reason="ok"), metadata=lead
        )
        await admin.ApproveGrant(pb.ApproveGrantRequest(id=g.grant.id, reason="ok"), metadata=lead)
        m = await scrape(running)
        assert sample(m, "ext_authz_open_exceptions") == 1 and sample(m, "ext_authz_active_grants") == 1
        assert sample(m, "ext_authz_pending_approvals", kind="grant") == 0
    finally:
        await ch.close()


async def test_reload_metrics(running: Running) -> None:
    cfg = yaml.safe_load(running.config.read_text())
    cfg["rules"].append({"name": "extra"})
    running.config.write_text(yaml.safe_dump(cfg))
    assert await running.server.reloader.check()
    running.config.write_text("rules: [ {name: broken, effect: maybe} ]\n")
    assert not await running.server.reloader.check()
    m = await scrape(running)
    assert sample(m, "ext_authz_config_reloads_total", result="success") == 1
    assert sample(m, "ext_authz_config_reloads_total", result="failure") == 1
    assert sample(m, "ext_authz_config_reload_failed") == 1


SECRETS = {
    "cookie": "session=c00kie-s3cret-value",
    "x-api-key": "k3y-0123456789abcdef",
    "proxy-authorization": "Basic cHJveHk6c2VjcmV0",
}


async def test_one_record_per_check_and_no_secrets_anywhere(running: Running, demo_dir: Path) -> None:
    token = (demo_dir / "tokens/alice.jwt").read_text().strip()
    svid_token = (demo_dir / "tokens/frontend-jwt-svid.jwt").read_text().strip()
    reqs = [
        check_request(
            demo_dir,
            token=token,
            path="/user/me?access_token=q-s3cret&page=2",
            listener="edge",
            headers=SECRETS,
        ),
        check_request(
            demo_dir,
            token=svid_token,
            path="/internal/jobs",
            listener="edge",
            headers={"x-debug": f"copied {svid_token}"},
        ),
        check_request(demo_dir, workload="frontend", headers={"cookie": "sid=another-s3cret"}),
        check_request(demo_dir, token="garbage", listener="edge"),
    ]
    for r in reqs:
        await running.stub.Check(r)
    records = running.records()
    assert len(records) == len(reqs)
    assert len({r["decision_id"] for r in records}) == len(reqs)
    text = running.log.getvalue()
    for secret in [
        token,
        svid_token,
        *[t.split(".")[2] for t in (token, svid_token)],
        "q-s3cret",
        "another-s3cret",
        *SECRETS.values(),
    ]:
        assert secret not in text, secret
    first = records[0]
    assert first["path"] == "/user/me"  # the path only: query strings never reach the log
    assert first["headers"]["cookie"] == "[REDACTED]" and first["headers"]["x-api-key"] == "[REDACTED]"
    assert first["headers"]["authorization"] == "[REDACTED]"
    assert "[REDACTED]" in records[1]["headers"]["x-debug"]
    assert set(first["revision"]) == {"config", "trust", "state"}
    for key in (
        "time",
        "decision_id",
        "request_id",
        "decision",
        "status",
        "reason",
        "rule",
        "identity",
        "method",
        "host",
        "path",
        "source",
        "latency_ms",
    ):
        assert key in first, key


class BlockedSink(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def write(self, s: str) -> int:
        self.release.wait(10)
        return super().write(s)


async def test_a_blocked_log_sink_never_stalls_checks(demo_dir: Path, tmp_path: Path) -> None:
    from tests.waiting import TIMEOUT as WAIT_BOUND

    class StuckSink(BlockedSink):
        """Takes no line until released. Should a write give up waiting (a bound for a broken build that
        writes on the Check path, which would otherwise hang the event loop), it releases the sink: the
        assertion below then fails instead of the test hanging."""

        def write(self, s: str) -> int:
            if not self.release.wait(WAIT_BOUND):
                self.release.set()
            return io.StringIO.write(self, s)

    sink = StuckSink()
    log = DecisionLog(sink, background=True, max_queue=3)
    r = await start(demo_dir, tmp_path, log=log)
    try:
        for _ in range(20):  # the deadline fails a Check that waits for the sink elsewhere
            resp = await r.stub.Check(check_request(demo_dir, workload="frontend"), timeout=WAIT_BOUND)
            assert resp.status.code == 0
        # Every Check was answered while the sink was still blocked and had taken no line: none waited.
        assert not sink.release.is_set() and sink.getvalue() == ""
        m = await scrape(r)
        assert log.dropped >= 20 - 2 * 3  # at most one batch is stuck in the sink and one queue is full
        assert sample(m, "ext_authz_decision_log_dropped_total") == log.dropped
    finally:
        sink.release.set()
        log.close()
        await r.channel.close()
        await r.server.stop(0)


async def test_watch_decisions_streams_live_with_filters(running: Running, demo_dir: Path) -> None:
    ch, admin = admin_stub(running)
    try:
        everything = admin.WatchDecisions(pb.WatchDecisionsRequest())
        denials = admin.WatchDecisions(pb.WatchDecisionsRequest(deny_only=True))
        billing = admin.WatchDecisions(
            pb.WatchDecisionsRequest(identity_glob="spiffe://example.org/ns/billing/*")
        )
        await until(lambda: running.runtime.hub.subscribers == 3, "three subscribers")
        await running.stub.Check(check_request(demo_dir, workload="frontend"))
        await running.stub.Check(check_request(demo_dir, workload="billing"))
        got = [json.loads((await asyncio.wait_for(everything.read(), 5)).json) for _ in range(2)]
        assert [g["decision"] for g in got] == ["allow", "deny"]
        assert json.loads((await asyncio.wait_for(denials.read(), 5)).json)["identity"]["spiffe_id"].endswith(
            "worker"
        )
        assert json.loads((await asyncio.wait_for(billing.read(), 5)).json)["reason"] == "no_rule"
        for s in (everything, denials, billing):
            s.cancel()
    finally:
        await ch.close()


async def test_tail_prints_decisions_as_they_happen(running: Running, demo_dir: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "tail",
        "--deny-only",
        "--json",
        "--count",
        "1",
        "--admin",
        running.runtime.engine.config.admin_listen,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        line = b""
        while not line and time.monotonic() < deadline:
            await running.stub.Check(check_request(demo_dir, workload="frontend"))  # allowed: filtered out
            await running.stub.Check(check_request(demo_dir, workload="frontend", path="/admin/x"))
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), 0.5)
            except TimeoutError:
                continue
        rec = json.loads(line)
        assert rec["decision"] == "deny" and rec["reason"] in ("policy_denied", "quarantined")  # denials only
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_tail_revocations(running: Running, demo_dir: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "tail",
        "--revocations",
        "--count",
        "1",
        "--admin",
        running.runtime.engine.config.admin_listen,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    ch, admin = admin_stub(running)
    try:
        assert proc.stdout is not None
        line = b""
        deadline = time.monotonic() + 20
        while not line and time.monotonic() < deadline:
            await admin.Revoke(pb.RevokeRequest(value=FRONTEND, reason="watch me", duration_seconds=60))
            try:
                line = await asyncio.wait_for(proc.stdout.readline(), 1)
            except TimeoutError:
                continue
        text = line.decode()
        assert "created" in text and FRONTEND in text and "watch me" in text
    finally:
        await ch.close()
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def test_report_from_a_real_log(running: Running, demo_dir: Path, tmp_path: Path) -> None:
    token = (demo_dir / "tokens/alice.jwt").read_text().strip()
    for _ in range(3):
        await running.stub.Check(check_request(demo_dir, workload="frontend"))
    await running.stub.Check(check_request(demo_dir, workload="billing"))
    await running.stub.Check(check_request(demo_dir, token=token, path="/user/me", listener="edge"))
    log = tmp_path / "decisions.jsonl"
    log.write_text("[envoy] an access log line that is not ours\n" + running.log.getvalue())
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "report",
        "--log",
        str(log),
        "--config",
        str(demo_dir / "config.yaml"),
        "--json",
        "--since",
        "1h",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    parsed = json.loads(out)
    report = {u["identity"]: u for u in parsed["identities"]}
    fe = report[FRONTEND]
    assert fe["requests"] == 3 and fe["allowed_by_rule"] == {"frontend-reads": 3}
    assert "frontend-reads" not in fe["unused_allow_rules"] and "public-health" in fe["unused_allow_rules"]
    billing = report["spiffe://example.org/ns/billing/sa/worker"]
    assert billing["denials_by_reason"] == {"no_rule": 1} and billing["allowed"] == 0
    alice = report["https://idp.example.com#alice"]  # users as state names them: ISSUER#SUBJECT
    assert alice["allowed_by_rule"] == {"people-read-profile": 1}
    text = await asyncio.create_subprocess_exec(
        *CLI, "report", "--log", str(log), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, _ = await text.communicate()
    assert "allowed by rules:      frontend-reads (3)" in out.decode()


async def test_dashboard_queries_only_metrics_that_exist(running: Running, demo_dir: Path) -> None:
    ch, admin = admin_stub(running)
    try:
        await admin.Revoke(pb.RevokeRequest(value="spiffe://example.org/ns/x/sa/y", reason="r"))
        await running.stub.Check(check_request(demo_dir, workload="billing"))
        await running.stub.Check(check_request(demo_dir, workload="frontend"))
    finally:
        await ch.close()
    m = await scrape(running)
    present = {line.split("{")[0].split()[0] for line in m.splitlines() if line and not line.startswith("#")}
    present |= {line.split()[2] for line in m.splitlines() if line.startswith("# TYPE")}
    dash = json.loads((REPO / "deploy/grafana/ext-authz.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bext_authz_[a-z_]+", e)}
    assert used, "the dashboard queries no ext-authz metric"
    missing = sorted(used - present)
    assert not missing, f"dashboard queries metrics that /metrics does not expose: {missing}"


def test_the_dashboard_never_sums_shared_state_across_replicas() -> None:
    """Every replica reports the same shared revocations, grants and exceptions: a sum counts each once
    per replica. Gauges of shared state, and counters every replica bumps for one shared record, are
    aggregated with max."""
    from ext_authz.serve.workers import _SHARED_GAUGES

    shared = set(_SHARED_GAUGES) | {"ext_authz_revocations_created_total", "ext_authz_state_records_rejected"}
    dash = json.loads((REPO / "deploy/grafana/ext-authz.json").read_text())
    checked = 0
    for panel in dash["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name in shared:
                if re.search(rf"\b{name}\b", expr):
                    checked += 1
                    assert not re.match(r"\s*sum\b", expr), f"{panel['title']}: {expr}"
    assert checked >= 5


async def test_tokens_in_paths_reach_no_log_and_no_stream(demo_dir: Path, tmp_path: Path) -> None:
    """Password-reset and magic links carry tokens in the path: the decision log and the live stream
    get the path with them replaced, while policy decides on the real path."""
    token = (demo_dir / "tokens/alice.jwt").read_text().strip()
    magic = "Q7vX2mRk9LpW4nZt8YbC3sDf"  # what a reset link's random token looks like
    cfg = yaml.safe_load(write_config(demo_dir, tmp_path).read_text())
    cfg["rules"].insert(
        0,
        {  # allows only when it sees the real path: [REDACTED] would not match
            "name": "magic-links",
            "effect": "allow",
            "match": {"paths": ["/magic/*"]},
            "when": f'request.path == "/magic/{magic}"',
        },
    )
    cfg["decision_log"] = {"redact_paths": [r"/orders/\d+(?=/|$)"]}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    r = await start_server(tmp_path / "config.yaml")
    ch, admin = admin_stub(r)
    try:
        live = admin.WatchDecisions(pb.WatchDecisionsRequest())
        await until(lambda: r.runtime.hub.subscribers == 1, "a subscriber")
        cases = {
            f"/reset/{token}": "/reset/[REDACTED]",
            "/p;jsessionid=S3SSION-SECRET/next": "/p;[REDACTED]/next",
            "/a%3Fb%3Dpct-s3cret": "/a[REDACTED]",
            "/a%23frag-s3cret": "/a[REDACTED]",
            "/x/key%3dlower-s3cret/y": "/x/key[REDACTED]",
            f"/magic/{magic}": "/magic/[REDACTED]",
            "/orders/12345/items": "[REDACTED]/items",  # the operator's own pattern
            "/orders/0b956be1-c462-4ea6-99a9-cda0387b07d0": "/orders/0b956be1-c462-4ea6-99a9-cda0387b07d0",
            "/api/customer-account-settings-2024": "/api/customer-account-settings-2024",
        }
        streamed = []
        for path in cases:
            resp = await r.stub.Check(check_request(demo_dir, workload="frontend", path=path))
            if path.startswith("/magic/"):
                assert resp.dynamic_metadata.fields["rule"].string_value == "magic-links"
            streamed.append(json.loads((await asyncio.wait_for(live.read(), 5)).json)["path"])
        live.cancel()
        logged = [rec["path"] for rec in r.records()]
        assert logged == streamed == list(cases.values())
        text = r.log.getvalue()
        for secret in (
            token.split(".")[1],
            "S3SSION-SECRET",
            "pct-s3cret",
            "frag-s3cret",
            "lower-s3cret",
            magic,
        ):
            assert secret not in text, secret
    finally:
        await ch.close()
        await r.channel.close()
        await r.server.stop(0)


async def test_metrics_are_served_as_openmetrics_when_asked(running: Running) -> None:
    """Prometheus asks for OpenMetrics first: it gets it (with # EOF), else the classic text format."""
    http = running.http
    assert http is not None
    accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
    code, body = await _http_get(http, "/metrics", headers={"Accept": accept})
    assert code == 200 and body.rstrip().endswith("# EOF") and "# TYPE ext_authz_decisions counter" in body
    code, classic = await _http_get(http, "/metrics")
    assert code == 200 and "# EOF" not in classic and "# TYPE ext_authz_decisions_total counter" in classic
