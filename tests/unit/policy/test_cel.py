"""Conditions are compiled once: checked against the typed declarations, then loaded into the
evaluation environment. They must evaluate exactly as the same text compiled straight into the
evaluation environment (what ext-authz did before), on the values the pipeline provides, errors
included. Run in a fresh interpreter: how cel-expr-python converts values depends on what ran first."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from ext_authz.policy import cel as cel_module
from ext_authz.policy.cel import CompileError, compile_many
from tests.conftest import REPO

EXTRA = [
    'request.method == "GET" && request.path == "/api/orders?x=1"',
    'request.context_extensions.listener == "mesh"',
    'request.headers[":authority"] == "backend.internal"',
    'request.headers["missing"] == "x"',
    "has(request.headers.authorization)",
    'source.address.startsWith("10.")',
    'identity.authenticated && identity.kinds.exists(k, k == "oidc")',
    'identity.claims.tenant == request.headers["x-tenant"]',
    "identity.claims.missing == 1",
    'has(identity.claims.roles) && identity.claims.roles.exists(r, r in ["reader", "editor"])',
    "identity.claims.count > 2",
    "identity.x509.spiffe_id == identity.spiffe_id || identity.token.issued_at > 5",
    "identity.issued_at + 3600 > int(now)",
    'now == timestamp("2033-03-01T12:00:00Z")',
    'now - duration("1h") < timestamp("2033-03-01T12:00:00Z")',
    'now.getHours("UTC") == 12',
    'signals.device["posture"] == "compliant"',
    'signals.user.risk != "high"',
    'grants.exists(g, g.reason == "x") && grants.all(g, g.not_after > 0)',
    "size(grants) == 1",
    'identity.audiences.size() > 0 && identity.audiences[0] == "backend-api"',
    'identity.audiences[5] == "x"',
]

SCRIPT = r"""
import datetime, json, sys
from ext_authz.policy.cel import EVAL_ENV, compile_many
sources = json.loads(sys.stdin.read())
now = datetime.datetime(2033, 3, 1, 12, tzinfo=datetime.timezone.utc)
identity = {
    "authenticated": True, "kind": "oidc", "kinds": ["oidc", "x509_svid"],
    "spiffe_id": "spiffe://example.org/ns/frontend/sa/web", "trust_domain": "example.org",
    "path": "/ns/frontend/sa/web", "subject": "alice", "issuer": "https://idp.example.com",
    "claims": {"tenant": "t1", "roles": ["reader"], "count": 3, "nested": {"a": [1, 2]}},
    "audiences": ["backend-api"], "issued_at": 1988100000, "expires_at": 1988103600,
    "x509": {"spiffe_id": "spiffe://example.org/ns/frontend/sa/web"}, "token": {"issued_at": 7},
}
activations = [
    {
        "request": {"method": "GET", "path": "/api/orders?x=1", "host": "backend.internal",
                    "scheme": "https", "protocol": "HTTP/2",
                    "headers": {":authority": "backend.internal", "x-tenant": "t1", "authorization": "x"},
                    "context_extensions": {"listener": "mesh"}},
        "source": {"address": "10.0.0.7:40312", "principal": ""},
        "identity": identity,
        "signals": {"device": {"posture": "compliant"}, "workload": {}, "user": {"risk": "low"}},
        "grants": [{"id": "g1", "principal": "p", "reason": "x", "approver": "b", "not_after": 5}],
        "now": now,
    },
    {
        "request": {"method": "POST", "path": "/", "host": "", "scheme": "http", "protocol": "",
                    "headers": {}, "context_extensions": {}},
        "source": {"address": "", "principal": ""},
        "identity": {"authenticated": False, "kinds": [], "claims": {}, "audiences": []},
        "signals": {"device": {}, "workload": {}, "user": {}},
        "grants": [],
        "now": now,
    },
]
def run(expr):
    rows = []
    for data in activations:
        v = expr.eval(data=data)
        kind = str(v.type())
        rows.append([kind, str(v.value()).split(":", 1)[0] if kind == "ERROR" else repr(v.value())])
    return rows
# everything compiled once is evaluated before anything is compiled straight for evaluation
once = [run(expr) for expr in compile_many(sources)]
twice = [run(EVAL_ENV.compile(source)) for source in sources]
out = [[s, a, b] for s, x, y in zip(sources, once, twice) for a, b in zip(x, y)]
print(json.dumps(out))
"""


def corpus() -> list[str]:
    book = yaml.safe_load((REPO / "docs/cookbook/policies.yaml").read_text())
    return [r["when"] for r in book["rules"] if r.get("when")] + EXTRA


def test_compiled_once_evaluates_as_compiled_for_evaluation() -> None:
    sources = corpus()
    res = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        input=json.dumps(sources),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=REPO,
    )
    rows = json.loads(res.stdout)
    assert len(rows) == 2 * len(sources)
    for source, once, twice in rows:
        assert once == twice, source
    kinds = {once[0] for _, once, _ in rows}
    assert {"BOOL", "ERROR"} <= kinds  # the corpus reaches both outcomes


def test_a_reload_compiles_only_what_is_new(monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[str] = []
    real = cel_module._check

    def counting(source: str, kind: str = "condition") -> bytes:
        checked.append(source)
        return real(source, kind)

    monkeypatch.setattr(cel_module, "_check", counting)
    first = compile_many(["1 == 1", "2 == 2"])
    second = compile_many(["2 == 2", "3 == 3", "3 == 3"])
    assert checked == ["1 == 1", "2 == 2", "3 == 3"]
    assert second[0] is first[1] and second[1] is second[2]


def test_errors_are_reasons_and_keep_what_compiled() -> None:
    results = compile_many(["1 == 1", "identity.nope == 1", "1 + 1"])
    assert not isinstance(results[0], CompileError)
    assert isinstance(results[1], CompileError) and "nope" in str(results[1])
    assert isinstance(results[2], CompileError) and "boolean" in str(results[2])
