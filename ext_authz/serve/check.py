"""Envoy's ``Authorization/Check``: normalize, decide, carry out the effects, render, record.

The one grpc servicer on the Check path. It decides nothing itself: the pure pipeline does, over the
engine and state snapshot current when the Check arrived. Over TLS, a caller that is not a verified
X.509-SVID on ``check.allowed_spiffe_ids`` is refused before its request is read.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import grpc

from ext_authz._proto.envoy import external_auth_pb2, external_auth_pb2_grpc

from ..envoy.normalize import normalize
from ..envoy.render import render_wire
from ..errors import Error
from ..model import Decision, ProofUsed, RequestContext
from ..observe.decision_log import Pending, logged_request, pending_record
from ..pipeline import Engine, decide, proof_replayed
from .peers import PeerRefused, SvidPeers
from .runtime import Runtime

__all__ = ["AUTH_SERVICE", "AuthorizationServicer", "CheckFailed", "add_to_server"]

log = logging.getLogger("ext_authz")
AUTH_SERVICE = "envoy.service.auth.v3.Authorization"


@runtime_checkable
class AnswersCheck(Protocol):
    """A server that can answer Check with a synchronous function (serve/native.py)."""

    def answer_check_with(self, answer: Callable[[Any], bytes | Coroutine[Any, Any, bytes]]) -> None: ...


CLAIM_DEADLINE = 0.5  # seconds a Check waits for the shared store to claim its DPoP proof


@dataclass(slots=True)
class Checked:
    """One Check, as it is recorded once answered."""

    engine: Engine
    decision_id: str
    now: datetime
    ctx: RequestContext | None
    decision: Decision | None
    started: float
    span: Any


def _shared_proof(decision: Decision, shared: bool) -> ProofUsed | None:
    """The DPoP proof an allow must claim before it stands, when the state store may be shared with
    other processes (Redis; SQLite, whose file any process on the host may open): this process
    remembered it already. A denial claims nothing: it is answered at once, whatever the store says."""
    if not (decision.allowed and decision.effects and shared):
        return None
    return next((e for e in decision.effects if isinstance(e, ProofUsed)), None)


class CheckFailed(Error):
    """A Check that faulted. The message is what its caller is told: the decision id (the log has the
    rest)."""


class AuthorizationServicer(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    def __init__(self, runtime: Runtime, peers: SvidPeers | None = None) -> None:
        self.runtime = runtime
        self.peers = peers  # set when Check is served over TLS: callers must be allowed Envoys

    async def Check(self, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        """The serialized CheckResponse (see :func:`add_to_server`)."""
        if self.peers is not None:
            try:
                self.peers.verify(context.auth_context())
            except PeerRefused as exc:
                self.runtime.metrics.callers_refused.inc()
                log.warning("Check refused: %s (peer %s)", exc, context.peer())
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "caller is not an allowed Envoy")
        try:
            answer = self.answer(request)
            return answer if isinstance(answer, bytes) else await answer
        except CheckFailed as exc:
            await context.abort(grpc.StatusCode.INTERNAL, str(exc))
            raise  # abort raises; this keeps type checkers honest

    def answer(self, request: Any) -> bytes | Coroutine[Any, Any, bytes]:
        """Decide one CheckRequest of a verified caller: its serialized CheckResponse, recorded.

        Synchronous (nothing here waits), so a transport may call it straight from its event loop (see
        serve/native.py). One case waits: a request whose DPoP proof must be claimed in a state store
        shared with other processes (:meth:`_claimed`); then the answer is a coroutine to await. A fault is
        never an allow: it raises :class:`CheckFailed`, whose message names the decision, and the
        transport answers INTERNAL (Envoy's failure_mode_allow=false and status_on_error decide what the
        client sees)."""
        rt = self.runtime
        started = time.perf_counter()
        now = rt.clock.now()
        decision_id = _new_decision_id()
        engine = rt.engine
        ctx: RequestContext | None = None
        decision: Decision | None = None
        fault = ""
        span = None
        later = False
        try:
            ctx = normalize(request, engine.config.limits)
            if rt.tracing is not None:  # after the limits: the trace headers are within them
                span = rt.tracing.start(ctx.http.headers if ctx.http else None)
            decision = decide(ctx, engine, rt.caches, now, decision_id, rt.replica.snapshot)
            used = _shared_proof(decision, rt.replica.backend.durable)
            if used is not None:
                later = True
                return self._claimed(used, Checked(engine, decision_id, now, ctx, decision, started, span))
            rt.apply(decision)
            return render_wire(decision)
        except Exception as exc:
            fault = type(exc).__name__
            log.exception("Check %s failed", decision_id)
            decision = None
            raise CheckFailed(f"ext-authz internal error (decision {decision_id})") from exc
        finally:
            if not later:  # (the hot path: the record's parts as they are, no object made for them)
                self._record(engine, decision_id, now, ctx, decision, started, span, fault)

    async def _claimed(self, used: ProofUsed, checked: Checked) -> bytes:
        """The answer once the request's DPoP proof is claimed in the shared state store: a proof another
        process took first is a replay (401 ``dpop_proof``); a store that cannot say within
        CLAIM_DEADLINE fails the Check (INTERNAL: closed)."""
        rt = self.runtime
        fault = ""
        try:
            assert checked.decision is not None
            fresh = await asyncio.wait_for(rt.replica.claim_once(used.key, used.until), CLAIM_DEADLINE)
            if not fresh:
                checked.decision = proof_replayed(checked.decision.decision_id, checked.engine)
            rt.apply(checked.decision)
            return render_wire(checked.decision)
        except asyncio.CancelledError:  # the caller left (Envoy's timeout), or the server stops
            fault, checked.decision = "cancelled", None
            raise
        except Exception as exc:
            fault = type(exc).__name__
            log.error("Check %s failed: the DPoP proof could not be claimed (%s)", checked.decision_id, fault)
            checked.decision = None
            raise CheckFailed(f"ext-authz internal error (decision {checked.decision_id})") from exc
        finally:
            c = checked
            self._record(c.engine, c.decision_id, c.now, c.ctx, c.decision, c.started, c.span, fault)

    def _record(
        self,
        engine: Engine,
        decision_id: str,
        now: datetime,
        ctx: RequestContext | None,
        decision: Decision | None,
        started: float,
        span: Any,
        fault: str,
    ) -> None:
        """Each record is kept apart: one that fails is logged and neither changes the answer nor keeps
        the others from being made."""
        rt = self.runtime
        latency = time.perf_counter() - started
        try:
            rt.metrics.observe(decision, latency)
        except Exception:
            log.exception("Check %s: the metrics failed", decision_id)
        if rt.tracing is not None:
            try:
                if span is None:  # the request was refused before its headers could be read
                    span = rt.tracing.start(None)
                rt.tracing.finish(span, decision_id, ctx, decision, fault, rt.redactor.path)
            except Exception:
                log.exception("Check %s: tracing failed", decision_id)
        if rt.decision_log.enabled or rt.hub.subscribers:  # else nothing is built
            try:
                self._log(engine, decision_id, now, ctx, decision, latency, fault, span)
            except Exception:
                log.exception("Check %s: the decision log failed", decision_id)

    def _log(
        self,
        engine: Engine,
        decision_id: str,
        now: datetime,
        ctx: RequestContext | None,
        decision: Decision | None,
        latency: float,
        fault: str,
        span: Any,
    ) -> None:
        """The decision record: handed to the log's writer, or built now when the live stream has
        subscribers."""
        rt = self.runtime
        pending: Pending = (
            decision_id,
            now,
            None if ctx is None else logged_request(ctx, rt.redactor, engine.config.decision_log.headers),
            decision,
            latency,
            engine.revision,
            fault,
            rt.replica.snapshot.revision,
            rt.worker,
            (span.trace_id or "") if span is not None else "",
        )
        if rt.hub.subscribers:  # the live stream needs the record now
            rec = pending_record(pending)
            rt.decision_log.write(rec)
            rt.hub.publish(rec)
        else:  # the log's writer builds the record, if the log is on
            rt.decision_log.write_later(pending)


def add_to_server(servicer: AuthorizationServicer, server: grpc.aio.Server) -> None:
    """Serve ``Authorization/Check``. Check returns its response serialized (envoy/render.py keeps
    responses as serialized templates), so the method has no response serializer."""
    handler = grpc.unary_unary_rpc_method_handler(
        servicer.Check,
        request_deserializer=external_auth_pb2.CheckRequest.FromString,
        response_serializer=None,
    )
    handlers = {"Check": handler}
    # Both, as generated code does: a registered method is what pygrpc-native serves natively (a
    # generic handler alone is left to its grpcio fallback), and grpcio looks it up faster.
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(AUTH_SERVICE, handlers),))
    server.add_registered_method_handlers(AUTH_SERVICE, handlers)
    # pygrpc-native (serve/native.py) answers Check from its batch callback, without a task per call.
    # It serves no TLS, so there is no caller to verify first; were there one, Check keeps the path
    # that verifies it.
    if isinstance(server, AnswersCheck) and servicer.peers is None:
        server.answer_check_with(servicer.answer)


def _new_decision_id() -> str:
    """128 random bits as 32 hex digits. An id, not a secret: no system call per Check."""
    return f"{_ids.getrandbits(128):032x}"


_ids = random.Random()  # seeded from the OS once  # noqa: S311 - ids are not secrets
