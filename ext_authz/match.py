"""The one matcher for hosts, paths and methods: rules, grant and exception scopes, and ``tail`` filters.

Syntax (the same everywhere): a pattern is literal text in which ``*`` matches any run of characters,
the empty run included, ``/`` and ``.`` included. Nothing else is special: no ``?``, no ``[…]``, no
escapes.

- **Hosts** are compared lower-case and without a trailing dot. A pattern without a port matches any
  port (``*.example.com`` matches ``api.example.com:8443``); a pattern with a port matches that port
  only (``backend.internal:8443``). IPv6 literals are written in brackets and compared in their
  canonical form (``[0::1]`` is ``[::1]``).
- **Paths** are compared case-sensitively, without the query string or fragment. ``/admin/*`` does not
  match ``/admin``.
- **Methods** are exact upper-case names.

Matching runs in time linear in the input for a given pattern: the literal runs between stars are found
left to right, each once, never retried (the leftmost place a run fits is always a right choice when
``*`` is the only wildcard), so no input can make a pattern backtrack.

A request's host must parse as a DNS-style name, an IPv4 address or a bracketed IPv6 address, with an
optional port; anything else is not a host (:func:`parse_host` gives ``None``).
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from .errors import Error

__all__ = [
    "METHODS",
    "Glob",
    "Host",
    "HostPattern",
    "PatternError",
    "Selector",
    "Target",
    "parse_host",
]

METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"))
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")
_MAX_NAME = 253
_MAX_LABEL = 63


class PatternError(Error, ValueError):
    """A pattern that is not in the matcher's syntax (the message says what is wrong)."""


