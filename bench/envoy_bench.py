"""`make bench`: ext-authz side by side with Envoy's own limits, through a real Envoy, with h2load.

(a) Envoy direct response; (b) Envoy jwt_authn + RBAC in-process (the no-hop limit); (c) Envoy +
a minimal allow-all grpc.aio ext_authz server (the Python floor); (d) Envoy + ext-authz with the demo
policy, warm caches; (e) the same with caching off (every Check verifies from scratch); (f) warm with
`workers: 2`; (g) the allow-all floor on pygrpc-native; (h) ext-authz warm with `transport: native`;
(i) ext-authz warm with an mTLS X.509-SVID *and* a JWT-SVID: h2load cannot present a client certificate,
so a front listener of the same Envoy originates mTLS with the frontend's SVID to a listener that
verifies it and forwards it (and the XFCC chain) to ext-authz, exactly as in envoy.yaml; (j) (d) with
the decision log off; (k) the sidecar default: ext-authz on a unix socket, where `transport: auto` is
native; (l) (h) with the decision log off (the log's cost where CPU per Check is small and steady);
(m) the allow-all floor on the path (h) and (k) take: pygrpc-native with Check answered from its batch
callback, without a task per call (serve/native.py); the shared deployment, Envoy calling Check over mTLS
with the frontend's X.509-SVID: (n) ext-authz terminating TLS itself (grpcio, `check.tls` +
`allowed_spiffe_ids`), (o) an Envoy in front of it terminating TLS and matching the caller's SPIFFE ID,
forwarding over a unix socket to ext-authz on native (the chart's `check.terminator: envoy`); for (o) the
authorizer's CPU is ext-authz's and that Envoy's together. Many callers: (p) the sidecar (k)
with 10,000 distinct valid JWT-SVIDs in a Zipf mix (s = 1.1), as callers repeat in production (h2load
varies the path: a Lua filter in front moves the token from the query into Authorization); (q) the same
Lua front with one token throughout, so p/q is the cost of the mix alone.
Configurations
alternate round by round so machine noise hits all alike. Bearer tokens (JWT-SVID) are the credential
here: h2load cannot present client certificates; mTLS SVID costs are in bench/micro.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ext_authz.dev.demo import init_demo  # noqa: E402
from ext_authz.dev.stack import envoy_binary, proc_rss_mb  # noqa: E402
from ext_authz.serve.http import free_port  # noqa: E402

ROUNDS, REQUESTS, CONC = 3, 12_000, 16
CONFIGS = "abcdefghijklmnopq"
FRONTEND = "spiffe://example.org/ns/frontend/sa/web"


def listener(name: str, port: int, filters: list[dict[str, Any]]) -> dict[str, Any]:
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
    }
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",  # noqa: E501
                            "stat_prefix": name,
                            "codec_type": "AUTO",
                            "route_config": {
                                "virtual_hosts": [
                                    {
                                        "name": "all",
                                        "domains": ["*"],
                                        "routes": [
                                            {
                                                "match": {"prefix": "/"},
                                                "direct_response": {
                                                    "status": 200,
                                                    "body": {"inline_string": "ok"},
                                                },
                                            }
                                        ],
                                    }
                                ]
                            },
                            "http_filters": [*filters, router],
                        },
                    }
                ]
            }
        ],
    }


def ext_authz(cluster: str, *, peer_certificate: bool = False) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "failure_mode_allow": False,
            "include_peer_certificate": peer_certificate,
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": "1s"},
        },
    }


def _tls(demo: Path, cert: str, key: str) -> dict[str, Any]:
    return {
        "tls_certificates": [
            {
                "certificate_chain": {"filename": str(demo / cert)},
                "private_key": {"filename": str(demo / key)},
            }
        ],
        "validation_context": {"trusted_ca": {"filename": str(demo / "bundle/root.pem")}},
        "alpn_protocols": ["h2"],
    }


def front_listener(name: str, port: int, hop: str) -> dict[str, Any]:
    """h2c in, forwarded to ``hop`` (no ext_authz here): how h2load's requests gain a client certificate."""
    lst = listener(name, port, [])
    route = lst["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0][
        "routes"
    ][0]
    del route["direct_response"]
    route["route"] = {"cluster": hop}
    return lst


