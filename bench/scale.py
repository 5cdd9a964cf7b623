"""How cost grows with the work: rules, state size, distinct callers, bursts of identity-provider events
and reloads of a large policy. Each curve is measured in one run, as ratios to its smallest size, with a
verdict: flat (≤ 2× the smallest), linear (roughly in proportion) or worse.

    python bench/scale.py                  # everything (`make bench-scale`), up to 1,000,000 records
    python bench/scale.py --only rules     # one section: rules | state | callers | burst | reload
    python bench/scale.py --max-records 100000   # a quicker state curve

Results: bench/results/scale.{json,md}. Targets (issue 27): a rule-selection memo miss at 10,000 rules
≤ 2× the cost at 10; 10,000 rules load in ≤ 2 s; revoke → enforced ≤ 20 ms at 1,000,000 revocations;
10,000 revocations one by one ≤ 10 s; start with 1,000,000 records ≤ 10 s; ≤ 600 bytes per revocation;
10,000 SETs in a burst ≤ 10 s with no Check failing and Check p99 within 2× idle.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ext_authz.dev.demo import init_demo  # noqa: E402
from ext_authz.envoy.normalize import normalize  # noqa: E402
from ext_authz.loader import load_engine  # noqa: E402
from ext_authz.pipeline import Caches, decide  # noqa: E402
from ext_authz.settings import QuarantineSettings, Settings  # noqa: E402
from ext_authz.state.backends.base import Change  # noqa: E402
from ext_authz.state.integrity import Sealer  # noqa: E402
from ext_authz.state.records import Revocation, encode  # noqa: E402
from ext_authz.state.replica import Replica  # noqa: E402
from tests.component.checkreq import check_request  # noqa: E402

RESULTS = ROOT / "bench" / "results"
FRONTEND = "spiffe://example.org/ns/frontend/sa/web"


def verdict(sizes: list[int], values: list[float]) -> str:
    """flat: the largest size costs ≤ 2× the smallest; linear: about in proportion (within 2×); worse."""
    ratio = values[-1] / values[0] if values[0] else float("inf")
    growth = sizes[-1] / sizes[0]
    if ratio <= 2:
        return f"flat ({ratio:.2f}×)"
    if ratio <= 2 * growth:
        return f"linear ({ratio:.1f}× for {growth:.0f}× the size)"
    return f"worse ({ratio:.1f}× for {growth:.0f}× the size)"


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def decide_us(engine: Any, caches: Caches, now: datetime, requests: list[Any]) -> float:
    """CPU µs per decision, over ``requests`` (normalized) in order."""
    cpu = time.process_time()
    for req in requests:
        decide(req, engine, caches, now, "id")
    return round((time.process_time() - cpu) / len(requests) * 1e6, 1)


# --- rules -------------------------------------------------------------------------------------------------


def policy_rules(n: int) -> list[dict[str, Any]]:
    """``n`` distinct rules, as a large policy has them: each its own host and path, a condition of its own.
    The frontend's rule is the last one."""
    rules = [
        {
            "name": f"team-{i}",
            "match": {"hosts": [f"svc{i % 500}.internal"], "paths": [f"/api/t{i}/*"], "methods": ["GET"]},
            "when": f'identity.spiffe_id.startsWith("spiffe://example.org/ns/t{i}/")',
        }
        for i in range(n - 1)
    ]
    rules.append(
        {
            "name": "frontend-reads",
            "match": {"hosts": ["backend.internal"], "paths": ["/api/*"], "methods": ["GET"]},
            "when": f'identity.spiffe_id == "{FRONTEND}"',
        }
    )
    return rules


