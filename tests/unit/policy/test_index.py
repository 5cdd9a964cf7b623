"""The rule index selects exactly what a scan of every rule selects, in the same order: property-based
tests on generated policies and requests, the oracle being the plain loop the index replaced."""

from __future__ import annotations

from collections.abc import Mapping

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ext_authz.match import Selector, Target, parse_host
from ext_authz.policy.engine import CompiledRule, Policy, Selection
from ext_authz.policy.index import RuleIndex

HOSTS = [
    "backend.internal",
    "backend.internal:8443",
    "api.example.com",
    "*.example.com",
    "*.api.example.com",
    "*example.com",
    "api-*.internal",
    "*.*.example.com",
    "*",
    "*:8443",
    "[::1]",
    "*.com:443",
    "x.y.z.example.com",
]
PATHS = [
    "/",
    "/api",
    "/api/*",
    "/api/v1/*",
    "/api/v*",
    "/api/v1/items",
    "/api/*/items",
    "/*",
    "*",
    "/a*b",
    "/admin",
    "/admin/*",
    "/a/b/c*",
    "/a/b/",
    "//*",
    "/api/v1/items*",
]
METHODS = ["GET", "POST", "HEAD", "DELETE"]
EXTENSIONS = [
    {},
    {"listener": "mesh"},
    {"listener": "edge"},
    {"listener": "mesh", "tier": "a"},
    {"tier": "b"},
]

REQ_HOSTS = [
    "backend.internal",
    "backend.internal:8443",
    "BACKEND.internal.",
    "api.example.com",
    "x.api.example.com",
    "example.com",
    "myexample.com",
    "api-1.internal",
    "a.b.example.com:8443",
    "[::1]",
    "[0::1]:80",
    "a.b.c.com:443",
    "x.y.z.example.com",
    "com",
]
REQ_PATHS = [
    "/",
    "/api",
    "/api/",
    "/api/v1/items",
    "/api/v1/items/1",
    "/api/v2/x",
    "/api/v1/x/y",
    "/api/x/items",
    "/admin",
    "/admin/",
    "/a/b/c/d",
    "/a/b/",
    "/axb",
    "",
    "//api",
    "x/items",
    "/ab",
]


@st.composite
def rules(draw: st.DrawFn) -> CompiledRule:
    name = f"r{draw(st.integers(0, 10**6))}"
    return CompiledRule(
        name=name,
        effect=draw(st.sampled_from(["allow", "deny"])),
        shadow=draw(st.booleans()),
        anonymous=draw(st.booleans()),
        selector=Selector.compile(
            draw(st.lists(st.sampled_from(HOSTS), max_size=2)),
            draw(st.lists(st.sampled_from(PATHS), max_size=2)),
            draw(st.lists(st.sampled_from(METHODS), max_size=1)),
        ),
        # most rules name no extension, so that most requests are selected by something
        context_extensions=tuple(sorted(draw(st.sampled_from([{}, {}, {}, *EXTENSIONS])).items())),
        when=None,
        when_source="",
    )


@st.composite
def requests(draw: st.DrawFn) -> tuple[Target, dict[str, str], bool]:
    text = st.text(alphabet="/abcixvt1*.-", max_size=20)
    if draw(st.integers(0, 19)) == 0:
        target = Target("", None, "")  # an L4 check
    else:
        host = parse_host(draw(st.sampled_from(REQ_HOSTS)))
        assert host is not None
        path = draw(st.one_of(st.sampled_from(REQ_PATHS), text.map(lambda s: "/" + s)))
        target = Target(draw(st.sampled_from([*METHODS, "BREW", ""])), host, path)
    extensions = draw(st.sampled_from([*EXTENSIONS, {"listener": "other"}]))
    return target, dict(extensions), draw(st.booleans())


def _selected(s: Selection) -> int:
    return len(s.deny) + len(s.allow) + sum(selected for _, selected in s.shadow)


def scan(policy: Policy, target: Target, extensions: Mapping[str, str], authenticated: bool) -> Selection:
    """Every rule, in order: what selection did before the index."""
    deny: list[CompiledRule] = []
    allow: list[CompiledRule] = []
    shadow: list[tuple[CompiledRule, bool]] = []
    for r in policy.rules:
        selected = r.selects(target, extensions, authenticated)
        if r.shadow:
            shadow.append((r, selected))
        elif selected:
            (deny if r.effect == "deny" else allow).append(r)
    return Selection(tuple(deny), tuple(allow), tuple(shadow))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rules(), max_size=40), st.lists(requests(), min_size=1, max_size=25))
def test_the_index_selects_what_a_scan_selects(
    policy_rules: list[CompiledRule], reqs: list[tuple[Target, dict[str, str], bool]]
) -> None:
    policy = Policy(tuple(policy_rules))
    for target, extensions, authenticated in reqs:
        got = policy.select(target, extensions, authenticated)
        want = scan(policy, target, extensions, authenticated)
        assert got.deny == want.deny
        assert got.allow == want.allow
        assert got.shadow == want.shadow
        event(f"rules selected: {min(_selected(want), 3)}")  # `pytest --hypothesis-show-statistics`


@settings(max_examples=100, deadline=None)
@given(st.lists(rules(), max_size=40), requests())
def test_candidates_are_a_superset_in_policy_order(
    policy_rules: list[CompiledRule], req: tuple[Target, dict[str, str], bool]
) -> None:
    target, extensions, _ = req
    found = RuleIndex(policy_rules).candidates(target, extensions)
    assert found == sorted(set(found))
    for i, r in enumerate(policy_rules):
        if r.selector.matches(target) and all(extensions.get(k) == v for k, v in r.context_extensions):
            assert i in found, (r, target)


def test_a_large_policy_looks_at_few_rules() -> None:
    """10,000 rules on distinct hosts and paths: a request is checked against the few that could
    select it, whatever path it carries."""
    many = [
        CompiledRule(
            name=f"r{i}",
            effect="allow",
            shadow=False,
            anonymous=False,
            selector=Selector.compile([f"svc{i % 100}.internal"], [f"/api/t{i}/*"], ["GET"]),
            context_extensions=(),
            when=None,
            when_source="",
        )
        for i in range(10_000)
    ]
    index = RuleIndex(many)
    host = parse_host("svc7.internal")
    assert host is not None
    assert index.candidates(Target("GET", host, "/api/t707/x"), {}) == [707]
    hostile = "/api/" + "t" * 5000 + "/" * 5000
    assert index.candidates(Target("GET", host, hostile), {}) == []
    assert index.candidates(Target("GET", host, "/" * 8000), {}) == []
