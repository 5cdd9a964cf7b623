"""`ext-authz report --suggest`: least privilege written from use.

From the decision log: for each identity, each enforced allow rule that allowed it, and each method it
used there, one allow rule covering the hosts and path patterns it used, and nothing else. A suggested
rule is never broader than the rule it replaces: it keeps that rule's condition (`when` and the
identity's own), its context extensions, its step-up and its response, its hosts and paths are within
that rule's, and it covers only the methods used. Identifier-looking path segments (numbers, UUIDs,
hashes, random tokens, what the log already redacted) become `*`, so an id is never a literal, unless the
replaced rule itself names it; more than ``MAX_SIBLINGS`` siblings under one (non-root) parent collapse
into ``parent/*`` where the replaced rule allows that much. A path that would become every path (an id at
the root) is not written, and said.

With the current config, the suggestion is that config with its allow rules replaced (deny rules and
allow rules for callers without credentials kept), or, with ``shadow``, the suggested rules added beside
the enforced ones in `mode: shadow`, to compare before anyone switches. What a break-glass exception
allowed, or a rule that reads ``grants`` (access that ends by itself), is not written into a standing rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..match import Glob, HostPattern, PatternError, parse_host
from .decision_log import REDACTED, _random_looking

__all__ = [
    "MAX_SIBLINGS",
    "Suggestion",
    "path_pattern",
    "suggest",
    "suggested_config",
    "suggested_rules",
]

MAX_SIBLINGS = 3  # more distinct last segments than this under one parent: parent/*
MAX_HOSTS = 10  # more distinct hosts than this, and the replaced rule names none: the rule names none
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
    if not path.startswith("/"):
        return "/*"
    return "/".join("*" if _identifier(s) else s for s in path.split("/"))


def _everything(pattern: str) -> bool:
    return set(pattern) <= {"/", "*"}


def _covers(outer: str, inner: str) -> bool:
    """Does the path pattern ``outer`` match everything ``inner`` does (for the shapes written here)?"""
    if outer == inner or _everything(outer):
        return True
    return outer.endswith("/*") and inner.startswith(outer[:-1])


@dataclass
class Suggestion:
    identity: str  # as state names it: its principal keys joined by " + "
    principals: tuple[str, ...]
    rule: str  # the enforced allow rule that allowed these requests
    method: str
    hosts: set[str] = field(default_factory=set)
    paths: set[str] = field(default_factory=set)  # as logged (tokens redacted)
    requests: int = 0


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _condition(principals: Iterable[str]) -> str:
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
    """What each identity used, by the rule that allowed it and the method, from the allowed records of a
    decision log. What a break-glass exception allowed, or a rule that reads ``grants``
    (``temporary_rules``), is left out."""
    temporary = set(temporary_rules)
    found: dict[tuple[str, str, str], Suggestion] = {}
    for rec in records:
        rule = str(rec.get("rule") or "")
        if rec.get("decision") != "allow" or rec.get("exception_id") or not rule or rule in temporary:
            continue
        ident = rec.get("identity") or {}
        principals = tuple(p for p in ident.get("principals") or () if isinstance(p, str) and p)
        if not principals:
            continue  # an anonymous caller: the rule that let it in says anonymous, not this
        key = " + ".join(principals)
        method = str(rec.get("method") or "GET").upper()
        s = found.get((key, rule, method))
        if s is None:
            s = found[(key, rule, method)] = Suggestion(key, principals, rule, method)
        s.requests += 1
        host = str(rec.get("host") or "").lower()
        if host:
            s.hosts.add(host)
        s.paths.add(str(rec.get("path") or "/"))
    return sorted(found.values(), key=lambda s: (-s.requests, s.identity, s.rule, s.method))


def _collapse(patterns: set[str], allowed: list[str]) -> set[str]:
    """Siblings under one non-root parent, more than MAX_SIBLINGS of them, become ``parent/*`` where the
    replaced rule's paths (``allowed``; empty: any) cover that."""
    by_parent: dict[str, set[str]] = {}
    for p in patterns:
        by_parent.setdefault(p.rsplit("/", 1)[0], set()).add(p)
    out: set[str] = set()
    for parent, children in by_parent.items():
        wide = f"{parent}/*"
        if (
            len(children) > MAX_SIBLINGS
            and parent
            and not _everything(parent)
            and (not allowed or any(_covers(a, wide) for a in allowed))
        ):
            out.add(wide)
        else:
            out.update(children)
    wides = [p[:-1] for p in out if p.endswith("/*")]
    return {p for p in out if not any(p != w + "*" and p.startswith(w) for w in wides)}


def _paths(s: Suggestion, allowed: list[str], notes: list[str]) -> list[str]:
    """The path patterns of a suggestion, each within the replaced rule's paths (``allowed``)."""
    globs = []
    for a in allowed:
        try:
            globs.append(Glob(a))
        except PatternError:
            continue
    out: set[str] = set()
    for path in sorted(s.paths):
        pattern = path_pattern(path)
        if _everything(pattern):
            notes.append(f"{s.identity}: {s.method} {pattern!r} (an id at the root) not written: every path")
            continue
        if not allowed or any(_covers(a, pattern) for a in allowed):
            out.add(pattern)
            continue
        # The replaced rule is narrower than the pattern: its own pattern that took this request.
        own = [a for a, g in zip(allowed, globs, strict=False) if g.match(path)]
        if own:
            out.update(own)
        else:
            notes.append(f"{s.identity}: {s.method} {path!r} not written: no pattern of {s.rule} is sure")
    return sorted(_collapse(out, allowed))


def _hosts(s: Suggestion, allowed: list[str]) -> list[str]:
    if allowed:  # the replaced rule's own patterns, those that took a request here
        out = []
        for a in allowed:
            try:
                pattern = HostPattern.parse(a)
            except PatternError:
                continue
            if any((h := parse_host(host)) is not None and pattern.match(h) for host in s.hosts):
                out.append(a)
        return sorted(set(out)) or sorted(set(allowed))
    return sorted(s.hosts) if 0 < len(s.hosts) <= MAX_HOSTS else []


def suggested_rules(
    suggestions: list[Suggestion],
    current: Mapping[str, Mapping[str, Any]] | None,
    *,
    shadow: bool,
    notes: list[str] | None = None,
) -> list[dict[str, Any]]:
    """One rule per suggestion. With ``current`` (the config's rules by name), each within the rule it
    replaces; one no longer there is not written (a note says so)."""
    notes = notes if notes is not None else []
    names: set[str] = set()
    rules = []
    for s in suggestions:
        original: Mapping[str, Any] = {}
        if current is not None:
            found = current.get(s.rule)
            if found is None:
                notes.append(f"{s.identity}: rule {s.rule!r} is not in the config: not written")
                continue
            original = found
        match = original.get("match") or {}
        methods = [m.upper() for m in match.get("methods") or ()]
        if methods and s.method not in methods:
            continue
        paths = _paths(s, list(match.get("paths") or ()), notes)
        if not paths:
            continue
        base = f"suggested-{_slug(s.identity.split(' + ')[-1])}-{_slug(s.rule)}-{s.method.lower()}"
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.add(name)
        new_match: dict[str, Any] = {}
        hosts = _hosts(s, list(match.get("hosts") or ()))
        if hosts:
            new_match["hosts"] = hosts
        new_match["paths"] = paths
        new_match["methods"] = [s.method]
        if match.get("context_extensions"):
            new_match["context_extensions"] = dict(match["context_extensions"])
        condition = _condition(s.principals)
        if original.get("when"):
            condition = f"({original['when']}) && {condition}"
        rule: dict[str, Any] = {
            "name": name,
            "description": f"suggested from {s.requests} requests {s.rule} allowed",
        }
        if shadow:
            rule["mode"] = "shadow"
        rule["match"] = new_match
        rule["when"] = condition
        for kept in ("step_up", "response"):
            if original.get(kept) is not None:
                rule[kept] = original[kept]
        rules.append(rule)
    return rules


def suggested_config(
    config: dict[str, Any] | None,
    suggestions: list[Suggestion],
    *,
    shadow: bool,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """The config to try: without one, the rules alone; with one, it with its allow rules replaced by
    the suggested ones (its deny rules, and allow rules for callers without credentials, kept), or with
    ``shadow``, the suggested ones added in shadow."""
    current_rules = [r for r in (config or {}).get("rules") or [] if isinstance(r, dict)]
    by_name = (
        {str(r.get("name")): r for r in current_rules if r.get("mode") != "shadow"}
        if config is not None
        else None
    )
    rules = suggested_rules(suggestions, by_name, shadow=shadow, notes=notes)
    if config is None:
        return {"rules": rules}
    if shadow:
        kept = current_rules
    else:
        kept = [r for r in current_rules if r.get("effect") == "deny" or r.get("anonymous") is True]
    return {**config, "rules": [*kept, *rules]}
