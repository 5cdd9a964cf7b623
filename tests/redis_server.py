"""A real redis-server for tests, on a free loopback port, with persistence (AOF) in a temp dir; with
``secure=True`` it speaks only TLS (a CA and server certificate made here) and requires a password.

redis-server cannot bind port 0 and say which port it took, so a port is chosen free and the start is
retried with another when something else took it meanwhile (redis-server logs "Address already in use"
and exits). Ready means its own log says so, never merely that something answers on the port."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ext_authz.dev import pki
from ext_authz.serve.http import free_port

ATTEMPTS = 5


def launch(
    argv_for: Callable[[int], list[str]],
    log: Path,
    port: int | None,
    ready: str = "Ready to accept connections",
) -> tuple[subprocess.Popen[bytes], int]:
    """Start redis-server on ``port``, or on a free one (another, if it is taken before redis binds it).
    Returns once this process logged ``ready`` (that it accepts connections; a Sentinel, that it
    monitors its master)."""
    for _ in range(ATTEMPTS if port is None else 1):
        chosen = port or free_port()
        offset = log.stat().st_size if log.exists() else 0
        proc = subprocess.Popen(argv_for(chosen), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")[offset:] if log.exists() else ""
            if ready in text and proc.poll() is None:
                return proc, chosen
            if proc.poll() is not None:
                break
            time.sleep(0.02)
        else:
            proc.kill()
            proc.wait()
            raise TimeoutError("redis-server did not start")
        if "Address already in use" not in text:
            raise RuntimeError(f"redis-server exited: {text[-500:]}")
    raise RuntimeError(f"redis-server: the port was taken {ATTEMPTS} times over")


def redis_binary(name: str = "redis-server") -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("EXT_AUTHZ_SKIP_REDIS"):
            pytest.skip(f"{name} not installed and EXT_AUTHZ_SKIP_REDIS is set")
        pytest.fail(f"{name} is not installed: `make test` installs it (Debian package redis-server)")
    return found


class RedisServer:
    def __init__(
        self, directory: Path, port: int | None = None, *, secure: bool = False, replica_of: int = 0
    ) -> None:
        self.dir = directory
        self.replica_of = replica_of  # the primary's port: this one starts as its replica
        self.port = port or 0  # chosen at the first start, then kept (a restart comes back on it)
        self.secure = secure
        self.proc: subprocess.Popen[bytes] | None = None
        self.password = secrets.token_urlsafe(24) if secure else ""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hmac_key = self.dir / "state-hmac.key"
        self.hmac_key.write_text(secrets.token_hex(32))
        self.password_file = self.dir / "password"
        self.password_file.write_text(self.password + "\n")
        if secure:
            ca = pki.make_ca("redis test CA")
            server = pki.make_leaf(ca, dns=["localhost"], ips=["127.0.0.1"], common_name="redis", days=2)
            (self.dir / "ca.pem").write_text(ca.pem)
            (self.dir / "server.pem").write_text(server.pem)
            (self.dir / "server.key").write_text(server.key_pem)
            os.chmod(self.dir / "server.key", 0o600)

    @property
    def url(self) -> str:
        return f"{'rediss' if self.secure else 'redis'}://127.0.0.1:{self.port}/0"

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    def settings(self) -> dict[str, Any]:
        """ext-authz's ``state:`` section for this server."""
        out: dict[str, Any] = {"url": self.url, "hmac_key_file": str(self.hmac_key)}
        if self.secure:
            out.update(password_file=str(self.password_file), tls={"ca": str(self.ca)})
        return out

    def cli(self, *args: str) -> str:
        """Run redis-cli against this server, as anyone with its address and password could."""
        argv = [redis_binary("redis-cli"), "-h", "127.0.0.1", "-p", str(self.port), "--no-auth-warning"]
        if self.secure:
            argv += ["--tls", "--cacert", str(self.ca), "-a", self.password]
        res = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=10, check=False)
        if res.returncode != 0 or res.stdout.startswith("(error)") or res.stdout.startswith("ERR"):
            raise RuntimeError(f"redis-cli {' '.join(args[:2])}: {res.stdout}{res.stderr}")
        return res.stdout

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc, self.port = launch(self._argv, self.dir / "redis.log", self.port or None)

    def _argv(self, port: int) -> list[str]:
        argv = [
            redis_binary(),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.dir / "redis.log"),
        ]
        if self.secure:
            argv += [
                "--port",
                "0",
                "--tls-port",
                str(port),
                "--tls-cert-file",
                str(self.dir / "server.pem"),
                "--tls-key-file",
                str(self.dir / "server.key"),
                "--tls-ca-cert-file",
                str(self.ca),
                "--tls-auth-clients",
                "no",
                "--requirepass",
                self.password,
            ]
        else:
            argv += ["--port", str(port)]
        if self.replica_of:
            argv += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        # A replica syncs at once (not after the 5 s wait for others), and a stop does not wait 10 s for
        # replicas to catch up nor refuse while its first AOF is written: the failover tests start, stop and
        # kill servers in turn.
        argv += [
            "--repl-diskless-sync-delay",
            "0",
            "--shutdown-timeout",
            "0",
            "--shutdown-on-sigterm",
            "force",
        ]
        return argv

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class SentinelServer:
    """A Redis Sentinel on loopback watching the primary ``mymaster`` (quorum 2 of 3, down after 500 ms)."""

    MASTER = "mymaster"

    def __init__(self, directory: Path, primary_port: int, *, secure: RedisServer | None = None) -> None:
        """``secure``: the primary is that TLS server with a password; this Sentinel then speaks TLS too
        (the primary's certificate and CA), knows the primary's password, and asks its own."""
        self.dir = directory
        self.primary_port = primary_port
        self.secure = secure
        self.password = secrets.token_urlsafe(24) if secure else ""
        self.password_file = self.dir / "sentinel-password"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.dir.mkdir(parents=True, exist_ok=True)
        self.password_file.write_text(self.password + "\n")

    def start(self) -> None:
        self.proc, self.port = launch(self._argv, self.dir / "sentinel.log", None, ready="+monitor master")

    def _argv(self, port: int) -> list[str]:
        conf = self.dir / "sentinel.conf"  # Sentinel rewrites its own config: written afresh per start
        listen = f"port {port}\n"
        if self.secure:
            d = self.secure.dir
            listen = (
                f"port 0\ntls-port {port}\n"
                f"tls-cert-file {d / 'server.pem'}\ntls-key-file {d / 'server.key'}\n"
                f"tls-ca-cert-file {self.secure.ca}\ntls-auth-clients no\ntls-replication yes\n"
                f"requirepass {self.password}\n"
            )
        conf.write_text(
            f"{listen}bind 127.0.0.1\ndir {self.dir}\nlogfile {self.dir / 'sentinel.log'}\n"
            f"sentinel monitor {self.MASTER} 127.0.0.1 {self.primary_port} 2\n"
            + (f"sentinel auth-pass {self.MASTER} {self.secure.password}\n" if self.secure else "")
            + f"sentinel down-after-milliseconds {self.MASTER} 500\n"
            f"sentinel failover-timeout {self.MASTER} 5000\n"
            f"sentinel parallel-syncs {self.MASTER} 1\n"
        )
        return [redis_binary(), str(conf), "--sentinel"]

    def cli(self, *args: str) -> str:
        argv = [redis_binary("redis-cli"), "-h", "127.0.0.1", "-p", str(self.port), "--no-auth-warning"]
        if self.secure:
            argv += ["--tls", "--cacert", str(self.secure.ca), "-a", self.password]
        argv += args
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False).stdout

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None
