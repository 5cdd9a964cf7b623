"""What a rule answers besides allow or deny: headers, bodies, redirects and metadata (docs/responses.md).

Real demo credentials, the whole pipeline, and the CheckResponse Envoy gets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from ext_authz._proto.envoy.external_auth_pb2 import CheckResponse
from ext_authz.dev.demo import init_demo
from ext_authz.dev.pki import mint_jwt
from ext_authz.envoy.normalize import normalize
from ext_authz.envoy.render import render, render_wire
from ext_authz.errors import ConfigError
from ext_authz.loader import load_engine
from ext_authz.model import Decision
from ext_authz.pipeline import Caches, Engine, decide
from ext_authz.state.records import ExceptionGrant, Scope
from ext_authz.state.snapshot import StateSnapshot
from tests.component.checkreq import check_request
from tests.unit.test_pipeline_trust import ISSUER, NOW, TS

RULES: list[dict[str, Any]] = [
    {
        "name": "profile-with-headers",
        "match": {"paths": ["/user/*"], "methods": ["GET"]},
        "when": '"oidc" in identity.kinds',
        "response": {
            "upstream_headers": {
                "x-user-email": {"cel": "identity.claims.email"},
                "x-user-role": {"cel": "identity.claims.roles[0]"},
                "x-served-by": "ext-authz",
            },
            "remove_headers": ["cookie"],
            "client_headers": {"cache-control": "no-store"},
            "metadata": {"tenant": {"cel": "identity.claims.tenant"}, "plan": "gold", "weight": 3},
        },
    },
    {
        "name": "hidden-admin",  # a 404 that hides the resource, with a JSON problem body
        "effect": "deny",
        "match": {"paths": ["/secret/*"]},
        "response": {
            "status": 404,
            "headers": {"content-type": "application/problem+json"},
            "body": '{"type":"about:blank","title":"Not Found","status":404}',
            "metadata": {"blocked": True},
        },
    },
    {
        "name": "browsers-log-in",  # a browser without a credential goes to the login page
        "effect": "deny",
        "match": {"paths": ["/app/*"]},
        "when": '!("oidc" in identity.kinds) && request.headers["accept"].contains("text/html")',
        "response": {"status": 302, "headers": {"location": "https://login.example.com/start"}},
    },
    {
        "name": "computed-redirect",  # where to is computed: only to redirect_hosts, or a path here
        "effect": "deny",
        "match": {"paths": ["/go/*"]},
        "response": {
            "status": 302,
            "headers": {"location": {"cel": 'request.headers["x-next"]'}},
            "redirect_hosts": ["*.example.com"],
        },
    },
    {
        "name": "frozen",
        "effect": "deny",
        "exceptable": True,
        "match": {"paths": ["/frozen/*"]},
        "response": {"status": 423, "body": "frozen"},
    },
    {
        "name": "shadow-with-response",
        "mode": "shadow",
        "match": {"paths": ["/api/*"]},
        "response": {"upstream_headers": {"x-shadow": "never"}},
    },
    {
        "name": "failing-header",
        "match": {"paths": ["/fail/*"]},
        "response": {
            "upstream_headers": {
                "x-missing": {"cel": "identity.claims.nope"},
                "x-kept": "yes",
                "x-newline": {"cel": 'request.headers["x-in"]'},
            },
            "metadata": {"bad": {"cel": "identity.claims.nope"}},
        },
    },
]


def engine_with(directory: Path, name: str, rules: list[dict[str, Any]], **top: Any) -> Engine:
    cfg = yaml.safe_load((directory / "config.yaml").read_text())
    cfg["rules"] = [*rules, *cfg["rules"]]
    cfg.update(top)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return load_engine(path)


class Demo:
    def __init__(self, directory: Path) -> None:
        from joserfc.jwk import RSAKey

        self.dir = directory
        self.engine = engine_with(directory, "responses", RULES)
        self.idp = RSAKey.import_key(json.loads((directory / "idp/idp.key.json").read_text()))

    def token(self, **changes: Any) -> str:
        claims = {
            "iss": ISSUER,
            "aud": "backend-api",
            "sub": "alice",
            "roles": ["reader", "writer"],
            "email": "alice@example.com",
            "tenant": "acme",
            "iat": int(TS),
            "exp": int(TS) + 3600,
            **changes,
        }
        return mint_jwt(self.idp, {k: v for k, v in claims.items() if v is not None}, alg="RS256")

    def decide(
        self, path: str, engine: Engine | None = None, state: StateSnapshot | None = None, **kw: Any
    ) -> Decision:
        ctx = normalize(check_request(self.dir, path=path, **kw))
        return decide(ctx, engine or self.engine, Caches(), NOW, "d" * 32, state or StateSnapshot())


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    d = tmp_path_factory.mktemp("responses")
    init_demo(d, now=NOW)
    return Demo(d)


def headers(options: Any) -> dict[str, str]:
    return {o.header.key: o.header.value for o in options}


def test_an_allow_rule_sets_upstream_and_client_headers_and_metadata(demo: Demo) -> None:
    d = demo.decide("/user/me", token=demo.token(), listener="edge", headers={"cookie": "sid=1"})
    assert d.allowed and d.rule == "profile-with-headers" and d.response_errors == ()
    resp = render(d)
    up = headers(resp.ok_response.headers)
    assert up["x-user-email"] == "alice@example.com" and up["x-user-role"] == "reader"
    assert up["x-served-by"] == "ext-authz" and up["x-ext-authz-subject"] == "alice"
    assert "cookie" in resp.ok_response.headers_to_remove
    assert headers(resp.ok_response.response_headers_to_add) == {"cache-control": "no-store"}
    md = resp.dynamic_metadata.fields
    assert md["tenant"].string_value == "acme" and md["plan"].string_value == "gold"
    assert md["weight"].number_value == 3 and md["reason"].string_value == "allowed"
    assert CheckResponse.FromString(render_wire(d)) == render(d)


def test_a_client_copy_of_a_header_any_rule_sets_upstream_never_reaches_it(demo: Demo) -> None:
    """Another rule allows (frontend-reads sets nothing): the client's x-user-email is removed."""
    forged = {"x-user-email": "ceo@example.com", "x-user-role": "admin"}
    d = demo.decide("/api/orders", workload="frontend", headers=forged)
    assert d.allowed and d.rule == "frontend-reads"
    resp = render(d)
    assert {"x-user-email", "x-user-role", "x-served-by"} <= set(resp.ok_response.headers_to_remove)
    assert "x-user-email" not in headers(resp.ok_response.headers)


