"""Prometheus metrics (prefix ``ext_authz_``). Labels are bounded: never a SPIFFE ID, subject or
path; rule names and trust domains come from config. Labelled children are created once and kept.
"""

from __future__ import annotations

import platform
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from .. import __version__
from ..model import Decision
from ..state.records import REVOCATION_KINDS

__all__ = ["CONTENT_TYPE", "OPENMETRICS", "Metrics", "kind_label"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def kind_label(decision: Decision | None) -> str:
    if decision is None:
        return "unknown"
    kinds = decision.principal.kinds
    return "+".join(kinds) if kinds else "none"


class _Children:
    """label values → child, created on first use and kept (never ``.labels()`` per Check)."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def get(self, *labels: str) -> Any:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self.metric.labels(*labels)
        return child


class _CheckTally(Collector):
    """What every Check adds to (decisions, latency, revoked denials, policy errors, shadow results):
    plain integers on the Check path, turned into metric families only when scraped. The Check path and
    the scrape both run on the event loop: no lock is needed, and none is taken per Check."""

    def __init__(self) -> None:
        self.decisions: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.revoked: defaultdict[str, int] = defaultdict(int)
        self.policy_errors: defaultdict[str, int] = defaultdict(int)
        self.response_errors: defaultdict[str, int] = defaultdict(int)
        self.shadow: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.buckets = [0] * (len(_BUCKETS) + 1)  # the last: above every bound (+Inf)
        self.latency_sum = 0.0

    def collect(self) -> Iterable[Any]:
        dec = CounterMetricFamily(
            "ext_authz_decisions", "Checks decided", labels=["decision", "reason", "kind"]
        )
        for labels, n in sorted(self.decisions.items()):
            dec.add_metric(list(labels), n)
        yield dec
        cumulative, running = [], 0
        for bound, n in zip((*_BUCKETS, float("inf")), self.buckets, strict=True):
            running += n
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
        yield HistogramMetricFamily(
            "ext_authz_check_duration_seconds",
            "Time to decide one Check",
            buckets=cumulative,
            sum_value=self.latency_sum,
        )
        rev = CounterMetricFamily(
            "ext_authz_revoked_denials", "Requests denied by a revocation", labels=["kind"]
        )
        for kind, n in sorted(self.revoked.items()):
            rev.add_metric([kind], n)
        yield rev
        errs = CounterMetricFamily(
            "ext_authz_policy_errors", "Rule conditions that failed to evaluate", labels=["rule"]
        )
        for rule, n in sorted(self.policy_errors.items()):
            errs.add_metric([rule], n)
        yield errs
        rerrs = CounterMetricFamily(
            "ext_authz_response_errors",
            "Values of a rule's response left out because they failed (the decision stands)",
            labels=["rule"],
        )
        for rule, n in sorted(self.response_errors.items()):
            rerrs.add_metric([rule], n)
        yield rerrs
        sh = CounterMetricFamily(
            "ext_authz_shadow_decisions", "Shadow rule evaluations", labels=["rule", "outcome"]
        )
        for pair, n in sorted(self.shadow.items()):
            sh.add_metric(list(pair), n)
        yield sh


class _StateCollector(Collector):
    """Gauges read at scrape time from the current state, trust and caches."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Any]:
        data = self.read()
        rev = GaugeMetricFamily(
            "ext_authz_active_revocations", "Revocations in force, by kind", labels=["kind"]
        )
        # Every kind has a series, 0 included: a rate or an alert over it never sees a gap.
        counts = dict.fromkeys(REVOCATION_KINDS, 0) | dict(data.get("revocations", {}))
        for kind, n in sorted(counts.items()):
            rev.add_metric([kind], n)
        yield rev
        yield GaugeMetricFamily(
            "ext_authz_active_grants", "Just-in-time grants in force", value=data.get("grants", 0)
        )
        yield GaugeMetricFamily(
            "ext_authz_open_exceptions", "Break-glass exceptions open now", value=data.get("exceptions", 0)
        )
        pending = GaugeMetricFamily(
            "ext_authz_pending_approvals",
            "Grants and exceptions waiting for a second person's approval (no effect until then)",
            labels=["kind"],
        )
        for kind in ("grant", "exception"):
            pending.add_metric([kind], data.get("pending", {}).get(kind, 0))
        yield pending
        age = GaugeMetricFamily(
            "ext_authz_trust_bundle_age_seconds",
            "Seconds since the trust material of each trust domain last changed",
            labels=["trust_domain"],
        )
        for td, seconds in sorted(data.get("bundle_age", {}).items()):
            age.add_metric([td], seconds)
        yield age
        expiry = GaugeMetricFamily(
            "ext_authz_trust_bundle_expiry_timestamp_seconds",
            "When the newest X.509 authority of each trust domain expires (Unix time): after it, no"
            " X.509-SVID of the domain verifies",
            labels=["trust_domain"],
        )
        for td, at in sorted(data.get("bundle_expiry", {}).items()):
            expiry.add_metric([td], at)
        yield expiry
        cache = CounterMetricFamily(
            "ext_authz_verification_cache", "Verified-credential cache lookups", labels=["cache", "result"]
        )
        for (name, result), n in sorted(data.get("cache", {}).items()):
            cache.add_metric([name, result], n)
        yield cache
        yield GaugeMetricFamily(
            "ext_authz_ready", "1 when config, trust and policy are loaded", value=data.get("ready", 0)
        )
        yield GaugeMetricFamily(
            "ext_authz_state_connected",
            "1 when the state store is reachable (0: enforcing the last snapshot)",
            value=data.get("state_connected", 1),
        )
        rejected = CounterMetricFamily(
            "ext_authz_state_records_rejected",
            "Records read from the state store and ignored"
            " (not authentic, malformed, or over this replica's caps)",
            labels=["kind", "reason"],
        )
        for (kind, reason), n in sorted(data.get("state_rejected", {}).items()):
            rejected.add_metric([kind, reason], n)
        yield rejected


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no ``*_created`` series: counters start at process start anyway
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # process_* (CPU, memory, fds, start time), python_info and python_gc_*: the same collectors
        # prometheus-client puts on its default registry, on ours.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)
        Gauge(
            "ext_authz_build_info",
            "Always 1; the labels say which ext-authz and Python this process runs",
            ["version", "python_version"],
            registry=r,
        ).labels(__version__, platform.python_version()).set(1)
        self.checks = _CheckTally()
        r.register(self.checks)
        self.revocations_created = _Children(
            Counter("ext_authz_revocations_created", "Revocations created", ["source"], registry=r)
        )
        self.reloads = _Children(
            Counter("ext_authz_config_reloads", "Config reloads", ["result"], registry=r)
        )
        self.log_dropped = Counter(
            "ext_authz_decision_log_dropped",
            "Decision-log records dropped (a full queue, a failing sink, a record that could not be built)",
            registry=r,
        )
        self.stream_dropped = _Children(
            Counter(
                "ext_authz_stream_dropped",
                "Live-stream events dropped (slow subscriber)",
                ["stream"],
                registry=r,
            )
        )
        for result in ("success", "failure"):
            self.reloads.get(result)
        self.reload_failed = Gauge(
            "ext_authz_config_reload_failed",
            "1 while the last reload failed and the last good configuration is enforced; else 0",
            registry=r,
        )
        self.callers_refused = Counter(
            "ext_authz_check_callers_refused",
            "Check calls refused: the caller is not an allowed Envoy",
            registry=r,
        )
        for source in ("api", "quarantine", "ssf"):
            self.revocations_created.get(source)
        self.ssf_events = _Children(
            Counter(
                "ext_authz_ssf_events",
                "Security Event Tokens received, by event and result (applied, ignored, duplicate,"
                " verified, discarded, or the RFC 8935 error code)",
                ["event", "result"],
                registry=r,
            )
        )
        self.ssf_sent = _Children(
            Counter(
                "ext_authz_ssf_sets_sent",
                "SETs our transmitter pushed, by result (delivered, retry, refused, dropped)",
                ["result"],
                registry=r,
            )
        )
        self.ssf_refused = _Children(
            Counter(
                "ext_authz_ssf_receiver_errors",
                "4xx answers receivers gave our transmitter's pushes, by stream and error (the RFC 8935"
                " error code, else http_STATUS)",
                ["stream", "error"],
                registry=r,
            )
        )
        self.log_dropped.inc(0)

    def add_state_collector(self, read: Callable[[], dict[str, Any]]) -> None:
        self.registry.register(_StateCollector(read))

    def observe(self, decision: Decision | None, seconds: float) -> None:
        t = self.checks
        t.buckets[bisect_left(_BUCKETS, seconds)] += 1
        t.latency_sum += seconds
        if decision is None:
            t.decisions[("error", "internal", "unknown")] += 1
            return
        t.decisions[("allow" if decision.allowed else "deny", decision.reason, kind_label(decision))] += 1
        if decision.revocation_kind:
            t.revoked[decision.revocation_kind] += 1
        for rule, _ in decision.policy_errors:
            t.policy_errors[rule] += 1
        for rule, _ in decision.response_errors:
            t.response_errors[rule] += 1
        for sh in decision.shadow:
            t.shadow[(sh.rule, "matched" if sh.matched else "unmatched")] += 1

    def scrape(self) -> bytes:
        return generate_latest(self.registry)

    def scrape_openmetrics(self) -> bytes:
        """The same, as OpenMetrics (what Prometheus asks for first): counters with their _created."""
        from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

        return bytes(openmetrics(self.registry))  # type: ignore[no-untyped-call]
