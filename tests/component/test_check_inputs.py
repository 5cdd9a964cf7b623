"""What a CheckRequest carries that is not what it should be, against a real in-process server: a Host
that is not a host, a source certificate that is more than one certificate, a rule whose condition fails
at run time. Each is denied with its own reason, and each next to the same request done right."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest

from ext_authz._proto.envoy.external_auth_pb2 import CheckRequest, CheckResponse
from tests.component.checkreq import check_request, leaf_and_chain
from tests.component.test_server import Running
from tests.component.test_streams import sample, scrape, start


@pytest.fixture
async def running(demo_dir: Path, tmp_path: Path) -> AsyncIterator[Running]:
    r = await start(demo_dir, tmp_path)
    yield r
    await r.channel.close()
    await r.server.stop(0)


def reason(resp: CheckResponse) -> str:
    return str(resp.dynamic_metadata.fields["reason"].string_value)


def http_status(resp: CheckResponse) -> int:
    """The HTTP status Envoy sends the client: 200 for an allow."""
    return int(resp.denied_response.status.code) if resp.HasField("denied_response") else 200


def with_host(req: CheckRequest, host: str, *, via: str) -> CheckRequest:
    h = req.attributes.request.http
    if via == "host":
        h.host = host
    else:  # Envoy may leave `host` empty: then `:authority` is the Host
        h.host = ""
        h.headers[":authority"] = host
    return req


# --- the Host -----------------------------------------------------------------------------------------

NOT_HOSTS = ["evil.com/x", "a b", "host:port:1", "[::1", "backend.internal:99999", "exa mple.org:80"]
HOSTS = ["backend.internal", "Backend.Internal.:8443", "10.0.0.7:80", "[::1]", "[2001:db8::1]:443"]


@pytest.mark.parametrize("via", ["host", ":authority"])
@pytest.mark.parametrize("host", NOT_HOSTS)
async def test_a_host_that_is_not_a_name_or_ip_literal_is_request_invalid(
    running: Running, demo_dir: Path, host: str, via: str
) -> None:
    # A frontend the policy allows on /api/*, whatever the Host: only the Host is wrong.
    resp = await running.stub.Check(with_host(check_request(demo_dir, workload="frontend"), host, via=via))
    assert (http_status(resp), reason(resp)) == (400, "request_invalid")
    assert running.records()[-1]["reason"] == "request_invalid"


@pytest.mark.parametrize("via", ["host", ":authority"])
@pytest.mark.parametrize("host", HOSTS)
async def test_a_name_or_ip_literal_with_an_optional_port_is_a_host(
    running: Running, demo_dir: Path, host: str, via: str
) -> None:
    resp = await running.stub.Check(with_host(check_request(demo_dir, workload="frontend"), host, via=via))
    assert (http_status(resp), reason(resp)) == (200, "allowed")


# --- the source certificate ---------------------------------------------------------------------------


@pytest.mark.parametrize("second", ["the leaf again", "its issuer"])
async def test_two_certificates_in_source_certificate_are_cert_malformed(
    running: Running, demo_dir: Path, second: str
) -> None:
    leaf, chain = leaf_and_chain(demo_dir, "frontend")
    issuer = chain[len(leaf) :].strip() + "\n"
    assert issuer.startswith("-----BEGIN CERTIFICATE-----") and issuer.count("BEGIN CERTIFICATE") == 1
    req = check_request(demo_dir, workload="frontend")
    assert reason(await running.stub.Check(req)) == "allowed"  # the leaf alone: a frontend the policy allows
    two = leaf + (leaf if second == "the leaf again" else issuer)
    req.attributes.source.certificate = quote(two, safe="")
    resp = await running.stub.Check(req)
    assert (http_status(resp), reason(resp)) == (401, "cert_malformed")
    record = running.records()[-1]
    assert record["reason"] == "cert_malformed" and record["decision"] == "deny"


# --- a condition that fails at run time ---------------------------------------------------------------


async def test_a_runtime_cel_error_in_an_allow_rule_is_policy_error_and_counted_per_rule(
    demo_dir: Path, tmp_path: Path
) -> None:
    rules = [
        # An X.509-SVID has no claims: indexing a key the map does not hold is an error at run time.
        {"name": "broken", "match": {"paths": ["/api/*"]}, "when": 'identity.claims.missing == "x"'},
        {"name": "sound", "match": {"paths": ["/ok/*"]}, "when": "identity.authenticated"},
    ]
    r = await start(demo_dir, tmp_path, rules=rules)
    try:
        assert sample(await scrape(r), "ext_authz_policy_errors_total", rule="broken") == 0
        for _ in range(2):
            resp = await r.stub.Check(check_request(demo_dir, workload="frontend", path="/api/orders"))
            assert (http_status(resp), reason(resp)) == (403, "policy_error")
            assert resp.dynamic_metadata.fields["rule"].string_value == "broken"
        ok = await r.stub.Check(check_request(demo_dir, workload="frontend", path="/ok/x"))
        assert (http_status(ok), reason(ok)) == (200, "allowed")  # a rule that evaluates is not counted
        m = await scrape(r)
        assert sample(m, "ext_authz_policy_errors_total", rule="broken") == 2
        assert sample(m, "ext_authz_policy_errors_total", rule="sound") == 0
        assert sample(m, "ext_authz_decisions_total", decision="deny", reason="policy_error") == 2
        logged = r.records()
        assert [rec["reason"] for rec in logged] == ["policy_error", "policy_error", "allowed"]
        assert [e["rule"] for e in logged[0]["policy_errors"]] == ["broken"]
    finally:
        await r.channel.close()
        await r.server.stop(0)
