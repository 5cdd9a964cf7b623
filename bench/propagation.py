"""Revocation propagation: from the admin call returning to the first 403 on every replica.

(a) 3 replicas sharing Redis; (b) `workers: 2` on one SQLite file. p50/p99 over N revocations.
Run with `make bench-propagation` (or `python bench/propagation.py [N]`); results go to bench/results/.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import yaml

from ext_authz._proto.envoy import external_auth_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ext_authz._proto import admin_pb2 as pb  # noqa: E402
from ext_authz._proto import admin_pb2_grpc  # noqa: E402
from ext_authz.dev.demo import init_demo  # noqa: E402
from ext_authz.serve.http import free_port  # noqa: E402
from tests.component.checkreq import check_request  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

FRONTEND = "spiffe://example.org/ns/frontend/sa/web"


def config(demo: Path, dest: Path, **over: Any) -> Path:
    cfg = yaml.safe_load((demo / "config.yaml").read_text())
    cfg.update(
        listen=f"127.0.0.1:{free_port()}",
        http_listen=f"127.0.0.1:{free_port()}",
        admin_listen=f"unix://{dest}/admin.sock",
        decision_log={"path": str(dest / "decisions.jsonl")},
        check={"plaintext": True},
    )
    cfg["trust_domains"]["example.org"] = {
        "x509_bundle": str(demo / "bundle/example.org.spiffe.json"),
        "jwt_bundle": str(demo / "bundle/example.org.spiffe.json"),
    }
    for iss in cfg["issuers"].values():
        iss["jwks"] = str(demo / "idp/jwks.json")
    cfg.update(over)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg))
    return dest / "config.yaml"


def serve(cfg: Path) -> subprocess.Popen[bytes]:
    with (cfg.parent / "serve.log").open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ext_authz.cli", "serve", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_ready(cfg: Path) -> None:
    http = yaml.safe_load(cfg.read_text())["http_listen"]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{http}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{cfg} never became ready")


def measure(admin: Any, targets: list[Any], request: Any, n: int) -> list[float]:
    """ms from Revoke returning until every target answers 'revoked'; unrevoke and settle between."""
    samples = []
    for _ in range(n):
        rev = admin.Revoke(pb.RevokeRequest(value=FRONTEND, reason="bench")).revocation
        t0 = time.perf_counter()
        pending = set(range(len(targets)))
        while pending:
            for i in list(pending):
                resp = targets[i].Check(request, timeout=5)
                if resp.dynamic_metadata.fields["reason"].string_value == "revoked":
                    pending.discard(i)
        samples.append((time.perf_counter() - t0) * 1000)
        admin.Unrevoke(pb.UnrevokeRequest(id=rev.id, reason="bench"))
        settled = False
        while not settled:
            settled = all(t.Check(request, timeout=5).status.code == 0 for t in targets)
    return samples


def summary(name: str, samples: list[float]) -> dict[str, Any]:
    q = statistics.quantiles(samples, n=100, method="inclusive")
    return {
        "topology": name,
        "revocations": len(samples),
        "p50_ms": round(statistics.median(samples), 2),
        "p99_ms": round(q[98], 2),
        "max_ms": round(max(samples), 2),
    }


def main(n: int = 200) -> None:
    results = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        demo = tmp / "demo"
        init_demo(demo)
        request = check_request(demo, workload="frontend")

        redis = RedisServer(tmp / "redis")
        redis.start()
        procs = []
        try:
            cfgs = [config(demo, tmp / f"r{i}", state=redis.settings()) for i in range(3)]
            procs = [serve(c) for c in cfgs]
            for c in cfgs:
                wait_ready(c)
            admin_ch = grpc.insecure_channel(yaml.safe_load(cfgs[0].read_text())["admin_listen"])
            chans = [grpc.insecure_channel(yaml.safe_load(c.read_text())["listen"]) for c in cfgs]
            samples = measure(
                admin_pb2_grpc.AdminStub(admin_ch),
                [external_auth_pb2_grpc.AuthorizationStub(c) for c in chans],
                request,
                n,
            )
            results.append(summary("3 replicas, Redis", samples))
        finally:
            for p in procs:
                p.terminate()
                p.wait(20)
            redis.stop()

        cfg = config(demo, tmp / "w", state=f"sqlite://{tmp}/state.db", workers=2)
        sup = serve(cfg)
        try:
            wait_ready(cfg)
            listen = yaml.safe_load(cfg.read_text())["listen"]
            # SO_REUSEPORT spreads connections over the workers: enough channels reach both.
            chans = [
                grpc.insecure_channel(listen, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(8)
            ]
            admin_ch = grpc.insecure_channel(yaml.safe_load(cfg.read_text())["admin_listen"])
            samples = measure(
                admin_pb2_grpc.AdminStub(admin_ch),
                [external_auth_pb2_grpc.AuthorizationStub(c) for c in chans],
                request,
                n,
            )
            results.append(summary("workers: 2, SQLite", samples))
        finally:
            sup.terminate()
            sup.wait(30)

    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": f"{os.cpu_count()} cores",
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "results": results,
    }
    (out / "propagation.json").write_text(json.dumps(meta, indent=2) + "\n")
    lines = ["| topology | revocations | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['topology']} | {r['revocations']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |"
        for r in results
    ]
    (out / "propagation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200)
