"""ext-authz serving one config: assembly, lifecycle and signals.

Start: load the engine, open the state replica, start the live trust sources, bind the Check port
(a unix socket with a restrictive mode, loopback, or TLS with an allow-list of Envoys), the admin API
(worker 0) and the HTTP health port, then report SERVING. Stop (SIGTERM): NOT_SERVING at once, keep
answering Checks for ``drain_delay``, then stop accepting and give in-flight Checks ``shutdown_grace``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from ..admin.servicer import AdminServicer, start_admin_server
from ..clock import Clock, SystemClock
from ..errors import AuthzError, StateError
from ..loader import load_engine
from ..observe.decision_log import DecisionLog
from ..pipeline import Engine
from ..settings import Limits, Settings, TlsFiles, TlsServer, is_loopback
from ..state.offline import open_replica
from ..trust.remote import RemoteTrust, TransmitterKeys
from ..trust.sources import TrustSources
from ..trust.workload_api import WorkloadApiTrust
from .check import AUTH_SERVICE, AuthorizationServicer, add_to_server
from .health import serve_health, watch_state_health
from .http import HTTP_BACKLOG, bound_address, with_port
from .peers import ServerIdentity, SvidPeers, files_identity, tls_server_credentials
from .reload import Reloader
from .runtime import Runtime, RuntimeView
from .signals import SharedSignals

__all__ = ["WORKER_ENV", "WORKER_HTTP_ENV", "Server", "StopSignals", "serve", "worker_index"]

log = logging.getLogger("ext_authz")
WORKER_ENV = "EXT_AUTHZ_WORKER"  # set by the supervisor: this process is worker N
WORKER_HTTP_ENV = "EXT_AUTHZ_WORKER_HTTP"  # its private metrics/health address


def worker_index() -> int | None:
    value = os.environ.get(WORKER_ENV)
    return int(value) if value and value.isdigit() else None


def check_server(transport: str, limits: Limits, *, reuse_port: bool) -> grpc.aio.Server:
    """The gRPC server for Check and health: grpcio's, or pygrpc-native's Rust HTTP/2 front.

    Both take the same servicers: pygrpc-native's server is a ``grpc.aio.Server`` whose registered
    unary and server-streaming methods are served by tokio/hyper and handed to our coroutines. A
    CheckRequest larger than the limits could ever accept (headers, body, and room for the rest) is
    refused by the transport before it is parsed.
    """
    largest = limits.max_header_bytes + limits.max_body_bytes + 64 * 1024
    options = [("grpc.so_reuseport", 1 if reuse_port else 0), ("grpc.max_receive_message_length", largest)]
    if transport == "native":
        from .native import NativeServer  # optional: the settings checked pygrpc-native is installed

        return NativeServer(options)
    # No BDP probing: it sizes flow-control windows for bulk transfers with PINGs the caller must answer,
    # and a Check is one small message each way. Off, Envoy spent 6 us less CPU per Check and grpcio 13 us
    # less (about 10% more Checks per second through one Envoy; docs/performance.md).
    return grpc.aio.server(options=[*options, ("grpc.http2.bdp_probe", 0)])


@contextlib.contextmanager
def socket_mode(mode: int) -> Iterator[None]:
    """Sockets bound meanwhile are created with ``mode`` (no window in which others could connect)."""
    old = os.umask(0o777 & ~mode)
    try:
        yield
    finally:
        os.umask(old)


def unix_socket_path(address: str) -> Path:
    path = Path(address[len("unix://") :])
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    return path


class Server:
    """ext-authz serving one config: Check, health (gRPC and HTTP), reloads, the admin API, graceful stop."""

    def __init__(self, config_path: Path, runtime: Runtime) -> None:
        self.config_path = config_path
        self.runtime = runtime
        self.health = HealthServicer()
        # Workers share one port (SO_REUSEPORT); a lone server refuses to share it by accident.
        self.worker = runtime.worker
        cfg = runtime.engine.config
        self.grpc = check_server(cfg.check_transport, cfg.limits, reuse_port=self.worker is not None)
        self.http: asyncio.Server | None = None
        self.remote = RemoteTrust(runtime.sources_changed, runtime.clock)
        self.workload_api = WorkloadApiTrust(runtime.sources_changed)
        self.transmitter_keys = TransmitterKeys(  # fetched where the SSF receivers run
            runtime.sources_changed, runtime.clock, enabled=self.worker in (None, 0)
        )
        runtime.sources = TrustSources((self.remote, self.workload_api, self.transmitter_keys))
        runtime.on_unknown_key = self.remote.request_refetch
        self.reloader = Reloader(config_path, runtime)
        self._tasks: list[asyncio.Task[None]] = []
        self._drain_cut = asyncio.Event()
        self.bound_port = 0
        # Where each listener is bound once started (a TCP port 0 resolved): check, http, admin.
        self.addresses: dict[str, str] = {}
        self.admin: grpc.aio.Server | None = None
        self.admin_servicer: AdminServicer | None = None
        self._socket: tuple[Path, int] | None = None  # a unix-socket Check port and its mode

    def _peers(self, allowed: Callable[[], tuple[str, ...]]) -> SvidPeers:
        return SvidPeers(lambda: self.runtime.engine.trust, allowed, self.runtime.clock)

    def _allowed_domains(self) -> tuple[str, ...]:
        """The trust domains of the Envoys allowed to call Check: the TLS handshake's pool."""
        ids = self.runtime.engine.config.check.allowed_spiffe_ids
        return tuple(sorted({sid.split("/")[2] for sid in ids}))

    def _server_identity(self, tls: TlsServer) -> ServerIdentity:
        if tls.cert is not None and tls.key is not None:
            return files_identity(TlsFiles(cert=tls.cert, key=tls.key))
        socket = tls.workload_api
        assert socket is not None  # the settings require one or the other
        self.runtime.own_svid_ready = lambda: self.workload_api.svid(socket) is not None

        def svid() -> tuple[bytes, bytes, object] | None:
            pem = self.workload_api.svid(socket)
            if pem is None:
                log.error(
                    "TLS: no X509-SVID from the Workload API at %s yet (does this workload have a"
                    " registration entry?)",
                    socket,
                )
                return None
            return pem[0], pem[1], pem

        return svid

    def _bind_check(self, cfg: Settings) -> None:
        listen = cfg.listen
        if listen.startswith("unix://"):
            path = unix_socket_path(listen)
            with socket_mode(cfg.check.socket_mode):
                self.bound_port = self.grpc.add_insecure_port(listen)
            self._socket = (path, cfg.check.socket_mode)
        elif cfg.check.tls is not None:
            creds = tls_server_credentials(
                self._server_identity(cfg.check.tls), lambda: self.runtime.engine.trust, self._allowed_domains
            )
            self.bound_port = self.grpc.add_secure_port(listen, creds)
        else:
            # The settings refuse plaintext TCP unless check.plaintext says so: it is said at every start.
            log.warning(
                "Check is served in plaintext on %s (check.plaintext: true): anyone who can reach it%s can"
                " call Check and cause its side effects; a unix socket (the default) or check.tls is safer",
                listen,
                " on this host" if is_loopback(listen) else "",
            )
            if cfg.check_transport == "native":
                log.warning(
                    "Check is served by pygrpc-native on TCP %s: it reads a whole request before its size"
                    " limit refuses it, so anyone who can connect can make it hold large requests in"
                    " memory (transport: auto takes native on a unix socket only)",
                    listen,
                )
            self.bound_port = self.grpc.add_insecure_port(listen)
        self.addresses["check"] = (
            listen if listen.startswith("unix://") else with_port(listen, self.bound_port)
        )

    async def start(self) -> None:
        """Everything up, or nothing left running: a start that fails part way stops what it began."""
        try:
            await self._start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self.stop(grace=0)
            raise

    async def _start(self) -> None:
        rt = self.runtime
        cfg = rt.engine.config
        peers = None
        if cfg.check.tls is not None:
            peers = self._peers(lambda: self.runtime.engine.config.check.allowed_spiffe_ids)
        add_to_server(AuthorizationServicer(rt, peers), self.grpc)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        await self.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(AUTH_SERVICE, health_pb2.HealthCheckResponse.NOT_SERVING)
        await rt.replica.start()  # durable state is loaded before anything is decided
        rt.install(rt.engine)
        await rt.sources.start()  # first remote JWKS and Workload API bundles (bounded waits)
        if self.worker in (None, 0):  # one admin API per host: worker 0 serves it, the store shares it
            admin_peers = None
            if not cfg.admin_listen.startswith("unix://"):
                admin_peers = self._peers(lambda: self.runtime.engine.config.admin.allowed_spiffe_ids)
            self.admin, self.admin_servicer, self.addresses["admin"] = await start_admin_server(
                rt, admin_peers
            )
            ss = cfg.shared_signals
            if ss.receivers or ss.transmitter is not None:  # one per host too: the store shares what it does
                rt.ssf = SharedSignals(RuntimeView(rt))
                await rt.ssf.start()
        if cfg.tracing is not None:
            from ..observe.tracing import Tracing

            rt.tracing = Tracing(cfg.tracing, worker=self.worker)
        self._bind_check(cfg)
        await self.grpc.start()
        if self._socket is not None:
            os.chmod(*self._socket)  # whatever the umask did, the socket has exactly the configured mode
        http_listen = os.environ.get(WORKER_HTTP_ENV) if self.worker is not None else cfg.http_listen
        if http_listen:
            host, _, port = http_listen.rpartition(":")
            self.http = await asyncio.start_server(
                lambda r, w: serve_health(self.runtime, r, w),
                host.strip("[]"),
                int(port),
                backlog=HTTP_BACKLOG,
            )
            self.addresses["http"] = bound_address(self.http)
        # Config, trust bundles, state and policy are loaded: now we are ready.
        rt.ready = True
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self.health.set(AUTH_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        self._tasks.append(asyncio.create_task(self.reloader.run()))
        self._tasks.append(asyncio.create_task(watch_state_health(rt, self.health)))
        # logrotate: SIGHUP reopens the decision log's file (no copytruncate needed). Only the main
        # thread may set a signal handler (a test's server in another thread goes without).
        if threading.current_thread() is threading.main_thread():
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, lambda: self.runtime.decision_log.reopen()
            )
        loop = "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
        log.info(
            "ext-authz serving Check on %s over %s on %s (revision %s)",
            self.addresses["check"],
            cfg.check_transport,
            loop,
            rt.engine.revision,
        )

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
        if self.runtime.ssf is not None:
            await self.runtime.ssf.stop()
        await self.runtime.sources.stop()
        grace = self.runtime.engine.config.shutdown_grace if grace is None else grace
        stops = [self.grpc.stop(grace)]
        if self.admin is not None:
            stops.append(self.admin.stop(min(grace, 1.0)))
        await asyncio.gather(*stops)
        if self.runtime.tracing is not None:
            await asyncio.to_thread(self.runtime.tracing.shutdown)  # the last spans, bounded
        await self.runtime.replica.close()
        if self.http is not None:
            self.http.close()
            await self.http.wait_closed()
        log.info("ext-authz stopped")


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

    def drain(self, cfg: Settings) -> float:
        return cfg.drain_delay if self.first == signal.SIGTERM else 0.0


