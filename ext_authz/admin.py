"""The admin gRPC API: revocations, grants, exceptions, signals, and the revocation stream.

Listens on ``admin_listen``: a unix socket (mode 0600) by default, or TCP with mTLS where only
callers whose certificate names an allowed SPIFFE ID get in. Every change records who, when, why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, NoReturn

import grpc

from ._proto import admin_pb2 as pb
from ._proto import admin_pb2_grpc
from .clock import Clock
from .config import Config
from .identity.spiffe_id import SpiffeId, SpiffeIdError
from .observe.stream import DecisionFilter, DecisionHub
from .state.model import REVOCATION_KINDS, SIGNAL_SUBJECTS, ExceptionGrant, Grant, Revocation, Scope, Signal
from .state.store import RevocationEvent, Store

__all__ = ["ACTOR_METADATA", "AdminServicer", "normalize_revocation", "start_admin_server"]

log = logging.getLogger("ext_authz.admin")
ACTOR_METADATA = "x-ext-authz-actor"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"))
MAX_WATCH_QUEUE = 1000


class InvalidArgument(ValueError):
    pass


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


def normalize_revocation(kind: str, value: str) -> tuple[str, str]:
    """Check and canonicalize what a revocation names. Raises InvalidArgument with a clear message."""
    value = value.strip()
    if not kind:
        kind = "spiffe_id" if value.startswith("spiffe://") else ""
        if not kind:
            raise InvalidArgument("--kind is required unless the value is a spiffe:// ID")
    if kind not in REVOCATION_KINDS or kind == "quarantine":
        raise InvalidArgument(
            f"unknown kind {kind!r}; expected one of spiffe_id, cert, jti, sub, sid, device"
        )
    if not value:
        raise InvalidArgument("a revocation needs a value")
    if kind == "spiffe_id":
        try:
            sid = SpiffeId.parse(value)
        except SpiffeIdError as exc:
            raise InvalidArgument(f"not a valid SPIFFE ID: {exc}") from exc
        return kind, str(sid)
    if kind == "cert":
        fp = value.lower().replace(":", "")
        if fp.startswith("sha256:"):
            fp = fp[len("sha256:") :]
        if _HEX64.match(fp):
            return kind, fp
        serial, at, issuer = value.partition("@")
        if at and serial and issuer:
            return kind, f"{serial.lower().lstrip('0') or '0'}@{issuer}"
        raise InvalidArgument("a cert revocation is a SHA-256 fingerprint (64 hex) or SERIALHEX@ISSUER-DN")
    return kind, value


def _scope(msg: Any) -> Scope:
    methods = tuple(m.upper() for m in msg.methods)
    for m in methods:
        if m not in _METHODS:
            raise InvalidArgument(f"unknown HTTP method {m!r}")
    for p in msg.paths:
        if not p.startswith("/") and p != "*":
            raise InvalidArgument(f"a path pattern starts with '/', got {p!r}")
    return Scope(hosts=tuple(h.lower() for h in msg.hosts), paths=tuple(msg.paths), methods=methods)


def _principal(value: str) -> str:
    value = value.strip()
    if not value:
        raise InvalidArgument("a principal (SPIFFE ID or token subject) is required")
    if value.startswith("spiffe://"):
        try:
            return str(SpiffeId.parse(value))
        except SpiffeIdError as exc:
            raise InvalidArgument(f"not a valid SPIFFE ID: {exc}") from exc
    return value


def _reason(value: str) -> str:
    if not value.strip():
        raise InvalidArgument("a reason is required")
    return value.strip()


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


class AdminServicer(admin_pb2_grpc.AdminServicer):  # type: ignore[misc]
    def __init__(
        self, store: Store, config: Callable[[], Config], clock: Clock, hub: DecisionHub | None = None
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.hub = hub or DecisionHub()
        self.watch_dropped = 0

    def _actor(self, context: Any) -> str:
        """Who is asking: the verified SPIFFE ID over mTLS, else what the local client says."""
        auth = context.auth_context()
        for uri in auth.get("x509_subject_alternative_name", []) if auth else []:
            text = uri.decode() if isinstance(uri, bytes) else str(uri)
            if text.startswith("spiffe://"):
                return text
        claimed = dict(context.invocation_metadata() or ()).get(ACTOR_METADATA, "")
        who = claimed[:200] if claimed else "unknown"
        return f"local:{who}"

    def _now(self) -> float:
        return self.clock.now().timestamp()

    async def _guard(self, context: Any, fn: Callable[[], Any]) -> Any:
        try:
            return await fn()
        except InvalidArgument as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def Revoke(self, request: Any, context: Any) -> Any:
        async def run() -> Any:
            kind, value = normalize_revocation(request.kind, request.value)
            now = self._now()
            if request.duration_seconds < 0:
                raise InvalidArgument("duration cannot be negative")
            rev = Revocation(
                id=_new_id("rev"),
                kind=kind,
                value=value,
                reason=_reason(request.reason),
                created_by=self._actor(context),
                created_at=now,
                expires_at=now + request.duration_seconds if request.duration_seconds else None,
            )
            await self.store.put("revocation", rev, at=now)
            log.info("revoked %s %s by %s: %s", kind, value, rev.created_by, rev.reason)
            return pb.RevokeResponse(revocation=rev_pb(rev))

        return await self._guard(context, run)

    async def Unrevoke(self, request: Any, context: Any) -> Any:
        rev = await self.store.delete("revocation", request.id, at=self._now())
        if rev is None:
            await _not_found(context, f"no revocation {request.id!r}")
        log.info(
            "unrevoked %s (%s %s) by %s: %s",
            request.id,
            rev.kind,
            rev.value,
            self._actor(context),
            request.reason or "-",
        )
        return pb.UnrevokeResponse(revocation=rev_pb(rev))

    async def ListRevocations(self, request: Any, context: Any) -> Any:
        now = self._now()
        revs = [r for r in self.store.all("revocation") if request.include_expired or r.active(now)]
        if request.kind:
            revs = [r for r in revs if r.kind == request.kind]
        revs.sort(key=lambda r: r.created_at)
        return pb.ListRevocationsResponse(revocations=[rev_pb(r) for r in revs])

    async def CreateGrant(self, request: Any, context: Any) -> Any:
        async def run() -> Any:
            now = self._now()
            if request.duration_seconds <= 0:
                raise InvalidArgument("a grant needs a duration: it must expire by itself")
            if not request.approver.strip():
                raise InvalidArgument("a grant needs an approver")
            start = request.not_before or now
            g = Grant(
                id=_new_id("grt"),
                principal=_principal(request.principal),
                scope=_scope(request.scope),
                not_before=start,
                not_after=start + request.duration_seconds,
                reason=_reason(request.reason),
                approver=request.approver.strip(),
                created_by=self._actor(context),
                created_at=now,
            )
            await self.store.put("grant", g, at=now)
            log.info(
                "grant %s to %s by %s (approver %s): %s",
                g.id,
                g.principal,
                g.created_by,
                g.approver,
                g.reason,
            )
            return pb.CreateGrantResponse(grant=grant_pb(g))

        return await self._guard(context, run)

    async def EndGrant(self, request: Any, context: Any) -> Any:
        g = self.store.get("grant", request.id)
        if g is None:
            await _not_found(context, f"no grant {request.id!r}")
        now = self._now()
        if g.ended_at is None:
            g = Grant(**{**_fields(g), "ended_at": now, "ended_by": self._actor(context)})
            await self.store.put("grant", g, at=now)
        return pb.EndGrantResponse(grant=grant_pb(g))

    async def ListGrants(self, request: Any, context: Any) -> Any:
        now = self._now()
        gs = [
            g
            for g in self.store.all("grant")
            if request.include_inactive or (g.ended_at is None and now < g.not_after)
        ]
        gs.sort(key=lambda g: g.created_at)
        return pb.ListGrantsResponse(grants=[grant_pb(g) for g in gs])

    async def OpenException(self, request: Any, context: Any) -> Any:
        async def run() -> Any:
            now = self._now()
            cap = self.config().exceptions_max_duration
            if request.duration_seconds <= 0:
                raise InvalidArgument("an exception needs a duration: exceptions are never permanent")
            if request.duration_seconds > cap:
                raise InvalidArgument(
                    f"duration {int(request.duration_seconds)}s is over the cap"
                    f" exceptions.max_duration={int(cap)}s"
                )
            e = ExceptionGrant(
                id=_new_id("exc"),
                principal=_principal(request.principal),
                scope=_scope(request.scope),
                reason=_reason(request.reason),
                opened_by=self._actor(context),
                opened_at=now,
                expires_at=now + request.duration_seconds,
            )
            await self.store.put("exception", e, at=now)
            log.warning(
                "exception %s opened for %s by %s until %s: %s",
                e.id,
                e.principal,
                e.opened_by,
                int(e.expires_at),
                e.reason,
            )
            return pb.OpenExceptionResponse(exception=exception_pb(e))

        return await self._guard(context, run)

    async def CloseException(self, request: Any, context: Any) -> Any:
        e = self.store.get("exception", request.id)
        if e is None:
            await _not_found(context, f"no exception {request.id!r}")
        now = self._now()
        if e.closed_at is None:
            e = ExceptionGrant(**{**_fields(e), "closed_at": now, "closed_by": self._actor(context)})
            await self.store.put("exception", e, at=now)
            log.warning("exception %s closed by %s", e.id, e.closed_by)
        return pb.CloseExceptionResponse(exception=exception_pb(e))

    async def ListExceptions(self, request: Any, context: Any) -> Any:
        now = self._now()
        es = [e for e in self.store.all("exception") if request.include_closed or e.active(now)]
        es.sort(key=lambda e: e.opened_at)
        return pb.ListExceptionsResponse(exceptions=[exception_pb(e) for e in es])

    async def PutSignal(self, request: Any, context: Any) -> Any:
        async def run() -> Any:
            if request.subject_kind not in SIGNAL_SUBJECTS:
                raise InvalidArgument(
                    f"unknown subject kind {request.subject_kind!r}; expected device, workload or user"
                )
            if not request.subject.strip() or not request.key.strip():
                raise InvalidArgument("a signal needs a subject and a key")
            if request.ttl_seconds <= 0:
                raise InvalidArgument("a signal needs a time-to-live: a stale signal is unknown")
            subject = request.subject.strip()
            if request.subject_kind == "workload":
                subject = _principal(subject)
            now = self._now()
            s = Signal(
                subject_kind=request.subject_kind,
                subject=subject,
                key=request.key.strip(),
                value=request.value,
                set_by=self._actor(context),
                set_at=now,
                expires_at=now + request.ttl_seconds,
            )
            await self.store.put("signal", s, at=now)
            return pb.PutSignalResponse(signal=signal_pb(s))

        return await self._guard(context, run)

    async def ListSignals(self, request: Any, context: Any) -> Any:
        now = self._now()
        ss = [s for s in self.store.all("signal") if request.include_stale or s.fresh(now)]
        ss.sort(key=lambda s: (s.subject_kind, s.subject, s.key))
        return pb.ListSignalsResponse(signals=[signal_pb(s) for s in ss])

    async def WatchDecisions(self, request: Any, context: Any) -> AsyncIterator[Any]:
        sub = self.hub.subscribe(
            DecisionFilter(deny_only=request.deny_only, identity_glob=request.identity_glob)
        )
        try:
            while True:
                rec = await sub.queue.get()
                yield pb.DecisionEvent(json=json.dumps(rec, separators=(",", ":"), default=str))
        finally:
            self.hub.unsubscribe(sub)

    async def WatchRevocations(self, request: Any, context: Any) -> AsyncIterator[Any]:
        queue: asyncio.Queue[RevocationEvent] = asyncio.Queue(MAX_WATCH_QUEUE)

        def push(ev: RevocationEvent) -> None:
            try:
                queue.put_nowait(ev)
            except asyncio.QueueFull:
                self.watch_dropped += 1  # a slow subscriber loses events; it never slows the store

        unsubscribe = self.store.watch(push)
        try:
            if request.replay_active:
                now = self._now()
                for r in sorted(self.store.all("revocation"), key=lambda r: r.created_at):
                    if r.active(now):
                        yield pb.RevocationEvent(op="active", revocation=rev_pb(r), at=r.created_at)
            while True:
                ev = await queue.get()
                yield pb.RevocationEvent(op=ev.op, revocation=rev_pb(ev.revocation), at=ev.at)
        finally:
            unsubscribe()


async def _not_found(context: Any, message: str) -> NoReturn:
    await context.abort(grpc.StatusCode.NOT_FOUND, message)
    raise AssertionError("abort returned")  # grpc's abort always raises


def _fields(record: Any) -> dict[str, Any]:
    return {name: getattr(record, name) for name in record.__dataclass_fields__}


def _credentials(cfg: Config) -> Any:
    a = cfg.admin
    assert a.cert and a.key and a.client_ca
    return grpc.ssl_server_credentials(
        [(a.key.read_bytes(), a.cert.read_bytes())],
        root_certificates=a.client_ca.read_bytes(),
        require_client_auth=True,
    )


class _AllowList(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Over TCP, only callers whose verified certificate names an allowed SPIFFE ID."""

    def __init__(self, allowed: Callable[[], tuple[str, ...]]) -> None:
        self.allowed = allowed

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        allowed = self.allowed

        def wrap(behavior: Any, streaming: bool) -> Any:
            if streaming:

                async def stream(request: Any, context: Any) -> AsyncIterator[Any]:
                    await _check(context, allowed())
                    async for item in behavior(request, context):
                        yield item

                return stream

            async def unary(request: Any, context: Any) -> Any:
                await _check(context, allowed())
                return await behavior(request, context)

            return unary

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap(handler.unary_unary, False), handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap(handler.unary_stream, True), handler.request_deserializer, handler.response_serializer
            )
        return handler


async def _check(context: Any, allowed: tuple[str, ...]) -> None:
    auth = context.auth_context() or {}
    ids = [
        u.decode() if isinstance(u, bytes) else str(u) for u in auth.get("x509_subject_alternative_name", [])
    ]
    if not any(i in allowed for i in ids if i.startswith("spiffe://")):
        await context.abort(
            grpc.StatusCode.PERMISSION_DENIED, "caller's SPIFFE ID is not on admin.allowed_spiffe_ids"
        )


async def start_admin_server(
    store: Store, config: Callable[[], Config], clock: Clock, hub: DecisionHub | None = None
) -> tuple[grpc.aio.Server, AdminServicer]:
    cfg = config()
    addr = cfg.admin_listen
    interceptors = (
        [] if addr.startswith("unix://") else [_AllowList(lambda: config().admin.allowed_spiffe_ids)]
    )
    server = grpc.aio.server(interceptors=interceptors)
    servicer = AdminServicer(store, config, clock, hub)
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
        server.add_secure_port(addr, _credentials(cfg))
        await server.start()
    log.info("admin API on %s", addr)
    return server, servicer
