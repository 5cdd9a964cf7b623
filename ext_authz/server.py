"""The gRPC edge: Envoy's Authorization/Check, grpc.health.v1, /healthz and /readyz, reloads.

The only module that touches grpc. Everything it decides, it decides through the pure pipeline
over the current Engine, which a reload swaps in one assignment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from redis.exceptions import RedisError

from .admin import start_admin_server
from .clock import Clock, SystemClock
from .config import Config
from .envoy.normalize import normalize
from .envoy.render import render
from .errors import AuthzError
from .loader import load_engine
from .model import Decision, RequestContext
from .observe.decision_log import DecisionLog, Redactor, record
from .observe.httpd import serve_get
from .observe.metrics import CONTENT_TYPE, Metrics
from .observe.stream import DecisionHub
from .pipeline import Caches, Engine, decide, quarantine_keys
from .state.model import Revocation
from .state.quarantine import DenialCounter
from .state.store import MemoryStore, Store, open_store
from .trust.remote import RemoteTrust
from .trust.workload_api import WorkloadApiTrust

__all__ = ["AUTH_SERVICE", "STATE_SERVICE", "Runtime", "Server", "serve"]

log = logging.getLogger("ext_authz")
AUTH_SERVICE = "envoy.service.auth.v3.Authorization"
WORKER_ENV = "EXT_AUTHZ_WORKER"  # set by the supervisor: this process is worker N
WORKER_HTTP_ENV = "EXT_AUTHZ_WORKER_HTTP"  # its private metrics/health address
STATE_SERVICE = "ext_authz.state"  # health of the shared state store (degraded is not down)


@dataclass
class Runtime:
    """The mutable edge state: the current Engine (swapped whole) and the verification caches."""

    engine: Engine
    caches: Caches
    clock: Clock = field(default_factory=SystemClock)
    decision_log: DecisionLog = field(default_factory=DecisionLog)
    store: Store = field(default_factory=MemoryStore)
    ready: bool = False
    reloads_failed: int = 0
    last_reload_error: str = ""
    quarantine: DenialCounter | None = None
    on_unknown_key: Callable[[], None] | None = None
    metrics: Metrics = field(default_factory=Metrics)
    hub: DecisionHub = field(default_factory=DecisionHub)
    redactor: Redactor = field(default_factory=Redactor)
    _background: set[asyncio.Task[None]] = field(default_factory=set)
    _retired_cache: dict[tuple[str, str], int] = field(default_factory=dict)
    _trust_seen: dict[str, tuple[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hub.on_drop = self.metrics.stream_dropped.get("decisions").inc
        self.decision_log.on_drop = self.metrics.log_dropped.inc
        self.metrics.add_state_collector(self.state_metrics)
        self.store.watch(self._count_revocation)
        self._configure_edges()

    def _count_revocation(self, event: Any) -> None:
        if event.op == "created":
            self.metrics.revocations_created.get(event.revocation.source).inc()

    def _configure_edges(self) -> None:
        """Edge state derived from the current engine: redaction, quarantine counting, bundle ages."""
        self.redactor = Redactor(self.engine.config.decision_log.redact_headers)
        q = self.engine.config.quarantine
        if q is None:
            self.quarantine = None
        elif self.quarantine is None or self.quarantine.cfg != q:
            self.quarantine = DenialCounter(q)
        now = time.time()
        for name, td in self.engine.trust.domains.items():
            seen = self._trust_seen.get(name)
            if seen is None or seen[0] != td.revision:
                self._trust_seen[name] = (td.revision, now)
        for name in list(self._trust_seen):
            if name not in self.engine.trust.domains:
                del self._trust_seen[name]

    def cache_totals(self) -> dict[tuple[str, str], int]:
        totals = dict(self._retired_cache)
        for name, cache in (("x509", self.caches.x509), ("token", self.caches.tokens)):
            totals[(name, "hit")] = totals.get((name, "hit"), 0) + cache.hits
            totals[(name, "miss")] = totals.get((name, "miss"), 0) + cache.misses
        return totals

    def state_metrics(self) -> dict[str, Any]:
        now = self.clock.now().timestamp()
        snap = self.store.snapshot
        by_kind: dict[str, int] = {}
        for r in snap.active_revocations(now):
            by_kind[r.kind] = by_kind.get(r.kind, 0) + 1
        return {
            "revocations": by_kind,
            "grants": sum(1 for g in snap.grants if g.active(now)),
            "exceptions": sum(1 for e in snap.exceptions if e.active(now)),
            "bundle_age": {name: max(0.0, time.time() - at) for name, (_, at) in self._trust_seen.items()},
            "cache": self.cache_totals(),
            "ready": 1 if self.ready else 0,
            "state_connected": 1 if self.store.healthy else 0,
        }

    @classmethod
    def from_engine(cls, engine: Engine, **kw: Any) -> Runtime:
        return cls(engine=engine, caches=Caches.sized(engine.config.cache.size), **kw)

    def after(self, decision: Decision, now: float) -> None:
        """Edge effects of a decision: remember new sessions, count denials toward quarantine."""
        if decision.reason == "token_unknown_key" and self.on_unknown_key is not None:
            self.on_unknown_key()  # maybe the issuer rotated its keys: refetch (rate-limited)
        if decision.new_session is not None:
            self.store.note_session(*decision.new_session)
        if (
            self.quarantine is not None
            and decision.status == 403
            and decision.reason in ("no_rule", "policy_denied", "policy_error")
        ):
            for key in quarantine_keys(decision.principal):
                if self.quarantine.record(key, now):
                    self._spawn(self._quarantine(key, now))

    async def _quarantine(self, key: str, now: float) -> None:
        q = self.engine.config.quarantine
        if q is None:
            return
        rev = Revocation(
            id=f"qtn_{uuid.uuid4().hex[:12]}",
            kind="quarantine",
            value=key,
            reason=f"{q.denials} denials within {int(q.window)}s",
            created_by="ext-authz quarantine",
            created_at=now,
            expires_at=now + q.duration,
            source="quarantine",
        )
        log.warning("quarantined %s for %ds: %s", key, int(q.duration), rev.reason)
        await self.store.put("revocation", rev, at=now)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def swap(self, engine: Engine) -> None:
        """Install a new generation. Verified credentials are kept only if nothing changed."""
        if (
            engine.revision != self.engine.revision
            or engine.config.cache.size != self.engine.config.cache.size
        ):
            self._retired_cache = self.cache_totals()
            self.caches = Caches.sized(engine.config.cache.size)
        # In-flight Checks keep the engine and caches they started with.
        self.engine = engine
        self._configure_edges()


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def Check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        rt = self.runtime
        started = time.perf_counter()
        now = rt.clock.now()
        decision_id = _new_decision_id()
        engine, caches = rt.engine, rt.caches
        ctx: RequestContext | None = None
        decision: Decision | None = None
        fault = ""
        try:
            ctx = normalize(request)
            decision = decide(ctx, engine, caches, now, decision_id, rt.store.snapshot)
            rt.after(decision, now.timestamp())
            return render(decision, ctx.http.headers if ctx.http else None)
        except Exception as exc:
            # A fault is never an allow: Envoy's failure_mode_allow=false / status_on_error decide.
            fault = type(exc).__name__
            log.exception("Check %s failed", decision_id)
            decision = None
            await context.abort(
                grpc.StatusCode.INTERNAL, f"ext-authz internal error (decision {decision_id})"
            )
            raise  # abort raises; this keeps type checkers honest
        finally:
            latency = time.perf_counter() - started
            rec = record(
                decision_id=decision_id,
                at=now,
                ctx=ctx,
                decision=decision,
                latency_s=latency,
                revision=engine.revision,
                fault=fault,
                state_revision=rt.store.snapshot.revision,
                redactor=rt.redactor,
                include_headers=engine.config.decision_log.headers,
            )
            if _WORKER is not None:
                rec["worker"] = _WORKER
            rt.decision_log.write(rec)
            rt.hub.publish(rec)
            rt.metrics.observe(decision, latency)


def _new_decision_id() -> str:
    """128 random bits as 32 hex digits. An id, not a secret: no system call per Check."""
    return f"{_ids.getrandbits(128):032x}"


_ids = random.Random()  # seeded from the OS once  # noqa: S311 - ids are not secrets


def _fingerprint(paths: tuple[Path, ...]) -> tuple[tuple[str, int, int, int], ...]:
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((str(p), -1, -1, -1))
    return tuple(out)


class Reloader:
    """Polls the config and every trust file it names; a broken file keeps the last good state."""

    def __init__(
        self,
        config_path: Path,
        runtime: Runtime,
        prepare: Callable[[Engine], Engine] | None = None,
    ) -> None:
        self.config_path = config_path
        self.runtime = runtime
        self.prepare = prepare  # e.g. merge remote JWKS into a freshly loaded engine before it is installed
        self._seen = _fingerprint(runtime.engine.config.watched_files())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.runtime.engine.config.reload_interval)
            await self.check()

    async def check(self) -> bool:
        files = self.runtime.engine.config.watched_files()
        seen = _fingerprint(files)
        if seen == self._seen:
            return False
        self._seen = seen
        try:
            engine = await asyncio.to_thread(load_engine, self.config_path)
        except AuthzError as exc:
            self.runtime.metrics.reloads.get("failure").inc()
            self.runtime.reloads_failed += 1
            self.runtime.last_reload_error = exc.detail
            log.error("reload failed, keeping the last good configuration and trust: %s", exc.detail)
            return False
        after = _fingerprint(engine.config.watched_files())
        before = {entry[0]: entry for entry in seen}
        if any(entry[0] in before and before[entry[0]] != entry for entry in after):
            # A file changed while we were reading it: what we loaded may be a mix. Load again
            # on the next tick instead of recording the new state as seen.
            self._seen = ()
        else:
            self._seen = after
        old = self.runtime.engine.revision
        self.runtime.metrics.reloads.get("success").inc()
        if self.prepare is not None:
            engine = self.prepare(engine)
        self.runtime.swap(engine)
        self.runtime.last_reload_error = ""
        if old != engine.revision:
            log.info("reloaded: revision %s -> %s", old, engine.revision)
        return True


async def _health_page(runtime: Runtime, path: str) -> tuple[int, str, str]:
    if path == "/metrics":
        return 200, runtime.metrics.scrape().decode(), CONTENT_TYPE
    if path == "/healthz":
        return 200, "ok\n", "text/plain"
    if path == "/readyz":
        if runtime.ready and not runtime.store.healthy:
            # Still enforcing (on the last snapshot of shared state): ready, but say so.
            body = "degraded: state store unreachable, enforcing the last snapshot"
            body += f" revision={runtime.engine.revision}\n"
            return 200, body, "text/plain"
        if runtime.ready:
            return 200, f"ready revision={runtime.engine.revision}\n", "text/plain"
        return 503, "not ready\n", "text/plain"
    return 404, "not found\n", "text/plain"


async def _http_health(runtime: Runtime, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    async def page(path: str) -> tuple[int, str, str]:
        return await _health_page(runtime, path)

    await serve_get(page, reader, writer)


def _grpc_address(listen: str) -> str:
    return listen  # grpc understands both HOST:PORT and unix:///abs/path


def check_server(transport: str, *, reuse_port: bool) -> grpc.aio.Server:
    """The gRPC server for Check and health: grpcio's, or pygrpc-native's Rust HTTP/2 front.

    Both take the same servicers: pygrpc-native's server is a ``grpc.aio.Server`` whose registered
    unary and server-streaming methods are served by tokio/hyper and handed to our coroutines.
    """
    options = [("grpc.so_reuseport", 1 if reuse_port else 0)]
    if transport == "native":
        import pygrpc_native.aio  # optional: the config loader checked it is installed

        server: grpc.aio.Server = pygrpc_native.aio.server(options=options)
        return server
    return grpc.aio.server(options=options)


class Server:
    """ext-authz serving one config: Check, health (gRPC and HTTP), reloads, graceful stop."""

    def __init__(self, config_path: Path, runtime: Runtime) -> None:
        self.config_path = config_path
        self.runtime = runtime
        self.health = HealthServicer()
        # Workers share one port (SO_REUSEPORT); a lone server refuses to share it by accident.
        self.worker = worker_index()
        self.grpc = check_server(runtime.engine.config.transport, reuse_port=self.worker is not None)
        self.http: asyncio.Server | None = None
        self.remote = RemoteTrust(lambda: self.runtime.engine, self.runtime.swap)
        self.workload_api = WorkloadApiTrust(lambda: self.runtime.engine, self.runtime.swap)
        self.reloader = Reloader(config_path, runtime, prepare=self._with_remote_keys)
        runtime.on_unknown_key = self.remote.request_refetch
        self._tasks: list[asyncio.Task[None]] = []
        self._drain_cut = asyncio.Event()
        self.bound_port = 0
        self.admin: grpc.aio.Server | None = None
        self.admin_servicer: Any = None

    def _with_remote_keys(self, engine: Engine) -> Engine:
        """A freshly loaded engine gets the live trust sources' latest material before it is installed."""
        self.remote.configure(engine.config)
        self.workload_api.configure(engine.config)
        return self.workload_api.merged(self.remote.merged(engine))

    async def start(self) -> None:
        cfg = self.runtime.engine.config
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
            AuthorizationServicer(self.runtime), self.grpc
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(AUTH_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.runtime.store.start()  # durable state is loaded before anything is decided
        if self.worker in (None, 0):  # one admin API per host: worker 0 serves it, the store shares it
            self.admin, self.admin_servicer = await start_admin_server(
                self.runtime.store, lambda: self.runtime.engine.config, self.runtime.clock, self.runtime.hub
            )
        if cfg.listen.startswith("unix://"):
            sock = Path(cfg.listen[len("unix://") :])
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
        self.bound_port = self.grpc.add_insecure_port(_grpc_address(cfg.listen))
        await self.grpc.start()
        http_listen = os.environ.get(WORKER_HTTP_ENV) if self.worker is not None else cfg.http_listen
        if http_listen:
            host, _, port = http_listen.rpartition(":")
            self.http = await asyncio.start_server(
                lambda r, w: _http_health(self.runtime, r, w), host.strip("[]"), int(port)
            )
        await self.remote.start()  # first fetch of remote JWKS (bounded): tokens then verify at once
        await self.workload_api.start()  # first bundles from the SPIFFE Workload API (bounded)
        # Config, trust bundles and policy were loaded before we got here: now we are ready.
        self.runtime.ready = True
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(AUTH_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self._tasks.append(asyncio.create_task(self.reloader.run()))
        self._tasks.append(asyncio.create_task(self._watch_state_health()))
        loop = "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
        log.info(
            "ext-authz serving Check on %s over %s on %s (revision %s)",
            cfg.listen,
            cfg.transport,
            loop,
            self.runtime.engine.revision,
        )

    async def _watch_state_health(self) -> None:
        """grpc.health.v1 service `ext_authz.state`: NOT_SERVING while shared state is unreachable."""
        last: bool | None = None
        while True:
            healthy = self.runtime.store.healthy
            if healthy != last:
                serving = health_pb2.HealthCheckResponse.SERVING
                await self.health.set(
                    STATE_SERVICE, serving if healthy else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                last = healthy
            await asyncio.sleep(0.2)

    def cut_drain(self) -> None:
        self._drain_cut.set()

    async def stop(self, grace: float | None = None, drain: float = 0.0) -> None:
        """NOT_SERVING first; keep answering Checks for ``drain`` seconds (Envoy's health checks and
        its own drain move traffic away meanwhile); then stop accepting, answer in-flight Checks
        (up to ``grace``), and close."""
        self.runtime.ready = False
        await self.health.enter_graceful_shutdown()
        if drain > 0:
            log.info("NOT_SERVING; still answering Checks for %.1fs before stopping", drain)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._drain_cut.wait(), drain)  # a second signal ends it early
        for t in self._tasks:
            t.cancel()
        await self.remote.stop()
        await self.workload_api.stop()
        grace = self.runtime.engine.config.shutdown_grace if grace is None else grace
        stops = [self.grpc.stop(grace)]
        if self.admin is not None:
            stops.append(self.admin.stop(min(grace, 1.0)))
        await asyncio.gather(*stops)
        await self.runtime.store.close()
        if self.http is not None:
            self.http.close()
            await self.http.wait_closed()
        log.info("ext-authz stopped")


def worker_index() -> int | None:
    value = os.environ.get(WORKER_ENV)
    return int(value) if value and value.isdigit() else None


_WORKER = worker_index()


class StopSignals:
    """SIGTERM and SIGINT on the running loop. The first one stops; ``on_repeat`` runs on any later one.

    SIGTERM (an orchestrator) drains for ``drain_delay`` first; SIGINT (someone at a terminal) does not.
    """

    def __init__(self, on_repeat: Callable[[], None] | None = None) -> None:
        self.first: signal.Signals | None = None
        self.event = asyncio.Event()
        self._on_repeat = on_repeat
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._received, sig)

    def _received(self, sig: signal.Signals) -> None:
        if self.first is None:
            self.first = sig
            self.event.set()
        elif self._on_repeat is not None:
            self._on_repeat()

    def drain(self, cfg: Config) -> float:
        return cfg.drain_delay if self.first == signal.SIGTERM else 0.0


async def serve(config_path: Path) -> int:
    try:
        engine = load_engine(config_path)
    except AuthzError as exc:
        log.error("cannot start: %s", exc.detail)
        return 2
    try:
        store = open_store(engine.config.state)
        store.retention = engine.config.state_retention
    except ValueError as exc:
        log.error("cannot start: %s: state: %s", config_path, exc)
        return 2
    dl = engine.config.decision_log
    try:
        decision_log = DecisionLog.open(dl.path, background=True, max_queue=dl.queue)
    except OSError as exc:
        log.error("cannot start: %s: decision_log.path: %s", config_path, exc)
        return 2
    server = Server(config_path, Runtime.from_engine(engine, store=store, decision_log=decision_log))
    try:
        await server.start()
    except (OSError, sqlite3.Error, RuntimeError, RedisError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    signals = StopSignals(on_repeat=server.cut_drain)  # a second signal: no more waiting
    log.info("ready: grpc %s, http %s", engine.config.listen, engine.config.http_listen)
    await signals.event.wait()
    log.info("signal received: draining (pid %d)", os.getpid())
    await server.stop(drain=signals.drain(server.runtime.engine.config))
    decision_log.close()
    return 0
