"""`ext-authz report --suggest`: least privilege written from use.

From the decision log, for each identity that was allowed anything: one allow rule covering the methods,
hosts and path patterns it used, and nothing else. Identifier-looking path segments (numbers, UUIDs,
hashes, random tokens, what the log already redacted) become `*`, so an id is never written as a
literal; siblings under one parent (more than ``MAX_SIBLINGS``) collapse into ``parent/*``. With the
current config, the suggestion is that config with its allow rules replaced (deny rules kept), or, with
``shadow``, the suggested rules added beside the enforced ones in `mode: shadow`, to compare before anyone
switches.

What the log does not record cannot be narrowed: context extensions (Envoy's per-route settings) and
token claims. A suggested rule names its caller exactly (a SPIFFE ID; an issuer and a subject).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .decision_log import REDACTED, _random_looking

__all__ = ["MAX_SIBLINGS", "Suggestion", "path_pattern", "suggest", "suggested_config", "suggested_rules"]

MAX_SIBLINGS = 3  # more distinct last segments than this under one parent: parent/*
MAX_HOSTS = 10  # more distinct hosts than this: the rule names none (any host)
_NUMBER = re.compile(r"\d+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEXISH = re.compile(r"(?=.*\d)[0-9a-fA-F]{8,}")


def _identifier(segment: str) -> bool:
    return bool(
        REDACTED in segment
        or _NUMBER.fullmatch(segment)
        or _UUID.fullmatch(segment)
        or _HEXISH.fullmatch(segment)
        or _random_looking(segment)
    )


def path_pattern(path: str) -> str:
    """A logged path as a pattern: each identifier-looking segment is `*` (never the literal id)."""
    path = path.split("?", 1)[0] or "/"
    segments = path.split("/")
    return "/".join("*" if _identifier(s) else s for s in segments) if path.startswith("/") else "/*"


def _collapse(patterns: set[str]) -> list[str]:
    """Siblings under one parent, more than MAX_SIBLINGS of them, become ``parent/*``."""
    by_parent: dict[str, set[str]] = {}
    for p in patterns:
        parent = p.rsplit("/", 1)[0]
        by_parent.setdefault(parent, set()).add(p)
    out: set[str] = set()
    for parent, children in by_parent.items():
        if len(children) > MAX_SIBLINGS:
            out.add(f"{parent}/*")
        else:
            out.update(children)
    # A pattern another one already covers (`/a/*` covers `/a/b`) is dropped.
    wide = [p[:-1] for p in out if p.endswith("/*")]
    return sorted(p for p in out if not any(p != w + "*" and p.startswith(w) for w in wide))


@dataclass
class Suggestion:
    identity: str  # as state names it: its principal keys joined by " + "
    condition: str
    methods: set[str] = field(default_factory=set)
    hosts: set[str] = field(default_factory=set)
    paths: set[str] = field(default_factory=set)
    requests: int = 0

    def rule(self, name: str, shadow: bool) -> dict[str, Any]:
        match: dict[str, Any] = {"paths": _collapse(self.paths), "methods": sorted(self.methods)}
        if 0 < len(self.hosts) <= MAX_HOSTS:
            match = {"hosts": sorted(self.hosts), **match}
        rule: dict[str, Any] = {
            "name": name,
            "description": f"suggested from {self.requests} allowed requests of {self.identity}",
        }
        if shadow:
            rule["mode"] = "shadow"
        rule["match"] = match
        rule["when"] = self.condition
        return rule


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _condition(principals: list[str]) -> str:
    parts = []
    for key in principals:
        if key.startswith("spiffe://"):
            parts.append(f"identity.spiffe_id == {_quote(key)}")
        else:
            issuer, _, subject = key.partition("#")
            parts.append(f"identity.issuer == {_quote(issuer)} && identity.subject == {_quote(subject)}")
    return " && ".join(parts)


def _slug(key: str) -> str:
    last = key.rstrip("/").rsplit("/", 1)[-1].rsplit("#", 1)[-1]
    return re.sub(r"[^a-z0-9]+", "-", last.lower()).strip("-")[:40] or "caller"


def suggest(records: Iterable[dict[str, Any]], temporary_rules: Iterable[str] = ()) -> list[Suggestion]:
    """What each identity used, from the allowed records of a decision log. What a break-glass
    exception allowed, or a rule that reads ``grants`` (``temporary_rules``: access that ends by itself),
    is not written into a standing rule."""
    temporary = set(temporary_rules)
    found: dict[str, Suggestion] = {}
    for rec in records:
        if rec.get("decision") != "allow" or rec.get("exception_id") or rec.get("rule") in temporary:
            continue
        ident = rec.get("identity") or {}
        principals = [p for p in ident.get("principals") or () if isinstance(p, str) and p]
        if not principals:
            continue  # an anonymous caller: the rule that let it in says anonymous, not this
        key = " + ".join(principals)
        s = found.get(key)
        if s is None:
            s = found[key] = Suggestion(key, _condition(principals))
        s.requests += 1
        method = str(rec.get("method") or "")
        if method:
            s.methods.add(method.upper())
        host = str(rec.get("host") or "").lower()
        if host:
            s.hosts.add(host)
        s.paths.add(path_pattern(str(rec.get("path") or "/")))
    return sorted(found.values(), key=lambda s: (-s.requests, s.identity))


def suggested_rules(suggestions: list[Suggestion], *, shadow: bool) -> list[dict[str, Any]]:
    names: set[str] = set()
    rules = []
    for s in suggestions:
        base = f"suggested-{_slug(s.identity.split(' + ')[-1])}"
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.add(name)
        rules.append(s.rule(name, shadow))
    return rules


def suggested_config(
    config: dict[str, Any] | None, suggestions: list[Suggestion], *, shadow: bool
) -> dict[str, Any]:
    """The config to try: without one, the rules alone; with one, it with its allow rules replaced by
    the suggested ones (its deny rules kept), or with ``shadow``, the suggested ones added in shadow."""
    rules = suggested_rules(suggestions, shadow=shadow)
    if config is None:
        return {"rules": rules}
    current = list(config.get("rules") or [])
    if shadow:
        kept = current
    else:  # deny rules stay, and allow rules for callers without credentials (the log names none)
        kept = [
            r
            for r in current
            if isinstance(r, dict) and (r.get("effect") == "deny" or r.get("anonymous") is True)
        ]
    return {**config, "rules": [*kept, *rules]}
