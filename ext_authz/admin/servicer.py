"""The admin gRPC API: revocations, grants, exceptions, signals, and the live streams.

Thin: it turns protobuf requests into calls of ``state/commands.py`` (where validation and record
building live) and records into protobuf replies. Who asks is decided here and nowhere else: over TCP
the caller's certificate is verified as an X.509-SVID of its own trust domain (``serve/peers.py``), and
that verified SPIFFE ID is both what the allow-list admits and what every record's audit fields say;
on the unix socket (mode 0600) the caller is ``local:`` plus what the local client says it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import grpc

from .._proto import admin_pb2 as pb
from .._proto import admin_pb2_grpc
from ..errors import StateError
from ..observe.stream import DecisionFilter
from ..serve.peers import PeerRefused, SvidPeers, files_identity, tls_server_credentials
from ..settings import TlsFiles
from ..state import commands
from ..state.commands import InvalidArgument
from ..state.records import ExceptionGrant, Grant, Revocation, Scope, Signal
from ..state.replica import RevocationEvent

if TYPE_CHECKING:
    from ..serve.runtime import Runtime

__all__ = ["ACTOR_METADATA", "AdminServicer", "start_admin_server"]

log = logging.getLogger("ext_authz.admin")
ACTOR_METADATA = "x-ext-authz-actor"
MAX_WATCH_QUEUE = 1000
T = TypeVar("T")


def rev_pb(r: Revocation) -> Any:
    return pb.Revocation(
        id=r.id,
        kind=r.kind,
        value=r.value,
        reason=r.reason,
        created_by=r.created_by,
        created_at=r.created_at,
        expires_at=r.expires_at or 0,
        source=r.source,
    )


def scope_pb(s: Scope) -> Any:
    return pb.Scope(hosts=s.hosts, paths=s.paths, methods=s.methods)


def grant_pb(g: Grant) -> Any:
    return pb.Grant(
        id=g.id,
        principal=g.principal,
        scope=scope_pb(g.scope),
        not_before=g.not_before,
        not_after=g.not_after,
        reason=g.reason,
        approver=g.approver,
        created_by=g.created_by,
        created_at=g.created_at,
        ended_at=g.ended_at or 0,
        ended_by=g.ended_by,
    )


def exception_pb(e: ExceptionGrant) -> Any:
    return pb.Exception(
        id=e.id,
        principal=e.principal,
        scope=scope_pb(e.scope),
        reason=e.reason,
        opened_by=e.opened_by,
        opened_at=e.opened_at,
        expires_at=e.expires_at,
        closed_at=e.closed_at or 0,
        closed_by=e.closed_by,
    )


def signal_pb(s: Signal) -> Any:
    return pb.Signal(
        subject_kind=s.subject_kind,
        subject=s.subject,
        key=s.key,
        value=s.value,
        set_by=s.set_by,
        set_at=s.set_at,
        expires_at=s.expires_at,
    )


def _scope(msg: Any) -> Scope:
    return commands.scope(msg.hosts, msg.paths, msg.methods)


async def _abort(context: Any, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("abort returned")  # grpc's abort always raises


class AdminServicer(admin_pb2_grpc.AdminServicer):  # type: ignore[misc]
    def __init__(self, runtime: Runtime, peers: SvidPeers | None = None) -> None:
        self.runtime = runtime
        self.replica = runtime.replica
        self.peers = peers  # set on a TCP listener: callers are verified X.509-SVIDs on the allow-list
        self.watch_dropped = 0

    async def _caller(self, context: Any) -> str:
        """Who is asking: the verified SPIFFE ID over TCP, else what the local client says."""
        if self.peers is not None:
            try:
                return self.peers.verify(context.auth_context())
            except PeerRefused as exc:
                log.warning("admin call refused: %s (peer %s)", exc, context.peer())
                await _abort(
                    context, grpc.StatusCode.PERMISSION_DENIED, "caller is not on admin.allowed_spiffe_ids"
                )
        claimed = dict(context.invocation_metadata() or ()).get(ACTOR_METADATA, "")
        who = "".join(c for c in str(claimed)[:200] if c.isprintable()) or "unknown"
        return f"local:{who}"

    def _now(self) -> float:
        return self.runtime.clock.now().timestamp()

    async def _run(self, context: Any, fn: Callable[[str, float], Awaitable[T]]) -> T:
        """Authenticate, then run; bad input is INVALID_ARGUMENT, a failing store UNAVAILABLE."""
        actor = await self._caller(context)
        try:
            return await fn(actor, self._now())
        except InvalidArgument as exc:
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except StateError as exc:
            await _abort(
                context, grpc.StatusCode.UNAVAILABLE, f"the state store refused the change: {exc.detail}"
            )

    async def Revoke(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            rev = commands.revoke(
                request.kind, request.value, request.reason, request.duration_seconds, actor, now
            )
            await self.replica.put(rev)
            log.info("revoked %s %s by %s: %s", rev.kind, rev.value, rev.created_by, rev.reason)
            return pb.RevokeResponse(revocation=rev_pb(rev))

        return await self._run(context, run)

    async def Unrevoke(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            if request.id:
                ids = [request.id]
            else:  # by what it names: every active revocation of that value
                kind, value = commands.revocation_value(request.kind, request.value)
                ids = [
                    r.id
                    for r in self.replica.all(Revocation)
                    if (r.kind, r.value) == (kind, value) and r.active(now)
                ]
            lifted = [rev for rid in ids if (rev := await self.replica.delete(Revocation, rid)) is not None]
            if not lifted:
                what = repr(request.id) if request.id else f"in force for {request.value!r}"
                await _abort(context, grpc.StatusCode.NOT_FOUND, f"no revocation {what}")
            for rev in lifted:
                log.info(
                    "unrevoked %s (%s %s) by %s: %s",
                    rev.id,
                    rev.kind,
                    rev.value,
                    actor,
                    request.reason or "-",
                )
            return pb.UnrevokeResponse(revocation=rev_pb(lifted[0]), revocations=[rev_pb(r) for r in lifted])

        return await self._run(context, run)

    async def ListRevocations(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            revs = [r for r in self.replica.all(Revocation) if request.include_expired or r.active(now)]
            if request.kind:
                revs = [r for r in revs if r.kind == request.kind]
            revs.sort(key=lambda r: r.created_at)
            return pb.ListRevocationsResponse(revocations=[rev_pb(r) for r in revs])

        return await self._run(context, run)

    async def CreateGrant(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            g = commands.create_grant(
                request.principal,
                _scope(request.scope),
                request.not_before,
                request.duration_seconds,
                request.reason,
                request.approver,
                actor,
                now,
            )
            await self.replica.put(g)
            log.info(
                "grant %s to %s by %s (approver %s): %s",
                g.id,
                g.principal,
                g.created_by,
                g.approver,
                g.reason,
            )
            return pb.CreateGrantResponse(grant=grant_pb(g))

        return await self._run(context, run)

    async def EndGrant(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            g = self.replica.get(Grant, request.id)
            if g is None:
                await _abort(context, grpc.StatusCode.NOT_FOUND, f"no grant {request.id!r}")
            ended = commands.end_grant(g, actor, now)
            if ended is not g:
                await self.replica.put(ended)
            return pb.EndGrantResponse(grant=grant_pb(ended))

        return await self._run(context, run)

    async def ListGrants(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            gs = [
                g
                for g in self.replica.all(Grant)
                if request.include_inactive or (g.ended_at is None and now < g.not_after)
            ]
            gs.sort(key=lambda g: g.created_at)
            return pb.ListGrantsResponse(grants=[grant_pb(g) for g in gs])

        return await self._run(context, run)

    async def OpenException(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            cap = self.runtime.engine.config.exceptions.max_duration
            e = commands.open_exception(
                request.principal,
                _scope(request.scope),
                request.reason,
                request.duration_seconds,
                actor,
                now,
                cap,
            )
            await self.replica.put(e)
            log.warning(
                "exception %s opened for %s by %s until %s: %s",
                e.id,
                e.principal,
                e.opened_by,
                int(e.expires_at),
                e.reason,
            )
            return pb.OpenExceptionResponse(exception=exception_pb(e))

        return await self._run(context, run)

    async def CloseException(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            e = self.replica.get(ExceptionGrant, request.id)
            if e is None:
                await _abort(context, grpc.StatusCode.NOT_FOUND, f"no exception {request.id!r}")
            closed = commands.close_exception(e, actor, now)
            if closed is not e:
                await self.replica.put(closed)
                log.warning("exception %s closed by %s", closed.id, closed.closed_by)
            return pb.CloseExceptionResponse(exception=exception_pb(closed))

        return await self._run(context, run)

    async def ListExceptions(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            es = [e for e in self.replica.all(ExceptionGrant) if request.include_closed or e.active(now)]
            es.sort(key=lambda e: e.opened_at)
            return pb.ListExceptionsResponse(exceptions=[exception_pb(e) for e in es])

        return await self._run(context, run)

    async def PutSignal(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            s = commands.put_signal(
                request.subject_kind,
                request.subject,
                request.key,
                request.value,
                request.ttl_seconds,
                actor,
                now,
            )
            await self.replica.put(s)
            return pb.PutSignalResponse(signal=signal_pb(s))

        return await self._run(context, run)

    async def ListSignals(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            ss = [s for s in self.replica.all(Signal) if request.include_stale or s.fresh(now)]
            ss.sort(key=lambda s: (s.subject_kind, s.subject, s.key))
            return pb.ListSignalsResponse(signals=[signal_pb(s) for s in ss])

        return await self._run(context, run)

    async def WatchDecisions(self, request: Any, context: Any) -> AsyncIterator[Any]:
        await self._caller(context)
        hub = self.runtime.hub
        sub = hub.subscribe(DecisionFilter.of(deny_only=request.deny_only, identity=request.identity_glob))
        try:
            while True:
                rec = await sub.queue.get()
                yield pb.DecisionEvent(json=json.dumps(rec, separators=(",", ":"), default=str))
        finally:
            hub.unsubscribe(sub)

    async def WatchRevocations(self, request: Any, context: Any) -> AsyncIterator[Any]:
        await self._caller(context)
        queue: asyncio.Queue[RevocationEvent] = asyncio.Queue(MAX_WATCH_QUEUE)

        def push(ev: RevocationEvent) -> None:
            try:
                queue.put_nowait(ev)
            except asyncio.QueueFull:
                self.watch_dropped += 1  # a slow subscriber loses events; it never slows the store
                self.runtime.metrics.stream_dropped.get("revocations").inc()

        unsubscribe = self.replica.watch(push)
        try:
            if request.replay_active:
                now = self._now()
                for r in sorted(self.replica.all(Revocation), key=lambda r: r.created_at):
                    if r.active(now):
                        yield pb.RevocationEvent(op="active", revocation=rev_pb(r), at=r.created_at)
            while True:
                ev = await queue.get()
                yield pb.RevocationEvent(op=ev.op, revocation=rev_pb(ev.revocation), at=ev.at)
        finally:
            unsubscribe()


async def start_admin_server(
    runtime: Runtime, peers: SvidPeers | None
) -> tuple[grpc.aio.Server, AdminServicer]:
    """The admin API on ``admin_listen``: a unix socket created 0600, or TCP with TLS (``peers`` given)."""
    cfg = runtime.engine.config
    addr = cfg.admin_listen
    server = grpc.aio.server()
    servicer = AdminServicer(runtime, peers)
    admin_pb2_grpc.add_AdminServicer_to_server(servicer, server)
    if addr.startswith("unix://"):
        path = Path(addr[len("unix://") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        old = os.umask(0o177)  # the socket is created 0600: only its owner may change trust state
        try:
            server.add_insecure_port(addr)
            await server.start()
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
    else:
        admin = cfg.admin
        assert admin.cert is not None and admin.key is not None  # the settings require both for TCP

        def domains() -> tuple[str, ...]:
            return tuple(sorted({s.split("/")[2] for s in runtime.engine.config.admin.allowed_spiffe_ids}))

        creds = tls_server_credentials(
            files_identity(TlsFiles(cert=admin.cert, key=admin.key)),
            lambda: runtime.engine.trust,
            domains,
            admin.client_ca,
        )
        server.add_secure_port(addr, creds)
        await server.start()
    log.info("admin API on %s", addr)
    return server, servicer
