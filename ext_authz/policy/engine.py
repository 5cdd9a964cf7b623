"""Rule compilation (once, at load) and evaluation (per request, pure).

Semantics: deny rules win; then allow rules; otherwise deny. A rule applies to authenticated
callers only unless it says ``anonymous: true``. ``mode: shadow`` rules are evaluated and
reported, never enforced. A CEL error in an allow rule means "does not match"; in a deny rule
it means "deny" (reason ``policy_error``): faults fail closed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from cel_expr_python import cel

from ..config import Limits, RuleConfig
from ..errors import ConfigError
from ..model import RequestContext, ShadowResult

__all__ = ["CompiledRule", "Policy", "PolicyResult", "compile_policy"]

_DYN_MAP = cel.Type.Map(cel.Type.STRING, cel.Type.DYN)
_ENV = cel.NewEnv(
    variables={
        "request": _DYN_MAP,
        "source": _DYN_MAP,
        "identity": _DYN_MAP,
        "signals": _DYN_MAP,
        "grants": cel.Type.List(cel.Type.DYN),
        "now": cel.Type.TIMESTAMP,
    }
)

Activation = Callable[[], Mapping[str, Any]]
_VARIABLES = ("request", "source", "identity", "signals", "grants", "now")
# Top-level variables an expression mentions (conservatively: any use of the word).
_VARIABLE_RE = re.compile(r"\b(" + "|".join(_VARIABLES) + r")\b")


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$", re.DOTALL)


def _canonical_host(host: str) -> str:
    """Lower-case; no empty port (``h:``); no trailing dot (``h.`` and ``h.:443`` are ``h``)."""
    host = host.lower()
    if host.endswith(":"):
        host = host[:-1]
    head, sep, port = host.rpartition(":")
    if sep and port.isdigit() and not head.endswith("]") and ":" in head:
        head, sep, port = host, "", ""  # a bare IPv6 literal, not host:port
    if sep and port.isdigit():
        return f"{head.rstrip('.')}:{port}"
    return host.rstrip(".")


def _strip_port(host: str) -> str:
    if host.startswith("["):  # [v6]:port
        end = host.find("]")
        return host[: end + 1] if end >= 0 else host
    head, sep, tail = host.rpartition(":")
    return head if sep and tail.isdigit() else host


def _names_port(pattern: str) -> bool:
    """Does a host pattern name a port (``host:8443``, ``[v6]:8443``)? ``[::1]`` does not."""
    if pattern.startswith("["):
        return "]:" in pattern
    return ":" in pattern


class _Target(NamedTuple):
    """What rules match a request on, computed once per Check."""

    http: bool
    method: str
    host: str  # canonical, with the port as sent
    bare_host: str  # canonical, without the port
    path: str  # without query string or fragment
    context_extensions: Mapping[str, str]

    @classmethod
    def of(cls, ctx: RequestContext) -> _Target:
        http = ctx.http
        if http is None:
            return cls(False, "", "", "", "", ctx.context_extensions)
        host = _canonical_host(http.host)
        return cls(True, http.method, host, _strip_port(host), http.path_only, ctx.context_extensions)


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    effect: str
    shadow: bool
    anonymous: bool
    hosts: tuple[re.Pattern[str], ...]  # no port in the pattern: matched against the host minus its port
    hosts_with_port: tuple[re.Pattern[str], ...]  # matched against host:port as sent
    paths: tuple[re.Pattern[str], ...]
    methods: frozenset[str]
    context_extensions: tuple[tuple[str, str], ...]
    when: Any  # cel Expression | None
    when_source: str
    variables: frozenset[str] = frozenset(_VARIABLES)

    def selects(self, target: _Target, authenticated: bool) -> bool:
        """Does the rule's ``match`` (and audience: authenticated or anonymous) select this request?"""
        # Deny rules apply to every caller; `anonymous` only widens who an allow rule admits.
        if not authenticated and not self.anonymous and self.effect == "allow":
            return False
        for key, value in self.context_extensions:
            if target.context_extensions.get(key) != value:
                return False
        if not (self.hosts or self.hosts_with_port or self.paths or self.methods):
            return True
        if not target.http:  # an L4 check has no host, path or method to match
            return False
        if self.methods and target.method not in self.methods:
            return False
        if (self.hosts or self.hosts_with_port) and not (
            any(p.match(target.bare_host) for p in self.hosts)
            or any(p.match(target.host) for p in self.hosts_with_port)
        ):
            return False
        return not self.paths or any(p.match(target.path) for p in self.paths)

    def condition(self, activation: Activation) -> bool | str:
        """True/False, or an error message when the CEL condition cannot be evaluated."""
        if self.when is None:
            return True
        try:
            data = activation()
            # Hand CEL only the variables this expression names: converting the rest costs per Check.
            value = self.when.eval(data={k: data[k] for k in self.variables if k in data})
        except Exception as exc:  # cel-cpp raises plain RuntimeError/TypeError: translate here, once
            return f"evaluation failed ({type(exc).__name__})"
        if str(value.type()) == "ERROR":
            return "evaluation error: " + str(value.value()).split(":", 1)[0]
        result = value.value()
        if isinstance(result, bool) and str(value.type()) == "BOOL":
            return result
        return f"condition did not yield a boolean (it yielded {value.type()})"