def test_a_shadow_rules_response_never_applies(demo: Demo) -> None:
    d = demo.decide("/api/orders", workload="frontend")
    assert d.response is None and "x-shadow" not in headers(render(d).ok_response.headers)


def test_a_deny_rule_chooses_status_headers_and_body_and_the_reason_is_still_sent(demo: Demo) -> None:
    d = demo.decide("/secret/x", workload="frontend")
    assert (d.allowed, d.reason, d.rule) == (False, "policy_denied", "hidden-admin")
    resp = render(d)
    denied = resp.denied_response
    assert denied.status.code == 404
    assert denied.body == '{"type":"about:blank","title":"Not Found","status":404}'
    h = headers(denied.headers)
    assert h["content-type"] == "application/problem+json"
    assert h["x-ext-authz-reason"] == "policy_denied" and h["x-ext-authz-decision-id"] == "d" * 32
    assert resp.dynamic_metadata.fields["blocked"].bool_value is True
    assert CheckResponse.FromString(render_wire(d)) == render(d)


def test_a_browser_is_redirected_and_an_api_client_gets_401(demo: Demo) -> None:
    browser = demo.decide("/app/home", listener="edge", headers={"accept": "text/html,*/*"})
    denied = render(browser).denied_response
    assert denied.status.code == 302
    assert headers(denied.headers)["location"] == "https://login.example.com/start"
    api = demo.decide("/app/home", listener="edge", headers={"accept": "application/json"})
    assert api.reason == "no_credential" and render(api).denied_response.status.code == 401


@pytest.mark.parametrize(
    ("target", "redirected"),
    [
        ("https://login.example.com/next", True),
        ("/local/path", True),
        ("https://evil.test/phish", False),  # not on redirect_hosts: an open redirect
        ("//evil.test/phish", False),  # scheme-relative: another host
        ("https://login.example.com@evil.test/", False),
        ("javascript:alert(1)", False),
        ("/\\evil.test", False),
        ("/\t/evil.test/phish", False),  # browsers drop the tab: //evil.test
        ("/\n/evil.test", False),
        ("/ /evil.test", False),
    ],
)
def test_a_computed_location_goes_only_where_the_operator_allows(
    demo: Demo, target: str, redirected: bool
) -> None:
    d = demo.decide("/go/x", workload="frontend", headers={"x-next": target})
    assert (d.allowed, d.reason) == (False, "policy_denied")  # never an allow, either way
    denied = render(d).denied_response
    if redirected:
        assert denied.status.code == 302 and headers(denied.headers)["location"] == target
    else:
        assert denied.status.code == 403 and "location" not in headers(denied.headers)
        (error,) = d.response_errors
        assert error[0] == "computed-redirect" and error[1].startswith("header location:")


