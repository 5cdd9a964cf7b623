"""A rule's response: compiled once at load, worked out per decision (pure).

Values are literals or CEL expressions over what conditions see. A literal is checked at load; a CEL
value is checked per request: a header whose value fails (an error, a type that is not text, CR/LF/NUL,
over the limit) is left out, a body that fails leaves the default body, a metadata value that fails is
left out, and each failure is reported as ``(rule, error)`` for the metric and the decision log. A
computed ``location`` must be a path on this site or an http(s) URL on one of ``redirect_hosts``; if it
is not, the redirect is not made (the rule's denial keeps its default status and body). Nothing here can
change whether a request is allowed.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..match import HostPattern, PatternError, parse_host
from ..model import Response
from ..settings import HEADER_VALUE_FORBIDDEN, CelValue, Limits, RuleResponseSettings
from .cel import Activation, CompileError, compile_many, variables_read

__all__ = ["CompiledResponse", "compile_response"]

# What a computed location may not hold at all: browsers drop tabs and newlines from a URL and read a
# backslash as a slash, so "/\t/evil" and "/\\evil" leave the site.
_UNSAFE_LOCATION = re.compile(r"[\x00-\x20\x7f\\]")


@dataclass(frozen=True, slots=True)
class _Value:
    literal: Any  # the value when there is no expression
    expr: Any = None  # a compiled CEL expression, or None
    variables: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class CompiledResponse:
    rule: str
    upstream: tuple[tuple[str, _Value], ...]
    remove: tuple[str, ...]
    client: tuple[tuple[str, _Value], ...]
    status: int
    headers: tuple[tuple[str, _Value], ...]
    body: _Value | None
    metadata: tuple[tuple[str, _Value], ...]
    redirect_hosts: tuple[HostPattern, ...]
    max_header: int
    max_body: int
    # What the expressions read: only `identity` (or nothing) makes the whole response a function of
    # the verified credentials, remembered per them like a condition.
    variables: frozenset[str]
    fixed: Response | None  # the response when every value is a literal

    @property
    def identity_only(self) -> bool:
        return self.variables <= {"identity"}

    def work_out(self, activation: Activation) -> tuple[Response, tuple[tuple[str, str], ...]]:
        """The response for one request, and the values left out with why."""
        if self.fixed is not None:
            return self.fixed, ()
        errors: list[tuple[str, str]] = []
        data: dict[str, Any] = {}

        def evaluate(v: _Value, what: str) -> Any:
            if v.expr is None:
                return v.literal
            if not data:
                data.update(activation())
            try:
                out = v.expr.eval(data={k: data[k] for k in v.variables if k in data})
            except Exception as exc:  # cel-cpp raises plain errors: one line, once
                errors.append((self.rule, f"{what}: evaluation failed ({type(exc).__name__})"))
                return None
            if str(out.type()) == "ERROR":
                errors.append((self.rule, f"{what}: " + str(out.value()).split(":", 1)[0]))
                return None
            return out.plain_value()

        def text(v: _Value, what: str, limit: int) -> str | None:
            got = evaluate(v, what)
            if got is None:
                return None
            if isinstance(got, bool):
                got = "true" if got else "false"
            elif isinstance(got, int | float):
                got = str(got)
            if not isinstance(got, str):
                errors.append((self.rule, f"{what}: yielded {type(got).__name__}, not text"))
                return None
            if len(got.encode()) > limit:
                errors.append((self.rule, f"{what}: {len(got.encode())} bytes, over the limit ({limit})"))
                return None
            if what != "body" and HEADER_VALUE_FORBIDDEN.search(got):
                errors.append((self.rule, f"{what}: holds a control character"))
                return None
            return got

        def headers(items: tuple[tuple[str, _Value], ...]) -> tuple[tuple[str, str], ...]:
            out = []
            for name, v in items:
                got = text(v, f"header {name}", self.max_header)
                if got is not None:
                    out.append((name, got))
            return tuple(out)

        status = self.status
        denial_headers = headers(self.headers)
        if 300 <= status < 400:
            location = dict(denial_headers).get("location")
            if location is None or not self._may_send_to(location, dict(self.headers)["location"]):
                if location is not None:
                    errors.append((self.rule, "header location: not a path here nor on redirect_hosts"))
                status = 0  # no redirect: the denial keeps its own status and body
                denial_headers = tuple((k, v) for k, v in denial_headers if k != "location")
        body = text(self.body, "body", self.max_body) if self.body is not None else None
        metadata: dict[str, Any] = {}
        for key, v in self.metadata:
            got = evaluate(v, f"metadata {key}")
            if got is None:
                continue
            try:
                metadata[key] = json.loads(json.dumps(got, default=_json_default, allow_nan=False))
            except (TypeError, ValueError) as exc:
                errors.append((self.rule, f"metadata {key}: {exc}"))
        response = Response(
            cacheable=self.identity_only,
            upstream=headers(self.upstream),
            remove=self.remove,
            client=headers(self.client),
            status=status,
            headers=denial_headers,
            body=body,
            metadata=json.dumps(metadata, sort_keys=True, separators=(",", ":")) if metadata else "",
        )
        return response, tuple(errors)

    def _may_send_to(self, location: str, spec: _Value) -> bool:
        if spec.expr is None:
            return True  # the operator wrote it
        if _UNSAFE_LOCATION.search(location):
            return False
        if location.startswith("/") and not location.startswith("//"):
            return True  # a path on this site
        parts = urllib.parse.urlsplit(location)
        if parts.scheme not in ("https", "http") or not parts.netloc or parts.username or parts.password:
            return False
        host = parse_host(parts.netloc)
        return host is not None and any(p.match(host) for p in self.redirect_hosts)


def _json_default(value: object) -> object:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise TypeError(f"a {type(value).__name__} is not JSON")


def compile_response(
    rule: str, rc: RuleResponseSettings, file: str, key: str, limits: Limits
) -> CompiledResponse:
    """Compile a rule's ``response``; ConfigError naming the rule's key and what was expected."""
    text_exprs: list[tuple[str, str]] = []  # (key, source)
    value_exprs: list[tuple[str, str]] = []

    def check_literal(where: str, value: Any, limit: int, header: bool) -> None:
        # Control characters in a literal header are refused as the settings are read; the limits are
        # known only here.
        if isinstance(value, str) and len(value.encode()) > limit:
            what = "max_response_header_bytes" if header else "max_response_body_bytes"
            raise ConfigError(file, where, f"{len(value.encode())} bytes: over limits.{what} ({limit})")

    def collect(section: str, items: Mapping[str, Any], kind: str) -> None:
        for name, v in items.items():
            where = f"{key}.{section}.{name}"
            if isinstance(v, CelValue):
                (text_exprs if kind == "text" else value_exprs).append((where, v.cel))
            elif kind == "text":
                check_literal(where, v, limits.max_response_header_bytes, header=True)

    collect("upstream_headers", rc.upstream_headers, "text")
    collect("client_headers", rc.client_headers, "text")
    collect("headers", rc.headers, "text")
    collect("metadata", rc.metadata, "value")
    if isinstance(rc.body, CelValue):
        text_exprs.append((f"{key}.body", rc.body.cel))
    elif rc.body is not None:
        check_literal(f"{key}.body", rc.body, limits.max_response_body_bytes, header=False)
    for where, source in text_exprs + value_exprs:
        if len(source.encode()) > limits.cel_max_expression_bytes:
            raise ConfigError(
                file,
                where,
                f"expression is over limits.cel_max_expression_bytes ({limits.cel_max_expression_bytes})",
            )
    compiled: dict[str, Any] = {}
    for exprs, kind in ((text_exprs, "text"), (value_exprs, "value")):
        for (where, _), result in zip(exprs, compile_many([s for _, s in exprs], kind), strict=True):
            if isinstance(result, CompileError):
                raise ConfigError(file, where, str(result))
            compiled[where] = result
    try:
        hosts = tuple(HostPattern.parse(h.lower()) for h in rc.redirect_hosts)
    except PatternError as exc:
        raise ConfigError(file, f"{key}.redirect_hosts", str(exc)) from exc
    variables: set[str] = set()

    def value(where: str, v: Any) -> _Value:
        if isinstance(v, CelValue):
            names = variables_read(v.cel)
            variables.update(names)
            return _Value(None, compiled[where], names)
        return _Value(v)

    def items(section: str, mapping: Mapping[str, Any]) -> tuple[tuple[str, _Value], ...]:
        return tuple((name, value(f"{key}.{section}.{name}", v)) for name, v in mapping.items())

    out = CompiledResponse(
        rule=rule,
        upstream=items("upstream_headers", rc.upstream_headers),
        remove=rc.remove_headers,
        client=items("client_headers", rc.client_headers),
        status=rc.status or 0,
        headers=items("headers", rc.headers),
        body=value(f"{key}.body", rc.body) if rc.body is not None else None,
        metadata=items("metadata", rc.metadata),
        redirect_hosts=hosts,
        max_header=limits.max_response_header_bytes,
        max_body=limits.max_response_body_bytes,
        variables=frozenset(variables),
        fixed=None,
    )
    if not any(
        v.expr is not None
        for v in (
            *(v for _, v in out.upstream + out.client + out.headers + out.metadata),
            *((out.body,) if out.body is not None else ()),
        )
    ):
        fixed, _ = out.work_out(dict)
        object.__setattr__(out, "fixed", fixed)
    return out
