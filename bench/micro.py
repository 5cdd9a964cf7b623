"""Micro-benchmarks without Envoy: µs per Check through the pure core and through gRPC, warm and
cold; cold X.509-SVID and ES256 JWT-SVID verification; RSS after many distinct tokens.

`python bench/micro.py` (part of `make bench`); results go to bench/results/micro.{json,md}.
`python bench/micro.py --rss N` (`make bench-rss`, N = 1,000,000): only the RSS run, to bench/results/rss.*.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import yaml
from joserfc.jwk import ECKey

from ext_authz._proto.envoy import external_auth_pb2_grpc
from ext_authz._proto.envoy.external_auth_pb2 import CheckRequest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ext_authz.dev import pki  # noqa: E402
from ext_authz.dev.demo import init_demo  # noqa: E402
from ext_authz.envoy.normalize import normalize  # noqa: E402
from ext_authz.envoy.render import render_wire  # noqa: E402
from ext_authz.identity.jwt import verify_token  # noqa: E402
from ext_authz.identity.x509_svid import verify_x509_svid  # noqa: E402
from ext_authz.identity.xfcc import chain_from_xfcc, decode_certificate  # noqa: E402
from ext_authz.loader import load_engine  # noqa: E402
from ext_authz.observe.decision_log import DecisionLog  # noqa: E402
from ext_authz.pipeline import Caches, decide  # noqa: E402
from ext_authz.serve.app import Server, build_runtime  # noqa: E402
from ext_authz.serve.http import free_port  # noqa: E402
from tests.component.checkreq import check_request  # noqa: E402


def per_call_us(fn: Any, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def grpc_us(config: Path, requests: list[CheckRequest], n: int, cache_size: int) -> float:
    cfg = yaml.safe_load(config.read_text())
    cfg.update(
        listen=f"127.0.0.1:{free_port()}",
        http_listen=None,
        cache={"size": cache_size},
        check={"plaintext": True},
    )
    cfg["admin_listen"] = f"unix://{config.parent}/bench-admin-{uuid.uuid4().hex[:6]}.sock"
    cfg["state"] = "memory://"
    path = config.parent / f"bench-{cache_size}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with open(os.devnull, "w") as sink:
        runtime = build_runtime(load_engine(path), DecisionLog(sink))
        server = Server(path, runtime)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(cfg["listen"]) as ch:
                stub = external_auth_pb2_grpc.AuthorizationStub(ch)
                for r in requests[:50]:
                    await stub.Check(r)
                cpu0, t0 = time.process_time(), time.perf_counter()
                for i in range(n):
                    await stub.Check(requests[i % len(requests)])
                _ = time.perf_counter() - t0
                return (
                    (time.process_time() - cpu0) / n * 1e6
                )  # CPU µs per Check, client + server (one process)
        finally:
            await server.stop(0)


def distinct_tokens_rss(demo: Path, engine: Any, now: datetime, n_tokens: int) -> dict[str, Any]:
    """Bounded caches: RSS (peak) after many distinct, valid tokens through the pipeline."""
    key = ECKey.import_key(json.loads((demo / "jwt/jwt-svid.key.json").read_text()))
    caches = Caches()
    base = rss_mb()
    exp = int(now.timestamp()) + 3600
    curve = []
    t0 = time.perf_counter()
    for i in range(n_tokens):
        tok = pki.mint_jwt(
            key,
            {
                "sub": "spiffe://example.org/ns/frontend/sa/web",
                "jti": str(i),
                "aud": ["spiffe://example.org/ns/backend/sa/api"],
                "exp": exp,
            },
            alg="ES256",
        )
        r = check_request(demo, token=tok, path="/internal/jobs", listener="edge")
        d = decide(normalize(r), engine, caches, now, "id")
        assert d.allowed, d.reason
        if (i + 1) % max(1, n_tokens // 10) == 0:
            curve.append((i + 1, round(rss_mb(), 1)))
    return {
        "tokens": n_tokens,
        "cache_size": caches.tokens.size,
        "cache_entries": len(caches.tokens),
        "rss_mb": round(rss_mb(), 1),
        "rss_mb_before": round(base, 1),
        "curve": curve,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def rss_only(n_tokens: int) -> None:
    """`make bench-rss`: only the distinct-token RSS run (1,000,000 by default), to bench/results/rss.*."""
    with tempfile.TemporaryDirectory() as tmp_s:
        demo = Path(tmp_s) / "demo"
        init_demo(demo)
        r = distinct_tokens_rss(demo, load_engine(demo / "config.yaml"), datetime.now(UTC), n_tokens)
    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    r["machine"] = f"{os.cpu_count()} cores"
    r["when"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    (res / "rss.json").write_text(json.dumps(r, indent=2) + "\n")
    lines = [
        f"{r['machine']}, {r['when']}: {r['tokens']} distinct valid ES256 JWT-SVIDs through the pipeline, "
        f"verified-token cache bounded at {r['cache_size']} ({r['seconds']} s)",
        "",
        "| tokens | peak RSS MB |",
        "|---|---|",
        f"| 0 | {r['rss_mb_before']} |",
        *(f"| {n} | {mb} |" for n, mb in r["curve"]),
    ]
    (res / "rss.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _with_rule(demo: Path, name: str, response: dict[str, Any] | None) -> Any:
    """The demo policy with alice's profile rule first, with or without a response."""
    cfg = yaml.safe_load((demo / "config.yaml").read_text())
    rule: dict[str, Any] = {
        "name": "profile",
        "match": {"paths": ["/user/*"], "methods": ["GET"]},
        "when": '"oidc" in identity.kinds',
    }
    if response is not None:
        rule["response"] = response
    cfg["rules"] = [rule, *cfg["rules"]]
    path = demo / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return load_engine(path)


