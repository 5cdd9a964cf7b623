"""`ext-authz report`: least privilege from real traffic, read from the decision log.

Per identity: which rules, grants and exceptions actually allowed its requests, which allow rules
cover it but it never used (with the policy at hand), and its denials by reason.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..pipeline import ANONYMOUS_IDENTITY, Engine

__all__ = ["IdentityUsage", "build_report", "read_records", "render_report"]


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
        "signals": {"device": {}, "workload": {}, "user": {}},
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
        if with_policy:
            unused = ", ".join(u.unused_rules) if u.unused_rules else "none"
            lines.append(f"  covered but never used: {unused}")
    return "\n".join(lines)