def rules_section(demo: Path, sizes: list[int]) -> dict[str, Any]:
    from ext_authz.policy import cel

    base = yaml.safe_load((demo / "config.yaml").read_text())
    out: dict[str, Any] = {
        "sizes": sizes,
        "hit_us": [],
        "miss_us": [],
        "hostile_us": [],
        "load_s": [],
        "load_json_s": [],
    }
    for n in sizes:
        cfg = {**base, "rules": policy_rules(n)}
        as_json = demo / f"rules-{n}.json"  # JSON is YAML too; generated policies are often written so
        as_json.write_text(json.dumps(cfg))
        cel.forget()  # a first load: nothing compiled yet
        t0 = time.perf_counter()
        load_engine(as_json)
        out["load_json_s"].append(round(time.perf_counter() - t0, 3))
        path = demo / f"rules-{n}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        cel.forget()
        t0 = time.perf_counter()
        engine = load_engine(path)
        out["load_s"].append(round(time.perf_counter() - t0, 3))
        now = datetime.now(UTC)
        caches = Caches()
        hit = check_request(demo, workload="frontend", path="/api/orders")
        d = decide(normalize(hit), engine, caches, now, "id")
        assert d.allowed, d.reason
        out["hit_us"].append(decide_us(engine, caches, now, [normalize(hit)] * 3000))
        misses = [
            normalize(check_request(demo, workload="frontend", path=f"/api/orders/{i}")) for i in range(20000)
        ]
        out["miss_us"].append(decide_us(engine, caches, now, misses))
        long = "/api/" + "x" * 600  # over the selection memo's 512 characters: selected afresh every time
        hostile = normalize(check_request(demo, workload="frontend", path=long))
        out["hostile_us"].append(decide_us(engine, caches, now, [hostile] * 3000))
    # a reload of the largest policy with one rule changed compiles that one condition only
    cfg = {**base, "rules": policy_rules(sizes[-1])}
    cfg["rules"][0]["when"] += " || false"
    path = demo / "rules-changed.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    load_engine(path)
    out["reload_one_changed_s"] = round(time.perf_counter() - t0, 3)
    out["miss_verdict"] = verdict(sizes, out["miss_us"])
    out["hit_verdict"] = verdict(sizes, out["hit_us"])
    out["load_verdict"] = verdict(sizes, out["load_s"])
    return out


# --- state -------------------------------------------------------------------------------------------------

SETTINGS = Settings(quarantine=QuarantineSettings(denials=3, duration=900))
KEY = b"k" * 32


def revocation(i: int, now: float, prefix: str = "tok") -> Revocation:
    return Revocation(
        f"rev_{prefix}{i:010d}",
        "jti",
        f"https://idp.example.com#{prefix}-{i:010d}",
        "session-revoked",
        "ssf:https://idp.example.com",
        now,
        expires_at=now + 86400,
        source="ssf",
    )


async def fill(backend: Any, n: int) -> None:
    sealer = Sealer(KEY)
    now = time.time()
    await backend.open()
    batch = []
    for i in range(n):
        r = revocation(i, now)
        batch.append(
            Change("put", "revocation", r.id, sealer.seal("put", "revocation", r.id, encode(r)), now)
        )
        if len(batch) == 5000:
            await backend.append(batch)
            batch = []
    if batch:
        await backend.append(batch)
    await backend.close()