def mtls_listener(name: str, port: int, demo: Path, filters: list[dict[str, Any]]) -> dict[str, Any]:
    """As the mesh listener of envoy.yaml: a verified client SVID, forwarded with its chain in XFCC."""
    lst = listener(name, port, filters)
    chain = lst["filter_chains"][0]
    chain["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": _tls(demo, "envoy/server.pem", "envoy/server.key"),
        },
    }
    hcm = chain["filters"][0]["typed_config"]
    hcm["forward_client_cert_details"] = "SANITIZE_SET"
    hcm["set_current_client_cert_details"] = {"uri": True, "chain": True}
    return lst


def mtls_cluster(name: str, port: int, demo: Path) -> dict[str, Any]:
    c = cluster(name, port)
    c["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "localhost",
            "common_tls_context": _tls(demo, "svid/frontend.pem", "svid/frontend.key"),
        },
    }
    return c


def cluster(name: str, port: int | str, streams_per_connection: int = 0) -> dict[str, Any]:
    h2: dict[str, Any] = {"max_concurrent_streams": streams_per_connection} if streams_per_connection else {}
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": h2},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"pipe": {"path": port}}
                                if isinstance(port, str)
                                else {"socket_address": {"address": "127.0.0.1", "port_value": port}}
                            }
                        }
                    ]
                }
            ],
        },
    }


ZIPF_TOKENS, ZIPF_S = 10_000, 1.1
LUA_FRONT = """
function envoy_on_request(h)
  local path = h:headers():get(":path")
  local token = string.match(path, "[?&]t=([^&]+)")
  if token then
    h:headers():replace(":path", "/internal/jobs")
    h:headers():add("authorization", "Bearer " .. token)
  end
end
"""


def zipf_uris(demo: Path, out: Path, n: int, base: str, batch: str) -> Path:
    """``n`` request URIs carrying one of ZIPF_TOKENS distinct JWT-SVIDs of the frontend each (new ones
    for each ``batch``), drawn with Zipf weights (the k-th most frequent caller 1/k**ZIPF_S as often as
    the first); seeded."""
    from joserfc.jwk import ECKey

    from ext_authz.dev import pki

    key = ECKey.import_key(json.loads((demo / "jwt/jwt-svid.key.json").read_text()))
    exp = int(time.time()) + 3600
    aud = ["spiffe://example.org/ns/backend/sa/api"]
    tokens = [
        pki.mint_jwt(key, {"sub": FRONTEND, "jti": f"{batch}-{i}", "aud": aud, "exp": exp}, alg="ES256")
        for i in range(ZIPF_TOKENS)
    ]
    rng = random.Random(7)  # noqa: S311 - a reproducible load, not a secret
    weights = [1 / (k + 1) ** ZIPF_S for k in range(ZIPF_TOKENS)]
    picks = rng.choices(range(ZIPF_TOKENS), weights=weights, k=n)
    out.write_text("".join(f"{base}/internal/jobs?t={tokens[i]}\n" for i in picks))
    return out


def lua_front() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": LUA_FRONT},
        },
    }


def terminator_config(demo: Path, port: int, socket: str, admin_port: int) -> dict[str, Any]:
    """A TLS terminator as the chart's (templates/_terminator.tpl), with the demo's files instead of SDS:
    the caller's X.509-SVID verified and matched against the allowed SPIFFE IDs, each Check forwarded
    over HTTP/2 on a unix socket."""
    lst = front_listener("terminator", port, "authz_uds")
    chain = lst["filter_chains"][0]
    tls = _tls(demo, "envoy/server.pem", "envoy/server.key")
    tls["validation_context"]["match_typed_subject_alt_names"] = [
        {"san_type": "URI", "matcher": {"exact": FRONTEND}}
    ]
    chain["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": tls,
        },
    }
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {"listeners": [lst], "clusters": [cluster("authz_uds", socket)]},
    }


