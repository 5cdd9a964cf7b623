"""The Helm chart's Redis, run for real: redis-server with the StatefulSet's own arguments and the
certificate, CA and password the chart generated, its readiness probe's command as kubelet would run it,
and two ext-authz replicas opened from the state section of the chart's rendered config.yaml sharing a
revocation through it. Only what a pod would get differently is rewritten: file paths (the mounted
Secrets), the port (a free one), and the URL's host (the Service name does not resolve here; the
certificate names localhost too, which is what the in-pod probe uses)."""

from __future__ import annotations

import base64
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ext_authz.clock import SystemClock
from ext_authz.config import parse_settings
from ext_authz.settings import Settings
from ext_authz.state.backends import open_log
from ext_authz.state.backends.redis import RedisLog
from ext_authz.state.integrity import Sealer, load_key
from ext_authz.state.records import Revocation
from ext_authz.state.replica import Replica
from tests.helm import CASES, RELEASE, Rendered, render
from tests.redis_server import launch, redis_binary
from tests.waiting import until, until_sync

FRONTEND = "spiffe://example.org/ns/frontend/sa/web"


def _kubelet_expand(arg: str, env: dict[str, str]) -> str:
    """$(NAME) in a container's args, as the kubelet expands it from the container's env."""
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)


def _secret(r: Rendered, name: str) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in r.get("Secret", name)["data"].items()}


class ChartRedis:
    def __init__(self, r: Rendered, root: Path) -> None:
        self.root = root
        self.port = 0  # chosen by launch() at start
        container: dict[str, Any] = r.container("redis")
        self.container = container
        secrets = {s["metadata"]["name"]: _secret(r, s["metadata"]["name"]) for s in r.of("Secret")}
        self.env = {
            e["name"]: secrets[e["valueFrom"]["secretKeyRef"]["name"]][
                e["valueFrom"]["secretKeyRef"]["key"]
            ].decode()
            for e in container["env"]
        }
        # the pod's volumes: /tls (the TLS Secret) and /data (the AOF volume)
        (root / "tls").mkdir(parents=True)
        (root / "data").mkdir()
        for k, v in secrets[f"{RELEASE}-redis-tls"].items():
            (root / "tls" / k).write_bytes(v)
        (root / "tls/tls.key").chmod(0o600)
        self.mounted = {f"{RELEASE}-redis-auth": secrets[f"{RELEASE}-redis-auth"]}
        self.mounted[f"{RELEASE}-state-hmac"] = secrets[f"{RELEASE}-state-hmac"]
        self.mounted[f"{RELEASE}-redis-tls"] = secrets[f"{RELEASE}-redis-tls"]
        self.proc: subprocess.Popen[bytes] | None = None

    def local(self, text: str) -> str:
        text = text.replace("/tls/", f"{self.root}/tls/").replace("/data", f"{self.root}/data")
        return re.sub(r"\b6379\b", str(self.port), text)

    def argv(self, port: int) -> list[str]:
        self.port = port
        args = [self.local(_kubelet_expand(a, self.env)) for a in self.container["args"]]
        assert self.container["command"] == ["redis-server"]
        # loopback only in a test; the pod binds Redis's default (all interfaces)
        return [redis_binary(), *args, "--bind", "127.0.0.1", "--logfile", str(self.root / "redis.log")]

    def probe(self, password: str) -> int:
        """The readiness probe's exec command, with the container's REDISCLI_AUTH."""
        command = [self.local(a) for a in self.container["readinessProbe"]["exec"]["command"]]
        assert command[:2] == ["sh", "-c"]
        return subprocess.run(
            command,
            env={"PATH": "/usr/bin:/bin", "REDISCLI_AUTH": password},
            capture_output=True,
            timeout=30,
            check=False,
        ).returncode

    def start(self) -> None:
        self.proc, self.port = launch(self.argv, self.root / "redis.log", self.port or None)
        until_sync(
            lambda: self.alive() and self.probe(self.env["REDISCLI_AUTH"]) == 0, "the chart's Redis ready"
        )

    def alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = self.root / "redis.log"
            pytest.fail(f"redis-server exited: {log.read_text()[-800:] if log.exists() else ''}")
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def chart_redis(tmp_path: Path) -> Iterator[tuple[Rendered, ChartRedis]]:
    r = render(next(c for c in CASES if c.name == "shared"))
    server = ChartRedis(r, tmp_path / "redis")
    server.start()
    yield r, server
    server.stop()


def replica_settings(r: Rendered, server: ChartRedis, root: Path) -> Settings:
    """The rendered config.yaml, with the chart's Secret mounts as files under root."""
    pod = r.deployment()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    text = r.ext_authz_config()
    for m in r.container("ext-authz")["volumeMounts"]:
        secret = volumes[m["name"]].get("secret")
        if secret is None or secret["secretName"] not in server.mounted:
            continue
        local = root / m["name"]
        local.mkdir(parents=True)
        for item in secret["items"]:
            (local / item["path"]).write_bytes(server.mounted[secret["secretName"]][item["key"]])
        text = text.replace(m["mountPath"] + "/", f"{local}/")
    cfg = yaml.safe_load(text)
    host = cfg["state"]["url"].split("://", 1)[1].split("/", 1)[0]
    cfg["state"]["url"] = cfg["state"]["url"].replace(host, f"localhost:{server.port}")
    return parse_settings(yaml.safe_dump(cfg), root / "config.yaml")


def replica(settings: Settings) -> Replica:
    log = open_log(settings.state)
    assert isinstance(log, RedisLog)
    log.block_ms = 200
    assert settings.state.hmac_key_file is not None
    return Replica(log, Settings, sealer=Sealer(load_key(settings.state.hmac_key_file)), clock=SystemClock())


def test_the_probe_refuses_a_wrong_password(chart_redis: tuple[Rendered, ChartRedis]) -> None:
    _, server = chart_redis
    assert server.probe(server.env["REDISCLI_AUTH"]) == 0
    assert server.probe("not-the-password") != 0
    assert server.probe("") != 0


def test_plaintext_is_not_served(chart_redis: tuple[Rendered, ChartRedis]) -> None:
    _, server = chart_redis
    res = subprocess.run(
        [redis_binary("redis-cli"), "-h", "127.0.0.1", "-p", str(server.port), "--no-auth-warning", "ping"],
        env={"REDISCLI_AUTH": server.env["REDISCLI_AUTH"]},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert "PONG" not in res.stdout


async def test_ext_authz_replicas_share_state_through_the_charts_redis(
    chart_redis: tuple[Rendered, ChartRedis], tmp_path: Path
) -> None:
    r, server = chart_redis
    settings = replica_settings(r, server, tmp_path / "pod")
    assert settings.state.scheme == "rediss" and settings.state.tls is not None
    a, b = replica(settings), replica(settings)
    try:
        await a.start()
        await b.start()
        now = time.time()
        await a.put(Revocation("r1", "spiffe_id", FRONTEND, "test", "tester", now))
        await until(lambda: b.snapshot.revoked("spiffe_id", FRONTEND, now) is not None, "the revocation on b")
    finally:
        await a.close()
        await b.close()
