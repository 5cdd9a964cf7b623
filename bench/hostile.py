"""The worst Check across hostile inputs within the default limits, beside a normal one.

Each input is as large or as convoluted as the limits allow, aimed at one parser or matcher: headers
(a map, and Envoy's header_map with one name repeated), the XFCC header, the peer certificate and its
chain, bearer tokens (deep JSON, many segments), the Host, rule globs built to backtrack, and CEL
conditions over the largest inputs a request can carry. Each is decided cold (no cache) through
normalize + the pure pipeline + render, many times; the figure is CPU time per Check (process_time).
Target: none over 10 ms.

`python bench/hostile.py` (part of `make bench`); results in bench/results/hostile.{json,md}.
"""

from __future__ import annotations

import base64
import gc
import json
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from envoy.config.core.v3.base_pb2 import HeaderValue
from envoy.service.auth.v3.external_auth_pb2 import CheckRequest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ext_authz.dev.demo import init_demo  # noqa: E402
from ext_authz.envoy.normalize import normalize  # noqa: E402
from ext_authz.envoy.render import render  # noqa: E402
from ext_authz.loader import load_engine  # noqa: E402
from ext_authz.pipeline import Caches, Engine, decide  # noqa: E402
from ext_authz.settings import Limits  # noqa: E402
from tests.component.checkreq import check_request  # noqa: E402

TARGET_MS = 10.0
L = Limits()
HOSTILE_RULES = [
    # Globs that a backtracking matcher takes exponential time on; CEL over the biggest inputs.
    {"name": "glob-trap-path", "effect": "deny", "match": {"paths": ["/*a*a*a*a*a*a*a*a*a*a*b"]}},
    {"name": "glob-trap-host", "effect": "deny", "match": {"hosts": ["*a*a*a*a*a*a*a*a*a*b.internal"]}},
    {
        "name": "cel-headers-squared",
        "effect": "deny",
        "when": "request.headers.exists(k, request.headers.exists(j, k + j == 'never'))",
    },
    {"name": "cel-path-scan", "effect": "deny", "when": 'request.path.matches("^(a|aa)+$")'},
]