def responses_cost(demo: Path, now: datetime) -> dict[str, Any]:
    """A rule with three CEL-valued upstream headers against the same rule without them, warm, per
    Check (normalize + decide + render). Target: at most 15% more."""
    alice = (demo / "tokens/alice.jwt").read_text().strip()
    raw = check_request(demo, token=alice, path="/user/profile", listener="edge").SerializeToString()
    three = {
        "x-user": {"cel": "identity.subject"},
        "x-issuer": {"cel": "identity.issuer"},
        "x-role": {"cel": "identity.claims.roles[0]"},
    }
    engines = {
        "without": _with_rule(demo, "plain", None),
        "three_identity_headers": _with_rule(demo, "three", {"upstream_headers": three}),
        "three_request_headers": _with_rule(
            demo,
            "three-request",
            {
                "upstream_headers": {
                    "x-path": {"cel": "request.path"},
                    "x-method": {"cel": "request.method"},
                    "x-host": {"cel": "request.host"},
                }
            },
        ),
    }
    out: dict[str, Any] = {}
    for name, eng in engines.items():
        caches = Caches()

        def run(eng: Any = eng, caches: Caches = caches) -> None:
            render_wire(decide(normalize(CheckRequest.FromString(raw)), eng, caches, now, "id"))

        run()
        # The median of rounds, alternating engines would be better still; rounds of 3,000 each.
        out[name] = round(sorted(per_call_us(run, 3000) for _ in range(5))[2], 1)
    out["ratio_identity"] = round(out["three_identity_headers"] / out["without"], 3)
    out["ratio_request"] = round(out["three_request_headers"] / out["without"], 3)
    return out


