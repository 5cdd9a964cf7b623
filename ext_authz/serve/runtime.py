"""The runtime: the current engine generation, the caches, the state replica, and carrying out effects.

The core decides; this module only does what a decision's effects say (``apply``): remember a session's
first use, count a denial against the principal the core named (and quarantine it past its budget),
refetch an issuer's keys. No reason codes or status rules live here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..clock import Clock, SystemClock
from ..errors import StateError
from ..model import CountDenial, Decision, NewSession, UnknownKeyId
from ..observe.decision_log import DecisionLog, Redactor
from ..observe.metrics import Metrics
from ..observe.stream import DecisionHub
from ..observe.tracing import Tracing
from ..pipeline import Caches, Engine
from ..settings import Settings
from ..state import commands
from ..state.quarantine import DenialCounter
from ..state.replica import Replica, RevocationEvent
from ..trust.bundles import IssuerTrust
from ..trust.sources import TrustSources
from .signals import SharedSignals

__all__ = ["Runtime"]

log = logging.getLogger("ext_authz")


@dataclass
class Runtime:
    """The mutable edge. ``engine`` is swapped whole; in-flight Checks keep the one they started with."""

    engine: Engine
    replica: Replica
    clock: Clock = field(default_factory=SystemClock)
    decision_log: DecisionLog = field(default_factory=DecisionLog)
    metrics: Metrics = field(default_factory=Metrics)
    hub: DecisionHub = field(default_factory=DecisionHub)
    sources: TrustSources = field(default_factory=lambda: TrustSources(()))
    on_unknown_key: Callable[[str], None] | None = None
    worker: int | None = None
    ready: bool = False
    reloads_failed: int = 0
    last_reload_error: str = ""
    own_svid_ready: Callable[[], bool] = lambda: True  # check.tls.workload_api: has our SVID come?
    ssf: SharedSignals | None = None  # receivers and transmitter (worker 0 only, when configured)
    tracing: Tracing | None = None  # OpenTelemetry, when configured (read at start)
    caches: Caches = field(init=False)
    base: Engine = field(init=False)  # the generation loaded from files, before live sources
    redactor: Redactor = field(init=False)
    quarantine: DenialCounter | None = field(init=False, default=None)
    _background: set[asyncio.Task[None]] = field(default_factory=set)
    _retired_cache: dict[tuple[str, str], int] = field(default_factory=dict)
    _trust_seen: dict[str, tuple[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.base = self.engine
        self.caches = Caches.sized(self.engine.config.cache.size)
        self.hub.on_drop = self.metrics.stream_dropped.get("decisions").inc
        self.decision_log.on_drop = self.metrics.log_dropped.inc
        self.metrics.add_state_collector(self.state_metrics)
        self.replica.watch(self._count_revocation)
        self._configure_edges()

    def _count_revocation(self, event: RevocationEvent) -> None:
        if event.op == "created":
            self.metrics.revocations_created.get(event.revocation.source).inc()

    def _configure_edges(self) -> None:
        """Edge state derived from the current engine: redaction, quarantine counting, bundle ages."""
        dl = self.engine.config.decision_log
        self.redactor = Redactor(dl.redact_headers, dl.path_patterns())
        q = self.engine.config.quarantine
        if q is None:
            self.quarantine = None
        elif self.quarantine is None or self.quarantine.cfg != q:
            self.quarantine = DenialCounter(q)
        now = self.clock.now().timestamp()
        for name, td in self.engine.trust.domains.items():
            seen = self._trust_seen.get(name)
            if seen is None or seen[0] != td.revision:
                self._trust_seen[name] = (td.revision, now)
        for name in list(self._trust_seen):
            if name not in self.engine.trust.domains:
                del self._trust_seen[name]

    # -- generations -----------------------------------------------------------------------------------
    def install(self, base: Engine) -> None:
        """A generation loaded from files: live sources are configured for it and laid over it."""
        settings_changed = base.config != self.base.config
        self.base = base
        self.sources.configure(base.config)
        self._swap(base.with_trust(self.sources.contribute(base.trust)))
        if settings_changed:  # records are valid under settings: check them again under the new ones
            self.spawn(self._revalidate_state())

    def sources_changed(self) -> None:
        """A live trust source has new material: merge every source over the current base again."""
        self._swap(self.base.with_trust(self.sources.contribute(self.base.trust)))

    def _swap(self, engine: Engine) -> None:
        """Install a new generation. Verified credentials are kept only if nothing changed."""
        if (
            engine.revision != self.engine.revision
            or engine.config.cache.size != self.engine.config.cache.size
        ):
            self._retired_cache = self.cache_totals()
            proofs = self.caches.proofs  # DPoP proofs seen: a reload or a key rotation forgets none
            self.caches = Caches.sized(engine.config.cache.size)
            self.caches.proofs = proofs
        self.engine = engine
        self._configure_edges()

    async def _revalidate_state(self) -> None:
        try:
            await self.replica.reload()
        except StateError as exc:
            log.warning(
                "could not re-read state under the new settings (will on the next change): %s", exc.detail
            )

    # -- effects ---------------------------------------------------------------------------------------
    def apply(self, decision: Decision) -> None:
        """Carry out what the decision says must happen, and nothing else."""
        for effect in decision.effects:
            if isinstance(effect, NewSession):
                self.replica.note_session(effect.key, effect.first_seen)
            elif isinstance(effect, CountDenial):
                self._count_denial(effect.principal)
            elif isinstance(effect, UnknownKeyId) and self.on_unknown_key is not None:
                self.on_unknown_key(effect.issuer)  # maybe the issuer rotated its keys (rate-limited)

    def _count_denial(self, principal: str) -> None:
        q = self.engine.config.quarantine
        counter = self.quarantine
        if q is None or counter is None:
            return
        now = self.clock.now().timestamp()
        if counter.record(principal, now):
            rev = commands.quarantine(principal, q, now)
            log.warning("quarantined %s for %ds: %s", principal, int(q.duration), rev.reason)
            self.spawn(self._write_quarantine(rev))

    def release_quarantine(self, principal: str) -> None:
        """Forget this replica's denial count for ``principal`` (its quarantine was lifted)."""
        if self.quarantine is not None:
            self.quarantine.forget(principal)

    async def _write_quarantine(self, rev: Any) -> None:
        try:
            await self.replica.put(rev)
        except StateError as exc:
            log.error("could not record the quarantine of %s: %s", rev.value, exc.detail)

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- what metrics read at scrape time --------------------------------------------------------------
    def cache_totals(self) -> dict[tuple[str, str], int]:
        totals = dict(self._retired_cache)
        for name, cache in (("x509", self.caches.x509), ("token", self.caches.tokens)):
            totals[(name, "hit")] = totals.get((name, "hit"), 0) + cache.hits
            totals[(name, "miss")] = totals.get((name, "miss"), 0) + cache.misses
        return totals

    def state_metrics(self) -> dict[str, Any]:
        now = self.clock.now().timestamp()
        snap = self.replica.snapshot
        return {
            "revocations": self.replica.active_revocations(now),  # counted as they change, not walked
            "grants": sum(1 for g in snap.grants if g.active(now)),
            "exceptions": sum(1 for e in snap.exceptions if e.active(now)),
            "pending": {
                "grant": sum(
                    1 for g in snap.grants if g.pending and g.ended_at is None and now < g.not_after
                ),
                "exception": sum(
                    1 for e in snap.exceptions if e.pending and e.closed_at is None and now < e.expires_at
                ),
            },
            "bundle_age": {name: max(0.0, now - at) for name, (_, at) in self._trust_seen.items()},
            "bundle_expiry": {
                name: max(c.not_valid_after_utc.timestamp() for c in td.x509_roots)
                for name, td in self.engine.trust.domains.items()
                if td.x509_roots
            },
            "cache": self.cache_totals(),
            "ready": 1 if self.ready else 0,
            "state_connected": 1 if self.replica.healthy else 0,
            "state_rejected": dict(self.replica.rejected),
        }


class RuntimeView:
    """The runtime as the shared-signals edge sees it (serve/signals.SignalsHost): what is in force now."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    @property
    def settings(self) -> Settings:
        return self._runtime.engine.config

    @property
    def transmitters(self) -> Mapping[str, IssuerTrust]:
        return self._runtime.engine.trust.transmitters

    @property
    def clock(self) -> Clock:
        return self._runtime.clock

    @property
    def replica(self) -> Replica:
        return self._runtime.replica

    @property
    def metrics(self) -> Metrics:
        return self._runtime.metrics
