"""A bounded soak through the real Envoy: steady load while revocations, exceptions and grants churn.

The demo stack (ext-authz on its embedded SQLite default, Envoy, the demo upstream) serves three kinds of
request at a fixed rate: the frontend over mTLS (allowed), JWT-SVIDs with their own `jti` over the edge
listener (allowed unless that jti is revoked), and billing over mTLS (403 no_rule, unless an exception
is open for it). Meanwhile, through the admin API, jtis are revoked (some to expire by themselves, some
to be unrevoked), billing's exception opens and closes, and grants come and go.

Every request whose outcome is settled (its key last changed more than ``settle`` seconds before it
started) must match the state the driver set: a revoked token is denied, an unrevoked one allowed.
Used by `make soak` (results in bench/results/soak.*) and by tests/e2e/test_soak.py.
"""

from __future__ import annotations

import http.client
import json
import random
import ssl
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from joserfc.jwk import ECKey

from .._proto import admin_pb2 as pb
from .._proto import admin_pb2_grpc
from ..admin import ACTOR_METADATA
from . import pki
from .demo import BACKEND_ID, DEMO_TD, WORKLOADS
from .stack import Ports, Stack, proc_rss_mb

__all__ = ["SoakReport", "run_soak"]


@dataclass
class SoakReport:
    seconds: float
    rate: float
    requests: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    errors: int = 0  # connection failures and 5xx: what Envoy turns an authorizer fault into
    envoy_ext_authz_errors: int = -1  # Envoy's own count of failed Check calls (ext_authz.error)
    settled_checked: int = 0
    violations: list[str] = field(default_factory=list)  # settled requests that got the wrong answer
    revocations: int = 0
    unrevocations: int = 0
    exceptions_opened: int = 0
    grants: int = 0
    rss_mb: list[tuple[float, float]] = field(default_factory=list)  # (seconds into the run, MB)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Timeline:
    """When each key last changed, and to what: 'allow' or 'deny'."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changes: dict[str, list[tuple[float, str]]] = {}

    def set(self, key: str, at: float, outcome: str) -> None:
        with self._lock:
            self._changes.setdefault(key, []).append((at, outcome))

    def settled(self, key: str, started: float, settle: float) -> str | None:
        """The expected outcome for a request started at ``started``, or None if it may go either way."""
        with self._lock:
            changes = self._changes.get(key, [])
            expected = None
            for at, outcome in changes:
                if at <= started - settle:
                    expected = outcome
                elif at <= started + settle:
                    return None  # a change lands around this request
            return expected


def run_soak(
    demo_dir: Path,
    envoy_template: Path,
    run_dir: Path,
    *,
    seconds: float = 120,
    rate: float = 150,
    settle: float = 1.0,
    transport: str | None = None,
    seed: int | None = None,
    retention: float = 20,
) -> SoakReport:
    rng = random.Random(seed)  # noqa: S311 - choosing what to churn, not a secret
    report = SoakReport(seconds=seconds, rate=rate)
    key = ECKey.import_key(json.loads((demo_dir / "jwt/jwt-svid.key.json").read_text()))
    now = int(time.time())
    jtis = [f"soak-{i}" for i in range(40)]
    tokens = {
        j: pki.mint_jwt(
            key,
            {"sub": WORKLOADS["frontend"], "aud": [BACKEND_ID], "iat": now, "exp": now + 3600, "jti": j},
            alg="ES256",
        )
        for j in jtis
    }
    timeline = _Timeline()
    t0 = time.monotonic()
    for j in jtis:
        timeline.set(f"jti:{j}", t0 - 10, "allow")
    timeline.set("billing", t0 - 10, "deny")
    timeline.set("frontend", t0 - 10, "allow")

    # Ended records are forgotten after state_retention: short here, so two minutes of churn show
    # whether memory stays flat once the retained set is full.
    overrides = {"drain_delay": "0s", "state_retention": f"{int(retention)}s"}
    if transport is not None:
        overrides["transport"] = transport
    stack = Stack(demo_dir, envoy_template, run_dir, Ports.free(), overrides=overrides)
    results: list[tuple[float, str, int]] = []
    results_lock = threading.Lock()
    stop = threading.Event()

    def worker(n: int, workers: int) -> None:
        mtls = ssl.create_default_context(cafile=str(demo_dir / "bundle/root.pem"))
        mtls.load_cert_chain(demo_dir / "svid/frontend.pem", demo_dir / "svid/frontend.key")
        billing = ssl.create_default_context(cafile=str(demo_dir / "bundle/root.pem"))
        billing.load_cert_chain(demo_dir / "svid/billing.pem", demo_dir / "svid/billing.key")
        edge = ssl.create_default_context(cafile=str(demo_dir / "bundle/root.pem"))
        conns: dict[str, http.client.HTTPSConnection] = {}
        i = n
        while not stop.is_set():
            due = t0 + i / rate
            i += workers
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            kind = ("frontend", "jwt", "billing")[i % 3]
            headers: dict[str, str] = {}
            if kind == "frontend":
                ctx, port, path, key_name = mtls, stack.ports.mesh, "/api/orders", "frontend"
            elif kind == "billing":
                ctx, port, path, key_name = billing, stack.ports.mesh, "/api/orders", "billing"
            else:
                j = jtis[rng.randrange(len(jtis))]
                ctx, port, path, key_name = edge, stack.ports.edge, "/internal/jobs", f"jti:{j}"
                headers["Authorization"] = f"Bearer {tokens[j]}"
            started = time.monotonic()
            status = 0
            try:
                conn = conns.get(kind)
                if conn is None:
                    conn = conns[kind] = http.client.HTTPSConnection(
                        "localhost", port, context=ctx, timeout=10
                    )
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException):
                conns.pop(kind, None)
            with results_lock:
                results.append((started, key_name, status))
        for c in conns.values():
            c.close()

    with stack:
        pid = stack.procs["ext-authz"].pid
        channel = grpc.insecure_channel(f"unix://{stack.run_dir.resolve()}/admin.sock")
        admin = admin_pb2_grpc.AdminStub(channel)
        workers = 6
        threads = [threading.Thread(target=worker, args=(n, workers), daemon=True) for n in range(workers)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        revoked: dict[str, str] = {}  # jti → revocation id, for those revoked until unrevoked
        expiring_until: dict[str, float] = {}  # jti → when its expiring revocation ends (monotonic)
        exception_id = ""
        tick = 0
        try:
            while (elapsed := time.monotonic() - t0) < seconds:
                tick += 1
                if tick % 4 == 0 or not report.rss_mb:
                    report.rss_mb.append((round(elapsed, 1), round(proc_rss_mb(pid), 1)))
                # Only jtis with no revocation in force (nor one just ending): the expected answer
                # then follows from this one revocation alone.
                now_m = time.monotonic()
                candidates = [
                    j for j in jtis if j not in revoked and expiring_until.get(j, 0.0) < now_m - 2 * settle
                ]
                j = rng.choice(candidates)
                expiring = rng.random() < 0.5
                rev = admin.Revoke(
                    pb.RevokeRequest(
                        kind="jti",
                        value=f"spiffe://{DEMO_TD}#{j}",  # a JWT-SVID's jti, scoped by its trust domain
                        reason="soak",
                        duration_seconds=rng.uniform(3, 8) if expiring else 0,
                    ),
                    timeout=5,
                ).revocation
                done = time.monotonic()
                report.revocations += 1
                timeline.set(f"jti:{j}", done, "deny")
                if expiring:
                    # Expiry is judged on the server's clock: settle around it as around any change.
                    ends = done + (rev.expires_at - rev.created_at)
                    timeline.set(f"jti:{j}", ends, "allow")
                    expiring_until[j] = ends
                else:
                    revoked[j] = rev.id
                if revoked and (tick % 3 == 0 or len(revoked) >= len(jtis) // 4):  # keep most jtis live
                    back = rng.choice(sorted(revoked))
                    admin.Unrevoke(pb.UnrevokeRequest(id=revoked.pop(back), reason="soak"), timeout=5)
                    timeline.set(f"jti:{back}", time.monotonic(), "allow")
                    report.unrevocations += 1
                if tick % 4 == 0:
                    if exception_id:
                        admin.CloseException(
                            pb.CloseExceptionRequest(id=exception_id, reason="soak"), timeout=5
                        )
                        exception_id = ""
                        timeline.set("billing", time.monotonic(), "deny")
                    else:
                        exc = admin.OpenException(
                            pb.OpenExceptionRequest(
                                principal=WORKLOADS["billing"],
                                scope=pb.Scope(paths=["/api/*"]),
                                reason="soak",
                                duration_seconds=600,
                            ),
                            timeout=5,
                            metadata=[(ACTOR_METADATA, "soak-oncall")],
                        ).exception
                        admin.ApproveException(  # a second person: only then does it act
                            pb.ApproveExceptionRequest(id=exc.id, reason="soak"),
                            timeout=5,
                            metadata=[(ACTOR_METADATA, "soak-lead")],
                        )
                        exception_id = exc.id
                        timeline.set("billing", time.monotonic(), "allow")
                        report.exceptions_opened += 1
                grant = admin.CreateGrant(
                    pb.CreateGrantRequest(
                        principal=WORKLOADS["frontend"],
                        scope=pb.Scope(paths=["/internal/*"]),
                        duration_seconds=2,
                        reason="soak",
                    ),
                    timeout=5,
                    metadata=[(ACTOR_METADATA, "soak-oncall")],
                ).grant
                admin.ApproveGrant(
                    pb.ApproveGrantRequest(id=grant.id, reason="soak"),
                    timeout=5,
                    metadata=[(ACTOR_METADATA, "soak-lead")],
                )
                report.grants += 1
                time.sleep(max(0.0, 1.0 - (time.monotonic() - t0 - elapsed)))
        finally:
            stop.set()
            for t in threads:
                t.join(15)
            channel.close()
        report.rss_mb.append((round(time.monotonic() - t0, 1), round(proc_rss_mb(pid), 1)))
        stats = urllib.request.urlopen(
            f"http://127.0.0.1:{stack.ports.envoy_admin}/stats?filter=ext_authz", timeout=5
        ).read()
        report.envoy_ext_authz_errors = sum(
            int(line.rsplit(":", 1)[1])
            for line in stats.decode().splitlines()
            if line.split(":")[0].endswith("ext_authz.error")
        )

    report.requests = len(results)
    for started, key_name, status in results:
        label = str(status) if status else "connection error"
        report.by_status[label] = report.by_status.get(label, 0) + 1
        if status == 0 or status >= 500:
            report.errors += 1
            continue
        expected = timeline.settled(key_name, started, settle)
        if expected is None:
            continue
        report.settled_checked += 1
        if (status == 200) != (expected == "allow"):
            report.violations.append(f"{key_name} at {started - t0:.2f}s: {status}, expected {expected}")
    return report


def write_results(report: SoakReport, out_dir: Path, machine: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "soak.json").write_text(json.dumps({"machine": machine, **report.as_dict()}, indent=2) + "\n")
    statuses = ", ".join(f"{k}: {v}" for k, v in sorted(report.by_status.items()))
    lines = [
        f"{machine}; {report.seconds:.0f} s at {report.rate:.0f} req/s through Envoy, churning state",
        "",
        f"- requests: {report.requests} ({statuses})",
        f"- errors (connection, 5xx): {report.errors}; "
        f"Envoy ext_authz.error: {report.envoy_ext_authz_errors}",
        f"- settled requests checked against the state: {report.settled_checked}; "
        f"wrong answers: {len(report.violations)}",
        f"- churn: {report.revocations} revocations, {report.unrevocations} unrevoked, "
        f"{report.exceptions_opened} exceptions opened, {report.grants} grants",
        "",
        "RSS of ext-authz over the run:",
        "",
        "| s | MB |",
        "|---|---|",
        *(f"| {t} | {mb} |" for t, mb in report.rss_mb),
    ]
    (out_dir / "soak.md").write_text("\n".join(lines) + "\n")