def test_a_value_that_fails_is_left_out_and_counted_and_the_decision_stands(demo: Demo) -> None:
    d = demo.decide("/fail/x", workload="frontend", headers={"x-in": "a\r\nset-cookie: x=1"})
    assert d.allowed and d.rule == "failing-header"
    up = headers(render(d).ok_response.headers)
    assert up["x-kept"] == "yes" and "x-missing" not in up and "x-newline" not in up
    assert "x-missing" in render(d).ok_response.headers_to_remove  # nor the client's copy
    assert [e[0] for e in d.response_errors] == ["failing-header"] * 3
    assert "bad" not in render(d).dynamic_metadata.fields


def test_an_exception_that_allows_brings_no_deny_rules_response(demo: Demo) -> None:
    exc = ExceptionGrant(
        id="exc_1",
        principal="spiffe://example.org/ns/frontend/sa/web",
        scope=Scope(paths=("/frozen/*",)),
        reason="incident",
        opened_by="local:a",
        opened_at=TS - 60,
        expires_at=TS + 600,
        approved_by="config",
        approved_at=TS - 60,
    )
    state = StateSnapshot.build(1, exceptions=[exc])
    d = demo.decide("/frozen/x", workload="frontend", state=state)
    assert (d.allowed, d.reason, d.response) == (True, "exception", None)
    d = demo.decide("/frozen/x", workload="billing")
    assert render(d).denied_response.status.code == 423 and render(d).denied_response.body == "frozen"


def test_reason_header_false_says_nothing_of_why(demo: Demo) -> None:
    quiet = engine_with(demo.dir, "quiet", RULES, response={"reason_header": False})
    for d in (
        demo.decide("/nowhere", workload="frontend", engine=quiet),
        demo.decide("/secret/x", workload="frontend", engine=quiet),
    ):
        denied = render(d).denied_response
        h = headers(denied.headers)
        assert "x-ext-authz-reason" not in h and h["x-ext-authz-decision-id"] == "d" * 32
        assert d.reason not in denied.body
        assert CheckResponse.FromString(render_wire(d)) == render(d)


def test_responses_of_identity_alone_are_remembered(demo: Demo) -> None:
    """A response whose values read only identity is worked out once per credentials."""
    token = demo.token()
    caches = Caches()
    ctx = normalize(check_request(demo.dir, path="/user/me", token=token, listener="edge"))
    first = decide(ctx, demo.engine, caches, NOW, "a" * 32)
    second = decide(ctx, demo.engine, caches, NOW, "b" * 32)
    assert first.response is not None and first.response is second.response


