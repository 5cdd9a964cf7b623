"""`ext-authz report`: least privilege from real traffic, read from the decision log.

Per identity: which rules, grants and exceptions actually allowed its requests, which allow rules
cover it but it never used (with the policy at hand), and its denials by reason. With the audit log
(read from the state store): every grant and exception of the period, who made and who approved it,
and how often it was used, never-used ones first. With the policy: the rules whose conditions read
token claims, which the decision log does not keep (so coverage by those rules cannot be judged).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..pipeline import ANONYMOUS_IDENTITY, Engine
from ..state.audit import AuditEntry

__all__ = [
    "Governance",
    "IdentityUsage",
    "RecordUse",
    "build_governance",
    "build_report",
    "read_records",
    "render_governance",
    "render_report",
]


@dataclass
class IdentityUsage:
    identity: str
    kinds: set[str] = field(default_factory=set)
    requests: int = 0
    allowed: int = 0
    rules: Counter[str] = field(default_factory=Counter)
    grants: Counter[str] = field(default_factory=Counter)
    exceptions: Counter[str] = field(default_factory=Counter)
    denials: Counter[str] = field(default_factory=Counter)
    unused_rules: list[str] = field(default_factory=list)
    sample: dict[str, Any] = field(default_factory=dict)
    # Where the rules in shadow would have decided otherwise: (enforced, shadow) → requests.
    shadow_differs: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "kinds": sorted(self.kinds),
            "requests": self.requests,
            "allowed": self.allowed,
            "denied": self.requests - self.allowed,
            "allowed_by_rule": dict(self.rules.most_common()),
            "allowed_by_grant": dict(self.grants.most_common()),
            "allowed_by_exception": dict(self.exceptions.most_common()),
            "denials_by_reason": dict(self.denials.most_common()),
            "unused_allow_rules": self.unused_rules,
            "shadow_would_differ": dict(self.shadow_differs.most_common()),
        }


def read_records(lines: Iterable[str], since: datetime | None = None) -> Iterator[dict[str, Any]]:
    """Decision records from JSON lines; anything else (Envoy lines, noise) is skipped."""
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or "decision_id" not in rec or "decision" not in rec:
            continue
        if since is not None:
            try:
                if datetime.fromisoformat(rec["time"]) < since:
                    continue
            except (KeyError, TypeError, ValueError):
                continue
        yield rec


def _identity_key(rec: dict[str, Any]) -> str:
    """The caller as state names it: its principal keys (ext_authz/principal.py)."""
    ident = rec.get("identity") or {}
    principals = [p for p in ident.get("principals") or () if isinstance(p, str) and p]
    if principals:
        return " + ".join(principals)
    if ident.get("spiffe_id"):  # a record written before principal keys
        return str(ident["spiffe_id"])
    if ident.get("subject"):
        return f"{ident['subject']} ({ident.get('issuer') or 'token'})"
    return ""


def _covering_rules(engine: Engine, sample: dict[str, Any], now: datetime) -> list[str]:
    """Enforced allow rules whose condition holds for this identity, whatever the request."""
    ident = sample.get("identity") or {}
    spiffe_id = str(ident.get("spiffe_id") or "")
    path = spiffe_id.split("/", 3)[3] if spiffe_id.count("/") >= 3 else ""
    identity = {
        **ANONYMOUS_IDENTITY,  # what the log does not record (claims, audiences, times) stays empty
        "authenticated": True,
        "kind": (ident.get("kinds") or [""])[0],
        "kinds": list(ident.get("kinds") or []),
        "spiffe_id": spiffe_id,
        "trust_domain": ident.get("trust_domain", ""),
        "path": f"/{path}" if path else "",
        "subject": ident.get("subject", "") or spiffe_id,
        "issuer": ident.get("issuer", ""),
    }
    data = {
        "request": {
            "method": "",
            "path": "",
            "host": "",
            "scheme": "",
            "protocol": "",
            "headers": {},
            "context_extensions": {},
        },
        "source": {"address": "", "principal": ""},
        "identity": identity,
        "signals": {"device": {}, "workload": {}, "user": {}, "token": {}},
        "grants": [],
        "now": now,
    }
    out = []
    for rule in engine.policy.rules:
        if rule.effect != "allow" or rule.shadow:
            continue
        if rule.condition(lambda: data) is True:
            out.append(rule.name)
    return out


def build_report(
    records: Iterable[dict[str, Any]], engine: Engine | None, now: datetime
) -> list[IdentityUsage]:
    """Usage per identity; with ``engine``, the allow rules that cover an identity but that it never
    used (their conditions evaluated as of ``now``)."""
    usage: dict[str, IdentityUsage] = {}
    for rec in records:
        key = _identity_key(rec)
        if not key:
            continue
        u = usage.get(key)
        if u is None:
            u = usage[key] = IdentityUsage(key, sample=rec)
        u.requests += 1
        u.kinds.update((rec.get("identity") or {}).get("kinds") or [])
        shadow = rec.get("shadow_decision")
        if shadow in ("allow", "deny") and shadow != rec.get("decision"):
            u.shadow_differs[f"{rec.get('decision')} → shadow {shadow}"] += 1
        if rec.get("decision") == "allow":
            u.allowed += 1
            if rec.get("exception_id"):
                u.exceptions[str(rec["exception_id"])] += 1
            elif rec.get("rule"):
                u.rules[str(rec["rule"])] += 1
            for gid in rec.get("grant_ids") or []:
                u.grants[str(gid)] += 1
        else:
            u.denials[str(rec.get("reason", "unknown"))] += 1
    result = sorted(usage.values(), key=lambda u: (-u.requests, u.identity))
    if engine is not None:
        for u in result:
            u.unused_rules = [r for r in _covering_rules(engine, u.sample, now) if r not in u.rules]
    return result


def render_report(report: list[IdentityUsage], *, with_policy: bool) -> str:
    if not report:
        return "no decisions with an identity in the log (for the period asked)"
    lines: list[str] = []
    for u in report:
        lines.append(
            f"{u.identity}  [{', '.join(sorted(u.kinds))}]  {u.requests} requests, "
            f"{u.allowed} allowed, {u.requests - u.allowed} denied"
        )
        for label, counts in (
            ("allowed by rules:     ", u.rules),
            ("used grants:          ", u.grants),
            ("allowed by exceptions:", u.exceptions),
            ("denials:              ", u.denials),
        ):
            if counts:
                lines.append(f"  {label} " + ", ".join(f"{k} ({n})" for k, n in counts.most_common()))
        if u.shadow_differs:
            lines.append(
                "  shadow rules differ:   "
                + ", ".join(f"{k} ({n})" for k, n in u.shadow_differs.most_common())
            )
        if with_policy:
            unused = ", ".join(u.unused_rules) if u.unused_rules else "none"
            lines.append(f"  covered but never used: {unused}")
    return "\n".join(lines)


@dataclass
class RecordUse:
    """A grant or exception of the period: who made it, who approved it, how often it let a request by."""

    kind: str  # grant | exception
    id: str
    principal: str = ""
    made_by: str = ""
    approved_by: str = ""
    reason: str = ""
    ticket: str = ""
    used: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "principal": self.principal,
            "made_by": self.made_by,
            "approved_by": self.approved_by,
            "reason": self.reason,
            "ticket": self.ticket,
            "used": self.used,
        }


@dataclass
class Governance:
    grants: list[RecordUse] = field(default_factory=list)
    exceptions: list[RecordUse] = field(default_factory=list)
    rules_reading_claims: list[str] = field(default_factory=list)
    audited: bool = False  # were grants and exceptions read from the audit log (or only from the log)?

    def as_dict(self) -> dict[str, Any]:
        return {
            "grants": [g.as_dict() for g in self.grants],
            "exceptions": [e.as_dict() for e in self.exceptions],
            "rules_reading_claims": self.rules_reading_claims,
            "from_audit_log": self.audited,
        }


def build_governance(
    report: list[IdentityUsage], audit: list[AuditEntry] | None, engine: Engine | None
) -> Governance:
    """Grants and exceptions with their use (every one the audit log names, used or not; without the
    audit log, only those the decision log shows used), and the rules that read token claims."""
    uses: dict[tuple[str, str], RecordUse] = {}

    def use(kind: str, rid: str) -> RecordUse:
        found = uses.get((kind, rid))
        if found is None:
            found = uses[(kind, rid)] = RecordUse(kind, rid)
        return found

    for entry in audit or ():
        if entry.kind not in ("grant", "exception"):
            continue
        u = use(entry.kind, entry.record_id)
        after = entry.after or {}
        u.principal = entry.principal or u.principal
        u.reason = str(after.get("reason", u.reason))
        u.ticket = str(after.get("ticket", u.ticket))
        if entry.action in ("grant", "open"):
            u.made_by = entry.actor
        elif entry.action == "approve":
            u.approved_by = entry.actor
        if not u.approved_by and entry.action in ("grant", "open") and after.get("approved_at"):
            u.approved_by = str(after.get("approver") or after.get("approved_by") or "(no approval required)")
    for ident in report:
        for gid, n in ident.grants.items():
            g = use("grant", gid)
            g.used += n
            g.principal = g.principal or ident.identity
        for eid, n in ident.exceptions.items():
            e = use("exception", eid)
            e.used += n
            e.principal = e.principal or ident.identity
    order = sorted(uses.values(), key=lambda u: (u.used > 0, u.id))
    claims = []
    if engine is not None:
        claims = [
            r.name for r in engine.policy.rules if "identity" in r.variables and "claims" in r.when_source
        ]
    return Governance(
        grants=[u for u in order if u.kind == "grant"],
        exceptions=[u for u in order if u.kind == "exception"],
        rules_reading_claims=claims,
        audited=audit is not None,
    )


def render_governance(g: Governance) -> str:
    lines: list[str] = []
    for title, items in (("grants", g.grants), ("exceptions", g.exceptions)):
        if not items:
            lines.append(f"{title}: none in the period")
            continue
        lines.append(f"{title}:")
        for u in items:
            used = f"used {u.used} times" if u.used else "NEVER USED"
            ticket = f" ticket {u.ticket}" if u.ticket else ""
            lines.append(
                f"  {u.id}  {u.principal or '-'}  made by {u.made_by or '?'}, approved by"
                f" {u.approved_by or 'nobody'}{ticket}: {used}"
            )
    if not g.audited:
        lines.append(
            "(without the audit log, grants and exceptions never used cannot be listed: pass --config)"
        )
    if g.rules_reading_claims:
        lines.append(
            "rules reading token claims (the log keeps no claims: who they cover is not judged): "
            + ", ".join(g.rules_reading_claims)
        )
    return "\n".join(lines)
