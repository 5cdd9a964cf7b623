"""Rule compilation (once, at load) and evaluation (per request, pure).

Semantics: deny rules win; then allow rules; otherwise deny. A rule applies to authenticated
callers only unless it says ``anonymous: true``. ``mode: shadow`` rules are evaluated and
reported, never enforced. A CEL error in a deny rule denies (reason ``policy_error``); in an allow
rule it does not allow, and unless another rule allows, the decision is ``policy_error`` naming that
rule: faults fail closed, and they are never silent.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from ..match import METHODS, Selector, Target
from ..model import Response, ShadowResult
from ..settings import Limits, RuleSettings
from ..values import value
from .cel import VARIABLES, Activation, CompileError, compile_many, variables_read
from .index import RuleIndex
from .response import CompiledResponse, compile_response

__all__ = ["CompiledRule", "Policy", "PolicyResult", "Selection", "StepUp", "compile_policy"]


@dataclass(frozen=True, slots=True)
class StepUp:
    """What a rule requires of the user's authentication (RFC 9470)."""

    acr_values: tuple[str, ...] = ()
    max_age: float | None = None


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    effect: str
    shadow: bool
    anonymous: bool
    selector: Selector
    context_extensions: tuple[tuple[str, str], ...]
    when: Any  # cel Expression | None
    when_source: str
    variables: frozenset[str] = frozenset(VARIABLES)
    exceptable: bool = False  # a deny rule a break-glass exception may override
    step_up: StepUp | None = None  # an allow rule that also requires this of the user's authentication
    response: CompiledResponse | None = None  # what its decision answers besides allow or deny

    # Is the condition a function of the verified identity alone? (Worked out once: read per Check.)
    memoizable: bool = field(init=False, repr=False, compare=False)
    # What a shadow rule reports when its match does not select the request.
    unmatched: ShadowResult = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "memoizable", self.when is not None and self.variables <= {"identity"})
        object.__setattr__(self, "unmatched", ShadowResult(self.name, self.effect, False))

    def selects(self, target: Target, extensions: Mapping[str, str], authenticated: bool) -> bool:
        """Does the rule's ``match`` (and audience: authenticated or anonymous) select this request?"""
        # Deny rules apply to every caller; `anonymous` only widens who an allow rule admits.
        if not authenticated and not self.anonymous and self.effect == "allow":
            return False
        for key, expected in self.context_extensions:
            if extensions.get(key) != expected:
                return False
        return self.selector.matches(target)

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


@value
class PolicyResult:
    allowed: bool
    reason: str  # allowed | no_rule | no_credential | policy_denied | policy_error
    rule: str = ""
    shadow: tuple[ShadowResult, ...] = ()
    shadow_allowed: bool | None = None
    detail: str = ""
    errors: tuple[tuple[str, str], ...] = ()  # (rule, error) of enforced rules whose condition failed
    exceptable: bool = True  # may an exception turn this denial into an allow? Not an explicit deny rule's.
    step_up: StepUp | None = None  # step_up_required: what the allowing rule asked for


MEMO_SIZE = 20_000  # remembered condition results per policy generation
SELECTION_MEMO_SIZE = 4096  # remembered rule selections per policy generation
RESULT_MEMO_SIZE = 10_000  # remembered outcomes of identity-only selections per policy generation
# A target longer than this (host + path) is selected afresh each time: the memo's memory stays bounded.
SELECTION_MEMO_MAX_CHARS = 512