@pytest.mark.parametrize(
    ("rule", "key", "expected"),
    [
        ({"response": {"status": 403}}, "response.status", "a deny rule's"),
        (
            {"effect": "deny", "response": {"upstream_headers": {"x": "y"}}},
            "response.upstream_headers",
            "an allow",
        ),
        ({"response": {"upstream_headers": {"x-spiffe-id": "y"}}}, "upstream_headers", "ext-authz's own"),
        (
            {"response": {"upstream_headers": {"x-ext-authz-subject": "y"}}},
            "upstream_headers",
            "ext-authz's own",
        ),
        ({"response": {"remove_headers": ["x-spiffe-id"]}}, "remove_headers", "ext-authz's own"),
        ({"response": {"upstream_headers": {"connection": "close"}}}, "upstream_headers", "hop-by-hop"),
        ({"response": {"client_headers": {"transfer-encoding": "x"}}}, "client_headers", "hop-by-hop"),
        ({"response": {"upstream_headers": {"X Bad": "y"}}}, "upstream_headers", "lower-case token"),
        ({"response": {"upstream_headers": {"x": "a\r\nb"}}}, "upstream_headers", "control character"),
        ({"effect": "deny", "response": {"body": "x" * 20000}}, "response.body", "max_response_body_bytes"),
        (
            {"response": {"upstream_headers": {"x": {"cel": "[1, 2]"}}}},
            "upstream_headers.x",
            "must yield text",
        ),
        (
            {"response": {"upstream_headers": {"x": {"cel": "nope("}}}},
            "upstream_headers.x",
            "not a valid CEL",
        ),
        ({"response": {"metadata": {"reason": "x"}}}, "metadata", "ext-authz's own"),
        ({"effect": "deny", "response": {"status": 302}}, "response", "needs a location"),
        ({"effect": "deny", "response": {"status": 200}}, "status", "300"),
        (
            {"effect": "deny", "response": {"status": 302, "headers": {"location": {"cel": '"/x"'}}}},
            "redirect_hosts",
            "open",  # "... else a request could choose where a user is sent" → the hint names it
        ),
    ],
)
def test_bad_responses_are_refused_at_load_naming_the_rule_and_key(
    demo: Demo, rule: dict[str, Any], key: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as err:
        engine_with(demo.dir, "bad", [{"name": "r", **rule}])
    text = str(err.value)
    assert "rules[0]" in text and key in text, text
    if expected != "open":
        assert expected in text, text


def test_a_reason_without_a_deciding_rule_can_have_its_own_answer(demo: Demo) -> None:
    """`Retry-After` on quarantine: no rule decides a quarantine, so response.reasons says."""
    from ext_authz.state.records import Revocation

    cfg = {
        "reasons": {"quarantined": {"headers": {"retry-after": "900"}}, "no_credential": {"body": "log in"}}
    }
    eng = engine_with(demo.dir, "reasons", RULES, response=cfg)
    frontend = "spiffe://example.org/ns/frontend/sa/web"
    q = Revocation(
        "qtn_1", "quarantine", frontend, "5 denials", "ext-authz", TS - 1, TS + 900, source="quarantine"
    )
    d = demo.decide(
        "/api/orders", workload="frontend", engine=eng, state=StateSnapshot.build(1, revocations=[q])
    )
    assert d.reason == "quarantined"
    denied = render(d).denied_response
    h = headers(denied.headers)
    assert (
        denied.status.code == 403 and h["retry-after"] == "900" and h["x-ext-authz-reason"] == "quarantined"
    )
    anon = render(demo.decide("/api/orders", engine=eng)).denied_response
    assert (anon.status.code, anon.body) == (401, "log in")
    # A rule's own response wins over the reason's.
    eng2 = engine_with(demo.dir, "reasons2", RULES, response={"reasons": {"policy_denied": {"body": "no"}}})
    assert (
        render(demo.decide("/secret/x", workload="frontend", engine=eng2)).denied_response.status.code == 404
    )
    with pytest.raises(ConfigError, match="not a denial reason"):
        engine_with(demo.dir, "bad-reason", RULES, response={"reasons": {"allowed": {"body": "x"}}})


def test_hidden_reasons_stay_hidden_in_www_authenticate(demo: Demo) -> None:
    quiet = engine_with(demo.dir, "quiet-401", RULES, response={"reason_header": False})
    expired = demo.token(exp=int(TS) - 3600)
    d = demo.decide("/user/me", engine=quiet, token=expired, listener="edge")
    www = {o.header.key: o.header.value for o in render(d).denied_response.headers}["www-authenticate"]
    assert www == 'Bearer error="invalid_token"' and d.reason not in str(render(d).denied_response)


def test_a_response_read_from_the_request_keeps_no_template(demo: Demo) -> None:
    """A body or header computed from the request is rendered each time: the template caches would
    otherwise keep every request's values (thousands of them, each up to the limits)."""
    from ext_authz.envoy import render as render_module

    eng = engine_with(
        demo.dir,
        "echo",
        [
            {
                "name": "echo",
                "effect": "deny",
                "match": {"paths": ["/echo/*"]},
                "response": {"status": 400, "body": {"cel": "request.path"}},
            }
        ],
    )
    before = len(render_module._templates) + len(render_module._wire_templates)
    for i in range(50):
        d = demo.decide(f"/echo/{i}", workload="frontend", engine=eng)
        assert render(d).denied_response.body == f"/echo/{i}"
        assert CheckResponse.FromString(render_wire(d)) == render(d)
    assert len(render_module._templates) + len(render_module._wire_templates) == before
