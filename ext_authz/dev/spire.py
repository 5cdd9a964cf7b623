"""A real SPIRE on loopback for tests and the demo: one spire-server and (optionally) one spire-agent.

Each process lives in a directory of its own: config, data (SQLite datastore), log and socket (the
server API socket; the agent's Workload API socket, which also serves Envoy SDS). The server listens
on 127.0.0.1 on a free port and keeps its CA keys in memory; the agent authenticates the server with
its bundle, attests with a join token, and attests workloads with the `unix` attestor (selectors such
as ``unix:uid:0``; no workload path discovery: uid is all we select on).
Readiness is always a condition polled — ``healthcheck`` answering, entries visible through the
Workload API — never a fixed sleep.

    with SpireServer(root / "server", "example.org", x509_svid_ttl="20s") as server:
        with SpireAgent(root / "agent", server) as agent:
            server.create_entries([Entry("spiffe://example.org/ns/frontend/sa/web", parent=agent.spiffe_id)])
            agent.wait_for_svids({"spiffe://example.org/ns/frontend/sa/web"})

Binaries come from ``ext_authz.dev.tools`` (built from tools/spire/go.mod if not cached yet).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from spiffe import WorkloadApiClient, X509Svid

from ..errors import Error
from . import tools

__all__ = [
    "Entry",
    "SpireAgent",
    "SpireError",
    "SpireServer",
    "short_dir",
    "spire_bin",
    "uid_selector",
    "wait_until",
]

# A unix socket path is at most 107 bytes on Linux (sun_path, NUL included).
MAX_SOCKET_PATH = 107
_T = TypeVar("_T")


class SpireError(Error, RuntimeError):
    """SPIRE did not start, or a command failed: the message names the command and its output."""


def spire_bin(name: str) -> Path:
    """spire-server or spire-agent, built from tools/spire if not in the cache."""
    return tools.executable("spire", name)


def uid_selector(uid: int | None = None) -> str:
    return f"unix:uid:{os.getuid() if uid is None else uid}"


def short_dir(prefix: str = "spire-") -> Path:
    """A fresh directory under the system temp dir: short enough for unix socket paths."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def wait_until(
    what: str,
    probe: Callable[[], _T | None],
    timeout: float,
    *,
    interval: float = 0.1,
    alive: Callable[[], None] | None = None,
) -> _T:
    """Poll ``probe`` until it returns something other than None (a condition, never a fixed sleep).
    ``alive`` raises if a process it watches has died; past ``timeout`` this raises SpireError."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise SpireError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _hcl(value: Any) -> str:
    """A value in SPIRE's HCL config: strings and numbers as JSON literals (valid HCL)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_hcl(v) for v in value) + "]"
    raise TypeError(f"no HCL for {value!r}")


def _block(name: str, body: dict[str, Any], indent: str = "") -> str:
    lines = [f"{indent}{name} {{"]
    for k, v in body.items():
        if isinstance(v, dict):
            lines.append(_block(k, v, indent + "    "))
        else:
            lines.append(f"{indent}    {k} = {_hcl(v)}")
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def _plugins(plugins: Sequence[tuple[str, str, dict[str, Any]]]) -> str:
    out = ["plugins {"]
    for kind, name, data in plugins:
        out.append(_block(f'{kind} "{name}"', {"plugin_data": data}, "    "))
    out.append("}")
    return "\n".join(out)


def _check_socket(path: Path) -> Path:
    if len(str(path).encode()) > MAX_SOCKET_PATH:
        raise SpireError(f"socket path too long for a unix socket ({len(str(path))} bytes): {path}")
    return path


