"""The demo stack with SPIRE issuing the identities: `make run SPIRE=1` and the SPIRE e2e tests.

The same three processes as `make run` (ext-authz, Envoy with envoy.yaml, the demo upstream), but:

- Envoy takes its server certificate (the backend's X509-SVID, by SPIFFE ID) and its validation
  context (``ALL``: every trust domain by its own bundle, federated ones included, checked by Envoy's
  SPIFFE certificate validator) from the SPIRE agent over SDS, on the agent's Workload API socket;
- ext-authz takes its bundles from the Workload API (``trust_domains: {TD: {workload_api: …}}``);
- the demo workloads' X509-SVIDs, the bundle and a JWT-SVID are fetched from the agent and written
  to files that the printed curl commands use, and rewritten whenever SPIRE rotates them.

Everything listens on 127.0.0.1. ``EXT_AUTHZ_DEMO_PORTS=free`` makes the demo take free ports instead
of envoy.yaml's (the test that runs the printed commands uses it).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from spiffe import SpiffeId, TrustDomain, WorkloadApiClient, X509BundleSet, X509Svid
from spiffe.workloadapi.workload_api_client import StreamCancelHandler
from spiffe.workloadapi.x509_context import X509Context

from .demo import BACKEND_ID, DEMO_TD, WORKLOADS
from .spire import MAX_SOCKET_PATH, Entry, SpireAgent, SpireError, SpireServer, short_dir, wait_until
from .stack import DemoBusy, Ports, Stack, _try_these, demo_session, fresh_demo, start_clean

__all__ = [
    "SDS_CLUSTER",
    "SpireDemo",
    "SpireStack",
    "add_plain_x509_listener",
    "envoy_with_sds",
    "run_spire_demo",
    "write_pem",
]

SDS_CLUSTER = "spire_agent"


def _sds_config() -> dict[str, Any]:
    return {
        "resource_api_version": "V3",
        "api_config_source": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": SDS_CLUSTER}}],
        },
    }


def _tls_contexts(doc: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for listener in doc.get("static_resources", {}).get("listeners", []):
        for chain in listener.get("filter_chains", []):
            ts = chain.get("transport_socket")
            if ts and ts.get("name") == "envoy.transport_sockets.tls":
                ctx: dict[str, Any] = ts["typed_config"]["common_tls_context"]
                yield ctx


def envoy_with_sds(
    doc: Mapping[str, Any], agent_socket: Path, server_id: str = BACKEND_ID, validation: str = "ALL"
) -> dict[str, Any]:
    """An Envoy config whose TLS material comes from the SPIRE agent over SDS instead of files.

    Every listener's certificate becomes the X509-SVID named ``server_id``; every file validation
    context becomes the SDS validation context ``validation`` (``ALL``: all bundles, each for its own
    trust domain; or ``spiffe://TD``, or ``ROOTCA``). Trust is then per trust domain, so the file
    config's SAN prefix for example.org is dropped: which SPIFFE IDs may do what is ext-authz's policy.
    """
    out = copy.deepcopy(dict(doc))
    for ctx in _tls_contexts(out):
        if ctx.pop("tls_certificates", None) is not None:
            ctx["tls_certificate_sds_secret_configs"] = [{"name": server_id, "sds_config": _sds_config()}]
        if ctx.pop("validation_context", None) is not None:
            ctx["validation_context_sds_secret_config"] = {"name": validation, "sds_config": _sds_config()}
    # SDS needs a node identity; the agent attests Envoy itself as a workload (unix:uid).
    out.setdefault("node", {"id": "ext-authz-demo", "cluster": "ext-authz-demo"})
    out["static_resources"].setdefault("clusters", []).append(
        {
            "name": SDS_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "load_assignment": {
                "cluster_name": SDS_CLUSTER,
                "endpoints": [
                    {"lb_endpoints": [{"endpoint": {"address": {"pipe": {"path": str(agent_socket)}}}}]}
                ],
            },
        }
    )
    return out


def add_plain_x509_listener(
    doc: dict[str, Any], *, like: str, name: str, port: int, roots: Path
) -> dict[str, Any]:
    """A copy of listener ``like`` that validates client certificates the plain X.509 way: any chain to
    any root in ``roots``, whatever trust domain its SPIFFE ID names (Envoy without the SPIFFE
    validator). Its route keeps ``like``'s context extensions, so the same rules apply."""
    listeners = doc["static_resources"]["listeners"]
    source = next(li for li in listeners if li["name"] == like)
    new = copy.deepcopy(source)
    new["name"] = name
    new["address"]["socket_address"]["port_value"] = port
    for chain in new["filter_chains"]:
        ctx = chain["transport_socket"]["typed_config"]["common_tls_context"]
        ctx.pop("validation_context_sds_secret_config", None)
        ctx["validation_context"] = {"trusted_ca": {"filename": str(roots)}}
    listeners.append(new)
    return doc


@dataclass
class SpireStack(Stack):
    """ext-authz + Envoy + upstream (see Stack), with trust and certificates from a SPIRE agent."""

    agent_socket: Path = Path("/nonexistent")
    trust_domains: tuple[str, ...] = (DEMO_TD,)
    server_id: str = BACKEND_ID
    validation: str = "ALL"
    plain_x509: tuple[int, Path] | None = None  # (port, roots file): see add_plain_x509_listener
    listener_names: list[str] = field(default_factory=list)

    def write_configs(self) -> None:
        super().write_configs()
        cfg = yaml.safe_load(self.config_path.read_text())
        uri = f"unix://{self.agent_socket}"
        cfg["trust_domains"] = {td: {"workload_api": uri} for td in self.trust_domains}
        if self.check == "tls":  # ext-authz serves its own X509-SVID, from the same agent
            cfg["check"]["tls"] = {"workload_api": uri}
        cfg.update({k: v for k, v in self.overrides.items() if k != "trust_domains"})
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        envoy_json = self.run_dir / "envoy.json"
        doc = envoy_with_sds(
            json.loads(envoy_json.read_text()), self.agent_socket, self.server_id, self.validation
        )
        if self.check == "tls":  # Envoy calls Check with its SVID from SDS, and checks ext-authz's
            cluster = next(c for c in doc["static_resources"]["clusters"] if c["name"] == "ext_authz")
            ctx = cluster["transport_socket"]["typed_config"]["common_tls_context"]
            ctx.pop("tls_certificates")
            ctx.pop("validation_context")
            ctx["tls_certificate_sds_secret_configs"] = [
                {"name": self.server_id, "sds_config": _sds_config()}
            ]
            ctx["validation_context_sds_secret_config"] = {
                "name": f"spiffe://{DEMO_TD}",
                "sds_config": _sds_config(),
            }
        if self.plain_x509 is not None:
            port, roots = self.plain_x509
            add_plain_x509_listener(doc, like="mesh", name="mesh_x509", port=port, roots=roots)
        self.listener_names = [li["name"] for li in doc["static_resources"]["listeners"]]
        envoy_json.write_text(json.dumps(doc, indent=1))

    def start(self, timeout: float = 30) -> None:
        super().start(timeout)
        # Envoy's listeners warm until SDS has delivered their secrets: wait until every one is active.
        envoy = self.procs["envoy"]
        want = len(self.listener_names)

        def alive() -> None:
            if envoy.poll() is not None:
                raise RuntimeError(f"envoy exited with {envoy.returncode}; see {self.log_path('envoy')}")

        def listeners_active() -> bool | None:
            stats = _envoy_stats(self.ports.envoy_admin, "listener_manager.total_listeners_")
            ok = stats.get("listener_manager.total_listeners_active") == want and not stats.get(
                "listener_manager.total_listeners_warming"
            )
            return True if ok else None

        try:
            wait_until(
                "Envoy's listeners to receive their SDS secrets", listeners_active, timeout, alive=alive
            )
        except SpireError as exc:
            raise TimeoutError(str(exc)) from exc
        self.read_listener_ports()  # a listener that was warming is listed once active


def _envoy_stats(admin_port: int, prefix: str) -> dict[str, int]:
    url = f"http://127.0.0.1:{admin_port}/stats?filter=^{prefix}"
    out: dict[str, int] = {}
    with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
        for line in r.read().decode().splitlines():
            name, _, value = line.partition(": ")
            with contextlib.suppress(ValueError):
                out[name] = int(value)
    return out


def write_pem(path: Path, data: str | bytes, *, secret: bool = False) -> None:
    """Write a file whole (a reader sees the old or the new content, never half): temp file + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    tmp.replace(path)


def svid_pems(svid: X509Svid) -> tuple[bytes, bytes]:
    """(certificate chain, PKCS#8 key) PEM of a spiffe.X509Svid."""
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in svid.cert_chain)
    key = svid.private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return chain, key


def bundle_pem(bundle_set: X509BundleSet, trust_domain: str) -> bytes:
    bundle = bundle_set.get_bundle_for_trust_domain(TrustDomain(trust_domain))
    if bundle is None:
        return b""
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in bundle.x509_authorities)