def main() -> None:
    out: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores",
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    with tempfile.TemporaryDirectory() as tmp_s:
        demo = Path(tmp_s) / "demo"
        init_demo(demo)
        engine = load_engine(demo / "config.yaml")
        now = datetime.now(UTC)
        svid_req = check_request(demo, workload="frontend")
        jwt = (demo / "tokens/frontend-jwt-svid.jwt").read_text().strip()
        jwt_req = check_request(demo, token=jwt, path="/internal/jobs", listener="edge")
        both_req = check_request(
            demo, workload="frontend", token=(demo / "tokens/alice.jwt").read_text().strip()
        )
        wire = {
            k: r.SerializeToString()
            for k, r in (("svid", svid_req), ("jwt", jwt_req), ("svid+oidc", both_req))
        }

        # Pure core: parse + normalize + decide + render, warm (cache hit) and cold (no cache).
        core: dict[str, Any] = {}
        for name, raw in wire.items():
            warm = Caches()

            def run(raw: bytes = raw, caches: Caches = warm) -> None:
                ctx = normalize(CheckRequest.FromString(raw))
                d = decide(ctx, engine, caches, now, "id")
                render_wire(d)

            run()
            core[name] = {
                "warm_us": round(per_call_us(run, 3000), 1),
                "cold_us": round(per_call_us(lambda raw=raw: run(raw, Caches.sized(0)), 300), 1),
            }
        out["core_us_per_check"] = core

        # Cold verification alone (the targets: X.509-SVID ≤ 350 µs, ES256 JWT-SVID ≤ 250 µs).
        leaf = decode_certificate(svid_req.attributes.source.certificate)
        chain = chain_from_xfcc(svid_req.attributes.request.http.headers["x-forwarded-client-cert"])
        out["cold_x509_svid_us"] = round(
            per_call_us(lambda: verify_x509_svid(leaf, chain, engine.trust, now), 500), 1
        )
        ts = now.timestamp()
        out["cold_es256_jwt_svid_us"] = round(
            per_call_us(lambda: verify_token(jwt, engine.trust, engine.tokens, ts), 1000), 1
        )

        # Through gRPC (in-process client and server): CPU µs per Check, warm and cold.
        out["grpc_cpu_us_per_check"] = {
            "svid_warm": round(asyncio.run(grpc_us(demo / "config.yaml", [svid_req], 2000, 10_000)), 1),
            "svid_cold": round(asyncio.run(grpc_us(demo / "config.yaml", [svid_req], 500, 0)), 1),
        }

        out["responses_us_per_check"] = responses_cost(demo, now)
        out["rss_mb_after_distinct_tokens"] = distinct_tokens_rss(demo, engine, now, 100_000)

    res = ROOT / "bench" / "results"
    res.mkdir(parents=True, exist_ok=True)
    (res / "micro.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [f"machine: {out['machine']}, {out['when']}", "", "| measure | value |", "|---|---|"]
    for name, v in out["core_us_per_check"].items():
        lines.append(f"| core, {name}, warm / cold | {v['warm_us']} µs / {v['cold_us']} µs |")
    lines.append(f"| cold X.509-SVID verification | {out['cold_x509_svid_us']} µs |")
    lines.append(f"| cold ES256 JWT-SVID verification | {out['cold_es256_jwt_svid_us']} µs |")
    g = out["grpc_cpu_us_per_check"]
    lines.append(
        f"| gRPC round trip CPU (client+server), SVID warm / cold | {g['svid_warm']} / {g['svid_cold']} µs |"
    )
    rc = out["responses_us_per_check"]
    lines.append(
        f"| a rule's response: without / three identity CEL headers / three request CEL headers (target"
        f" ≤ 1.15× for identity ones) | {rc['without']} / {rc['three_identity_headers']}"
        f" ({rc['ratio_identity']}×) / {rc['three_request_headers']} ({rc['ratio_request']}×) µs |"
    )
    r = out["rss_mb_after_distinct_tokens"]
    lines.append(f"| RSS after {r['tokens']} distinct tokens (cache {r['cache_size']}) | {r['rss_mb']} MB |")
    (res / "micro.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--rss":
        rss_only(int(sys.argv[2]))
    else:
        main()
