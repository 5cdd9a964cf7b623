"""Tracing with OpenTelemetry (the optional extra ``ext-authz[tracing]``): one span per Check.

The span continues the trace the request carries, as Envoy forwards its headers in the CheckRequest:
W3C ``traceparent``/``tracestate`` first, else B3 (the single ``b3`` header or ``x-b3-*``). A request
with neither starts a new trace, sampled at ``tracing.sample_ratio``; one that carries a sampling
decision keeps it. Spans are exported in batches over OTLP/HTTP by a background thread, never on the
Check path.

Attributes say what was decided, never with what: decision, status, reason, rule, decision id, the
credential kinds, method, host and path (no query string). No token, certificate, subject or header
value is ever an attribute. Trace context comes from the client: only the trace headers reach the
propagators, each within a small bound (``TRACE_HEADERS``), ids are fixed-size hex, a malformed header
is ignored, and a trace id is for correlation, never evidence (a caller may choose its own).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..model import Decision, RequestContext
from .decision_log import redact_path

if TYPE_CHECKING:
    from ..settings import TracingSettings

__all__ = ["TRACE_HEADERS", "CheckSpan", "Tracing", "trace_headers"]

log = logging.getLogger("ext_authz.tracing")
SPAN_NAME = "envoy.service.auth.v3.Authorization/Check"
# The headers the propagators read, and the longest value handed to them. W3C: a traceparent is 55
# characters, a tracestate at most 32 members that vendors must propagate up to 512 characters; B3
# values are ids and flags. Longer values are ignored unread: OpenTelemetry splits a tracestate with a
# regular expression that is quadratic in a run of blanks (40,000 spaces: seconds of CPU), and logs an
# invalid member verbatim (client text, which may be a secret).
TRACE_HEADERS = {
    "traceparent": 128,
    "tracestate": 512,
    "b3": 128,
    "x-b3-traceid": 64,
    "x-b3-spanid": 32,
    "x-b3-sampled": 8,
    "x-b3-flags": 8,
    "x-b3-parentspanid": 32,
}


def trace_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The trace context headers of a request, each within its bound (others are dropped unread)."""
    out = {}
    for name, bound in TRACE_HEADERS.items():
        value = headers.get(name)
        if value is not None and len(value) <= bound:
            out[name] = value
    return out


class CheckSpan:
    """One Check's span: started when the Check arrives, ended with its decision."""

    __slots__ = ("span", "trace_id")

    def __init__(self, span: Any) -> None:
        self.span = span
        ctx = span.get_span_context()
        self.trace_id = f"{ctx.trace_id:032x}" if ctx.trace_id else ""


class Tracing:
    def __init__(self, cfg: TracingSettings, *, worker: int | None = None) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.propagators.b3 import B3MultiFormat
        from opentelemetry.propagators.composite import CompositePropagator
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        attrs: dict[str, Any] = {"service.name": cfg.service_name}
        if worker is not None:
            attrs["service.instance.id"] = f"worker-{worker}"
        self.provider = TracerProvider(
            resource=Resource.create(attrs),
            sampler=(
                ParentBased(TraceIdRatioBased(cfg.sample_ratio))
                if cfg.follow_caller_sampling
                else TraceIdRatioBased(cfg.sample_ratio)
            ),
        )
        self.provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=cfg.endpoint, timeout=cfg.timeout),
                max_queue_size=cfg.queue,
                schedule_delay_millis=int(cfg.flush_interval * 1000),
            )
        )
        self.tracer = self.provider.get_tracer("ext_authz")
        # The API logs an invalid tracestate member verbatim at WARNING: client text stays out of our log.
        logging.getLogger("opentelemetry.trace.span").setLevel(logging.ERROR)
        # Extracted in order, the last found wins: traceparent over B3 when a request carries both.
        self.propagator = CompositePropagator([B3MultiFormat(), TraceContextTextMapPropagator()])
        self._server = SpanKind.SERVER
        self._status, self._error = Status, StatusCode.ERROR

    def start(self, headers: Mapping[str, str] | None) -> CheckSpan:
        carrier = trace_headers(headers) if headers else None
        parent = self.propagator.extract(carrier) if carrier else None
        return CheckSpan(self.tracer.start_span(SPAN_NAME, context=parent, kind=self._server))

    def finish(
        self,
        cs: CheckSpan,
        decision_id: str,
        ctx: RequestContext | None,
        decision: Decision | None,
        fault: str,
        redact: Callable[[str], str] = redact_path,
    ) -> None:
        span = cs.span
        if span.is_recording():
            attrs: dict[str, Any] = {"ext_authz.decision_id": decision_id}
            if ctx is not None and ctx.http is not None:
                attrs["http.request.method"] = ctx.http.method
                attrs["server.address"] = ctx.http.host
                attrs["url.path"] = redact(ctx.http.path_only)  # never the query string, nor a token
            if decision is not None:
                attrs["ext_authz.decision"] = "allow" if decision.allowed else "deny"
                attrs["ext_authz.status"] = decision.status
                attrs["ext_authz.reason"] = decision.reason
                if decision.rule:
                    attrs["ext_authz.rule"] = decision.rule
                attrs["ext_authz.credential_kinds"] = list(decision.principal.kinds)
            if fault:
                attrs["error.type"] = fault
                span.set_status(self._status(self._error, "ext-authz internal error"))
            span.set_attributes(attrs)
        span.end()

    def shutdown(self) -> None:
        """Export what is queued (bounded by the exporter's timeout), then stop the exporter thread."""
        try:
            self.provider.shutdown()
        except Exception:  # a collector that is down must not stop ext-authz from stopping
            log.warning("tracing: could not flush spans at shutdown", exc_info=True)
