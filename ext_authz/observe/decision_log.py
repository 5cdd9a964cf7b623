"""One JSON record per Check, written even on faults. Never a token, cookie or key."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any, TextIO

from ..model import Decision, RequestContext

__all__ = ["DecisionLog", "record"]


def record(
    *,
    decision_id: str,
    at: datetime,
    ctx: RequestContext | None,
    decision: Decision | None,
    latency_s: float,
    revision: str,
    fault: str = "",
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "time": at.isoformat(timespec="milliseconds"),
        "decision_id": decision_id,
    }
    if ctx is not None:
        http = ctx.http
        rec["request_id"] = ctx.request_id
        rec["method"] = http.method if http else ""
        rec["host"] = http.host if http else ""
        rec["path"] = http.path_only if http else ""  # never the query string: it may carry secrets
        rec["source"] = ctx.source_address
    if decision is not None:
        p = decision.principal
        rec.update(
            decision="allow" if decision.allowed else "deny",
            status=decision.status,
            reason=decision.reason,
            rule=decision.rule,
            identity={
                "kinds": list(p.kinds),
                "spiffe_id": p.spiffe_id,
                "subject": p.token.subject if p.token else "",
                "issuer": p.token.issuer if p.token else "",
                "trust_domain": p.primary.trust_domain if p.primary else "",
            },
        )
        if decision.revocation_id:
            rec["revocation"] = {"id": decision.revocation_id, "kind": decision.revocation_kind}
        if decision.exception_id:
            rec["exception_id"] = decision.exception_id
        if decision.grant_ids:
            rec["grant_ids"] = list(decision.grant_ids)
        if decision.shadow:
            rec["shadow"] = [
                {"rule": s.rule, "effect": s.effect, "matched": s.matched} for s in decision.shadow
            ]
            rec["shadow_decision"] = "allow" if decision.shadow_allowed else "deny"
        if decision.detail:
            rec["detail"] = decision.detail
    if fault:
        rec.update(decision="error", reason="internal", fault=fault)
    rec["latency_ms"] = round(latency_s * 1000, 3)
    rec["revision"] = revision
    return rec


class DecisionLog:
    def __init__(self, sink: TextIO | None = None) -> None:
        self.sink = sink or sys.stdout

    def write(self, rec: dict[str, Any]) -> None:
        try:
            self.sink.write(json.dumps(rec, separators=(",", ":"), default=str) + "\n")
            self.sink.flush()
        except (OSError, ValueError):
            pass  # a broken sink must never fail a Check (drop counting arrives with metrics)
