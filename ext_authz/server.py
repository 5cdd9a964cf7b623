"""The gRPC edge: Envoy's Authorization/Check, grpc.health.v1, /healthz and /readyz, reloads.

The only module that touches grpc. Everything it decides, it decides through the pure pipeline
over the current Engine, which a reload swaps in one assignment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
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

from .admin import start_admin_server
from .clock import Clock, SystemClock
from .envoy.normalize import normalize
from .envoy.render import render
from .errors import AuthzError
from .loader import load_engine
from .model import Decision, RequestContext
from .observe.decision_log import DecisionLog, record
from .pipeline import Caches, Engine, decide, quarantine_keys
from .state.model import Revocation
from .state.quarantine import DenialCounter
from .state.store import MemoryStore, Store, open_store

__all__ = ["AUTH_SERVICE", "Runtime", "Server", "serve"]

log = logging.getLogger("ext_authz")
AUTH_SERVICE = "envoy.service.auth.v3.Authorization"


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
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    @classmethod
    def from_engine(cls, engine: Engine, **kw: Any) -> Runtime:
        rt = cls(engine=engine, caches=Caches.sized(engine.config.cache.size), **kw)
        rt.configure_quarantine()
        return rt

    def configure_quarantine(self) -> None:
        q = self.engine.config.quarantine
        if q is None:
            self.quarantine = None
        elif self.quarantine is None or self.quarantine.cfg != q:
            self.quarantine = DenialCounter(q)

    def after(self, decision: Decision, now: float) -> None:
        """Edge effects of a decision: remember new sessions, count denials toward quarantine."""
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
            self.caches = Caches.sized(engine.config.cache.size)
        # In-flight Checks keep the engine and caches they started with.
        self.engine = engine
        self.configure_quarantine()


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def Check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        rt = self.runtime
        started = time.perf_counter()
        now = rt.clock.now()
        decision_id = uuid.uuid4().hex
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
            rt.decision_log.write(
                record(
                    decision_id=decision_id,
                    at=now,
                    ctx=ctx,
                    decision=decision,
                    latency_s=time.perf_counter() - started,
                    revision=engine.revision,
                    fault=fault,
                )
            )


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
        self, config_path: Path, runtime: Runtime, on_swap: Callable[[Engine], None] | None = None
    ) -> None:
        self.config_path = config_path
        self.runtime = runtime
        self.on_swap = on_swap
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
        self.runtime.swap(engine)
        self.runtime.last_reload_error = ""
        if old != engine.revision:
            log.info("reloaded: revision %s -> %s", old, engine.revision)
        if self.on_swap:
            self.on_swap(engine)
        return True


async def _http_health(runtime: Runtime, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        line = await asyncio.wait_for(reader.readline(), 5)
        while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
            pass
        parts = line.decode("latin-1").split()
        path = parts[1] if len(parts) >= 2 else ""
        if path == "/healthz":
            code, body = 200, "ok\n"
        elif path == "/readyz":
            if runtime.ready:
                code, body = 200, f"ready revision={runtime.engine.revision}\n"
            else:
                code, body = 503, "not ready\n"
        else:
            code, body = 404, "not found\n"
        reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[code]
        writer.write(
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n{body}".encode()
        )
        await writer.drain()
    except (TimeoutError, ConnectionError):
        pass
    finally:
        writer.close()


def _grpc_address(listen: str) -> str:
    return listen  # grpc understands both HOST:PORT and unix:///abs/path


class Server:
    """ext-authz serving one config: Check, health (gRPC and HTTP), reloads, graceful stop."""

    def __init__(self, config_path: Path, runtime: Runtime) -> None:
        self.config_path = config_path
        self.runtime = runtime
        self.health = HealthServicer()
        self.grpc = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self.http: asyncio.Server | None = None
        self.reloader = Reloader(config_path, runtime)
        self._tasks: list[asyncio.Task[None]] = []
        self.bound_port = 0
        self.admin: grpc.aio.Server | None = None
        self.admin_servicer: Any = None

    async def start(self) -> None:
        cfg = self.runtime.engine.config
        external_auth_pb2_grpc.add_AuthorizationServicer_to_server(
            AuthorizationServicer(self.runtime), self.grpc
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(AUTH_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.runtime.store.start()  # durable state is loaded before anything is decided
        self.admin, self.admin_servicer = await start_admin_server(
            self.runtime.store, lambda: self.runtime.engine.config, self.runtime.clock
        )
        if cfg.listen.startswith("unix://"):
            sock = Path(cfg.listen[len("unix://") :])
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
        self.bound_port = self.grpc.add_insecure_port(_grpc_address(cfg.listen))
        await self.grpc.start()
        if cfg.http_listen:
            host, _, port = cfg.http_listen.rpartition(":")
            self.http = await asyncio.start_server(
                lambda r, w: _http_health(self.runtime, r, w), host.strip("[]"), int(port)
            )
        # Config, trust bundles and policy were loaded before we got here: now we are ready.
        self.runtime.ready = True
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(AUTH_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self._tasks.append(asyncio.create_task(self.reloader.run()))
        log.info("ext-authz serving Check on %s (revision %s)", cfg.listen, self.runtime.engine.revision)

    async def stop(self, grace: float | None = None) -> None:
        """NOT_SERVING first, then stop accepting, answer in-flight Checks, then close."""
        self.runtime.ready = False
        await self.health.enter_graceful_shutdown()
        for t in self._tasks:
            t.cancel()
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


async def serve(config_path: Path) -> int:
    try:
        engine = load_engine(config_path)
    except AuthzError as exc:
        log.error("cannot start: %s", exc.detail)
        return 2
    try:
        store = open_store(engine.config.state)
    except ValueError as exc:
        log.error("cannot start: %s: state: %s", config_path, exc)
        return 2
    server = Server(config_path, Runtime.from_engine(engine, store=store))
    try:
        await server.start()
    except (OSError, sqlite3.Error, RuntimeError) as exc:
        log.error("cannot start: %s", exc)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("ready: grpc %s, http %s", engine.config.listen, engine.config.http_listen)
    await stop.wait()
    log.info("signal received: draining (pid %d)", os.getpid())
    await server.stop()
    return 0