def cluster_stats(admin_port: int, cluster_name: str | None) -> dict[str, float]:
    """An upstream cluster's wire counters from Envoy's admin /stats: bytes each way, connections."""
    if cluster_name is None:
        return {}
    wanted = {
        f"cluster.{cluster_name}.upstream_cx_tx_bytes_total": "tx_bytes",
        f"cluster.{cluster_name}.upstream_cx_rx_bytes_total": "rx_bytes",
        f"cluster.{cluster_name}.upstream_cx_total": "connections",
    }
    url = f"http://127.0.0.1:{admin_port}/stats"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        name, _, value = line.partition(": ")
        if name in wanted:
            out[wanted[name]] = float(value)
    return out


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def h2load(
    port: int, path: str, token: str | None, log: Path, *, one_stream: bool = False
) -> dict[str, float]:
    """``path`` may be ``@FILE``: the request URIs, one a line (h2load -i). ``one_stream``: one connection
    with CONC streams at once, so one pass goes through the URIs in order (h2load starts every client at
    the first)."""
    target = ["-i", path[1:]] if path.startswith("@") else []
    clients, streams = (1, CONC) if one_stream else (CONC, 1)
    args = [
        "h2load",
        "-n",
        str(REQUESTS),
        "-c",
        str(clients),
        "-m",
        str(streams),
        "--log-file",
        str(log),
        *target,
        *([] if target else [f"http://127.0.0.1:{port}{path}"]),
    ]
    if token:
        args[1:1] = ["-H", f"authorization: Bearer {token}"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300, check=True).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    ok = int(re.search(r"status codes: (\d+) 2xx", out).group(1))  # type: ignore[union-attr]
    durations = sorted(int(line.split()[2]) for line in log.read_text().splitlines() if line.strip())
    return {
        "rps": rps,
        "ok": ok,
        "p50_ms": durations[len(durations) // 2] / 1000,
        "p99_ms": durations[int(len(durations) * 0.99)] / 1000,
    }


async def _open_loop(port: int, path: str, token: str | None, rate: int, seconds: float) -> list[float]:
    """Open loop: a request starts every 1/rate s whether or not earlier ones finished (no coordinated
    omission); each takes an idle keep-alive HTTP/1.1 connection or opens one. Latencies in ms."""
    head = f"GET {path} HTTP/1.1\r\nHost: bench\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    raw = (head + "\r\n").encode()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    latencies: list[float] = []

    async def one(start: float) -> None:
        conn = idle.pop() if idle else await asyncio.open_connection("127.0.0.1", port)
        reader, writer = conn
        writer.write(raw)
        await writer.drain()
        status = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        latencies.append((time.perf_counter() - start) * 1000)
        assert b" 200 " in status, status
        idle.append(conn)

    loop_start = time.perf_counter()
    tasks = []
    for i in range(int(rate * seconds)):
        due = loop_start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(due)))
    await asyncio.gather(*tasks)
    for _, w in idle:
        w.close()
    return sorted(latencies)


