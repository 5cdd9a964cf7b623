"""What a rule answers, through the real Envoy: upstream headers at the demo upstream, client headers
and bodies at the client, metadata in Envoy's access log and in a local rate limit descriptor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ext_authz.dev.stack import Ports, Stack
from tests.conftest import REPO
from tests.e2e.test_envoy import request, token
from tests.waiting import until_sync

pytestmark = pytest.mark.e2e

RULES = [
    {
        "name": "portal",
        "match": {"paths": ["/portal/*"], "methods": ["GET"]},
        "when": '"oidc" in identity.kinds',
        "response": {
            "upstream_headers": {"x-user": {"cel": "identity.subject"}, "x-served-by": "ext-authz"},
            "remove_headers": ["cookie"],
            "client_headers": {"cache-control": "private"},
            "metadata": {"tenant": {"cel": "identity.subject"}},
        },
    },
    {
        "name": "browsers-log-in",
        "effect": "deny",
        "match": {"paths": ["/portal/*"]},
        "when": '!("oidc" in identity.kinds) && "accept" in request.headers'
        ' && request.headers["accept"].contains("text/html")',
        "response": {"status": 302, "headers": {"location": "https://login.example.com/start"}},
    },
    {
        "name": "hidden",
        "effect": "deny",
        "match": {"paths": ["/hidden/*"]},
        "response": {
            "status": 404,
            "headers": {"content-type": "application/problem+json"},
            "body": '{"title":"Not Found","status":404}',
            "metadata": {"tenant": "hidden"},
        },
    },
]

# Envoy's local rate limiter, after ext_authz on the edge listener: a descriptor keyed on the tenant a
# rule put in the dynamic metadata; alice may make two requests a minute.
RATE_LIMIT = """\
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: per_tenant
              token_bucket: {max_tokens: 1000, tokens_per_fill: 1000, fill_interval: 60s}
              filter_enabled: {default_value: {numerator: 100}, runtime_key: rl_enabled}
              filter_enforced: {default_value: {numerator: 100}, runtime_key: rl_enforced}
              descriptors:
              - entries: [{key: tenant, value: alice}]
                token_bucket: {max_tokens: 2, tokens_per_fill: 2, fill_interval: 60s}
              rate_limits:
              - actions:
                - metadata:
                    descriptor_key: tenant
                    metadata_key: {key: envoy.filters.http.ext_authz, path: [{key: tenant}]}
                    source: DYNAMIC
"""
ROUTER = "          - name: envoy.filters.http.router\n"


def envoy_template(dest: Path) -> Path:
    text = (REPO / "envoy.yaml").read_text()
    first = text.index(ROUTER)
    second = text.index(ROUTER, first + 1)  # the edge listener's
    text = text[:second] + RATE_LIMIT + text[second:]
    text = text.replace(
        " request_id=%REQ(X-REQUEST-ID)%",
        " tenant=%DYNAMIC_METADATA(envoy.filters.http.ext_authz:tenant)% request_id=%REQ(X-REQUEST-ID)%",
    )
    out = dest / "envoy.yaml"
    out.write_text(text)
    return out


@pytest.fixture(scope="module", params=["grpcio", "native"])
def stack(
    demo_dir: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Stack]:
    run = tmp_path_factory.mktemp("responses")
    rules = RULES + yaml.safe_load((demo_dir / "config.yaml").read_text())["rules"]
    overrides = {"transport": request.param, "rules": rules}
    # The demo's envoy.yaml names demo/… relative to the repository: the template is used from there.
    template = envoy_template(run)
    with Stack(demo_dir, template, run, Ports.free(), overrides=overrides) as s:
        yield s


def test_upstream_headers_reach_the_upstream_and_client_headers_the_client(stack: Stack) -> None:
    alice = token(stack, "alice")
    r = request(
        stack,
        "/portal/one",
        listener="edge",
        workload=None,
        token=alice,
        headers={"cookie": "session=s3cret", "x-user": "mallory"},
    )
    assert r.status == 200, r.body
    echo = r.echo()
    assert echo["x-user"] == "alice" and echo["x-served-by"] == "ext-authz"
    assert "cookie" not in echo
    assert r.headers["cache-control"] == "private"


def test_a_forged_copy_of_a_rules_header_is_stripped_where_no_rule_sets_it(stack: Stack) -> None:
    r = request(stack, "/api/orders", headers={"x-user": "mallory", "x-served-by": "me"})
    assert r.status == 200
    assert "x-user" not in r.echo() and "x-served-by" not in r.echo()


def test_a_deny_rules_status_body_and_headers_reach_the_client(stack: Stack) -> None:
    r = request(stack, "/hidden/thing")
    assert r.status == 404
    assert r.body == '{"title":"Not Found","status":404}'
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["x-ext-authz-reason"] == "policy_denied" and r.headers["x-ext-authz-decision-id"]


def test_a_browser_is_redirected_to_log_in(stack: Stack) -> None:
    r = request(stack, "/portal/one", listener="edge", workload=None, headers={"accept": "text/html"})
    assert r.status == 302 and r.headers["location"] == "https://login.example.com/start"
    api = request(
        stack, "/portal/one", listener="edge", workload=None, headers={"accept": "application/json"}
    )
    assert api.status == 401


def test_metadata_reaches_the_access_log_and_the_rate_limiter(stack: Stack) -> None:
    alice = token(stack, "alice")
    statuses = [
        request(stack, f"/portal/rl-{i}", listener="edge", workload=None, token=alice).status
        for i in range(4)
    ]
    # Earlier tests in this module spent some of alice's two a minute: from some point on, 429.
    assert statuses[-1] == 429 and statuses.count(429) >= 2, statuses

    def access_log() -> str:
        return stack.log_path("envoy").read_text()

    until_sync(lambda: "/portal/rl-3" in access_log(), "the last request in Envoy's access log")
    lines = [ln for ln in access_log().splitlines() if "/portal/rl-0" in ln]
    assert lines and "tenant=alice" in lines[0], lines
    hidden = [ln for ln in access_log().splitlines() if "/hidden/thing" in ln]
    assert hidden and "tenant=hidden" in hidden[0]
