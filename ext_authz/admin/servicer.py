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
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import grpc

from .._proto import admin_pb2 as pb
from .._proto import admin_pb2_grpc
from ..errors import StateError
from ..observe.decision_log import encode
from ..observe.stream import DecisionFilter
from ..serve.http import with_port
from ..serve.peers import PeerRefused, SvidPeers, files_identity, tls_server_credentials
from ..settings import Settings, TlsFiles
from ..state import commands
from ..state.audit import AuditEntry
from ..state.commands import InvalidArgument
from ..state.records import ExceptionGrant, Grant, Record, RecordError, Revocation, Scope, Signal, decode
from ..state.replica import RevocationEvent
from . import ACTOR_METADATA

if TYPE_CHECKING:
    from ..serve.runtime import Runtime

__all__ = ["AdminServicer", "start_admin_server"]

log = logging.getLogger("ext_authz.admin")
MAX_WATCH_QUEUE = 1000
T = TypeVar("T")


A = TypeVar("A", Grant, ExceptionGrant)
# How loudly each approvable's steps are logged: an exception overrides policy, a grant widens it.
_LOUDNESS = {"grant": logging.INFO, "exception": logging.WARNING}


def _iso(ts: float) -> str:
    """A time as the admin log prints it: RFC 3339, UTC."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rev_pb(r: Revocation, settings: Settings | None = None) -> Any:
    return pb.Revocation(
        id=r.id,
        kind=r.kind,
        value=r.value,
        reason=r.reason,
        created_by=r.created_by,
        created_at=r.created_at,
        expires_at=r.expires_at or 0,
        source=r.source,
        ref=r.ref,
        issued_before=r.issued_before or 0,
        ended_at=r.ended_at or 0,
        ended_by=r.ended_by,
        end_reason=r.end_reason,
        also=[f"{k}={v}" for k, v in r.also],
        unmatched=commands.unmatched(r, settings) if settings else "",
    )


def scope_pb(s: Scope) -> Any:
    return pb.Scope(hosts=s.hosts, paths=s.paths, methods=s.methods)


def grant_pb(g: Grant, settings: Settings | None = None) -> Any:
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
        ticket=g.ticket,
        approved_at=g.approved_at or 0,
        end_reason=g.end_reason,
        unmatched=commands.unmatched(g, settings) if settings else "",
    )


def exception_pb(e: ExceptionGrant, settings: Settings | None = None) -> Any:
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
        approved_by=e.approved_by,
        approved_at=e.approved_at or 0,
        close_reason=e.close_reason,
        unmatched=commands.unmatched(e, settings) if settings else "",
    )


def signal_pb(s: Signal, settings: Settings | None = None) -> Any:
    return pb.Signal(
        subject_kind=s.subject_kind,
        subject=s.subject,
        key=s.key,
        value=s.value,
        set_by=s.set_by,
        set_at=s.set_at,
        expires_at=s.expires_at,
        source=s.source,
        ref=s.ref,
        unmatched=commands.unmatched(s, settings) if settings else "",
    )


def audit_pb(e: AuditEntry, settings: Settings | None = None) -> Any:
    def js(d: dict[str, Any] | None) -> str:
        return json.dumps(d, separators=(",", ":"), sort_keys=True) if d is not None else ""

    return pb.AuditEntry(
        id=e.id,
        at=e.at,
        actor=e.actor,
        action=e.action,
        kind=e.kind,
        record_id=e.record_id.replace("\0", ":"),  # a signal's id joins its parts with NUL
        principal=e.principal,
        reason=e.reason,
        before_json=js(e.before),
        after_json=js(e.after),
        unmatched=_unmatched_entry(e, settings) if settings else "",
    )


def _unmatched_entry(e: AuditEntry, settings: Settings) -> str:
    data = e.after if e.after is not None else e.before
    try:
        return commands.unmatched(decode(e.kind, data), settings) if data is not None else ""
    except RecordError:
        return ""


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

    @property
    def settings(self) -> Settings:
        return self.runtime.engine.config

    def _known(self, record: Record, allow_unknown: bool) -> None:
        """A record about an issuer or trust domain not configured matches nothing: refused unless the
        caller says it will be configured later (then it is listed and audited as matching nothing)."""
        if not allow_unknown:
            commands.known_issuer(record, self.settings)

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
            self._known(rev, request.allow_unknown)
            for known in self.replica.snapshot.named(rev.value):  # an index lookup, not a scan
                if commands.same_revocation(rev, known, now):
                    # Made before, perhaps by a write whose acknowledgement failed (no replica had it
                    # in time): acknowledged now only as an acknowledged write would be.
                    await self.replica.confirm()
                    return pb.RevokeResponse(revocation=rev_pb(known, self.settings), existing=True)
            await self.replica.put(rev, action="revoke", actor=actor, reason=rev.reason)
            log.info("revoked %s %s by %s: %s", rev.kind, rev.value, rev.created_by, rev.reason)
            return pb.RevokeResponse(revocation=rev_pb(rev, self.settings))

        return await self._run(context, run)

    async def _lift(
        self, context: Any, revs: list[Revocation], reason: str, actor: str, now: float, what: str
    ) -> list[Revocation]:
        """End each revocation early (kept and audited, not deleted); NOT_FOUND when there is none."""
        if not revs:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no revocation {what}")
        lifted = []
        for rev in revs:
            ended = commands.end_revocation(rev, reason, actor, now)
            action = "release" if rev.kind == "quarantine" else "unrevoke"
            await self.replica.put(ended, action=action, actor=actor, reason=ended.end_reason)
            log.info("%s %s (%s %s) by %s: %s", action, rev.id, rev.kind, rev.value, actor, ended.end_reason)
            lifted.append(ended)
        return lifted

    async def Unrevoke(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            if request.id:
                rev = self.replica.get(Revocation, request.id)
                revs = [rev] if rev is not None and rev.active(now) else []
                what = repr(request.id) + (" in force" if rev is not None else "")
            else:  # by what it names: every active revocation of that value
                kind, value = commands.revocation_value(request.kind, request.value)
                revs = [r for r in self.replica.snapshot.named(value) if r.kind == kind and r.active(now)]
                what = f"in force for {value!r}"
            lifted = await self._lift(context, revs, request.reason, actor, now, what)
            return pb.UnrevokeResponse(
                revocation=rev_pb(lifted[0], self.settings),
                revocations=[rev_pb(r, self.settings) for r in lifted],
            )

        return await self._run(context, run)

    async def ReleaseQuarantine(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            who = commands.principal(request.principal)
            revs = [r for r in self.replica.snapshot.named(who) if r.kind == "quarantine" and r.active(now)]
            lifted = await self._lift(context, revs, request.reason, actor, now, f"quarantining {who}")
            self.runtime.release_quarantine(who)
            return pb.ReleaseQuarantineResponse(revocations=[rev_pb(r, self.settings) for r in lifted])

        return await self._run(context, run)

    async def ListRevocations(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            revs = [r for r in self.replica.all(Revocation) if request.include_expired or r.active(now)]
            if request.kind:
                revs = [r for r in revs if r.kind == request.kind]
            revs.sort(key=lambda r: r.created_at)
            return pb.ListRevocationsResponse(revocations=[rev_pb(r, self.settings) for r in revs])

        return await self._run(context, run)

    async def CreateGrant(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            engine = self.runtime.engine
            g = commands.create_grant(
                request.principal,
                _scope(request.scope),
                request.not_before,
                request.duration_seconds,
                request.reason,
                request.approver,
                actor,
                now,
                engine.config.grants,
                request.ticket,
            )
            self._known(g, request.allow_unknown)
            await self.replica.put(g, action="grant", actor=actor, reason=g.reason)
            log.info(
                "grant %s to %s by %s (%s): %s",
                g.id,
                g.principal,
                g.created_by,
                "pending approval" if g.pending else f"approver {g.approver}",
                g.reason,
            )
            warnings = []
            if not engine.policy.reading("grants"):
                warnings.append(
                    "no enforced rule reads `grants`: this grant changes no decision until one does"
                    " (see docs/continuous-trust.md, 'Just-in-time grants')"
                )
            return pb.CreateGrantResponse(grant=grant_pb(g, self.settings), warnings=warnings)

        return await self._run(context, run)

    def _may_approve(self, actor: str) -> None:
        commands.may_approve(actor, self.runtime.engine.config.admin.local_approvals)

    async def _find(self, context: Any, kind: commands.Lifecycle[A], rid: str) -> A:
        record = self.replica.get(kind.cls, rid)
        if record is None:
            await _abort(context, grpc.StatusCode.NOT_FOUND, f"no {kind.noun} {rid!r}")
        return record

    async def _approve(self, context: Any, kind: commands.Lifecycle[A], rid: str, reason: str) -> A:
        """Approve a pending grant or exception: by a second person, audited, logged."""

        async def run(actor: str, now: float) -> A:
            self._may_approve(actor)
            approved = kind.approve(await self._find(context, kind, rid), reason, actor, now)
            await self.replica.put(approved, action="approve", actor=actor, reason=reason.strip())
            log.log(_LOUDNESS[kind.noun], "%s %s approved by %s: %s", kind.noun, rid, actor, reason.strip())
            return approved

        return await self._run(context, run)

    async def _end(self, context: Any, kind: commands.Lifecycle[A], rid: str, reason: str) -> A:
        """End a grant or close an exception early: audited, logged."""

        async def run(actor: str, now: float) -> A:
            ended = kind.end(await self._find(context, kind, rid), reason, actor, now)
            await self.replica.put(ended, action=kind.end_action, actor=actor, reason=reason.strip())
            log.log(
                _LOUDNESS[kind.noun], "%s %s %s by %s: %s", kind.noun, rid, kind.ended, actor, reason.strip()
            )
            return ended

        return await self._run(context, run)

    async def ApproveGrant(self, request: Any, context: Any) -> Any:
        g = await self._approve(context, commands.GRANTS, request.id, request.reason)
        return pb.ApproveGrantResponse(grant=grant_pb(g, self.settings))

    async def EndGrant(self, request: Any, context: Any) -> Any:
        g = await self._end(context, commands.GRANTS, request.id, request.reason)
        return pb.EndGrantResponse(grant=grant_pb(g, self.settings))

    async def ListGrants(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            gs = [  # pending ones too: they wait for a second person, and should be seen
                g
                for g in self.replica.all(Grant)
                if request.include_inactive or (g.ended_at is None and now < (g.finished_at() or 0))
            ]
            gs.sort(key=lambda g: g.created_at)
            return pb.ListGrantsResponse(grants=[grant_pb(g, self.settings) for g in gs])

        return await self._run(context, run)

    async def OpenException(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            cfg = self.runtime.engine.config.exceptions
            e = commands.open_exception(
                request.principal,
                _scope(request.scope),
                request.reason,
                request.duration_seconds,
                actor,
                now,
                cfg.max_duration,
                cfg.require_approval,
            )
            self._known(e, request.allow_unknown)
            await self.replica.put(e, action="open", actor=actor, reason=e.reason)
            log.warning(
                "exception %s opened for %s by %s until %s (%s): %s",
                e.id,
                e.principal,
                e.opened_by,
                _iso(e.expires_at),
                "pending approval" if e.pending else "in force",
                e.reason,
            )
            return pb.OpenExceptionResponse(exception=exception_pb(e, self.settings))

        return await self._run(context, run)

    async def ApproveException(self, request: Any, context: Any) -> Any:
        e = await self._approve(context, commands.EXCEPTIONS, request.id, request.reason)
        return pb.ApproveExceptionResponse(exception=exception_pb(e, self.settings))

    async def CloseException(self, request: Any, context: Any) -> Any:
        e = await self._end(context, commands.EXCEPTIONS, request.id, request.reason)
        return pb.CloseExceptionResponse(exception=exception_pb(e, self.settings))

    async def ListExceptions(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            es = [  # pending ones too: they wait for a second person, and should be seen
                e
                for e in self.replica.all(ExceptionGrant)
                if request.include_closed or (e.closed_at is None and now < (e.finished_at() or 0))
            ]
            es.sort(key=lambda e: e.opened_at)
            return pb.ListExceptionsResponse(exceptions=[exception_pb(e, self.settings) for e in es])

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
                self.runtime.engine.config.signals,
            )
            self._known(s, request.allow_unknown)
            why = commands.reason(request.reason)
            await self.replica.put(s, action="signal", actor=actor, reason=why)
            return pb.PutSignalResponse(signal=signal_pb(s, self.settings))

        return await self._run(context, run)

    async def DeleteSignal(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            sid = commands.signal_id(request.subject_kind, request.subject, request.key)
            reason = commands.reason(request.reason)
            gone = await self.replica.delete(Signal, sid, action="delete", actor=actor, reason=reason)
            if gone is None:
                await _abort(
                    context,
                    grpc.StatusCode.NOT_FOUND,
                    f"no signal {request.key!r} for {request.subject_kind}:{request.subject}",
                )
            log.info(
                "signal %s:%s %s deleted by %s: %s", gone.subject_kind, gone.subject, gone.key, actor, reason
            )
            return pb.DeleteSignalResponse(signal=signal_pb(gone, self.settings))

        return await self._run(context, run)

    async def ListAudit(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            who = commands.principal(request.principal) if request.principal else ""
            limit = min(request.limit or 1000, 10_000)
            entries = await self.replica.audit(request.since, who, limit)
            return pb.ListAuditResponse(entries=[audit_pb(e, self.settings) for e in entries])

        return await self._run(context, run)

    async def ListSignals(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            ss = [s for s in self.replica.all(Signal) if request.include_stale or s.fresh(now)]
            ss.sort(key=lambda s: (s.subject_kind, s.subject, s.key))
            return pb.ListSignalsResponse(signals=[signal_pb(s, self.settings) for s in ss])

        return await self._run(context, run)

    async def SharedSignalsStatus(self, request: Any, context: Any) -> Any:
        async def run(actor: str, now: float) -> Any:
            ssf = self.runtime.ssf
            if ssf is None:
                return pb.SharedSignalsStatusResponse(configured=False)
            receivers = [
                pb.SsfReceiverStatus(
                    issuer=iss,
                    delivery=st.cfg.delivery,
                    stream_id=st.stream_id,
                    stream_status=st.stream_status,
                    verified_at=st.verified_at or 0,
                    critical_subject_members=sorted(set(st.cfg.critical_subject_members) | st.critical),
                )
                for iss, st in sorted(ssf.receivers.receivers.items())
            ]
            streams = []
            tx = ssf.transmitter
            for stream in tx.streams if tx is not None else ():
                last = stream.last_error
                streams.append(
                    pb.SsfStreamStatus(
                        stream_id=stream.id,
                        audience=stream.cfg.audience,
                        delivery=stream.cfg.delivery,
                        status=stream.status,
                        status_reason=stream.status_reason,
                        queued=len(stream.queue),
                        delivered=stream.delivered,
                        refused=dict(stream.refused),
                        last_error_at=last[0] if last else 0,
                        last_error_status=last[1] if last else 0,
                        last_error=last[2] if last else "",
                        last_error_description=last[3] if last else "",
                    )
                )
            return pb.SharedSignalsStatusResponse(
                configured=bool(receivers or streams), receivers=receivers, streams=streams
            )

        return await self._run(context, run)

    async def WatchDecisions(self, request: Any, context: Any) -> AsyncIterator[Any]:
        await self._caller(context)
        hub = self.runtime.hub
        sub = hub.subscribe(DecisionFilter.of(deny_only=request.deny_only, identity=request.identity_glob))
        try:
            while True:
                rec = await sub.queue.get()
                yield pb.DecisionEvent(json=encode(rec).rstrip("\n"))
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
                        yield pb.RevocationEvent(
                            op="active", revocation=rev_pb(r, self.settings), at=r.created_at
                        )
            while True:
                ev = await queue.get()
                yield pb.RevocationEvent(op=ev.op, revocation=rev_pb(ev.revocation, self.settings), at=ev.at)
        finally:
            unsubscribe()


async def start_admin_server(
    runtime: Runtime, peers: SvidPeers | None
) -> tuple[grpc.aio.Server, AdminServicer, str]:
    """The admin API on ``admin_listen``: a unix socket created 0600, or TCP with TLS (``peers`` given).
    Returns the server, its servicer and the address it is bound to (a TCP port 0 resolved)."""
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
        bound = addr
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
        port = server.add_secure_port(addr, creds)
        await server.start()
        bound = with_port(addr, port)
    log.info("admin API on %s", bound)
    return server, servicer, bound