class SpireDemo:
    """SPIRE (server + agent + the demo's entries) and the SPIRE-backed stack, for `make run SPIRE=1`.

    Files under ``out``, laid out like the file demo so the same curl commands apply:
    ``bundle/root.pem`` (example.org's X.509 bundle), ``svid/{frontend,billing}.{pem,key}``,
    ``tokens/frontend-jwt-svid.jwt`` (a JWT-SVID from the agent) and the OIDC tokens copied from the
    file demo (people are not SPIFFE workloads). They are rewritten as SPIRE rotates them.
    """

    def __init__(
        self, demo_dir: Path, envoy_template: Path, ports: Ports, *, x509_svid_ttl: str = "1h"
    ) -> None:
        self.demo_dir = demo_dir.resolve()
        self.out = self.demo_dir / "spire"
        self.run_dir = self.out / ".run"
        spire_root = self.run_dir / "spire"
        if len(str(spire_root / "server" / "api.sock")) > MAX_SOCKET_PATH:
            spire_root = short_dir("ext-authz-spire-")
        self.spire_root = spire_root
        self.server = SpireServer(spire_root / "server", DEMO_TD, x509_svid_ttl=x509_svid_ttl)
        self.agent = SpireAgent(spire_root / "agent", self.server)
        self.stack = SpireStack(
            demo_dir=self.demo_dir,
            envoy_template=envoy_template,
            run_dir=self.run_dir,
            ports=ports,
            agent_socket=self.agent.socket,
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._handles: list[StreamCancelHandler] = []
        self._client: WorkloadApiClient | None = None

    def entries(self) -> list[Entry]:
        parent = self.agent.spiffe_id
        out = [Entry(sid, parent=parent) for sid in WORKLOADS.values()]
        out.append(Entry(BACKEND_ID, parent=parent, dns_names=("localhost",)))
        return out

    def start(self) -> None:
        for d in (self.out / "svid", self.out / "bundle", self.out / "tokens"):
            shutil.rmtree(d, ignore_errors=True)  # nothing stale from an earlier run
        self.run_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.spire_root, ignore_errors=True)  # a fresh trust domain each time
        self.server.start()
        self.agent.start()
        self.server.create_entries(self.entries())
        self.agent.wait_for_svids([*WORKLOADS.values(), BACKEND_ID])
        self._start_writers()
        for name in ("alice.jwt", "alice-expired.jwt", "forged.jwt", "alice-dpop.jwt", "alice-dpop.key.json"):
            copied = self.out / "tokens" / name
            shutil.copyfile(self.demo_dir / "tokens" / name, copied)
            copied.chmod(0o600)  # tokens and alice's key are secrets, as in the file demo
        (self.out / "requests").mkdir(exist_ok=True)  # the offline `ext-authz check` example's request
        shutil.copyfile(
            self.demo_dir / "requests/alice-profile.json", self.out / "requests/alice-profile.json"
        )
        # The printed `ext-authz test` example: the demo's policy tests, against the config copied below.
        shutil.copyfile(self.demo_dir / "policy-tests.yaml", self.out / "policy-tests.yaml")
        self.stack.start()
        # The config in force, where the printed `ext-authz check --config` example looks for it.
        header = (
            "# ext-authz config of `make run SPIRE=1` (a copy; the one served is .run/ext-authz.yaml).\n"
            "# Its bundles come from the Workload API while serving: `ext-authz check` offline has none,\n"
            "# so it can decide tokens and policy, not X509-SVIDs.\n"
        )
        write_pem(self.out / "config.yaml", header + self.stack.config_path.read_text())

    def _start_writers(self) -> None:
        """Keep the SVID, bundle and JWT-SVID files current; the first write happens before returning."""
        client = self._client = WorkloadApiClient(socket_path=self.agent.socket_uri, default_timeout=10)
        self._write_x509(client.fetch_x509_context())
        expiry = self._write_jwt()
        self._handles.append(
            client.stream_x509_contexts(self._write_x509, self._on_error, retry_connect=True)
        )
        t = threading.Thread(target=self._refresh_jwt, args=(expiry,), name="jwt-svid-refresh", daemon=True)
        t.start()
        self._threads.append(t)

    def _write_x509(self, ctx: X509Context) -> None:
        by_id = {str(s.spiffe_id): s for s in ctx.x509_svids}
        for name, sid in WORKLOADS.items():
            if sid in by_id:
                chain, key = svid_pems(by_id[sid])
                write_pem(self.out / "svid" / f"{name}.key", key, secret=True)
                write_pem(self.out / "svid" / f"{name}.pem", chain)
        write_pem(self.out / "bundle" / "root.pem", bundle_pem(ctx.x509_bundle_set, DEMO_TD))

    def _on_error(self, exc: Exception) -> None:
        print(f"Workload API stream: {exc} (retrying; the files keep the last SVIDs)", file=sys.stderr)

    def _write_jwt(self) -> float:
        assert self._client is not None
        svid = self._client.fetch_jwt_svid(audience={BACKEND_ID}, subject=SpiffeId(WORKLOADS["frontend"]))
        write_pem(self.out / "tokens" / "frontend-jwt-svid.jwt", svid.token + "\n", secret=True)
        return float(svid.expiry)

    def _refresh_jwt(self, expiry: float) -> None:
        """Fetch again when half the token's remaining life is gone (the agent renews it past half-life)."""
        while not self._stop.wait(max(1.0, (expiry - time.time()) / 2)):
            try:
                expiry = self._write_jwt()
            except Exception as exc:  # the agent may be restarting; try again soon
                print(f"JWT-SVID refresh: {exc} (retrying)", file=sys.stderr)
                expiry = time.time() + 2

    def stop(self) -> None:
        self._stop.set()
        for h in self._handles:
            with contextlib.suppress(Exception):
                h.cancel()
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
        for t in self._threads:
            t.join(timeout=5)
        self.stack.stop()
        self.agent.stop()
        self.server.stop()

    def __enter__(self) -> SpireDemo:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_spire_demo(demo_dir: Path, envoy_template: Path) -> int:
    """`ext-authz dev up --spire`: run until Ctrl-C or SIGTERM, printing the requests to try."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    ports = Ports.free() if os.environ.get("EXT_AUTHZ_DEMO_PORTS") == "free" else Ports()
    # The lock first: a refused second demo must not touch the running one's files.
    try:
        with demo_session(demo_dir.resolve()):
            fresh_demo(demo_dir)  # the policy, the OIDC issuer and the people's tokens: the file demo's
            demo = SpireDemo(demo_dir, envoy_template, ports)
            start_clean(demo.run_dir)
            return _run_spire_demo(demo)
    except DemoBusy as exc:
        print(f"ext-authz: {exc}", file=sys.stderr)
        return 3


def _run_spire_demo(demo: SpireDemo) -> int:
    try:
        with demo:
            print(
                f"SPIRE issues the identities: spire-server for {DEMO_TD} and a spire-agent, Workload API and"
                f" SDS at {demo.agent.socket}\n(SPIRE logs: {demo.spire_root}/*/*.log). SVIDs, bundle and"
                f" JWT-SVID below are fetched from the agent and kept current.",
                flush=True,
            )
            print(_try_these(demo.out, demo.stack.ports, demo.stack.config_path), flush=True)
            procs = {**demo.stack.procs, "spire-server": demo.server.proc, "spire-agent": demo.agent.proc}
            with contextlib.suppress(KeyboardInterrupt):
                while all(p is not None and p.poll() is None for p in procs.values()):
                    time.sleep(0.5)
            dead = [n for n, p in procs.items() if p is None or p.poll() is not None]
            if dead:
                print(f"stopped because {', '.join(dead)} exited; see {demo.run_dir}", file=sys.stderr)
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        print(f"demo failed to start: {exc}; logs in {demo.run_dir} and {demo.spire_root}", file=sys.stderr)
        return 1
    return 0