@dataclass(frozen=True, slots=True)
class PolicyResult:
    allowed: bool
    reason: str  # allowed | no_rule | no_credential | policy_denied | policy_error
    rule: str = ""
    shadow: tuple[ShadowResult, ...] = ()
    shadow_allowed: bool | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[CompiledRule, ...]

    @property
    def uses_cel(self) -> bool:
        return any(r.when is not None for r in self.rules)

    def evaluate(self, ctx: RequestContext, authenticated: bool, activation: Activation) -> PolicyResult:
        cached: dict[str, Mapping[str, Any]] = {}

        def data() -> Mapping[str, Any]:
            if "v" not in cached:
                cached["v"] = activation()
            return cached["v"]

        target = _Target.of(ctx)
        result: PolicyResult | None = None
        for r in self.rules:
            if r.shadow or r.effect != "deny" or not r.selects(target, authenticated):
                continue
            cond = r.condition(data)
            if cond is True:
                result = PolicyResult(False, "policy_denied", r.name)
                break
            if isinstance(cond, str):
                result = PolicyResult(False, "policy_error", r.name, detail=cond)
                break
        if result is None:
            for r in self.rules:
                if r.shadow or r.effect != "allow" or not r.selects(target, authenticated):
                    continue
                if r.condition(data) is True:
                    result = PolicyResult(True, "allowed", r.name)
                    break
        if result is None:
            result = PolicyResult(False, "no_rule" if authenticated else "no_credential")

        shadow: list[ShadowResult] = []
        for r in self.rules:
            if not r.shadow:
                continue
            cond = r.condition(data) if r.selects(target, authenticated) else False
            if isinstance(cond, str):
                shadow.append(ShadowResult(r.name, r.effect, r.effect == "deny", cond))
            else:
                shadow.append(ShadowResult(r.name, r.effect, cond))
        if not shadow:
            return result
        if result.reason in ("policy_denied", "policy_error") or any(
            s.matched and s.effect == "deny" for s in shadow
        ):
            would = False
        else:
            would = result.allowed or any(s.matched and s.effect == "allow" for s in shadow)
        return PolicyResult(result.allowed, result.reason, result.rule, tuple(shadow), would, result.detail)


_MACROS = frozenset(("all", "exists", "exists_one", "map", "filter"))
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def comprehension_depth(source: str) -> int:
    """How deeply CEL comprehension macros (``x.all(…)``, ``exists``, ``exists_one``, ``map``,
    ``filter``) nest in an expression: each level multiplies the work by the size of a list.

    A scan, not a parse: string literals are skipped, and a macro name anywhere else counts, so an
    odd spelling can only overcount (and be refused), never undercount.
    """
    depth = deepest = 0
    stack: list[bool] = []  # per open parenthesis: does it open a macro's arguments?
    i, n = 0, len(source)
    pending_macro = raw = after_dot = False  # after_dot: the last token was `.` (comments aside)
    while i < n:
        c = source[i]
        if c in "\"'":
            quote = source[i : i + 3] if source[i : i + 3] in ('"""', "'''") else c
            i += len(quote)
            while i < n and source[i : i + len(quote)] != quote:
                i += 2 if source[i] == "\\" and not raw else 1  # r"…": a backslash is itself
            i += len(quote)
            pending_macro = raw = after_dot = False
            continue
        if source.startswith("//", i):  # a comment, to the end of the line (quotes in it are not strings)
            end = source.find("\n", i)
            i = n if end < 0 else end + 1
            pending_macro = raw = False
            continue
        raw = False
        m = _IDENT.match(source, i)
        if m:
            raw = (
                "r" in m.group().lower() and len(m.group()) <= 2 and m.end() < n and source[m.end()] in "\"'"
            )
            pending_macro = after_dot and m.group() in _MACROS
            after_dot = False
            i = m.end()
            continue
        if c == "(":
            stack.append(pending_macro)
            if pending_macro:
                depth += 1
                deepest = max(deepest, depth)
        elif c == ")" and stack and stack.pop():
            depth -= 1
        if not c.isspace():
            pending_macro = False
            after_dot = c == "."
        i += 1
    return deepest


def compile_policy(rules: tuple[RuleConfig, ...], file: str, limits: Limits | None = None) -> Policy:
    limits = limits or Limits()
    compiled: list[CompiledRule] = []
    for rc in rules:
        when = None
        if rc.when is not None:
            if len(rc.when.encode()) > limits.cel_max_expression_bytes:
                raise ConfigError(
                    file,
                    f"{rc.key}.when",
                    f"expression is over limits.cel_max_expression_bytes ({limits.cel_max_expression_bytes})",
                )
            nesting = comprehension_depth(rc.when)
            if nesting > limits.cel_max_comprehension_depth:
                raise ConfigError(
                    file,
                    f"{rc.key}.when",
                    f"comprehensions nest {nesting} deep; limits.cel_max_comprehension_depth is "
                    f"{limits.cel_max_comprehension_depth}",
                )
            try:
                when = _ENV.compile(rc.when)
            except Exception as exc:  # cel-cpp reports compile errors as RuntimeError
                msg = str(exc).replace("\n", " ")
                raise ConfigError(file, f"{rc.key}.when", f"not a valid CEL expression: {msg}") from exc
            rtype = str(when.return_type())
            if rtype not in ("BOOL", "DYN", "bool", "dyn"):
                raise ConfigError(file, f"{rc.key}.when", f"must be a boolean expression, it yields {rtype}")
        hosts = rc.match.hosts
        compiled.append(
            CompiledRule(
                name=rc.name,
                effect=rc.effect,
                shadow=rc.mode == "shadow",
                anonymous=rc.anonymous,
                hosts=tuple(_glob(h) for h in hosts if not _names_port(h)),
                hosts_with_port=tuple(_glob(h) for h in hosts if _names_port(h)),
                paths=tuple(_glob(p) for p in rc.match.paths),
                methods=frozenset(rc.match.methods),
                context_extensions=tuple(sorted(rc.match.context_extensions.items())),
                when=when,
                when_source=rc.when or "",
                variables=frozenset(_VARIABLE_RE.findall(rc.when or "")),
            )
        )
    return Policy(tuple(compiled))