def _engine(demo: Path) -> Engine:
    cfg = yaml.safe_load((demo / "config.yaml").read_text())
    cfg["rules"] = HOSTILE_RULES + cfg["rules"]
    cfg["state"] = "memory://"
    path = demo / "hostile.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return load_engine(path)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _cases(demo: Path) -> dict[str, CheckRequest]:
    frontend = check_request(demo, workload="frontend")
    cases: dict[str, CheckRequest] = {"normal: frontend, mTLS, warm policy": frontend}

    def with_headers(n: int, size: int) -> CheckRequest:
        req = check_request(demo, workload="frontend")
        for i in range(n):
            req.attributes.request.http.headers[f"x-h{i}"] = "a" * size
        return req

    per = (L.max_header_bytes - 4000) // (L.max_headers - 10)
    cases["headers: as many and as long as the limits allow"] = with_headers(L.max_headers - 10, per - 8)
    cases["headers: over the limit (refused unread)"] = with_headers(L.max_headers * 50, 10)

    repeated = check_request(demo, workload="frontend")
    repeated.attributes.request.http.headers.clear()
    for name, value in ((":path", "/api/orders"), (":authority", "backend.internal"), (":method", "GET")):
        repeated.attributes.request.http.header_map.headers.append(HeaderValue(key=name, value=value))
    for _ in range(L.max_headers - 10):
        repeated.attributes.request.http.header_map.headers.append(HeaderValue(key="x-same", value="a" * 400))
    cases["header_map: one name repeated, joined"] = repeated

    chain_bytes = L.max_chain_bytes - 100
    for name, xfcc in {
        "xfcc: separators": ";" * chain_bytes,
        "xfcc: quotes and escapes": ('a="' + '\\"' * 10 + '",') * (chain_bytes // 20),
        "xfcc: one huge quoted chain": 'By=x;Chain="' + "A" * (chain_bytes - 20) + '"',
        "xfcc: unclosed quote": 'Chain="' + "%0A" * (chain_bytes // 3 - 3),
    }.items():
        req = check_request(demo, workload="frontend")
        req.attributes.request.http.headers["x-forwarded-client-cert"] = xfcc
        cases[name] = req

    garbage_pem = "-----BEGIN CERTIFICATE-----\n" + "A" * (chain_bytes - 60) + "\n-----END CERTIFICATE-----\n"
    req = check_request(demo)
    req.attributes.source.certificate = quote(garbage_pem, safe="")
    cases["certificate: garbage body at the size limit"] = req
    many = "-----BEGIN CERTIFICATE-----" * (chain_bytes // 30)
    req = check_request(demo)
    req.attributes.source.certificate = quote(many, safe="")
    cases["certificate: thousands of BEGIN markers"] = req

    token_room = L.max_token_bytes - 100
    nested = _b64(b"[" * (token_room // 2))
    header = _b64(b'{"alg":"RS256"}')
    for name, token in {
        "token: deeply nested JSON payload": f"{header}.{nested}.sig",
        "token: huge header": f"{_b64(json.dumps({'alg': 'RS256', 'x': 'a' * (token_room // 2)}).encode())}.e30.sig",
        "token: many segments": ".".join(["a"] * (token_room // 2)),
        "token: over the limit (refused unread)": "a" * (L.max_token_bytes * 2),
    }.items():
        cases[name] = check_request(demo, token=token)

    path = "/" + "a" * (L.max_header_bytes // 2)
    cases["path: long, aimed at the glob and the CEL regex"] = check_request(
        demo, workload="frontend", path=path
    )
    req = check_request(demo, workload="frontend")
    host = ("a" * 60 + ".") * 4 + "internal"
    req.attributes.request.http.host = host
    req.attributes.request.http.headers[":authority"] = host
    cases["host: longest name, aimed at the host glob"] = req
    req = check_request(demo, workload="frontend")
    req.attributes.request.http.host = "a" * 50_000 + ":80"
    cases["host: not a host (refused)"] = req
    return cases


def _cpu_ms(fn: Callable[[], Any], runs: int) -> tuple[float, float]:
    """(median, 90th percentile) CPU milliseconds per call. The collector runs between calls, not
    inside them: a pause it takes is the whole process's, not this input's."""
    spent = []
    for _ in range(runs):
        gc.collect()
        gc.disable()
        t0 = time.process_time()
        fn()
        spent.append(time.process_time() - t0)
        gc.enable()
    spent.sort()
    return spent[len(spent) // 2] * 1000, spent[int(len(spent) * 0.9)] * 1000


def main() -> int:
    now = datetime.now(UTC)
    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(tmp)
        init_demo(demo)
        engine = _engine(demo)
        rows = []
        for name, req in _cases(demo).items():
            raw = req.SerializeToString()

            def one(raw: bytes = raw) -> None:
                request = CheckRequest.FromString(raw)
                ctx = normalize(request, engine.config.limits)
                decision = decide(ctx, engine, Caches.sized(0), now, "bench")
                render(decision, ctx.http.headers if ctx.http else None)

            one()  # warm the interpreter's paths, not the credential caches (size 0)
            ctx = normalize(CheckRequest.FromString(raw), engine.config.limits)
            reason = decide(ctx, engine, Caches.sized(0), now, "bench").reason
            median, p90 = _cpu_ms(one, 30)
            rows.append(
                {
                    "input": name,
                    "bytes": len(raw),
                    "reason": reason,
                    "median_ms": round(median, 3),
                    "p90_ms": round(p90, 3),
                }
            )
    out = ROOT / "bench/results"
    out.mkdir(parents=True, exist_ok=True)
    worst_row = max(rows, key=lambda r: r["p90_ms"])
    (out / "hostile.json").write_text(json.dumps({"target_ms": TARGET_MS, "rows": rows}, indent=2) + "\n")
    lines = [
        "# Hostile inputs within the default limits: CPU per Check",
        "",
        f"Cold (no verification cache): protobuf parse + normalize + decide + render, 30 runs each, CPU time.",
        f"Target: none over {TARGET_MS} ms.",
        "",
        "| input | CheckRequest bytes | reason | median ms | p90 ms |",
        "|---|---|---|---|---|",
        *(
            f"| {r['input']} | {r['bytes']} | {r['reason']} | {r['median_ms']} | {r['p90_ms']} |"
            for r in rows
        ),
        "",
        f"worst: {worst_row['input']} at {worst_row['p90_ms']} ms (p90)"
        + (" — within the target" if worst_row["p90_ms"] <= TARGET_MS else " — OVER THE TARGET"),
    ]
    (out / "hostile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
