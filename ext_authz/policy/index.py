"""Which rules could select a request, without looking at every rule.

Each rule is filed under what its ``match`` names, in four dimensions:

- **method**: each method it lists, or "any";
- **host**: an exact name (``backend.internal``, ``[::1]``), a dot suffix (``*.example.com`` is filed
  under ``.example.com``), any other glob (``api-*.internal``: always a candidate in this dimension),
  or "any";
- **path**: an exact path, or the literal prefix before its first ``*`` in a trie of ``/``-separated
  segments (``/api/v1/*`` under ``api`` → ``v1``; ``/api/v*`` under ``api`` with the partial ``v``),
  or "any" (no paths, or a pattern starting with ``*``);
- **context extensions**: its first ``key=value``, or "none".

A request looks up each dimension (a few dictionary lookups, and one walk down the trie that stops at
the first segment no rule names), takes the dimension with the fewest candidates, and keeps those that
are also candidates in every other dimension. Every candidate is then checked with the rule's own
:meth:`~ext_authz.policy.engine.CompiledRule.selects`, so the index only decides which rules are
looked at, never whether one matches: the result is the linear scan's, in policy order (a
property-based test compares the two on generated policies).

The work per request grows with the length of the path's literal part that rules name and with the
number of rules that really match, not with the number of rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..match import METHODS, Glob, Selector, Target

__all__ = ["RuleIndex"]

_EMPTY: frozenset[int] = frozenset()


class _Indexed(Protocol):
    @property
    def selector(self) -> Selector: ...

    @property
    def context_extensions(self) -> tuple[tuple[str, str], ...]: ...


def _freeze(buckets: Mapping[str, set[int]]) -> dict[str, frozenset[int]]:
    return {k: frozenset(v) for k, v in buckets.items()}


@dataclass
class _Node:
    """A directory in the path trie: the rules whose literal prefix ends here, by the partial segment
    that follows the last ``/`` of the prefix (``""`` for a prefix ending in ``/``)."""

    children: dict[str, _Node] = field(default_factory=dict)
    partials: dict[str, set[int]] = field(default_factory=dict)
    frozen: dict[str, frozenset[int]] = field(default_factory=dict)
    lengths: tuple[int, ...] = ()  # the distinct lengths of the partials, shortest first

    def freeze(self) -> None:
        self.frozen = _freeze(self.partials)
        self.lengths = tuple(sorted({len(p) for p in self.partials}))
        self.partials = {}
        for child in self.children.values():
            child.freeze()


class RuleIndex:
    """Candidate rules for a request: a superset of those whose ``match`` selects it."""

    def __init__(self, rules: Sequence[_Indexed]) -> None:
        methods: dict[str, set[int]] = {}
        method_any: set[int] = set()
        exact_hosts: dict[str, set[int]] = {}
        suffixes: dict[str, set[int]] = {}
        other_hosts: set[int] = set()
        host_any: set[int] = set()
        exact_paths: dict[str, set[int]] = {}
        path_any: set[int] = set()
        root = _Node()
        ext: dict[tuple[str, str], set[int]] = {}
        ext_none: set[int] = set()
        unconditional: set[int] = set()  # a selector that is entirely "any": the only kind an L4 check meets
        for i, rule in enumerate(rules):
            sel = rule.selector
            if sel.any:
                unconditional.add(i)
            if sel.methods:
                for m in sel.methods:
                    methods.setdefault(m, set()).add(i)
            else:
                method_any.add(i)
            if not sel.hosts:
                host_any.add(i)
            for hp in sel.hosts:
                kind, key = _host_key(hp.name)
                if kind == "exact":
                    exact_hosts.setdefault(key, set()).add(i)
                elif kind == "suffix":
                    suffixes.setdefault(key, set()).add(i)
                elif kind == "any":
                    host_any.add(i)
                else:
                    other_hosts.add(i)
            if not sel.paths:
                path_any.add(i)
            for glob in sel.paths:
                _file_path(glob, i, exact_paths, path_any, root)
            if rule.context_extensions:
                ext.setdefault(rule.context_extensions[0], set()).add(i)
            else:
                ext_none.add(i)
        self._methods = _freeze(methods)
        self._method_any = frozenset(method_any)
        self._exact_hosts = _freeze(exact_hosts)
        self._suffixes = _freeze(suffixes)
        self._longest_suffix = max(map(len, suffixes), default=0)
        self._other_hosts = frozenset(other_hosts)
        self._host_any = frozenset(host_any)
        self._exact_paths = _freeze(exact_paths)
        self._path_any = frozenset(path_any)
        root.freeze()
        self._root = root
        self._ext = {k: frozenset(v) for k, v in ext.items()}
        self._ext_keys = tuple(sorted({k for k, _ in ext}))
        self._ext_none = frozenset(ext_none)
        self._unconditional = tuple(sorted(unconditional))

    # -- per request -------------------------------------------------------------------------------------
    def candidates(self, target: Target, extensions: Mapping[str, str]) -> list[int]:
        """Indexes of the rules that may select the request, in policy order."""
        host = target.host
        if host is None:  # an L4 check: only a rule whose match names nothing selects it
            return list(self._unconditional)
        dims = (
            self._method_sets(target.method),
            self._host_sets(host.name),
            self._path_sets(target.path),
            self._ext_sets(extensions),
        )
        sizes = [sum(map(len, d)) for d in dims]
        smallest = min(range(4), key=sizes.__getitem__)
        if sizes[smallest] == 0:
            return []
        others = [d for i, d in enumerate(dims) if i != smallest]
        found = {
            i
            for bucket in dims[smallest]
            for i in bucket
            if all(any(i in b for b in other) for other in others)
        }
        return sorted(found)

    def _method_sets(self, method: str) -> list[frozenset[int]]:
        exact = self._methods.get(method) if method in METHODS else None
        return [self._method_any, exact] if exact else [self._method_any]

    def _host_sets(self, name: str) -> list[frozenset[int]]:
        out = [self._host_any, self._other_hosts]
        exact = self._exact_hosts.get(name)
        if exact:
            out.append(exact)
        if self._suffixes:
            # every suffix of the name that starts at a dot, up to the longest one a rule names
            start = max(0, len(name) - self._longest_suffix)
            dot = name.find(".", start)
            while dot >= 0:
                found = self._suffixes.get(name[dot:])
                if found:
                    out.append(found)
                dot = name.find(".", dot + 1)
        return out

    def _path_sets(self, path: str) -> list[frozenset[int]]:
        out = [self._path_any]
        exact = self._exact_paths.get(path)
        if exact:
            out.append(exact)
        if not path.startswith("/"):
            return out
        node: _Node | None = self._root
        pos = 1  # the start of the current segment
        while node is not None:
            slash = path.find("/", pos)
            segment = path[pos:] if slash < 0 else path[pos:slash]
            for n in node.lengths:
                if n > len(segment):
                    break
                found = node.frozen.get(segment[:n])
                if found:
                    out.append(found)
            if slash < 0 or not node.children:
                break
            node = node.children.get(segment)
            pos = slash + 1
        return out

    def _ext_sets(self, extensions: Mapping[str, str]) -> list[frozenset[int]]:
        out = [self._ext_none]
        for key in self._ext_keys:
            value = extensions.get(key)
            if value is not None:
                found = self._ext.get((key, value))
                if found:
                    out.append(found)
        return out


def _host_key(name: Glob) -> tuple[str, str]:
    """How a host name pattern is filed: ("exact", name), ("suffix", ".dom"), ("any", ""), ("other", "")."""
    pattern = name.pattern
    stars = pattern.count("*")
    if stars == 0:
        return "exact", pattern
    if pattern == "*" or set(pattern) == {"*"}:
        return "any", ""
    if stars == 1 and pattern.startswith("*") and pattern[1] == ".":
        return "suffix", pattern[1:]
    return "other", ""


def _file_path(glob: Glob, i: int, exact: dict[str, set[int]], any_path: set[int], root: _Node) -> None:
    pattern = glob.pattern
    star = pattern.find("*")
    if star < 0:
        exact.setdefault(pattern, set()).add(i)
        return
    prefix = pattern[:star]
    if not prefix.startswith("/"):  # `*…`: no literal prefix to file it under
        any_path.add(i)
        return
    *dirs, partial = prefix[1:].split("/")
    node = root
    for d in dirs:
        node = node.children.setdefault(d, _Node())
    node.partials.setdefault(partial, set()).add(i)