def build_runtime(
    engine: Engine, decision_log: DecisionLog, clock: Clock | None = None, **kw: Any
) -> Runtime:
    clock = clock or SystemClock()
    holder: dict[str, Runtime] = {}
    replica = open_replica(engine.config, lambda: holder["rt"].engine.config, clock)
    runtime = Runtime(
        engine=engine, replica=replica, clock=clock, decision_log=decision_log, worker=worker_index(), **kw
    )
    holder["rt"] = runtime
    return runtime


def write_ready_file(path: Path, addresses: dict[str, str]) -> None:
    """``serve --ready-file``: once ready, where each listener is bound, as one JSON object, written
    whole (a reader never sees half a file). A supervisor or a test that binds port 0 reads it back."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"pid": os.getpid(), **addresses}) + "\n")
    tmp.replace(path)


async def serve(config_path: Path, ready_file: Path | None = None) -> int:
    try:
        engine = load_engine(config_path)
    except AuthzError as exc:
        log.error("cannot start: %s", exc.detail)
        return 3  # invalid input (the CLI's exit codes)
    dl = engine.config.decision_log
    try:
        decision_log = DecisionLog.open(dl.path, background=True, max_queue=dl.queue, enabled=dl.enabled)
    except OSError as exc:
        log.error("cannot start: %s: decision_log.path: %s", config_path, exc)
        return 3  # invalid input (the CLI's exit codes)
    try:
        runtime = build_runtime(engine, decision_log)
        server = Server(config_path, runtime)
        await server.start()
    except StateError as exc:
        log.error("cannot start: state: %s", exc.detail)
        return 3  # invalid input (the CLI's exit codes)
    except (OSError, RuntimeError) as exc:
        log.error("cannot start: %s", exc)
        return 3  # invalid input (the CLI's exit codes)
    signals = StopSignals(on_repeat=server.cut_drain)  # a second signal: no more waiting
    log.info("ready: %s", ", ".join(f"{k} {v}" for k, v in server.addresses.items()))
    if ready_file is not None:
        try:
            write_ready_file(ready_file, server.addresses)
        except OSError as exc:
            log.error("cannot write --ready-file %s: %s", ready_file, exc)
            await server.stop(grace=0)
            return 3  # invalid input (the CLI's exit codes)
    await signals.event.wait()
    log.info("signal received: draining (pid %d)", os.getpid())
    if ready_file is not None:
        with contextlib.suppress(FileNotFoundError):
            ready_file.unlink()  # not ready any more: nobody should read these addresses now
    await server.stop(drain=signals.drain(server.runtime.engine.config))
    decision_log.close()
    return 0
