"""`workers: N`: several processes on one port, one /metrics, shared state, graceful stop of all."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import yaml

from ext_authz._proto.envoy import external_auth_pb2_grpc
from ext_authz.serve.http import free_port
from ext_authz.serve.workers import aggregate_metrics
from tests.component.checkreq import check_request
from tests.component.test_server import write_config
from tests.component.test_streams import sample
from tests.waiting import until_sync

CLI = [sys.executable, "-m", "ext_authz.cli"]
FRONTEND = "spiffe://example.org/ns/frontend/sa/web"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:  # noqa: S310 - loopback
            return r.status, r.read().decode()
    except OSError:
        return 0, ""


def check_once(listen: str, demo: Path) -> str:
    """One Check on a fresh connection (SO_REUSEPORT spreads connections over the workers)."""
    with grpc.insecure_channel(listen, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
        resp = external_auth_pb2_grpc.AuthorizationStub(ch).Check(
            check_request(demo, workload="frontend"), timeout=5
        )
        return str(resp.dynamic_metadata.fields["reason"].string_value)


def test_workers_share_a_port_state_and_one_metrics_endpoint(demo_dir: Path, tmp_path: Path) -> None:
    # The workers share one Check port, so it is named (chosen free); http_listen is a port 0 that the
    # supervisor reports in its ready file once every worker reported its own.
    listen = f"127.0.0.1:{free_port()}"
    config = write_config(demo_dir, tmp_path, listen=listen, state=f"sqlite://{tmp_path}/state.db", workers=2)
    cfg = yaml.safe_load(config.read_text())
    log = tmp_path / "serve.log"
    ready = tmp_path / "ready.json"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*CLI, "serve", "--config", str(config), "--ready-file", str(ready)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        until_sync(lambda: ready.exists() or proc.poll() is not None, "the supervisor's ready file")
        assert proc.poll() is None, log.read_text()[-2000:]
        reported = json.loads(ready.read_text())
        assert reported["pid"] == proc.pid and reported["check"] == listen
        assert reported["admin"] == cfg["admin_listen"]
        http = f"http://{reported['http']}"
        deadline = time.monotonic() + 30
        while get(f"{http}/readyz")[0] != 200:
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "workers never became ready"
            time.sleep(0.2)
        _, body = get(f"{http}/readyz")
        assert body.count("worker") == 2 and body.count(" 200 ") == 2

        n = 30
        assert all(check_once(cfg["listen"], demo_dir) == "allowed" for _ in range(n))
        metrics = get(f"{http}/metrics")[1]
        assert (
            sample(metrics, "ext_authz_decisions_total", decision="allow", reason="allowed", kind="x509_svid")
            == n
        )
        assert sample(metrics, "ext_authz_ready") == 1
        assert sample(metrics, "ext_authz_build_info") == 1  # one build, not one per worker
        assert sample(metrics, "python_info") == 1

        def served_by() -> set[int]:  # decision logs are written by a background thread in each worker
            return {json.loads(ln).get("worker") for ln in log.read_text().splitlines() if ln.startswith("{")}

        until_sync(lambda: len(served_by()) == 2, "records from both workers")
        assert served_by() == {0, 1}  # both processes answered on the one port

        res = subprocess.run(
            [*CLI, "revoke", FRONTEND, "--reason", "all workers", "-c", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        until_sync(  # every worker (every new connection) must refuse it
            lambda: {check_once(cfg["listen"], demo_dir) for _ in range(10)} == {"revoked"},
            "every worker refusing the revoked identity",
        )

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not ready.exists()  # stopped: it no longer says where anything is
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert subprocess.run(["pgrep", "-f", str(config)], capture_output=True, check=False).stdout == b""


def test_metrics_aggregation_sums_counters_and_keeps_shared_gauges() -> None:
    a = (
        "# HELP ext_authz_decisions Checks decided\n# TYPE ext_authz_decisions counter\n"
        'ext_authz_decisions_total{decision="allow",reason="allowed",kind="none"} 3.0\n'
        "# HELP ext_authz_active_grants g\n# TYPE ext_authz_active_grants gauge\n"
        "ext_authz_active_grants 2.0\n"
        "# HELP ext_authz_ready r\n# TYPE ext_authz_ready gauge\next_authz_ready 1.0\n"
    )
    b = a.replace(" 3.0", " 4.0").replace("ext_authz_ready 1.0", "ext_authz_ready 0.0")
    out = aggregate_metrics([a, b])
    assert sample(out, "ext_authz_decisions_total", decision="allow") == 7
    assert sample(out, "ext_authz_active_grants") == 2  # the same shared state, not twice
    assert sample(out, "ext_authz_ready") == 0  # any worker not ready: not ready
    assert json.dumps(out)  # plain text


def test_aggregated_label_values_are_escaped() -> None:
    """A rule named `say "hi"` (rule names come from the config) must not break the aggregated scrape."""
    from prometheus_client import CollectorRegistry, Counter, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    registry = CollectorRegistry()
    shadow = Counter(
        "ext_authz_shadow_decisions", "Shadow rule evaluations", ["rule", "outcome"], registry=registry
    )
    shadow.labels('say "hi"\\ and\nbye', "matched").inc(2)
    one = generate_latest(registry).decode()
    out = aggregate_metrics([one, one])
    families = {f.name: f for f in text_string_to_metric_families(out)}  # parses: nothing broke
    (sample_,) = [s for s in families["ext_authz_shadow_decisions"].samples if s.name.endswith("_total")]
    assert sample_.labels == {"rule": 'say "hi"\\ and\nbye', "outcome": "matched"}
    assert sample_.value == 4