@dataclass(frozen=True, slots=True)
class Selection:
    """The enforced rules a request's ``match`` selects, in policy order, and every shadow rule with
    whether it is selected: a function of the target, the context extensions rules name, and whether
    the caller is authenticated, so it is remembered per those."""

    deny: tuple[CompiledRule, ...]
    allow: tuple[CompiledRule, ...]
    shadow: tuple[tuple[CompiledRule, bool], ...]
    # Is the outcome a function of the verified identity alone? Every rule that will be evaluated is
    # unconditional or reads only `identity`, and no allow rule asks for a step-up (which reads state).
    pure: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        evaluated = [*self.deny, *self.allow, *(r for r, selected in self.shadow if selected)]
        pure = all(r.when is None or r.memoizable for r in evaluated) and all(
            r.step_up is None for r in self.allow
        )
        object.__setattr__(self, "pure", pure)


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[CompiledRule, ...]
    _memo: dict[tuple[str, Hashable], bool | str] = field(default_factory=dict, repr=False, compare=False)
    _selections: dict[Hashable, Selection] = field(default_factory=dict, repr=False, compare=False)
    # Outcomes of pure selections (see Selection.pure) per selection and identity key.
    _results: dict[tuple[int, Hashable], tuple[Selection, PolicyResult]] = field(
        default_factory=dict, repr=False, compare=False
    )
    # The context-extension keys any rule's match names: the only ones selection depends on.
    _extension_keys: tuple[str, ...] = field(init=False, repr=False, compare=False)
    # Which rules may select a request, by what their match names (policy/index.py).
    _index: RuleIndex = field(init=False, repr=False, compare=False)
    # Every shadow rule, unselected, in policy order; and where each one sits in that tuple.
    _shadow_default: tuple[tuple[CompiledRule, bool], ...] = field(init=False, repr=False, compare=False)
    _shadow_at: dict[int, int] = field(init=False, repr=False, compare=False)
    # Enforced rules with a response, by name; and every header any of them sets upstream.
    _responses: dict[str, CompiledResponse] = field(init=False, repr=False, compare=False)
    strip_headers: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _response_memo: dict[tuple[str, Hashable], tuple[Response, tuple[tuple[str, str], ...]]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        keys = sorted({k for r in self.rules for k, _ in r.context_extensions})
        object.__setattr__(self, "_extension_keys", tuple(keys))
        object.__setattr__(self, "_index", RuleIndex(self.rules))
        shadows = [i for i, r in enumerate(self.rules) if r.shadow]
        object.__setattr__(self, "_shadow_default", tuple((self.rules[i], False) for i in shadows))
        object.__setattr__(self, "_shadow_at", {i: n for n, i in enumerate(shadows)})
        responses = {r.name: r.response for r in self.rules if r.response is not None and not r.shadow}
        object.__setattr__(self, "_responses", responses)
        names = sorted({name for r in responses.values() for name, _ in r.upstream})
        object.__setattr__(self, "strip_headers", tuple(names))

    def respond(
        self, rule: str, activation: Activation, identity_key: Hashable | None = None
    ) -> tuple[Response | None, tuple[tuple[str, str], ...]]:
        """The response of the enforced rule ``rule`` for this request (None when it names none), and
        the values left out with why. A response whose expressions read only ``identity`` is
        remembered per ``identity_key``, like a condition."""
        compiled = self._responses.get(rule)
        if compiled is None:
            return None, ()
        if identity_key is None or not compiled.identity_only or compiled.fixed is not None:
            return compiled.work_out(activation)
        key = (rule, identity_key)
        found = self._response_memo.get(key)
        if found is None:
            found = compiled.work_out(activation)
            if len(self._response_memo) >= MEMO_SIZE:
                self._response_memo.clear()
            self._response_memo[key] = found
        return found

    @property
    def uses_cel(self) -> bool:
        return any(r.when is not None for r in self.rules)

    def reading(self, variable: str) -> tuple[str, ...]:
        """Enforced rules whose condition reads ``variable`` (one of request, source, identity,
        signals, grants, now)."""
        return tuple(r.name for r in self.rules if not r.shadow and variable in r.variables)

    def select(self, target: Target, extensions: Mapping[str, str], authenticated: bool) -> Selection:
        """The rules that apply to this request (see :class:`Selection`), remembered per what
        selection reads (bounded, and dropped with this policy)."""
        host = target.host
        size = len(target.path) + (len(host.name) if host is not None else 0)
        key: Hashable = None
        if size <= SELECTION_MEMO_MAX_CHARS:
            # Rules name standard methods only: any other method (of any length) selects as "" does.
            method = target.method if target.method in METHODS else ""
            key = (method, host, target.path, authenticated, tuple(map(extensions.get, self._extension_keys)))
            found = self._selections.get(key)
            if found is not None:
                return found
        deny: list[CompiledRule] = []
        allow: list[CompiledRule] = []
        shadow: list[tuple[CompiledRule, bool]] | None = None
        rules = self.rules
        for i in self._index.candidates(target, extensions):  # a superset, in policy order
            r = rules[i]
            if not r.selects(target, extensions, authenticated):
                continue
            if r.shadow:
                if shadow is None:
                    shadow = list(self._shadow_default)
                shadow[self._shadow_at[i]] = (r, True)
            else:
                (deny if r.effect == "deny" else allow).append(r)
        selected_shadow = self._shadow_default if shadow is None else tuple(shadow)
        selection = Selection(tuple(deny), tuple(allow), selected_shadow)
        if key is not None:
            if len(self._selections) >= SELECTION_MEMO_SIZE:
                self._selections.clear()  # a flood of distinct targets only costs selecting afresh
            self._selections[key] = selection
        return selection

    def evaluate(
        self,
        target: Target,
        extensions: Mapping[str, str],
        authenticated: bool,
        activation: Activation,
        stepped: Callable[[StepUp], bool] | None = None,
        identity_key: Hashable | None = None,
    ) -> PolicyResult:
        """Deny rules first (a match or an error denies), then allow rules, else no rule. An allow
        rule whose condition fails does not allow; if nothing else allows, the decision says so
        (``policy_error`` naming that rule) instead of a silent ``no_rule``.

        ``identity_key`` names the credentials the identity was verified from: a condition that reads
        nothing but ``identity`` is a function of them, so its result is remembered per rule and key
        (bounded, and dropped with this policy). Conditions reading ``request``, ``source``,
        ``signals``, ``grants`` or ``now`` are evaluated on every Check."""
        selection = self.select(target, extensions, authenticated)
        pure_key: tuple[int, Hashable] | None = None
        if identity_key is not None and selection.pure:
            # The whole outcome is then a function of the selection and the credentials: remembered
            # (keyed by the selection object, held in the entry so its id is never reused meanwhile).
            pure_key = (id(selection), identity_key)
            hit = self._results.get(pure_key)
            if hit is not None and hit[0] is selection:
                return hit[1]
        cached: dict[str, Mapping[str, Any]] = {}
        memo = self._memo

        def data() -> Mapping[str, Any]:
            if "v" not in cached:
                cached["v"] = activation()
            return cached["v"]

        def condition(r: CompiledRule) -> bool | str:
            if identity_key is None or not r.memoizable:
                return r.condition(data)
            key = (r.name, identity_key)
            found = memo.get(key)
            if found is None:
                found = r.condition(data)
                if len(memo) >= MEMO_SIZE:
                    memo.clear()  # bounded: a flood of distinct credentials only costs re-evaluation
                memo[key] = found
            return found

        # The outcome so far: (allowed, reason, rule, detail, exceptable, step_up), or None.
        result: tuple[bool, str, str, str, bool, StepUp | None] | None = None
        errors: list[tuple[str, str]] = []
        for r in selection.deny:
            if result is not None and not r.exceptable:
                # Denied already by an exceptable rule: an exception may override it only if no other
                # deny rule that is not exceptable would deny too.
                if condition(r) is not False:
                    result = (*result[:4], False, result[5])
                    break
                continue
            if result is not None:
                continue
            cond = condition(r)
            if cond is True:
                result = (False, "policy_denied", r.name, "", r.exceptable, None)
            elif isinstance(cond, str):
                errors.append((r.name, cond))
                result = (False, "policy_error", r.name, cond, r.exceptable, None)
            if result is not None and not result[4]:
                break
        challenge: CompiledRule | None = None
        if result is None:
            for r in selection.allow:
                cond = condition(r)
                if cond is True:
                    if r.step_up is not None and (stepped is None or not stepped(r.step_up)):
                        challenge = challenge or r  # allowed, once the user authenticates as it asks
                        continue
                    result = (True, "allowed", r.name, "", True, None)
                    break
                if isinstance(cond, str):
                    errors.append((r.name, cond))
        if result is None and challenge is not None:
            result = (
                False,
                "step_up_required",
                challenge.name,
                "the user's authentication is weaker or older than the rule requires",
                False,
                challenge.step_up,
            )
        if result is None:
            if errors:
                rule, error = errors[0]
                result = (False, "policy_error", rule, error, True, None)
            else:
                result = (False, "no_rule" if authenticated else "no_credential", "", "", True, None)
        allowed, reason, rule_name, detail, exceptable, step_up = result

        shadow: list[ShadowResult] = []
        for r, selected in selection.shadow:
            if not selected:
                shadow.append(r.unmatched)
                continue
            cond = condition(r)
            if isinstance(cond, str):
                shadow.append(ShadowResult(r.name, r.effect, r.effect == "deny", cond))
            else:
                shadow.append(ShadowResult(r.name, r.effect, cond))
        would: bool | None = None
        if shadow:
            if reason in ("policy_denied", "policy_error") or any(
                s.matched and s.effect == "deny" for s in shadow
            ):
                would = False
            else:
                would = allowed or any(s.matched and s.effect == "allow" for s in shadow)
        outcome = PolicyResult(
            allowed, reason, rule_name, tuple(shadow), would, detail, tuple(errors), exceptable, step_up
        )
        if pure_key is not None:
            if len(self._results) >= RESULT_MEMO_SIZE:
                self._results.clear()  # bounded: distinct credentials only cost evaluating afresh
            self._results[pure_key] = (selection, outcome)
        return outcome


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


def compile_policy(rules: tuple[RuleSettings, ...], file: str, limits: Limits | None = None) -> Policy:
    limits = limits or Limits()
    conditions: list[tuple[int, str]] = []
    for index, rc in enumerate(rules):
        if rc.when is not None:
            _check_condition_size(rc.when, file, f"rules[{index}].when", limits)
            conditions.append((index, rc.when))
    compiled_when: dict[int, Any] = {}
    for (index, _), result in zip(conditions, compile_many([s for _, s in conditions]), strict=True):
        if isinstance(result, CompileError):
            raise ConfigError(file, f"rules[{index}].when", str(result))
        compiled_when[index] = result
    compiled: list[CompiledRule] = []
    for index, rc in enumerate(rules):
        m = rc.match
        compiled.append(
            CompiledRule(
                name=rc.name,
                effect=rc.effect,
                shadow=rc.mode == "shadow",
                anonymous=rc.anonymous,
                selector=Selector.compile(m.hosts, m.paths, m.methods),  # checked when settings were read
                context_extensions=tuple(sorted(m.context_extensions.items())),
                when=compiled_when.get(index),
                when_source=rc.when or "",
                variables=variables_read(rc.when or ""),
                exceptable=rc.exceptable,
                step_up=StepUp(rc.step_up.acr_values, rc.step_up.max_age) if rc.step_up else None,
                response=compile_response(rc.name, rc.response, file, f"rules[{index}].response", limits)
                if rc.response is not None
                else None,
            )
        )
    return Policy(tuple(compiled))


def _check_condition_size(source: str, file: str, key: str, limits: Limits) -> None:
    if len(source.encode()) > limits.cel_max_expression_bytes:
        raise ConfigError(
            file,
            key,
            f"expression is over limits.cel_max_expression_bytes ({limits.cel_max_expression_bytes})",
        )
    nesting = comprehension_depth(source)
    if nesting > limits.cel_max_comprehension_depth:
        raise ConfigError(
            file,
            key,
            f"comprehensions nest {nesting} deep; limits.cel_max_comprehension_depth is "
            f"{limits.cel_max_comprehension_depth}",
        )