async def state_point(make_backend: Callable[[], Any], n: int, demo: Path) -> dict[str, Any]:
    await fill(make_backend(), n)
    gc.collect()
    before = rss()
    replica = Replica(make_backend(), lambda: SETTINGS, sealer=Sealer(KEY))
    t0 = time.perf_counter()
    await replica.start()
    start_s = time.perf_counter() - t0
    gc.collect()
    per_record = (rss() - before) / n
    now = time.time()
    values = [f"https://idp.example.com#tok-{i:010d}" for i in range(0, n, max(1, n // 1000))] * 20
    snapshot = replica.snapshot
    cpu = time.process_time()
    for value in values:
        snapshot.revoked("jti", value, now)
    lookup_us = (time.process_time() - cpu) / len(values) * 1e6
    # a whole Check (the demo's frontend, allowed) through the pipeline, against this state
    engine = load_engine(demo / "config.yaml")
    ctx = normalize(check_request(demo, workload="frontend"))
    caches = Caches()
    at = datetime.now(UTC)
    assert decide(ctx, engine, caches, at, "id", replica.snapshot).allowed
    cpu = time.process_time()
    for _ in range(3000):
        decide(ctx, engine, caches, at, "id", replica.snapshot)
    check_us = (time.process_time() - cpu) / 3000 * 1e6
    enforce = []
    for i in range(30):
        r = revocation(i, time.time(), "new")
        t0 = time.perf_counter()
        await replica.put(r)
        assert replica.snapshot.revoked("jti", r.value, time.time()) is not None
        enforce.append((time.perf_counter() - t0) * 1000)
    t0 = time.perf_counter()
    for i in range(2000):
        await replica.put(revocation(i, time.time(), "seq"))
    one_by_one = (time.perf_counter() - t0) / 2000
    await replica.close()
    return {
        "records": n,
        "start_s": round(start_s, 2),
        "bytes_per_record": round(per_record),
        "lookup_us": round(lookup_us, 2),
        "check_us": round(check_us, 1),
        "enforce_ms_p50": round(statistics.median(enforce), 2),
        "enforce_ms_max": round(max(enforce), 2),
        "one_by_one_10k_s": round(one_by_one * 10_000, 1),
    }


def sqlite_log(path: Path) -> Any:
    from ext_authz.state.backends.sqlite import SqliteLog

    return SqliteLog(path, poll_interval=3600)


def state_section(sizes: list[int], redis: bool, demo: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        points = []
        for n in sizes:
            backend = functools.partial(sqlite_log, Path(tmp) / f"s{n}.db")
            points.append(asyncio.run(state_point(backend, n, demo)))
            print(f"  sqlite {n}: {points[-1]}", flush=True)
        out["sqlite"] = points
        if redis:
            out["redis"] = redis_points(sizes, Path(tmp), demo)
    for store, points in list(out.items()):
        for field in ("start_s", "bytes_per_record", "lookup_us", "check_us", "enforce_ms_p50"):
            # RSS grows in pages and arenas, reused between points: below 100,000 records bytes are noise
            kept = [p for p in points if field != "bytes_per_record" or p["records"] >= 100_000]
            points_verdicts = out.setdefault(f"{store}_verdicts", {})
            points_verdicts[field] = verdict([p["records"] for p in kept], [p[field] or 0.001 for p in kept])
    return out


def redis_points(sizes: list[int], tmp: Path, demo: Path) -> list[dict[str, Any]]:
    from ext_authz.state.backends.redis import RedisLog
    from tests.redis_server import RedisServer

    points = []
    for n in sizes:
        server = RedisServer(tmp / f"redis-{n}")
        server.start()
        try:
            points.append(asyncio.run(state_point(functools.partial(RedisLog, server.url), n, demo)))
            print(f"  redis {n}: {points[-1]}", flush=True)
        finally:
            server.stop()
    return points


# --- distinct callers --------------------------------------------------------------------------------------


def callers_section(demo: Path, sizes: list[int]) -> dict[str, Any]:
    """A never-seen token per Check, after ``n`` distinct tokens were seen: the cost of the next one."""
    from joserfc.jwk import ECKey

    from ext_authz.dev import pki

    key = ECKey.import_key(json.loads((demo / "jwt/jwt-svid.key.json").read_text()))
    engine = load_engine(demo / "config.yaml")
    now = datetime.now(UTC)
    exp = int(now.timestamp()) + 3600

    def request(i: int) -> Any:
        claims = {
            "sub": FRONTEND,
            "jti": str(i),
            "aud": ["spiffe://example.org/ns/backend/sa/api"],
            "exp": exp,
        }
        tok = pki.mint_jwt(key, claims, alg="ES256")
        return normalize(check_request(demo, token=tok, path="/internal/jobs", listener="edge"))

    caches = Caches()
    out: dict[str, Any] = {"sizes": sizes, "new_caller_us": []}
    seen = 0
    for n in sizes:
        while seen < n:
            decide(request(seen), engine, caches, now, "id")
            seen += 1
        fresh = [request(10**9 + seen + i) for i in range(300)]
        out["new_caller_us"].append(decide_us(engine, caches, now, fresh))
        seen += 300
    out["verdict"] = verdict(sizes, out["new_caller_us"])
    return out


# --- a burst of SSF events, and a reload of a large policy, against a running server ---------------------

CHECK_LOAD = r"""
import asyncio, json, sys, time
import grpc
from ext_authz._proto.envoy import external_auth_pb2_grpc
from tests.component.checkreq import check_request
from pathlib import Path
target, seconds, rate = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
demo, out = Path(sys.argv[4]), sys.argv[5]
async def main():
    req = check_request(demo, workload="frontend", path="/api/orders")
    lat, fails = [], 0
    async with grpc.aio.insecure_channel(target) as ch:
        stub = external_auth_pb2_grpc.AuthorizationStub(ch)
        await stub.Check(req, timeout=5)
        start = time.perf_counter(); sent = 0; tasks = set()
        async def one(t0):
            nonlocal fails
            try:
                await stub.Check(req, timeout=2)
                lat.append((t0 - start, time.perf_counter() - t0))
            except grpc.aio.AioRpcError:
                fails += 1
        stop = Path(out + ".stop")
        while time.perf_counter() - start < seconds and not stop.exists():
            due = start + sent / rate
            now = time.perf_counter()
            if now < due:
                await asyncio.sleep(due - now)
            t = asyncio.create_task(one(time.perf_counter()))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.gather(*tasks)
    Path(out).write_text(json.dumps({"lat": lat, "fails": fails}))
asyncio.run(main())
"""


def p99(values: list[float]) -> float:
    values = sorted(values)
    return values[int(len(values) * 0.99)] * 1000 if values else float("nan")


# --pin: the server on CPU 0, the Check load and the pushers on CPU 1 (the server's own core, as a sidecar
# with a CPU of its own would have it); empty: all share every CPU.
PIN: dict[str, list[str]] = {}


def serve(config: Path, tmp: Path) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    ready = tmp / "ready.json"
    proc = subprocess.Popen(
        [
            *PIN.get("server", []),
            sys.executable,
            "-m",
            "ext_authz.cli",
            "serve",
            "--config",
            str(config),
            "--ready-file",
            str(ready),
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp / "serve.log", "wb"),  # noqa: SIM115 - the child holds it
    )
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"serve did not start: {(tmp / 'serve.log').read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())


def check_load(target: str, seconds: float, rate: float, demo: Path, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *PIN.get("load", []),
            sys.executable,
            "-c",
            CHECK_LOAD,
            target,
            str(seconds),
            str(rate),
            str(demo),
            str(out),
        ],
        cwd=ROOT,
    )


def burst_section(demo: Path, tmp: Path, n_sets: int, concurrency: int = 1) -> dict[str, Any]:
    """``n_sets`` session-revoked SETs pushed as fast as they are taken, ``concurrency`` at a time (one:
    back to back), while a Check load runs; each SET answered 202 is persisted and applied."""
    from tests.ssfkit import CAEP, jwks_file, mint_set, new_key

    key = new_key()
    (tmp / "push-secret").write_text("burst-secret-0123456789\n")
    cfg = yaml.safe_load((demo / "config.yaml").read_text())
    cfg.update(
        listen=f"unix://{tmp}/check.sock",
        http_listen="127.0.0.1:0",
        admin_listen=f"unix://{tmp}/admin.sock",
        state=f"sqlite://{tmp}/state.db",
        decision_log={"enabled": False},
        shared_signals={
            "receivers": [
                {
                    "issuer": "https://transmitter.example",
                    "jwks": str(jwks_file(tmp / "ssf-jwks.json", key)),
                    "audience": "https://ext-authz.example",
                    "for_issuers": ["https://idp.example.com"],
                    "authorization_file": str(tmp / "push-secret"),
                }
            ]
        },
    )
    base = demo.resolve()
    for td in cfg["trust_domains"].values():
        for k in ("x509_bundle", "jwt_bundle"):
            if td.get(k):
                td[k] = str(base / td[k])
    for iss in cfg["issuers"].values():
        iss["jwks"] = str(base / iss["jwks"])
    config = tmp / "burst.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    now = int(time.time())
    sets = [
        mint_set(
            key,
            {
                "iss": "https://transmitter.example",
                "aud": "https://ext-authz.example",
                "iat": now,
                "jti": f"burst-{i}",
                "events": {
                    CAEP + "session-revoked": {"event_timestamp": now},
                },
                "sub_id": {"format": "iss_sub", "iss": "https://idp.example.com", "sub": f"user-{i}"},
            },
        ).encode()
        for i in range(n_sets)
    ]
    proc, bound = serve(config, tmp)
    try:
        idle_out = tmp / "idle.json"
        check_load(bound["check"], 8, 300, demo, idle_out).wait()
        idle = json.loads(idle_out.read_text())
        during_out = tmp / "during.json"
        load = check_load(bound["check"], 600, 300, demo, during_out)
        time.sleep(2)
        t0 = time.perf_counter()
        statuses: dict[int, int] = {}
        url = f"http://{bound['http']}/ssf/events"

        def push(body: bytes) -> int:
            req = urllib.request.Request(
                url,
                data=body,
                headers={
                    "Content-Type": "application/secevent+jwt",
                    "Authorization": "Bearer burst-secret-0123456789",
                },
            )
            with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback
                return int(r.status)

        with ThreadPoolExecutor(concurrency) as pool:
            for status in pool.map(push, sets):
                statuses[status] = statuses.get(status, 0) + 1
        took = time.perf_counter() - t0
        time.sleep(3)
        Path(str(during_out) + ".stop").touch()  # the load stops, and writes what it measured
        load.wait(60)
    finally:
        proc.terminate()
        proc.wait(30)
    return {
        "sets": n_sets,
        "concurrency": concurrency,
        "seconds": round(took, 1),
        "statuses": statuses,
        "idle_p99_ms": round(p99([d for _, d in idle["lat"]]), 2),
        "idle_fails": idle["fails"],
        "note": "during: measured from a Check load that ran through the burst (300 Checks/s, open loop)",
    }


def burst_during(tmp: Path, took: float) -> dict[str, Any]:
    during = json.loads((tmp / "during.json").read_text()) if (tmp / "during.json").exists() else None
    if during is None:
        return {}
    in_burst = [d for t, d in during["lat"] if 2 <= t <= 2 + took]
    return {
        "during_p99_ms": round(p99(in_burst), 2),
        "during_checks": len(in_burst),
        "during_fails": during["fails"],
    }


def reload_section(demo: Path, tmp: Path, n_rules: int) -> dict[str, Any]:
    cfg = yaml.safe_load((demo / "config.yaml").read_text())
    base = demo.resolve()
    for td in cfg["trust_domains"].values():
        for k in ("x509_bundle", "jwt_bundle"):
            if td.get(k):
                td[k] = str(base / td[k])
    for iss in cfg["issuers"].values():
        iss["jwks"] = str(base / iss["jwks"])
    cfg.update(
        listen=f"unix://{tmp}/check.sock",
        http_listen="127.0.0.1:0",
        admin_listen=f"unix://{tmp}/admin.sock",
        state="memory://",
        decision_log={"enabled": False},
        reload_interval="200ms",
        rules=policy_rules(n_rules),
    )
    config = tmp / "reload.yaml"
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    t0 = time.perf_counter()
    proc, bound = serve(config, tmp)
    start_s = time.perf_counter() - t0
    try:
        idle_out = tmp / "idle-reload.json"
        check_load(bound["check"], 8, 300, demo, idle_out).wait()
        idle = json.loads(idle_out.read_text())
        during_out = tmp / "during-reload.json"
        load = check_load(bound["check"], 20, 300, demo, during_out)
        time.sleep(3)
        for rule in cfg["rules"][:-1]:  # every condition changes: all compiled again
            rule["when"] += " || false"
        config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        load.wait()
        during = json.loads(during_out.read_text())
        log = (tmp / "serve.log").read_text()
    finally:
        proc.terminate()
        proc.wait(30)
    return {
        "rules": n_rules,
        "serve_start_s": round(start_s, 2),
        "reloaded": "reloaded: revision" in log,
        "idle_p99_ms": round(p99([d for _, d in idle["lat"]]), 2),
        "during_p99_ms": round(p99([d for t, d in during["lat"] if t >= 3]), 2),
        "during_fails": during["fails"],
    }


# --- the report --------------------------------------------------------------------------------------------


def markdown(r: dict[str, Any]) -> str:
    lines = [f"# Scale ({r['machine']}, {r['when']})", ""]
    if "rules" in r:
        x = r["rules"]
        lines += [
            "## Rules",
            "",
            "| rules | load s (YAML) | load s (JSON) | Check µs (memo hit) | Check µs (memo miss) |"
            " Check µs (path > 512 chars) |",
            "|---|---|---|---|---|---|",
            *(
                f"| {n:,} | {x['load_s'][i]} | {x['load_json_s'][i]} | {x['hit_us'][i]} | {x['miss_us'][i]} |"
                f" {x['hostile_us'][i]} |"
                for i, n in enumerate(x["sizes"])
            ),
            "",
            f"Memo miss: {x['miss_verdict']}. Memo hit: {x['hit_verdict']}. Load: {x['load_verdict']}. "
            f"Reloading the largest with one condition changed: {x['reload_one_changed_s']} s.",
            "",
        ]
    if "state" in r:
        for store in ("sqlite", "redis"):
            if store not in r["state"]:
                continue
            pts = r["state"][store]
            v = r["state"][f"{store}_verdicts"]
            lines += [
                f"## State on {store}",
                "",
                "| revocations | start s | bytes each | lookup µs | Check µs |"
                " revoke → enforced ms (p50 / max) | 10,000 one by one s |",
                "|---|---|---|---|---|---|---|",
                *(
                    f"| {p['records']:,} | {p['start_s']} | {p['bytes_per_record']} | {p['lookup_us']} |"
                    f" {p['check_us']} |"
                    f" {p['enforce_ms_p50']} / {p['enforce_ms_max']} | {p['one_by_one_10k_s']} |"
                    for p in pts
                ),
                "",
                f"Start: {v['start_s']}. Bytes each: {v['bytes_per_record']}. Lookup: {v['lookup_us']}. "
                f"Check: {v['check_us']}. "
                f"Enforce: {v['enforce_ms_p50']}.",
                "",
            ]
    if "callers" in r:
        x = r["callers"]
        lines += [
            "## Distinct callers",
            "",
            "| callers seen | µs for a never-seen token |",
            "|---|---|",
            *(f"| {n:,} | {x['new_caller_us'][i]} |" for i, n in enumerate(x["sizes"])),
            "",
            f"Verdict: {x['verdict']}.",
            "",
        ]
    if "burst" in r:
        lines += [
            "## A burst of session-revoked SETs pushed to a running server (SQLite), under a Check load",
            "",
            "| SETs | pushed at once | seconds | statuses | Check p99 idle ms | Check p99 during ms |"
            " Checks during | failed Checks |",
            "|---|---|---|---|---|---|---|---|",
            *(
                f"| {x['sets']:,} | {x['concurrency']} | {x['seconds']} | {x['statuses']} |"
                f" {x['idle_p99_ms']} |"
                f" {x.get('during_p99_ms')} | {x.get('during_checks')} | {x.get('during_fails')} |"
                for x in r["burst"]
            ),
            "",
            (
                f"Pinned: {r['pinned']} (300 Checks/s, open loop)."
                if r.get("pinned")
                else "The Check load (300 Checks/s, open loop) and the pushing client run on the same 2"
                " cores as the server."
            ),
            "",
        ]
    if "reload" in r:
        x = r["reload"]
        lines += [
            "## Reloading a large policy under load",
            "",
            f"{x['rules']:,} rules: `serve` ready in {x['serve_start_s']} s. Every condition changed and"
            f" reloaded (reloaded: {x['reloaded']}): Check p99 at 300/s idle {x['idle_p99_ms']} ms, during"
            f" the reload {x['during_p99_ms']} ms; failed Checks: {x['during_fails']}.",
            "",
        ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("rules", "state", "callers", "burst", "reload"))
    p.add_argument("--max-records", type=int, default=1_000_000)
    p.add_argument("--no-redis", action="store_true")
    p.add_argument("--pin", action="store_true", help="burst: the server on CPU 0, load and pushers on CPU 1")
    args = p.parse_args()
    if args.pin:
        PIN.update(server=["taskset", "-c", "0"], load=["taskset", "-c", "1"])
        os.sched_setaffinity(0, {1})  # the pushers
    result: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        demo = tmp / "demo"
        init_demo(demo)
        sections = [args.only] if args.only else ["rules", "state", "callers", "burst", "reload"]
        if "rules" in sections:
            print("rules", flush=True)
            result["rules"] = rules_section(demo, [10, 100, 1000, 10000])
        if "state" in sections:
            print("state", flush=True)
            sizes = [n for n in (1000, 10_000, 100_000, 1_000_000) if n <= args.max_records]
            result["state"] = state_section(sizes, redis=not args.no_redis, demo=demo)
        if "callers" in sections:
            print("callers", flush=True)
            result["callers"] = callers_section(demo, [1000, 10_000, 50_000])
        if "burst" in sections:
            print("burst", flush=True)
            result["burst"] = []
            for concurrency in (1, 8):
                where = tmp / f"burst-{concurrency}"
                where.mkdir()
                point = burst_section(demo, where, 10_000, concurrency)
                point.update(burst_during(where, point["seconds"]))
                result["burst"].append(point)
        if "reload" in sections:
            print("reload", flush=True)
            (tmp / "reload").mkdir()
            result["reload"] = reload_section(demo, tmp / "reload", 10_000)
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "scale" if not args.only else f"scale-{args.only}"
    if args.pin:
        name += "-pinned"
        result["pinned"] = "server on CPU 0; Check load and pushers on CPU 1"
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(result) + "\n")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
