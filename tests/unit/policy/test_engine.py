"""Policy compilation and evaluation: deny wins, default deny, selectors, CEL, shadow rules."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import pytest

from ext_authz.errors import ConfigError, status_for
from ext_authz.model import Credentials, HttpRequest, RequestContext, ShadowResult
from ext_authz.pipeline import target_of
from ext_authz.policy.cel import Activation as ActivationFn
from ext_authz.policy.engine import Policy, PolicyResult, compile_policy, comprehension_depth
from ext_authz.settings import Limits, MatchSettings, RuleSettings

FILE = "/etc/ext-authz/config.yaml"
FRONTEND = "spiffe://example.org/ns/frontend/sa/web"


def rule(
    name: str,
    effect: str = "allow",
    *,
    mode: str = "enforce",
    hosts: tuple[str, ...] = (),
    paths: tuple[str, ...] = (),
    methods: tuple[str, ...] = (),
    ext: Mapping[str, str] | None = None,
    when: str | None = None,
    anonymous: bool = False,
) -> RuleSettings:
    return RuleSettings(
        name=name,
        effect=effect,
        mode=mode,
        match=MatchSettings(hosts=hosts, paths=paths, methods=methods, context_extensions=dict(ext or {})),
        when=when,
        anonymous=anonymous,
    )


class Compiled:
    """A compiled policy, evaluated on a request as the pipeline does (its target computed once)."""

    def __init__(self, compiled: Policy) -> None:
        self.policy = compiled
        self.rules = compiled.rules

    def evaluate(self, ctx: RequestContext, authenticated: bool, activation: ActivationFn) -> PolicyResult:
        target = target_of(ctx)
        assert target is not None
        return self.policy.evaluate(target, ctx.context_extensions, authenticated, activation)


def policy(*rules: RuleSettings) -> Compiled:
    return Compiled(compile_policy(rules, FILE))


def request(
    path: str = "/api/orders",
    *,
    method: str = "GET",
    host: str = "backend.internal",
    ext: Mapping[str, str] | None = None,
    l4: bool = False,
) -> RequestContext:
    http = None
    if not l4:
        http = HttpRequest(
            method=method,
            path=path,
            host=host,
            scheme="https",
            protocol="HTTP/2",
            headers=MappingProxyType({":path": path}),
        )
    return RequestContext(
        http=http,
        source_address="10.0.0.7:40000",
        source_principal="",
        context_extensions=MappingProxyType(dict(ext or {})),
        credentials=Credentials(),
    )


class Activation:
    """The lazy CEL input: counts how often the policy asked for it."""

    def __init__(self, spiffe_id: str = FRONTEND, **identity: Any) -> None:
        self.calls = 0
        self.identity: dict[str, Any] = {"authenticated": True, "spiffe_id": spiffe_id, **identity}

    def __call__(self) -> Mapping[str, Any]:
        self.calls += 1
        return {
            "request": {"method": "GET", "path": "/api/orders", "headers": {}},
            "source": {"address": "10.0.0.7:40000", "principal": ""},
            "identity": self.identity,
            "signals": {},
            "grants": [],
        }


AUTH = True
ANON = False


# --- outcome: deny wins, then allow, otherwise deny ------------------------------------------


def test_deny_rule_overrides_an_allow_rule_listed_before_it() -> None:
    p = policy(rule("everything"), rule("no-admin", "deny", paths=("/admin/*",)))

    denied = p.evaluate(request("/admin/users"), AUTH, Activation())
    allowed = p.evaluate(request("/api/orders"), AUTH, Activation())

    assert (denied.allowed, denied.reason, denied.rule) == (False, "policy_denied", "no-admin")
    assert status_for(denied.reason) == 403
    assert (allowed.allowed, allowed.reason, allowed.rule) == (True, "allowed", "everything")


def test_first_matching_allow_rule_is_reported() -> None:
    p = policy(rule("reads", methods=("GET",)), rule("everything"))

    assert p.evaluate(request(method="GET"), AUTH, Activation()).rule == "reads"
    assert p.evaluate(request(method="POST"), AUTH, Activation()).rule == "everything"


def test_no_rules_deny_an_authenticated_caller_with_no_rule() -> None:
    result = policy().evaluate(request(), AUTH, Activation())

    assert (result.allowed, result.reason, result.rule) == (False, "no_rule", "")
    assert status_for(result.reason) == 403


def test_no_rules_deny_an_unauthenticated_caller_with_no_credential() -> None:
    result = policy().evaluate(request(), ANON, Activation())

    assert (result.allowed, result.reason) == (False, "no_credential")
    assert status_for(result.reason) == 401


def test_unselected_allow_rule_leaves_the_default_deny() -> None:
    result = policy(rule("reads", paths=("/api/*",))).evaluate(request("/other"), AUTH, Activation())

    assert (result.allowed, result.reason) == (False, "no_rule")


@pytest.mark.parametrize(
    "ctx",
    [
        request("/anything", method="DELETE", host="elsewhere.example:1"),
        request("/", method="OPTIONS"),
        request(l4=True),
    ],
    ids=["delete-elsewhere", "options-root", "l4"],
)
def test_rule_without_match_or_when_selects_every_authenticated_request(ctx: RequestContext) -> None:
    p = policy(rule("everyone"))

    assert p.evaluate(ctx, AUTH, Activation()).reason == "allowed"
    assert p.evaluate(ctx, ANON, Activation()).reason == "no_credential"


# --- anonymous ---------------------------------------------------------------------------------


def test_rules_skip_unauthenticated_callers_unless_anonymous() -> None:
    plain = policy(rule("health", paths=("/healthz",)))
    anonymous = policy(rule("health", paths=("/healthz",), anonymous=True))

    assert plain.evaluate(request("/healthz"), ANON, Activation()).reason == "no_credential"
    assert anonymous.evaluate(request("/healthz"), ANON, Activation()).reason == "allowed"
    # anonymous: true widens the audience, it does not exclude authenticated callers
    assert anonymous.evaluate(request("/healthz"), AUTH, Activation()).reason == "allowed"


def test_deny_rules_apply_to_unauthenticated_callers_too() -> None:
    """`anonymous` widens allow rules only: a deny rule never lets the least-trusted callers through."""
    p = policy(rule("site", anonymous=True), rule("no-admin", "deny", paths=("/admin/*",)))

    assert p.evaluate(request("/index.html"), ANON, Activation()).reason == "allowed"
    assert p.evaluate(request("/admin/users"), ANON, Activation()).reason == "policy_denied"
    assert p.evaluate(request("/admin/users"), AUTH, Activation()).reason == "policy_denied"


def test_anonymous_deny_rule_denies_an_unauthenticated_caller_with_policy_denied() -> None:
    p = policy(
        rule("public", anonymous=True),
        rule("block-scrapers", "deny", paths=("/export/*",), anonymous=True),
    )

    result = p.evaluate(request("/export/all"), ANON, Activation())

    assert (result.allowed, result.reason, result.rule) == (False, "policy_denied", "block-scrapers")
    assert status_for(result.reason) == 403
    assert p.evaluate(request("/index"), ANON, Activation()).reason == "allowed"


# --- match selectors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "host", "selected"),
    [
        ("backend.internal", "backend.internal", True),
        ("backend.internal", "backend.internal:8443", True),  # port stripped: pattern has none
        ("backend.internal", "BACKEND.Internal", True),
        ("backend.internal", "BACKEND.INTERNAL:443", True),
        ("backend.internal", "other.internal", False),
        ("backend.internal", "xbackend.internal", False),
        ("backend.internal", "backend.internal.evil.example", False),
        ("*.example.com", "api.example.com", True),
        ("*.example.com", "API.Example.COM:8080", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "api.example.com.evil.org", False),
        ("*.example.com", "api-example.com", False),
        ("backend.internal:8443", "backend.internal:8443", True),
        ("backend.internal:8443", "backend.internal:9000", False),
        ("backend.internal:8443", "backend.internal", False),
        ("[::1]", "[::1]:8080", True),
        ("[::1]", "[::2]:8080", False),
        ("[::1]", "[::1]", True),
        ("[::1]:8080", "[::1]:8080", True),
        ("[::1]:8080", "[::1]:9090", False),
        ("[::1]:8080", "[::1]", False),
        ("*.example.com:*", "api.example.com:8443", True),
    ],
)
def test_hosts(pattern: str, host: str, selected: bool) -> None:
    p = policy(rule("by-host", hosts=(pattern,)))

    assert (p.evaluate(request(host=host), AUTH, Activation()).reason == "allowed") is selected


@pytest.mark.parametrize(
    ("pattern", "path", "selected"),
    [
        ("/api/*", "/api/orders", True),
        ("/api/*", "/api/orders/7/lines", True),
        ("/api/*", "/api/orders?debug=1", True),
        ("/api/*", "/api/", True),
        ("/api/*", "/api", False),
        ("/api/*", "/apiary", False),
        ("/api/*", "/public?next=/api/orders", False),  # the query string is not the path
        ("/api/*", "/public#/api/orders", False),
        ("/api/orders", "/api/orders?id=7", True),
        ("/api/orders", "/api/orders/7", False),
        ("/api/*/lines", "/api/orders/lines", True),
        ("/api/*/lines", "/api/orders/7", False),
        ("/a.c", "/abc", False),  # only * is special
        ("*", "/anything", True),
    ],
)
def test_paths(pattern: str, path: str, selected: bool) -> None:
    p = policy(rule("by-path", paths=(pattern,)))

    assert (p.evaluate(request(path), AUTH, Activation()).reason == "allowed") is selected


def test_each_host_pattern_decides_for_itself_whether_the_port_counts() -> None:
    p = policy(rule("r", hosts=("a.internal", "b.internal:8443")))

    assert p.evaluate(request(host="a.internal:443"), AUTH, Activation()).reason == "allowed"
    assert p.evaluate(request(host="b.internal:8443"), AUTH, Activation()).reason == "allowed"
    assert p.evaluate(request(host="b.internal:443"), AUTH, Activation()).reason == "no_rule"


def test_any_of_several_hosts_or_paths_selects() -> None:
    p = policy(rule("r", hosts=("a.internal", "b.internal"), paths=("/x/*", "/y/*")))

    assert p.evaluate(request("/y/1", host="b.internal"), AUTH, Activation()).reason == "allowed"
    assert p.evaluate(request("/z/1", host="b.internal"), AUTH, Activation()).reason == "no_rule"
    assert p.evaluate(request("/x/1", host="c.internal"), AUTH, Activation()).reason == "no_rule"


@pytest.mark.parametrize(
    ("method", "selected"), [("GET", True), ("HEAD", True), ("POST", False), ("DELETE", False)]
)
def test_methods(method: str, selected: bool) -> None:
    p = policy(rule("reads", methods=("GET", "HEAD")))

    assert (p.evaluate(request(method=method), AUTH, Activation()).reason == "allowed") is selected


@pytest.mark.parametrize(
    ("ext", "selected"),
    [
        ({"listener": "mesh"}, True),
        ({"listener": "mesh", "route": "orders"}, True),  # extra extensions do not matter
        ({"listener": "edge"}, False),
        ({"listener": "MESH"}, False),
        ({}, False),
    ],
)
def test_context_extensions(ext: dict[str, str], selected: bool) -> None:
    p = policy(rule("mesh-only", ext={"listener": "mesh"}))

    assert (p.evaluate(request(ext=ext), AUTH, Activation()).reason == "allowed") is selected


@pytest.mark.parametrize(
    ("ctx", "selected"),
    [
        (request("/api/x", method="GET", host="backend.internal", ext={"l": "mesh"}), True),
        (request("/x", method="GET", host="backend.internal", ext={"l": "mesh"}), False),
        (request("/api/x", method="PUT", host="backend.internal", ext={"l": "mesh"}), False),
        (request("/api/x", method="GET", host="other", ext={"l": "mesh"}), False),
        (request("/api/x", method="GET", host="backend.internal", ext={"l": "edge"}), False),
    ],
    ids=["all-agree", "path", "method", "host", "context-extension"],
)
def test_all_selectors_must_agree(ctx: RequestContext, selected: bool) -> None:
    p = policy(rule("r", hosts=("backend.internal",), paths=("/api/*",), methods=("GET",), ext={"l": "mesh"}))

    assert (p.evaluate(ctx, AUTH, Activation()).reason == "allowed") is selected


@pytest.mark.parametrize(
    ("selector", "selected"),
    [
        ({}, True),
        ({"ext": {"listener": "tcp"}}, True),
        ({"hosts": ("backend.internal",)}, False),
        ({"paths": ("*",)}, False),
        ({"methods": ("GET",)}, False),
    ],
    ids=["none", "context-extensions", "hosts", "paths", "methods"],
)
def test_l4_request_matches_only_rules_without_http_selectors(
    selector: dict[str, Any], selected: bool
) -> None:
    allow = policy(rule("r", **selector))
    deny = policy(rule("everything"), rule("r", "deny", **selector))
    ctx = request(l4=True, ext={"listener": "tcp"})

    assert (allow.evaluate(ctx, AUTH, Activation()).reason == "allowed") is selected
    assert (deny.evaluate(ctx, AUTH, Activation()).reason == "policy_denied") is selected


# --- CEL: compilation ------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["identity.spiffe_id.startsWith(", "nonexistent == 1", "1 +"])
def test_cel_compile_error_is_a_config_error_naming_the_rule(source: str) -> None:
    with pytest.raises(ConfigError) as info:
        policy(rule("fine", when="true"), rule("broken", when=source))

    assert info.value.file == FILE
    assert info.value.key == "rules[1].when"
    assert FILE in str(info.value)
    assert "rules[1].when" in str(info.value)
    assert "CEL" in str(info.value)


@pytest.mark.parametrize("source", ["1", '"yes"', "[true]", "identity.spiffe_id.size()"])
def test_non_boolean_when_is_a_config_error(source: str) -> None:
    with pytest.raises(ConfigError) as info:
        policy(rule("r", when=source))

    assert info.value.key == "rules[0].when"
    assert FILE in str(info.value)
    assert "boolean" in str(info.value)


def test_boolean_and_dynamic_when_compile() -> None:
    p = policy(rule("a", when="true"), rule("b", when="identity.authenticated"))

    assert p.policy.uses_cel
    assert not policy(rule("a")).policy.uses_cel


# --- CEL: evaluation -----------------------------------------------------------------------------


def test_when_sees_the_activation() -> None:
    p = policy(rule("frontend", when='identity.spiffe_id.startsWith("spiffe://example.org/ns/frontend/")'))

    assert p.evaluate(request(), AUTH, Activation(FRONTEND)).reason == "allowed"
    billing = Activation("spiffe://example.org/ns/billing/sa/worker")
    assert p.evaluate(request(), AUTH, billing).reason == "no_rule"


def test_deny_rule_with_a_false_condition_does_not_deny() -> None:
    p = policy(rule("everything"), rule("no-billing", "deny", when='identity.spiffe_id.contains("billing")'))

    assert p.evaluate(request(), AUTH, Activation(FRONTEND)).reason == "allowed"


@pytest.mark.parametrize(
    "source",
    ['identity.claims.missing == "x"', "identity.claims.count > 1", "identity.claims.flag"],
    ids=["missing-key", "type-mismatch", "non-boolean-value"],
)
def test_runtime_cel_error_in_an_allow_rule_is_a_policy_error_not_a_silent_no_rule(source: str) -> None:
    p = policy(rule("broken", when=source))

    result = p.evaluate(request(), AUTH, Activation(claims={"count": "many", "flag": 1}))

    assert (result.allowed, result.reason, result.rule) == (False, "policy_error", "broken")
    assert result.detail
    assert [rule for rule, _ in result.errors] == ["broken"]


@pytest.mark.parametrize(
    "source",
    ['identity.claims.missing == "x"', "identity.claims.count > 1", "identity.claims.flag"],
    ids=["missing-key", "type-mismatch", "non-boolean-value"],
)
def test_runtime_cel_error_in_a_deny_rule_denies_with_policy_error(source: str) -> None:
    p = policy(rule("everything"), rule("broken-deny", "deny", when=source))

    result = p.evaluate(request(), AUTH, Activation(claims={"count": "many", "flag": 1}))

    assert (result.allowed, result.reason, result.rule) == (False, "policy_error", "broken-deny")
    assert result.detail
    assert status_for(result.reason) == 403


def test_runtime_error_in_allow_rule_falls_through_to_the_next_allow_rule_and_is_still_reported() -> None:
    p = policy(rule("broken", when='identity.claims.missing == "x"'), rule("fallback"))

    result = p.evaluate(request(), AUTH, Activation(claims={}))

    assert (result.reason, result.rule) == ("allowed", "fallback")
    assert [rule for rule, _ in result.errors] == ["broken"]


@pytest.mark.parametrize(
    "source",
    [
        'identity.spife_id == "x"',
        'request.header["x"] == "1"',
        'signals.devices.posture == "ok"',
        'grants.exists(g, g.aprover == "x")',
        'identiti.spiffe_id == "x"',
    ],
    ids=["identity-field", "request-field", "signals-field", "grant-field", "variable"],
)
def test_an_unknown_variable_or_field_is_a_config_error(source: str) -> None:
    with pytest.raises(ConfigError) as info:
        policy(rule("ok"), rule("typo", when=source))

    assert info.value.key == "rules[1].when"
    assert "undefined field" in str(info.value) or "undeclared reference" in str(info.value)


def test_activation_is_not_built_when_no_rule_has_a_condition() -> None:
    p = policy(
        rule("no-admin", "deny", paths=("/admin/*",)),
        rule("reads", methods=("GET",)),
        rule("shadow", mode="shadow"),
    )
    act = Activation()

    assert p.evaluate(request(), AUTH, act).reason == "allowed"
    assert p.evaluate(request(method="POST"), AUTH, act).reason == "no_rule"
    assert act.calls == 0


def test_activation_is_not_built_when_no_conditional_rule_is_selected() -> None:
    p = policy(rule("admin", paths=("/admin/*",), when="identity.authenticated"), rule("everything"))
    act = Activation()

    assert p.evaluate(request("/api/x"), AUTH, act).rule == "everything"
    assert act.calls == 0


def test_activation_is_built_once_however_many_conditions_run() -> None:
    p = policy(
        rule("d1", "deny", when='identity.spiffe_id == "x"'),
        rule("d2", "deny", when='identity.spiffe_id == "y"'),
        rule("a1", when='identity.spiffe_id == "z"'),
        rule("a2", when="identity.authenticated"),
        rule("s1", mode="shadow", when="identity.authenticated"),
    )
    act = Activation()

    assert p.evaluate(request(), AUTH, act).rule == "a2"
    assert act.calls == 1


# --- shadow rules ----------------------------------------------------------------------------------


def test_without_shadow_rules_there_is_no_shadow_result() -> None:
    result = policy(rule("everything")).evaluate(request(), AUTH, Activation())

    assert result.shadow == ()
    assert result.shadow_allowed is None


def test_matching_shadow_allow_is_reported_and_not_enforced() -> None:
    p = policy(
        rule("reads", paths=("/api/*",), methods=("GET",)),
        rule("writes-shadow", mode="shadow", paths=("/api/*",), methods=("POST",)),
    )

    result = p.evaluate(request(method="POST"), AUTH, Activation())

    assert (result.allowed, result.reason, result.rule) == (False, "no_rule", "")
    assert result.shadow == (ShadowResult("writes-shadow", "allow", True),)
    assert result.shadow_allowed is True


def test_matching_shadow_deny_is_reported_and_not_enforced() -> None:
    p = policy(rule("everything"), rule("block-shadow", "deny", mode="shadow", paths=("/api/*",)))

    result = p.evaluate(request("/api/orders"), AUTH, Activation())

    assert (result.allowed, result.reason, result.rule) == (True, "allowed", "everything")
    assert result.shadow == (ShadowResult("block-shadow", "deny", True),)
    assert result.shadow_allowed is False


def test_unmatched_shadow_rules_leave_the_outcome_as_it_is() -> None:
    p = policy(
        rule("reads", methods=("GET",)),
        rule("a-shadow", mode="shadow", paths=("/never/*",)),
        rule("d-shadow", "deny", mode="shadow", when="false"),
    )

    allowed = p.evaluate(request(method="GET"), AUTH, Activation())
    denied = p.evaluate(request(method="PUT"), AUTH, Activation())

    expected = (ShadowResult("a-shadow", "allow", False), ShadowResult("d-shadow", "deny", False))
    assert (allowed.allowed, allowed.shadow, allowed.shadow_allowed) == (True, expected, True)
    assert (denied.allowed, denied.shadow, denied.shadow_allowed) == (False, expected, False)


def test_shadow_allow_cannot_override_an_enforced_deny() -> None:
    p = policy(rule("no-admin", "deny", paths=("/admin/*",)), rule("admin-shadow", mode="shadow"))

    result = p.evaluate(request("/admin/x"), AUTH, Activation())

    assert (result.allowed, result.reason) == (False, "policy_denied")
    assert result.shadow == (ShadowResult("admin-shadow", "allow", True),)
    assert result.shadow_allowed is False


def test_shadow_deny_beats_shadow_allow() -> None:
    p = policy(rule("a-shadow", mode="shadow"), rule("d-shadow", "deny", mode="shadow"))

    result = p.evaluate(request(), AUTH, Activation())

    assert result.reason == "no_rule"
    assert [s.matched for s in result.shadow] == [True, True]
    assert result.shadow_allowed is False


def test_shadow_rules_follow_the_anonymous_audience() -> None:
    p = policy(rule("a-shadow", mode="shadow"), rule("anon-shadow", mode="shadow", anonymous=True))

    result = p.evaluate(request(), ANON, Activation())

    assert result.reason == "no_credential"
    assert result.shadow == (
        ShadowResult("a-shadow", "allow", False),
        ShadowResult("anon-shadow", "allow", True),
    )
    assert result.shadow_allowed is True


def test_shadow_rule_cel_error_is_reported_failing_closed() -> None:
    p = policy(
        rule("everything"),
        rule("a-shadow", mode="shadow", when='identity.claims.missing == "x"'),
        rule("d-shadow", "deny", mode="shadow", when='identity.claims.missing == "x"'),
    )

    result = p.evaluate(request(), AUTH, Activation())

    assert (result.allowed, result.reason) == (True, "allowed")
    a, d = result.shadow
    assert (a.rule, a.matched) == ("a-shadow", False)
    assert (d.rule, d.matched) == ("d-shadow", True)
    assert a.error
    assert d.error
    assert result.shadow_allowed is False


def test_shadow_only_policy_never_allows() -> None:
    p = policy(rule("everything-shadow", mode="shadow"))

    result = p.evaluate(request(), AUTH, Activation())

    assert (result.allowed, result.reason) == (False, "no_rule")
    assert result.shadow_allowed is True


@pytest.mark.parametrize(
    "host", ["secret.internal.", "secret.internal:", "SECRET.internal.:443", "secret.internal:443"]
)
def test_host_spellings_do_not_escape_a_deny_rule(host: str) -> None:
    p = policy(rule("all"), rule("no-secret", "deny", hosts=("secret.internal",)))
    assert p.evaluate(request("/x", host=host), AUTH, Activation()).reason == "policy_denied"


def test_a_condition_is_handed_only_the_variables_it_names() -> None:
    p = policy(rule("r", when='request.method == "GET" && now > timestamp("2000-01-01T00:00:00Z")'))
    assert p.rules[0].variables == frozenset({"request", "now"})
    assert policy(rule("plain")).rules[0].when is None


# --- CEL cost: bounded at load (cel-expr-python exposes no runtime cost budget) ----------------------


@pytest.mark.parametrize(
    ("source", "depth"),
    [
        ("1 == 1", 0),
        ('request.headers.all(k, k != "x")', 1),
        ('grants.exists(g, g.id == "a") && [1].all(x, x > 0)', 1),
        ("[[1]].all(x, x.all(y, y > 0))", 2),
        ("[1].all(x, [2].exists(y, [3].map(z, z).size() > 0))", 3),
        ("[1].filter (x, x > 0) .size() == 1", 1),
        ('"a.all(b.all(c.all(" == request.path', 0),  # inside a string: not a macro
        ('"""x.all(""" == "" && [1].exists_one(x, x == 1)', 1),
        (r'r"\" == "x" && [1].all(x, [1].all(y, [1].all(z, true)))', 3),  # raw: \ does not escape
        ("// it's a comment\n[1].all(x, [1].all(y, [1].all(z, true)))", 3),  # quotes in comments
        ("[1].all(x, // :)\n [1].all(y, [1].all(z, true)))", 3),  # parentheses in comments
        ("[1]. // a comment between\n all(x, [1].all(y, true))", 2),
    ],
)
def test_comprehension_depth(source: str, depth: int) -> None:
    assert comprehension_depth(source) == depth


def test_nesting_comprehensions_past_the_limit_is_a_config_error() -> None:
    deep = "[1].all(x, [2].exists(y, [3].all(z, z > 0)))"
    keyed = (rule("deep", when=deep),)

    with pytest.raises(ConfigError) as info:
        compile_policy(keyed, FILE)
    assert info.value.key == "rules[0].when" and "cel_max_comprehension_depth" in str(info.value)
    compile_policy(keyed, FILE, Limits(cel_max_comprehension_depth=3))  # raised, it loads


def test_an_expression_over_the_size_limit_is_a_config_error() -> None:
    long = " || ".join(f'request.path == "/p{i}"' for i in range(200))
    keyed = (rule("long", when=long),)

    with pytest.raises(ConfigError) as info:
        compile_policy(keyed, FILE)
    assert "cel_max_expression_bytes" in str(info.value)
    compile_policy(keyed, FILE, Limits(cel_max_expression_bytes=len(long)))


# --- rule selection is remembered per what it reads, bounded --------------------------------------


def test_remembered_selection_follows_every_input_it_depends_on() -> None:
    p = policy(
        rule("mesh-orders", paths=("/api/*",), methods=("GET",), ext={"listener": "mesh"}),
        rule("edge-admin", "deny", hosts=("admin.internal",), ext={"listener": "edge"}),
        rule("anyone-health", paths=("/healthz",), anonymous=True),
    )
    cases = [  # each input changed once from the first; every answer asked twice (the second remembered)
        (request("/api/orders", ext={"listener": "mesh"}), AUTH, "allowed"),
        (request("/api/orders", ext={"listener": "edge"}), AUTH, "no_rule"),
        (request("/api/orders", ext={"listener": "mesh", "route": "x"}), AUTH, "allowed"),
        (request("/api/orders"), AUTH, "no_rule"),
        (request("/api/orders", method="POST", ext={"listener": "mesh"}), AUTH, "no_rule"),
        (request("/other", ext={"listener": "mesh"}), AUTH, "no_rule"),
        (request("/api/orders", ext={"listener": "mesh"}), ANON, "no_credential"),
        (request("/healthz", ext={"listener": "mesh"}), ANON, "allowed"),
        (request("/x", host="admin.internal", ext={"listener": "edge"}), AUTH, "policy_denied"),
        (request("/x", host="admin.internal:8443", ext={"listener": "edge"}), AUTH, "policy_denied"),
        (request("/x", host="other.internal", ext={"listener": "edge"}), AUTH, "no_rule"),
    ]
    for _ in range(2):
        for ctx, authenticated, reason in cases:
            assert p.evaluate(ctx, authenticated, Activation()).reason == reason, (ctx, authenticated)


def test_a_flood_of_distinct_targets_keeps_the_selection_memo_bounded() -> None:
    from ext_authz.policy import engine

    p = policy(rule("orders", paths=("/api/*",)))
    for i in range(engine.SELECTION_MEMO_SIZE + 50):
        assert p.evaluate(request(f"/api/{i}"), AUTH, Activation()).reason == "allowed"
    long_path = "/api/" + "a" * engine.SELECTION_MEMO_MAX_CHARS
    assert p.evaluate(request(long_path), AUTH, Activation()).reason == "allowed"

    memo = p.policy._selections
    assert 0 < len(memo) <= engine.SELECTION_MEMO_SIZE
    assert all(len(key[2]) <= engine.SELECTION_MEMO_MAX_CHARS for key in memo)  # type: ignore[index]


def test_custom_methods_of_any_length_share_one_remembered_selection() -> None:
    """HTTP/2 lets a client send any token as its method, up to Envoy's header limit: a flood of long,
    distinct methods must neither pin memory in the memo nor select a rule that names methods."""
    p = policy(rule("reads", methods=("GET",)), rule("anything"))
    for i in range(50):
        method = f"X{i}" + "M" * 60_000
        assert p.evaluate(request(method=method), AUTH, Activation()).rule == "anything"
    assert p.evaluate(request(method="GET"), AUTH, Activation()).rule == "reads"

    memo = p.policy._selections
    assert sorted(key[0] for key in memo) == ["", "GET"]  # type: ignore[index]


# --- outcomes of identity-only selections are remembered per credentials ---------------------------


def evaluate_as(
    p: Compiled, ctx: RequestContext, act: Activation, key: Any, stepped: Any = None
) -> PolicyResult:
    target = target_of(ctx)
    assert target is not None
    return p.policy.evaluate(target, ctx.context_extensions, AUTH, act, stepped, key)


def test_an_identity_only_outcome_is_remembered_per_credentials() -> None:
    p = policy(
        rule("frontend", when=f'identity.spiffe_id == "{FRONTEND}"'),
        rule("no-admin", "deny", paths=("/admin/*",)),
        rule("shadow-billing", mode="shadow", when='identity.spiffe_id.startsWith("spiffe://x/")'),
    )
    frontend, other = Activation(), Activation(spiffe_id="spiffe://example.org/ns/other/sa/x")
    for _ in range(3):
        assert evaluate_as(p, request(), frontend, ("cert-a", None, None)).reason == "allowed"
        assert evaluate_as(p, request(), other, ("cert-b", None, None)).reason == "no_rule"
        assert evaluate_as(p, request("/admin/x"), frontend, ("cert-a", None, None)).reason == "policy_denied"
    assert (frontend.calls, other.calls) == (1, 1)  # each credential's identity was read once


def test_an_outcome_that_reads_more_than_the_identity_is_decided_every_time() -> None:
    p = policy(rule("get-only", when='request.method == "GET" && identity.authenticated'))
    act = Activation()
    for _ in range(3):
        assert evaluate_as(p, request(), act, ("cert-a", None, None)).reason == "allowed"
    assert act.calls == 3


def test_a_step_up_is_asked_every_time() -> None:
    step = RuleSettings.model_validate(
        {"name": "stepped", "match": {}, "when": "identity.authenticated", "step_up": {"max_age": "5m"}}
    )
    p = policy(step)
    answers = iter([False, True, False])
    asked: list[bool] = []

    def stepped(_: Any) -> bool:
        asked.append(next(answers))
        return asked[-1]

    reasons = [evaluate_as(p, request(), Activation(), ("t", None, None), stepped).reason for _ in range(3)]
    assert reasons == ["step_up_required", "allowed", "step_up_required"] and len(asked) == 3


def test_remembered_outcomes_stay_bounded() -> None:
    from ext_authz.policy import engine

    p = policy(rule("frontend", when='identity.spiffe_id.startsWith("spiffe://")'))
    for i in range(engine.RESULT_MEMO_SIZE + 10):
        assert evaluate_as(p, request(), Activation(), (f"cert-{i}", None, None)).reason == "allowed"
    assert 0 < len(p.policy._results) <= engine.RESULT_MEMO_SIZE
