"""`workers: N`: N serving processes on one address (SO_REUSEPORT), one supervisor.

The supervisor starts the workers, serves ``http_listen`` itself (``/healthz``, ``/readyz`` and one
``/metrics`` aggregating every worker's), restarts a worker that dies, and on SIGTERM forwards it to
all of them and waits for each to drain. Workers share state through the store (SQLite or Redis);
worker 0 serves the admin API.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from .config import Config
from .dev.stack import free_port
from .observe.httpd import serve_get
from .observe.metrics import CONTENT_TYPE
from .server import WORKER_ENV, WORKER_HTTP_ENV, StopSignals

__all__ = ["Supervisor", "aggregate_metrics"]

log = logging.getLogger("ext_authz.workers")
# Gauges that describe shared state are the same in every worker: report one value, not the sum.
_SHARED_GAUGES = frozenset(
    (
        "ext_authz_active_revocations",
        "ext_authz_active_grants",
        "ext_authz_open_exceptions",
        "ext_authz_trust_bundle_age_seconds",
    )
)
_MIN_GAUGES = frozenset(("ext_authz_ready", "ext_authz_state_connected"))


def aggregate_metrics(scrapes: list[str]) -> str:
    """Sum counters and histograms across workers; shared-state gauges take the max, health the min."""
    values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    meta: dict[str, tuple[str, str]] = {}
    order: list[tuple[str, tuple[tuple[str, str], ...]]] = []
    family_of: dict[str, str] = {}
    for text in scrapes:
        for fam in text_string_to_metric_families(text):
            meta.setdefault(fam.name, (fam.type, fam.documentation))
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                family_of[s.name] = fam.name
                if key not in values:
                    order.append(key)
                    values[key] = s.value
                elif fam.name in _SHARED_GAUGES:
                    values[key] = max(values[key], s.value)
                elif fam.name in _MIN_GAUGES:
                    values[key] = min(values[key], s.value)
                else:
                    values[key] = values[key] + s.value
    lines: list[str] = []
    done: set[str] = set()
    for name, labels in order:
        family = family_of[name]
        if family not in done:
            typ, doc = meta[family]
            lines.append(f"# HELP {family} {doc}")
            lines.append(f"# TYPE {family} {typ}")
            done.add(family)
        lab = ",".join(f'{k}="{v}"' for k, v in labels)
        lines.append(
            f"{name}{{{lab}}} {values[(name, labels)]}" if lab else f"{name} {values[(name, labels)]}"
        )
    return "\n".join(lines) + "\n"


class Worker:
    def __init__(self, index: int, config: Path) -> None:
        self.index = index
        self.config = config
        self.http = f"127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        env = {**os.environ, WORKER_ENV: str(self.index), WORKER_HTTP_ENV: self.http}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ext_authz.cli", "serve", "--config", str(self.config)], env=env
        )

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.http}{path}", timeout=2) as r:
                return r.status, r.read().decode()
        except OSError:
            return 0, ""


class Supervisor:
    def __init__(self, config_path: Path, cfg: Config) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.workers = [Worker(i, config_path) for i in range(cfg.workers)]
        self.stopping = False

    async def _page(self, path: str) -> tuple[int, str, str]:
        if path == "/metrics":
            scrapes = await asyncio.gather(*(asyncio.to_thread(w.get, "/metrics") for w in self.workers))
            return 200, aggregate_metrics([b for c, b in scrapes if c == 200]), CONTENT_TYPE
        if path in ("/healthz", "/readyz"):
            results = await asyncio.gather(*(asyncio.to_thread(w.get, path) for w in self.workers))
            ok = all(c == 200 for c, _ in results) and not self.stopping
            body = "".join(
                f"worker {w.index}: {c or 'down'} {b.strip()}\n"
                for w, (c, b) in zip(self.workers, results, strict=True)
            )
            return (200 if ok else 503), body, "text/plain"
        return 404, "not found\n", "text/plain"

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await serve_get(self._page, reader, writer)

    async def run(self) -> int:
        for w in self.workers:
            w.start()
        server = None
        if self.cfg.http_listen:
            host, _, port = self.cfg.http_listen.rpartition(":")
            server = await asyncio.start_server(self._http, host.strip("[]"), int(port))
        signals = StopSignals()
        stop = signals.event
        log.info("supervising %d workers on %s", len(self.workers), self.cfg.listen)
        while not stop.is_set():
            for w in self.workers:
                if w.proc is not None and w.proc.poll() is not None:
                    w.restarts += 1
                    log.error("worker %d exited with %s; restarting", w.index, w.proc.returncode)
                    await asyncio.sleep(min(5.0, 0.2 * w.restarts))
                    w.start()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        self.stopping = True
        log.info("draining %d workers", len(self.workers))
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signals.first or signal.SIGTERM)  # the same signal: drain or not
        deadline = time.monotonic() + signals.drain(self.cfg) + self.cfg.shutdown_grace + 5
        codes = []
        for w in self.workers:
            assert w.proc is not None
            try:
                codes.append(await asyncio.to_thread(w.proc.wait, max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                codes.append(w.proc.wait())
        if server is not None:
            server.close()
            await server.wait_closed()
        return 0 if all(c == 0 for c in codes) else 1