class Glob:
    """A compiled ``*`` pattern."""

    __slots__ = ("_exact", "_head", "_middle", "_min_len", "_tail", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        parts = pattern.split("*")
        self._exact = len(parts) == 1
        self._head = parts[0]
        self._tail = parts[-1] if len(parts) > 1 else ""
        # Empty runs (from ``**``) fit anywhere: they constrain nothing.
        self._middle = tuple(p for p in parts[1:-1] if p)
        self._min_len = len(self._head) + len(self._tail) + sum(map(len, self._middle))

    def __repr__(self) -> str:
        return f"Glob({self.pattern!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Glob) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(self.pattern)

    def match(self, text: str) -> bool:
        if self._exact:
            return text == self._head
        if len(text) < self._min_len or not text.startswith(self._head) or not text.endswith(self._tail):
            return False
        pos, end = len(self._head), len(text) - len(self._tail)
        for run in self._middle:
            found = text.find(run, pos, end)
            if found < 0:
                return False
            pos = found + len(run)
        return True

    def trace(self, text: str) -> list[tuple[str, int, int]]:
        """The searches :meth:`match` makes, as ``(run, start, found)``: for tests of its cost."""
        steps: list[tuple[str, int, int]] = []
        if self._exact or len(text) < self._min_len:
            return steps
        if not text.startswith(self._head) or not text.endswith(self._tail):
            return steps
        pos, end = len(self._head), len(text) - len(self._tail)
        for run in self._middle:
            found = text.find(run, pos, end)
            steps.append((run, pos, found))
            if found < 0:
                break
            pos = found + len(run)
        return steps


class Host(NamedTuple):
    """A request's host: canonical name (lower-case, no trailing dot; ``[v6]`` canonical) and port."""

    name: str
    port: int | None = None

    def __str__(self) -> str:
        return self.name if self.port is None else f"{self.name}:{self.port}"


def _port(text: str) -> int | bool | None:
    """The port after ``:`` (``None`` for an empty one), or False if it is not a port."""
    if not text:
        return None
    if len(text) > 5 or not text.isascii() or not text.isdigit():
        return False
    value = int(text)
    return value if value <= 65535 else False


def _name(text: str, *, wildcards: bool) -> str | None:
    """A DNS-style name or IPv4 literal, canonical; None if it is not one."""
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > _MAX_NAME or not name.isascii():
        return None
    allowed = _NAME_CHARS | {"*"} if wildcards else _NAME_CHARS
    if not set(name) <= allowed:
        return None
    labels = name.split(".")
    if any(not label or len(label) > _MAX_LABEL for label in labels):
        return None
    return name


def _ipv6(inner: str) -> str | None:
    try:
        return f"[{ipaddress.IPv6Address(inner).compressed}]"
    except ValueError:
        return None


def _split(authority: str) -> tuple[str, str, bool] | None:
    """(host part, port text, bracketed) of ``host[:port]`` / ``[v6][:port]``."""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            return None
        rest = authority[close + 1 :]
        if rest and not rest.startswith(":"):
            return None
        return authority[1:close], rest[1:], True
    head, sep, port = authority.rpartition(":")
    if not sep:
        return authority, "", False
    if ":" in head:  # a bare IPv6 address is not a valid Host: it must be bracketed
        return None
    return head, port, False


# The longest authority that can be a host: a name of 253 characters with its trailing dot, and ":65535".
# (A bracketed IPv6 literal is shorter.)
_MAX_AUTHORITY = _MAX_NAME + 1 + 6


def parse_host(authority: str) -> Host | None:
    """``Api.Example.com.:8443`` → ``Host("api.example.com", 8443)``; None if it is not a host."""
    if len(authority) > _MAX_AUTHORITY:  # not a host, and not worth a place in the cache
        return None
    return _parse_host(authority)


@functools.lru_cache(maxsize=4096)  # the hosts a deployment serves are few; bounded in count and size
def _parse_host(authority: str) -> Host | None:
    parts = _split(authority)
    if parts is None:
        return None
    host, port_text, bracketed = parts
    port = _port(port_text)
    if port is False:
        return None
    assert not isinstance(port, bool)
    name = _ipv6(host) if bracketed else _name(host, wildcards=False)
    return None if name is None else Host(name, port)


@dataclass(frozen=True, slots=True)
class HostPattern:
    """``*.example.com``, ``backend.internal:8443``, ``[::1]``: a name glob and an optional port."""

    name: Glob
    port: int | None = None

    @classmethod
    def parse(cls, pattern: str) -> HostPattern:
        if pattern == "*":
            return cls(Glob("*"))
        parts = _split(pattern)
        if parts is None:
            raise PatternError(f"not a host pattern: {pattern!r}")
        host, port_text, bracketed = parts
        port = None if port_text == "*" else _port(port_text)  # `:*` is any port, as no port is
        if port is False:
            raise PatternError(f"not a port in host pattern {pattern!r}")
        assert not isinstance(port, bool)
        name = _ipv6(host) if bracketed else _name(host, wildcards=True)
        if name is None:
            raise PatternError(
                f"not a host pattern: {pattern!r} (a name with optional `*`, an IP address, optional :PORT)"
            )
        return cls(Glob(name), port)

    def match(self, host: Host) -> bool:
        return (self.port is None or self.port == host.port) and self.name.match(host.name)


def path_pattern(pattern: str) -> Glob:
    if not pattern.startswith("/") and pattern != "*":
        raise PatternError(f"a path pattern starts with '/', got {pattern!r}")
    return Glob(pattern)


def method_name(method: str) -> str:
    upper = method.upper()
    if upper not in METHODS:
        raise PatternError(f"unknown HTTP method {method!r}")
    return upper


class Target(NamedTuple):
    """What a request is matched on, computed once per Check. ``host`` is None for an L4 check."""

    method: str
    host: Host | None
    path: str  # without query string or fragment


@dataclass(frozen=True, slots=True)
class Selector:
    """Hosts, paths and methods, each empty for "any". Every listed selector must match."""

    hosts: tuple[HostPattern, ...] = ()
    paths: tuple[Glob, ...] = ()
    methods: frozenset[str] = frozenset()

    @classmethod
    def compile(
        cls, hosts: Iterable[str] = (), paths: Iterable[str] = (), methods: Iterable[str] = ()
    ) -> Selector:
        """Raises PatternError naming the first pattern that is not in the matcher's syntax."""
        return _compiled(tuple(hosts), tuple(paths), tuple(methods))

    @property
    def any(self) -> bool:
        return not (self.hosts or self.paths or self.methods)

    # (the selectors a config or a record names are compiled once, however often they are named)

    def matches(self, target: Target) -> bool:
        if self.any:
            return True
        host = target.host
        if host is None:  # an L4 check has no host, path or method to match
            return False
        if self.methods and target.method not in self.methods:
            return False
        if self.hosts and not any(p.match(host) for p in self.hosts):
            return False
        return not self.paths or any(p.match(target.path) for p in self.paths)


@functools.lru_cache(maxsize=65536)  # bounded: what configs and records name; compiling is pure
def _compiled(hosts: tuple[str, ...], paths: tuple[str, ...], methods: tuple[str, ...]) -> Selector:
    return Selector(
        hosts=tuple(HostPattern.parse(h) for h in hosts),
        paths=tuple(path_pattern(p) for p in paths),
        methods=frozenset(method_name(m) for m in methods),
    )
