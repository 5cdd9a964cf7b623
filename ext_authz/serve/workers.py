"""`workers: N`: N serving processes on one address (SO_REUSEPORT), one supervisor.

The supervisor starts the workers, serves ``http_listen`` itself (``/healthz``, ``/readyz`` and one
``/metrics`` aggregating every worker's), restarts a worker that dies, and on SIGTERM forwards it to
all of them and waits for each to drain. Workers share state through the store (SQLite or Redis);
worker 0 serves the admin API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from ..observe.metrics import CONTENT_TYPE
from ..settings import Settings
from .app import WORKER_ENV, WORKER_HTTP_ENV, StopSignals, write_ready_file
from .http import HTTP_BACKLOG, Request, Response, bound_address, forward, get, serve_http

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
    """One serving process. Its private metrics/health port is a port 0 it reports in its ready file,
    so no other process can take it between choosing and binding."""

    def __init__(self, index: int, config: Path, run_dir: Path) -> None:
        self.index = index
        self.config = config
        self.ready_file = run_dir / f"worker-{index}.json"
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.ready_file.unlink()  # a restarted worker reports its new port
        env = {**os.environ, WORKER_ENV: str(self.index), WORKER_HTTP_ENV: "127.0.0.1:0"}
        argv = [sys.executable, "-m", "ext_authz.cli", "serve", "--config", str(self.config)]
        self.proc = subprocess.Popen([*argv, "--ready-file", str(self.ready_file)], env=env)

    @property
    def addresses(self) -> dict[str, str]:
        """What the worker reported once ready (empty before, and while it restarts)."""
        try:
            reported = json.loads(self.ready_file.read_text())
        except (OSError, ValueError):
            return {}
        if self.proc is None or reported.get("pid") != self.proc.pid:
            return {}
        return {k: v for k, v in reported.items() if isinstance(v, str)}

    @property
    def http(self) -> str | None:
        return self.addresses.get("http")

    async def get(self, path: str) -> tuple[int, str]:
        http = self.http
        if http is None:
            return 0, "starting"
        return await get(f"http://{http}{path}", SCRAPE_DEADLINE)


class Supervisor:
    def __init__(self, config_path: Path, cfg: Settings, ready_file: str | None = None) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self._run_dir = tempfile.TemporaryDirectory(prefix="ext-authz-workers-")
        self.workers = [Worker(i, config_path, Path(self._run_dir.name)) for i in range(cfg.workers)]
        self.stopping = False
        self.ready_file = Path(ready_file) if ready_file else None
        self.addresses: dict[str, str] = {}

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
                ssf = self.workers[0].http  # worker 0 runs SSF
                if ssf is None:
                    return Response(503, "the worker serving this endpoint is starting\n")
                return await forward(f"http://{ssf}", request)
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
            server = await asyncio.start_server(self._http, host.strip("[]"), int(port), backlog=HTTP_BACKLOG)
            self.addresses["http"] = bound_address(server)
        signals = StopSignals()
        log.info("supervising %d workers on %s", len(self.workers), self.cfg.listen)
        try:
            return await self._supervise(signals, server)
        finally:
            if self.ready_file is not None:
                with contextlib.suppress(FileNotFoundError):
                    self.ready_file.unlink()
            self._run_dir.cleanup()

    def _report_ready(self) -> None:
        """Once every worker is up: the shared Check port, this http_listen and worker 0's admin API."""
        if self.ready_file is None or "check" in self.addresses:
            return
        reported = [w.addresses for w in self.workers]
        if all(reported):
            self.addresses["check"] = reported[0]["check"]
            if "admin" in reported[0]:
                self.addresses["admin"] = reported[0]["admin"]
            write_ready_file(self.ready_file, self.addresses)

    async def _supervise(self, signals: StopSignals, server: asyncio.Server | None) -> int:
        stop = signals.event
        while not stop.is_set():
            self._report_ready()
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