@dataclass(frozen=True)
class Entry:
    """A registration entry. Several entries may share selectors: the workload then gets them all."""

    spiffe_id: str
    parent: str
    selectors: tuple[str, ...] = field(default_factory=lambda: (uid_selector(),))
    federates_with: tuple[str, ...] = ()  # trust domain IDs, spiffe://other.org; their bundles must be set
    dns_names: tuple[str, ...] = ()
    x509_svid_ttl: int = 0  # seconds; 0: the server's default_x509_svid_ttl
    jwt_svid_ttl: int = 0

    def as_json(self) -> dict[str, Any]:
        sels = []
        for s in self.selectors:
            kind, _, value = s.partition(":")
            sels.append({"type": kind, "value": value})
        out: dict[str, Any] = {"spiffe_id": self.spiffe_id, "parent_id": self.parent, "selectors": sels}
        if self.federates_with:
            out["federates_with"] = list(self.federates_with)
        if self.dns_names:
            out["dns_names"] = list(self.dns_names)
        if self.x509_svid_ttl:
            out["x509_svid_ttl"] = self.x509_svid_ttl
        if self.jwt_svid_ttl:
            out["jwt_svid_ttl"] = self.jwt_svid_ttl
        return out


class _Process:
    """One SPIRE process: its log file, a stop that never leaves it behind."""

    name = "spire"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.root / f"{self.name}.log"

    def _spawn(self, argv: list[str]) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.root)

    def alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise SpireError(f"{self.name} exited with {self.proc.returncode}: " + " | ".join(tail))

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class SpireServer(_Process):
    """spire-server on 127.0.0.1:<free port>: sqlite datastore, in-memory keys, join_token attestation.

    ``upstream`` (certificate file, key file) makes a CA of our own the trust anchor of the trust
    domain (the ``disk`` UpstreamAuthority): SPIRE's signing CA is then an intermediate under it.
    """

    name = "spire-server"

    def __init__(
        self,
        root: Path,
        trust_domain: str,
        *,
        x509_svid_ttl: str = "1h",
        jwt_svid_ttl: str = "5m",
        ca_ttl: str = "24h",
        agent_ttl: str = "1h",
        upstream: tuple[Path, Path] | None = None,
        port: int | None = None,
        log_level: str = "INFO",
    ) -> None:
        super().__init__(root)
        self.trust_domain = trust_domain
        self.x509_svid_ttl = x509_svid_ttl
        self.jwt_svid_ttl = jwt_svid_ttl
        self.ca_ttl = ca_ttl
        self.agent_ttl = agent_ttl
        self.upstream = upstream
        self.port = port
        self.log_level = log_level
        self.socket = root / "api.sock"

    @property
    def td_id(self) -> str:
        return f"spiffe://{self.trust_domain}"

    def write_config(self) -> Path:
        from ..serve.http import free_port

        self.root.mkdir(parents=True, exist_ok=True)
        _check_socket(self.socket)
        if self.port is None:
            self.port = free_port()
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        server = {
            "bind_address": "127.0.0.1",
            "bind_port": str(self.port),
            "socket_path": str(self.socket),
            "trust_domain": self.trust_domain,
            "data_dir": str(data),
            "log_level": self.log_level,
            "ca_key_type": "ec-p256",
            "ca_ttl": self.ca_ttl,
            "default_x509_svid_ttl": self.x509_svid_ttl,
            "default_jwt_svid_ttl": self.jwt_svid_ttl,
            "agent_ttl": self.agent_ttl,
            # New and changed entries reach the agents' sync sooner than the 5 s default.
            "experimental": {"cache_reload_interval": "1s"},
        }
        plugins: list[tuple[str, str, dict[str, Any]]] = [
            (
                "DataStore",
                "sql",
                {"database_type": "sqlite3", "connection_string": str(data / "datastore.sqlite3")},
            ),
            ("KeyManager", "memory", {}),
            ("NodeAttestor", "join_token", {}),
        ]
        if self.upstream is not None:
            cert, key = self.upstream
            plugins.append(
                ("UpstreamAuthority", "disk", {"cert_file_path": str(cert), "key_file_path": str(key)})
            )
        conf = self.root / "server.conf"
        conf.write_text(_block("server", server) + "\n\n" + _plugins(plugins) + "\n")
        return conf

    def start(self, timeout: float = 30) -> None:
        """Its agents need the server's port in their config before it starts, and SPIRE does not say
        which port a 0 became: a port is chosen free, and chosen again if something took it before
        spire-server bound it (it logs "address already in use" and exits)."""
        chosen = self.port is None
        for _ in range(5 if chosen else 1):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            conf = self.write_config()
            self._spawn([str(spire_bin("spire-server")), "run", "-config", str(conf)])
            try:
                wait_until("spire-server healthcheck", self._healthy, timeout, alive=self.alive)
                return
            except SpireError:
                said = self.log_path.read_text(errors="replace")[offset:]
                if not chosen or "address already in use" not in said:
                    raise
                self.port = None  # another one
        raise SpireError("spire-server: its port was taken five times over")

    def _healthy(self) -> bool | None:
        if not self.socket.exists():
            return None
        ok = self.cli("healthcheck", check=False).returncode == 0
        return True if ok else None

    def cli(
        self, command: str, *flags: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``spire-server COMMAND -socketPath <ours> FLAGS…``; COMMAND may be two words (``entry create``)."""
        argv = [str(spire_bin("spire-server")), *command.split(), "-socketPath", str(self.socket), *flags]
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False, timeout=60)
        if check and proc.returncode != 0:
            raise SpireError(
                f"spire-server {command} failed ({proc.returncode}): "
                + (proc.stderr.strip() or proc.stdout.strip())
            )
        return proc

    def join_token(self, ttl: int = 600) -> str:
        out = self.cli("token generate", "-ttl", str(ttl)).stdout
        for line in out.splitlines():
            if line.startswith("Token:"):
                return line.split(":", 1)[1].strip()
        raise SpireError(f"spire-server token generate printed no token: {out!r}")

    def bundle(self, fmt: str = "pem") -> str:
        """This server's own trust bundle, as PEM or SPIFFE bundle JSON."""
        return self.cli("bundle show", "-format", fmt).stdout

    def set_bundle(self, trust_domain_id: str, data: str, fmt: str = "spiffe") -> None:
        """Federate: store another trust domain's bundle (``spiffe://other.org``)."""
        self.cli("bundle set", "-id", trust_domain_id, "-format", fmt, stdin=data)

    def delete_bundle(self, trust_domain_id: str) -> None:
        """End federation: entries that federated with it no longer do (``-mode dissociate``)."""
        self.cli("bundle delete", "-id", trust_domain_id, "-mode", "dissociate")

    def create_entries(self, entries: Iterable[Entry]) -> list[str]:
        """Create entries in one call; returns their entry IDs."""
        payload = json.dumps({"entries": [e.as_json() for e in entries]})
        out = json.loads(self.cli("entry create", "-data", "-", "-output", "json", stdin=payload).stdout)
        ids: list[str] = []
        for r in out.get("results", []):
            if r.get("status", {}).get("code", 0) != 0:
                raise SpireError(f"spire-server entry create: {r['status'].get('message')}")
            ids.append(r["entry"]["id"])
        return ids

    def delete_entries(self, entry_ids: Iterable[str]) -> None:
        for entry_id in entry_ids:
            self.cli("entry delete", "-entryID", entry_id)

    def mint_x509(self, spiffe_id: str, directory: Path, ttl: str | None = None) -> tuple[Path, Path, Path]:
        """An X509-SVID straight from the server (no agent): returns (chain, key, bundle) PEM files."""
        directory.mkdir(parents=True, exist_ok=True)
        flags = ["-spiffeID", spiffe_id, "-write", str(directory)]
        if ttl:
            flags += ["-ttl", ttl]
        self.cli("x509 mint", *flags)
        return directory / "svid.pem", directory / "key.pem", directory / "bundle.pem"

    def __enter__(self) -> SpireServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SpireAgent(_Process):
    """spire-agent joined to ``server`` with a fresh join token; Workload API (and SDS) on ``socket``."""

    name = "spire-agent"

    def __init__(self, root: Path, server: SpireServer, *, log_level: str = "INFO") -> None:
        super().__init__(root)
        self.server = server
        self.log_level = log_level
        self.socket = root / "agent.sock"
        self.token = ""

    @property
    def spiffe_id(self) -> str:
        """The agent's own SPIFFE ID: the parent of the workload entries it serves."""
        return f"{self.server.td_id}/spire/agent/join_token/{self.token}"

    @property
    def socket_uri(self) -> str:
        return f"unix://{self.socket}"

    def write_config(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        _check_socket(self.socket)
        data = self.root / "data"
        data.mkdir(exist_ok=True)
        self.token = self.server.join_token()
        token_file = self.root / "join-token"
        token_file.write_text(self.token)
        token_file.chmod(0o600)
        bootstrap = self.root / "bootstrap-bundle.pem"
        bootstrap.write_text(self.server.bundle("pem"))  # the agent authenticates the server with it
        agent = {
            "trust_domain": self.server.trust_domain,
            "server_address": "127.0.0.1",
            "server_port": str(self.server.port),
            "socket_path": str(self.socket),
            "data_dir": str(data),
            "log_level": self.log_level,
            "trust_bundle_path": str(bootstrap),
            "join_token_file": str(token_file),
            # Pick up new entries and rotated SVIDs within a second rather than five.
            "experimental": {"sync_interval": "1s"},
        }
        plugins: list[tuple[str, str, dict[str, Any]]] = [
            ("NodeAttestor", "join_token", {}),
            ("KeyManager", "memory", {}),
            ("WorkloadAttestor", "unix", {}),
        ]
        conf = self.root / "agent.conf"
        conf.write_text(_block("agent", agent) + "\n\n" + _plugins(plugins) + "\n")
        return conf

    def start(self, timeout: float = 30) -> None:
        conf = self.write_config()
        self._spawn([str(spire_bin("spire-agent")), "run", "-config", str(conf)])
        wait_until("spire-agent healthcheck", self._healthy, timeout, alive=self.alive)

    def _healthy(self) -> bool | None:
        if not self.socket.exists():
            return None
        argv = [str(spire_bin("spire-agent")), "healthcheck", "-socketPath", str(self.socket)]
        ok = subprocess.run(argv, capture_output=True, check=False, timeout=30).returncode == 0
        return True if ok else None

    def svids(self, timeout: float = 2) -> dict[str, X509Svid]:
        """The X509-SVIDs the Workload API gives this process now, by SPIFFE ID ({} if none yet)."""
        with WorkloadApiClient(socket_path=self.socket_uri) as client:
            try:
                svids = client.fetch_x509_svids(timeout=timeout)
            except Exception:  # PermissionDenied "no identity issued" until the entries reach the agent
                return {}
        return {str(s.spiffe_id): s for s in svids}

    def wait_for_svids(self, spiffe_ids: Iterable[str], timeout: float = 30) -> dict[str, X509Svid]:
        """Wait until the Workload API serves an X509-SVID for every one of ``spiffe_ids``."""
        want = set(spiffe_ids)

        def probe() -> dict[str, X509Svid] | None:
            have = self.svids()
            return have if want <= have.keys() else None

        return wait_until(f"X509-SVIDs for {sorted(want)}", probe, timeout, interval=0.2, alive=self.alive)

    def wait_for_bundles(self, trust_domains: Iterable[str], timeout: float = 30) -> None:
        """Wait until the Workload API's X.509 context carries bundles for exactly these trust domains."""
        want = set(trust_domains)

        def probe() -> bool | None:
            with WorkloadApiClient(socket_path=self.socket_uri) as client:
                try:
                    ctx = client.fetch_x509_context(timeout=2)
                except Exception:
                    return None
            have = {b.trust_domain.name for b in ctx.x509_bundle_set.bundles}
            return True if have == want else None

        wait_until(f"X.509 bundles for {sorted(want)}", probe, timeout, interval=0.2, alive=self.alive)

    def __enter__(self) -> SpireAgent:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