def open_loop(
    port: int, path: str, token: str | None, rate: int = 500, seconds: float = 6
) -> dict[str, float]:
    lat = asyncio.run(_open_loop(port, path, token, rate, seconds))
    return {"p50_ms": lat[len(lat) // 2], "p99_ms": lat[int(len(lat) * 0.99)]}


def main() -> None:
    only = sys.argv[1] if len(sys.argv) > 1 else ""  # e.g. `dhk`: those rows only, printed, not saved
    measured = [k for k in CONFIGS if not only or k in only]
    results: dict[str, list[dict[str, float]]] = {k: [] for k in CONFIGS}
    cpu_per_check: dict[str, list[float]] = {k: [] for k in "cdeghijklmnopq"}
    fixed: dict[str, list[dict[str, float]]] = {k: [] for k in "cdh"}
    envoy_cpu: dict[str, list[float]] = {k: [] for k in CONFIGS}
    wire: dict[str, list[dict[str, float]]] = {k: [] for k in CONFIGS}
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        demo = tmp / "demo"
        init_demo(demo)
        jwt_svid = (demo / "tokens/frontend-jwt-svid.jwt").read_text().strip()
        alice = (demo / "tokens/alice.jwt").read_text().strip()
        names = (
            "floor",
            "warm",
            "cold",
            "workers",
            "native_floor",
            "native",
            "i_tls",
            "nolog",
            "native_nolog",
            "direct_floor",
            "shared_tls",
            "terminator",
        )
        ports = {k: free_port() for k in (*CONFIGS, *names)}

        sidecar_socket = f"{tmp}/sidecar-check.sock"
        shared_socket = f"{tmp}/shared-check.sock"
        zipf_socket = f"{tmp}/zipf-check.sock"

        def authz_config(
            name: str,
            port: int,
            cache: int,
            workers: int = 1,
            transport: str = "grpcio",
            log: bool = True,
            listen: str = "",
            tls: bool = False,
        ) -> Path:
            cfg = yaml.safe_load((demo / "config.yaml").read_text())
            cfg.update(
                listen=listen or f"127.0.0.1:{port}",
                http_listen=None,
                admin_listen=f"unix://{tmp}/{name}.sock",
                state="memory://" if workers == 1 else f"sqlite://{tmp}/{name}.db",
                workers=workers,
                transport=transport,
                cache={"size": cache},
                decision_log={"path": str(tmp / f"{name}.jsonl"), "enabled": log},
                check={} if (listen or "").startswith("unix://") else {"plaintext": True},
            )
            if tls:
                cfg["check"] = {
                    "tls": {"cert": str(demo / "envoy/server.pem"), "key": str(demo / "envoy/server.key")},
                    "allowed_spiffe_ids": [FRONTEND],
                }
            for td in cfg["trust_domains"].values():
                for k in ("x509_bundle", "jwt_bundle"):
                    td[k] = str(demo / td[k])
            for iss in cfg["issuers"].values():
                iss["jwks"] = str(demo / iss["jwks"])
            path = tmp / f"{name}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            return path

        jwks = json.loads((demo / "idp/jwks.json").read_text())
        jwt_authn = {
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": {
                    "idp": {
                        "issuer": "https://idp.example.com",
                        "audiences": ["backend-api"],
                        "local_jwks": {"inline_string": json.dumps(jwks)},
                        "payload_in_metadata": "payload",
                    }
                },
                "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}],
            },
        }
        rbac = {
            "name": "envoy.filters.http.rbac",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": {
                    "action": "ALLOW",
                    "policies": {
                        "alice-reads": {
                            "permissions": [{"url_path": {"path": {"prefix": "/user/"}}}],
                            "principals": [
                                {
                                    "metadata": {
                                        "filter": "envoy.filters.http.jwt_authn",
                                        "path": [{"key": "payload"}, {"key": "sub"}],
                                        "value": {"string_match": {"exact": "alice"}},
                                    }
                                }
                            ],
                        }
                    },
                },
            },
        }
        envoy_admin = free_port()
        envoy_cfg = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": envoy_admin}}},
            "static_resources": {
                "listeners": [
                    listener("a", ports["a"], []),
                    listener("b", ports["b"], [jwt_authn, rbac]),
                    listener("c", ports["c"], [ext_authz("floor")]),
                    listener("d", ports["d"], [ext_authz("warm")]),
                    listener("e", ports["e"], [ext_authz("cold")]),
                    listener("f", ports["f"], [ext_authz("workers")]),
                    listener("g", ports["g"], [ext_authz("native_floor")]),
                    listener("h", ports["h"], [ext_authz("native")]),
                    front_listener("i", ports["i"], "mtls_hop"),
                    mtls_listener("i_tls", ports["i_tls"], demo, [ext_authz("warm", peer_certificate=True)]),
                    listener("j", ports["j"], [ext_authz("nolog")]),
                    listener("l", ports["l"], [ext_authz("native_nolog")]),
                    listener("k", ports["k"], [ext_authz("sidecar")]),
                    listener("m", ports["m"], [ext_authz("direct_floor")]),
                    listener("p", ports["p"], [lua_front(), ext_authz("zipf")]),
                    listener("q", ports["q"], [lua_front(), ext_authz("zipf")]),
                    listener("n", ports["n"], [ext_authz("shared_tls")]),
                    listener("o", ports["o"], [ext_authz("shared_envoy")]),
                ],
                "clusters": [
                    cluster("floor", ports["floor"]),
                    cluster("warm", ports["warm"]),
                    cluster("cold", ports["cold"]),
                    # Several connections, so SO_REUSEPORT can spread them over the workers.
                    cluster("workers", ports["workers"], streams_per_connection=4),
                    cluster("native_floor", ports["native_floor"]),
                    cluster("native", ports["native"]),
                    mtls_cluster("mtls_hop", ports["i_tls"], demo),
                    cluster("nolog", ports["nolog"]),
                    cluster("native_nolog", ports["native_nolog"]),
                    cluster("sidecar", sidecar_socket),
                    cluster("zipf", zipf_socket),  # (p) and (q): the sidecar's config, a process of its own
                    cluster("direct_floor", ports["direct_floor"]),
                    mtls_cluster("shared_tls", ports["shared_tls"], demo),
                    mtls_cluster("shared_envoy", ports["terminator"], demo),
                ],
            },
        }
        (tmp / "envoy.json").write_text(json.dumps(envoy_cfg))
        base_p = f"http://127.0.0.1:{ports['p']}"
        zipf = zipf_uris(demo, tmp / "zipf-warm-up.txt", 200, base_p, "warm-up")
        terminator_cfg = terminator_config(demo, ports["terminator"], shared_socket, free_port())
        (tmp / "terminator.json").write_text(json.dumps(terminator_cfg))
        py = sys.executable

        def serve(config: Path) -> subprocess.Popen[bytes]:
            return subprocess.Popen([py, "-m", "ext_authz.cli", "serve", "-c", str(config)])

        try:
            floor = subprocess.Popen([py, str(ROOT / "bench/floor_server.py"), str(ports["floor"])])
            native_floor = subprocess.Popen(
                [py, str(ROOT / "bench/floor_server.py"), str(ports["native_floor"]), "native"]
            )
            direct_floor = subprocess.Popen(
                [py, str(ROOT / "bench/floor_server.py"), str(ports["direct_floor"]), "direct"]
            )
            native = serve(authz_config("native", ports["native"], 10_000, transport="native"))
            warm = serve(authz_config("warm", ports["warm"], 10_000))
            cold = serve(authz_config("cold", ports["cold"], 0))
            envoy = subprocess.Popen(
                [
                    envoy_binary(),
                    "-c",
                    str(tmp / "envoy.json"),
                    "--concurrency",
                    "1",
                    "--log-level",
                    "error",
                    "--disable-hot-restart",
                ]
            )
            workers = serve(authz_config("workers", ports["workers"], 10_000, 2))
            nolog = serve(authz_config("nolog", ports["nolog"], 10_000, log=False))
            sidecar = serve(
                authz_config("sidecar", 0, 10_000, transport="auto", listen=f"unix://{sidecar_socket}")
            )
            native_nolog = serve(
                authz_config("native_nolog", ports["native_nolog"], 10_000, transport="native", log=False)
            )
            shared_tls = serve(authz_config("shared_tls", ports["shared_tls"], 10_000, tls=True))
            shared_native = serve(
                authz_config("shared_native", 0, 10_000, transport="native", listen=f"unix://{shared_socket}")
            )
            terminator = subprocess.Popen(
                [
                    envoy_binary(),
                    "-c",
                    str(tmp / "terminator.json"),
                    "--concurrency",
                    "1",
                    "--log-level",
                    "error",
                    "--disable-hot-restart",
                    "--base-id",
                    "7",
                ]
            )
            zipf_server = serve(
                authz_config("zipf", 0, 10_000, transport="auto", listen=f"unix://{zipf_socket}")
            )
            procs = [
                floor,
                warm,
                cold,
                workers,
                native_floor,
                native,
                nolog,
                sidecar,
                native_nolog,
                zipf_server,
            ]
            procs += [direct_floor, envoy, shared_tls, shared_native, terminator]
            time.sleep(4)
            servers = {
                "c": floor,
                "d": warm,
                "e": cold,
                "g": native_floor,
                "h": native,
                "i": warm,
                "j": nolog,
                "k": sidecar,
                "l": native_nolog,
                "m": direct_floor,
                "n": shared_tls,
                "o": shared_native,
                "p": zipf_server,
                "q": zipf_server,
            }
            helpers = {"o": terminator}  # CPU counted with the server's
            # the ext_authz cluster each listener's filter calls: its wire bytes and frames per Check
            clusters = {
                "c": "floor",
                "d": "warm",
                "e": "cold",
                "g": "native_floor",
                "h": "native",
                "j": "nolog",
                "k": "sidecar",
                "l": "native_nolog",
                "m": "direct_floor",
                "n": "shared_tls",
                "o": "shared_envoy",
                "p": "zipf",
                "q": "zipf",
            }
            work = {
                "a": ("/", None),
                "b": ("/user/me", alice),
                "c": ("/internal/jobs", jwt_svid),
                "d": ("/internal/jobs", jwt_svid),
                "e": ("/internal/jobs", jwt_svid),
                "f": ("/internal/jobs", jwt_svid),
                "g": ("/internal/jobs", jwt_svid),
                "h": ("/internal/jobs", jwt_svid),
                "i": ("/internal/jobs", jwt_svid),  # + the frontend's X.509-SVID on the mTLS hop
                "j": ("/internal/jobs", jwt_svid),
                "k": ("/internal/jobs", jwt_svid),
                "l": ("/internal/jobs", jwt_svid),
                "m": ("/internal/jobs", jwt_svid),
                "n": ("/internal/jobs", jwt_svid),
                "o": ("/internal/jobs", jwt_svid),
                "p": ("@" + str(zipf), None),
                "q": (f"/internal/jobs?t={jwt_svid}", None),
            }
            for k, (path, tok) in work.items():  # warm up every path once
                target = ["-i", path[1:]] if path.startswith("@") else [f"http://127.0.0.1:{ports[k]}{path}"]
                subprocess.run(
                    [
                        "h2load",
                        "-n",
                        "200",
                        "-c",
                        "4",
                        *target,
                        *(["-H", f"authorization: Bearer {tok}"] if tok else []),
                    ],
                    capture_output=True,
                    timeout=60,
                    check=True,
                )
            for r in range(ROUNDS):
                order = measured if r % 2 == 0 else measured[::-1]
                for k in order:
                    path, tok = work[k]
                    counted = [p.pid for p in (servers.get(k), helpers.get(k)) if p is not None]
                    before = sum(proc_cpu(pid) for pid in counted)
                    envoy_before = proc_cpu(envoy.pid)
                    wire_before = cluster_stats(envoy_admin, clusters.get(k))
                    if k == "p":  # callers never seen before, in every round: the cache warms as it goes
                        path = "@" + str(zipf_uris(demo, tmp / f"zipf-{r}.txt", REQUESTS, base_p, f"r{r}"))
                    res = h2load(ports[k], path, tok, tmp / f"{k}{r}.log", one_stream=k in "pq")
                    envoy_cpu[k].append((proc_cpu(envoy.pid) - envoy_before) / REQUESTS * 1e6)
                    if k in clusters:
                        after = cluster_stats(envoy_admin, clusters[k])
                        wire[k].append({n: (after[n] - wire_before[n]) / REQUESTS for n in after})
                    if k in servers:
                        cpu = sum(proc_cpu(pid) for pid in counted) - before
                        cpu_per_check[k].append(cpu / REQUESTS * 1e6)
                    results[k].append(res)
                # Latency at a fixed, moderate rate: what a request pays for the hop.
                for k in ("c", "d", "h") if not only else ():
                    path, tok = work[k]
                    fixed[k].append(open_loop(ports[k], path, tok))
            rss = {k: round(proc_rss_mb(p.pid), 1) for k, p in servers.items()}
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(20)

    names = {
        "a": "Envoy direct response",
        "b": "Envoy jwt_authn + RBAC",
        "c": "Envoy + allow-all grpc.aio (floor)",
        "d": "Envoy + ext-authz, demo policy, warm",
        "e": "Envoy + ext-authz, caching off",
        "f": "Envoy + ext-authz, workers: 2, warm",
        "g": "Envoy + allow-all on pygrpc-native (native floor)",
        "h": "Envoy + ext-authz, warm, transport: native",
        "i": "Envoy (mTLS hop) + ext-authz, X.509-SVID + JWT-SVID, warm",
        "j": "Envoy + ext-authz, warm, decision log off",
        "k": "Envoy + ext-authz sidecar: unix socket, transport auto (native)",
        "l": "Envoy + ext-authz, warm, transport: native, decision log off",
        "m": "Envoy + allow-all on pygrpc-native, Check answered from the batch (direct floor)",
        "n": "Envoy --mTLS--> ext-authz (grpcio terminates TLS), shared, warm",
        "o": "Envoy --mTLS--> Envoy terminator --unix--> ext-authz native, shared, warm",
        "p": "(k) with 10,000 distinct JWT-SVIDs in a Zipf mix (s 1.1), via a Lua front",
        "q": "(k) with one JWT-SVID, via the same Lua front",
    }
    table = {}
    for k in measured:
        rows = results[k]
        table[k] = {
            "name": names[k],
            "rps": round(statistics.median(r["rps"] for r in rows)),
            "p50_ms": round(statistics.median(r["p50_ms"] for r in rows), 2),
            "p99_ms": round(statistics.median(r["p99_ms"] for r in rows), 2),
            "errors": sum(REQUESTS - r["ok"] for r in rows),
            "envoy_cpu_us_per_request": round(statistics.median(envoy_cpu[k]), 1),
        }
        if wire[k]:
            table[k]["ext_authz_wire_per_check"] = {
                n: round(statistics.median(w[n] for w in wire[k]), 2) for n in wire[k][0]
            }
        if k in cpu_per_check:
            table[k]["cpu_us_per_check"] = round(statistics.median(cpu_per_check[k]), 1)
            table[k]["rss_mb"] = rss[k]
    if only:
        for k, row in table.items():
            print(k, json.dumps(row))
        return
    at_rate = {
        k: {
            "p50_ms": round(statistics.median(r["p50_ms"] for r in fixed[k]), 2),
            "p99_ms": round(statistics.median(r["p99_ms"] for r in fixed[k]), 2),
        }
        for k in "cdh"
    }
    d = table["d"]["rps"]
    ratios = {
        "d/c": round(d / table["c"]["rps"], 3),
        "d/b": round(d / table["b"]["rps"], 3),
        "d/a": round(d / table["a"]["rps"], 3),
        "workers 2/1": round(table["f"]["rps"] / d, 3),
        "cpu d/c": round(table["d"]["cpu_us_per_check"] / table["c"]["cpu_us_per_check"], 3),
        "h/c": round(table["h"]["rps"] / table["c"]["rps"], 3),
        "cpu h/c": round(table["h"]["cpu_us_per_check"] / table["c"]["cpu_us_per_check"], 3),
        "cpu h/g": round(table["h"]["cpu_us_per_check"] / table["g"]["cpu_us_per_check"], 3),
        "cpu i/c": round(table["i"]["cpu_us_per_check"] / table["c"]["cpu_us_per_check"], 3),
        "cpu log on/off d/j": round(table["d"]["cpu_us_per_check"] / table["j"]["cpu_us_per_check"], 3),
        "cpu log on/off native h/l": round(
            table["h"]["cpu_us_per_check"] / table["l"]["cpu_us_per_check"], 3
        ),
        "cpu k/g": round(table["k"]["cpu_us_per_check"] / table["g"]["cpu_us_per_check"], 3),
        "cpu m/g": round(table["m"]["cpu_us_per_check"] / table["g"]["cpu_us_per_check"], 3),
        "cpu k/m": round(table["k"]["cpu_us_per_check"] / table["m"]["cpu_us_per_check"], 3),
        "k/b": round(table["k"]["rps"] / table["b"]["rps"], 3),
        "h/b": round(table["h"]["rps"] / table["b"]["rps"], 3),
        "shared o/n": round(table["o"]["rps"] / table["n"]["rps"], 3),
        "zipf p/q": round(table["p"]["rps"] / table["q"]["rps"], 3),
        "cpu zipf p/q": round(table["p"]["cpu_us_per_check"] / table["q"]["cpu_us_per_check"], 3),
        "cpu shared o/n": round(table["o"]["cpu_us_per_check"] / table["n"]["cpu_us_per_check"], 3),
    }
    out = {
        "machine": f"{os.cpu_count()} cores",
        "python": f"Python {platform.python_version()} ({sys.executable})",
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "requests_per_run": REQUESTS,
        "concurrency": CONC,
        "rounds": ROUNDS,
        "results": table,
        "ratios": ratios,
        "open_loop_500rps": at_rate,
    }
    res_dir = ROOT / "bench" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    (res_dir / "envoy.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = [
        f"{out['machine']}, {out['when']}; {REQUESTS} requests x {ROUNDS} rounds, {CONC} connections (h2c);"
        f" {out['python']}",
        "",
        "| config | req/s | p50 ms | p99 ms | authz CPU µs/Check | Envoy CPU µs/request | RSS MB | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in CONFIGS:
        t = table[k]
        lines.append(
            f"| ({k}) {t['name']} | {t['rps']} | {t['p50_ms']} | {t['p99_ms']} | "
            f"{t.get('cpu_us_per_check', '-')} | {t['envoy_cpu_us_per_request']} | {t.get('rss_mb', '-')} | "
            f"{t['errors']} |"
        )
    lines += [
        "",
        "Envoy's side of each Check, per Check (its ext_authz cluster's stats): bytes sent and received,"
        " connections opened",
        "",
        "| config | tx bytes | rx bytes | connections |",
        "|---|---|---|---|",
    ]
    for k in CONFIGS:
        w = table[k].get("ext_authz_wire_per_check")
        if w:
            lines.append(f"| ({k}) | {w['tx_bytes']} | {w['rx_bytes']} | {w['connections']} |")
    lines += ["", "ratios: " + ", ".join(f"{k} = {v}" for k, v in ratios.items())]
    lines += [
        "",
        "open loop at 500 req/s (p50 / p99 ms): "
        f"floor {at_rate['c']['p50_ms']} / {at_rate['c']['p99_ms']}, "
        f"ext-authz warm {at_rate['d']['p50_ms']} / {at_rate['d']['p99_ms']}, "
        f"ext-authz warm native {at_rate['h']['p50_ms']} / {at_rate['h']['p99_ms']} "
        f"(target: p99 within floor + 1 ms)",
    ]
    (res_dir / "envoy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
