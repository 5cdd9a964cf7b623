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
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from ..observe.metrics import CONTENT_TYPE
from ..settings import Settings
from .app import WORKER_ENV, WORKER_HTTP_ENV, StopSignals
from .http import Request, Response, forward, free_port, get, serve_http

__all__ = ["Supervisor", "aggregate_metrics"]

log = logging.getLogger("ext_authz.workers")
# Gauges that describe shared state are the same in every worker: report one value, not the sum.
_SHARED_GAUGES = frozenset(
    (
        "ext_authz_active_revocations",
        "ext_authz_active_grants",
        "ext_authz_open_exceptions",
        "ext_authz_trust_bundle_age_seconds",
        "ext_authz_trust_bundle_expiry_timestamp_seconds",
        "ext_authz_pending_approvals",
        "ext_authz_config_reload_failed",
        "ext_authz_build_info",
        "python_info",
        "process_max_fds",
    )
)
_MIN_GAUGES = frozenset(("ext_authz_ready", "ext_authz_state_connected", "process_start_time_seconds"))
SCRAPE_DEADLINE = 2.0


class _Aggregated(Collector):
    """Every worker's families, one sample per name and labels: counters and histograms summed,
    shared-state gauges the max, health gauges the min. prometheus-client renders (and escapes) them."""

    def __init__(self, scrapes: Iterable[str]) -> None:
        self.families: dict[str, Metric] = {}
        values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        for text in scrapes:
            for fam in text_string_to_metric_families(text):
                if fam.name not in self.families:
                    self.families[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
                    values[fam.name] = {}
                merged = values[fam.name]
                for sample in fam.samples:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    if key not in merged:
                        merged[key] = sample.value
                    elif fam.name in _SHARED_GAUGES:
                        merged[key] = max(merged[key], sample.value)
                    elif fam.name in _MIN_GAUGES:
                        merged[key] = min(merged[key], sample.value)
                    else:
                        merged[key] += sample.value
        for name, merged in values.items():
            for (sample_name, labels), value in merged.items():
                self.families[name].add_sample(sample_name, dict(labels), value)

    def collect(self) -> Iterable[Metric]:
        return self.families.values()


def aggregate_metrics(scrapes: list[str]) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Aggregated(scrapes))
    return generate_latest(registry).decode()


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

    async def get(self, path: str) -> tuple[int, str]:
        return await get(f"http://{self.http}{path}", SCRAPE_DEADLINE)


class Supervisor:
    def __init__(self, config_path: Path, cfg: Settings) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.workers = [Worker(i, config_path) for i in range(cfg.workers)]
        self.stopping = False

    async def _page(self, path: str) -> tuple[int, str, str]:
        if path == "/metrics":
            scrapes = await asyncio.gather(*(w.get("/metrics") for w in self.workers))
            return 200, aggregate_metrics([b for c, b in scrapes if c == 200]), CONTENT_TYPE
        if path in ("/healthz", "/readyz"):
            results = await asyncio.gather(*(w.get(path) for w in self.workers))
            ok = all(c == 200 for c, _ in results) and not self.stopping
            body = "".join(
                f"worker {w.index}: {c or 'down'} {b.strip()}\n"
                for w, (c, b) in zip(self.workers, results, strict=True)
            )
            return (200 if ok else 503), body, "text/plain"
        return 404, "not found\n", "text/plain"

    async def _http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def handle(request: Request) -> Response:
            if request.path.startswith(("/ssf/", "/.well-known/ssf-configuration")):
                return await forward(f"http://{self.workers[0].http}", request)  # worker 0 runs SSF
            if request.method not in ("GET", "HEAD"):
                return Response(405, "method not allowed\n", headers={"Allow": "GET"})
            code, body, ctype = await self._page(request.target)
            return Response(code, body, ctype)

        await serve_http(handle, reader, writer)

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
