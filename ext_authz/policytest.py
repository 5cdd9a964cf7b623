"""``ext-authz test``: policy tests in YAML, run offline against a config, like ``opa test``.

A test file names a config (or the command's ``--config``) and a list of cases. Each case is a request,
who makes it, the continuous-trust state at that moment, and what the decision must be:

```yaml
config: config.yaml                 # relative to this file (optional: else --config)
now: 2026-11-26T12:00:00Z           # optional: the time every case is decided at (default: now)
tests:
  - name: the frontend reads orders
    request: {method: GET, path: /api/orders, host: backend.internal, context_extensions: {listener: mesh}}
    identity: {workload: spiffe://example.org/ns/frontend/sa/web}
    expect: {decision: allow, rule: frontend-reads}
```

``identity`` is taken as verified (``workload``: an X.509-SVID's SPIFFE ID; ``jwt_svid``: a JWT-SVID's;
``user``: an OIDC user with ``issuer``, ``subject`` and ``claims``), so policy is tested apart from key
material; ``credentials`` instead (``certificate``: a PEM file; ``token``: a file or the token) are
verified against the config's trust, as in production. ``state`` holds ``revocations``, ``signals``,
``grants`` and ``exceptions``. ``expect`` may name ``decision`` (allow/deny), ``status`` (the HTTP
status Envoy answers with, a rule's own included), ``reason`` and ``rule``; and what the rule's response
makes of it: ``upstream_headers`` and ``client_headers`` (each header named must have that value; ``null``:
must not be set), ``body`` (a denial's, exactly) and ``metadata`` (each key named, that value). Each one
named is compared. An unknown key anywhere in a case is an error, never ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import escape

import yaml
from google.protobuf import json_format

from ext_authz._proto.envoy.external_auth_pb2 import CheckRequest, CheckResponse

from .errors import AuthzError, Error
from .loader import load_engine
from .model import Decision, Identity, Principal
from .offline import decide_offline
from .pipeline import Engine
from .spiffe_id import SpiffeId, SpiffeIdError
from .state.records import ExceptionGrant, Grant, Revocation, Scope, Signal
from .state.snapshot import StateSnapshot

__all__ = ["CaseResult", "TestFileError", "junit", "run_file"]

_CASE_KEYS = {"name", "request", "identity", "credentials", "state", "expect", "now"}
_EXPECT_KEYS = {
    "decision",
    "status",
    "reason",
    "rule",
    "upstream_headers",
    "client_headers",
    "body",
    "metadata",
}
_REQUEST_KEYS = {"method", "path", "host", "scheme", "protocol", "headers", "context_extensions", "source"}
_CREDENTIAL_KEYS = {"certificate", "token"}
_STATE_KEYS = {"revocations", "signals", "grants", "exceptions"}


class TestFileError(Error, ValueError):
    """A test file that cannot be run: one line naming the file and the case."""

    __test__ = False  # not a pytest class


@dataclass
class CaseResult:
    file: str
    name: str
    passed: bool
    expected: dict[str, Any]
    got: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        if self.passed:
            return f"PASS {self.file}: {self.name}"
        want = ", ".join(f"{k} {v}" for k, v in self.expected.items())
        shown = ["decision", "status", "reason", "rule", *(k for k in self.expected if k not in _BASICS)]
        got = ", ".join(f"{k} {self.got.get(k)}" for k in dict.fromkeys(shown))
        return f"FAIL {self.file}: {self.name}: expected {want}; got {got}"

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_BASICS = ("decision", "status", "reason", "rule")


def _only(value: dict[str, Any], keys: set[str], what: str) -> dict[str, Any]:
    unknown = set(value) - keys
    if unknown:
        raise TestFileError(f"{what}: unknown keys {sorted(unknown)}; expected some of {sorted(keys)}")
    return value


def _map(value: object, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TestFileError(f"{what} is a mapping")
    return value


def _time(value: object, what: str) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise TestFileError(f"{what}: expected an RFC 3339 time, got {value!r}") from exc
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _request(case: dict[str, Any], base: Path) -> CheckRequest:
    req = _only(_map(case.get("request"), "request"), _REQUEST_KEYS, "request")
    r = CheckRequest()
    http = r.attributes.request.http
    http.method = str(req.get("method", "GET")).upper()
    http.path = str(req.get("path", "/"))
    http.host = str(req.get("host", "localhost"))
    http.scheme = str(req.get("scheme", "https"))
    http.protocol = str(req.get("protocol", "HTTP/2"))
    headers = {str(k).lower(): str(v) for k, v in _map(req.get("headers"), "request.headers").items()}
    for k, v in _map(req.get("context_extensions"), "request.context_extensions").items():
        r.attributes.context_extensions[str(k)] = str(v)
    address, _, port = str(req.get("source", "10.0.0.7:40312")).rpartition(":")
    r.attributes.source.address.socket_address.address = address.strip("[]")
    r.attributes.source.address.socket_address.port_value = int(port) if port.isdigit() else 0
    creds = _only(_map(case.get("credentials"), "credentials"), _CREDENTIAL_KEYS, "credentials")
    if "certificate" in creds:
        pem = (base / str(creds["certificate"])).read_text()
        r.attributes.source.certificate = quote(pem, safe="")
    if "token" in creds:
        token = str(creds["token"])
        path = base / token
        if len(token) < 512 and path.is_file():
            token = path.read_text().strip()
        headers["authorization"] = f"Bearer {token}"
    for k, v in headers.items():
        http.headers[k] = v
    return r


def _identities(spec: dict[str, Any]) -> Principal:
    identities: list[Identity] = []
    for kind, key in (("x509_svid", "workload"), ("jwt_svid", "jwt_svid")):
        if key in spec:
            try:
                sid = SpiffeId.parse(str(spec[key]))
            except SpiffeIdError as exc:
                raise TestFileError(f"identity.{key}: a SPIFFE ID, got {spec[key]!r} ({exc})") from exc
            identities.append(Identity.workload(kind, sid))  # type: ignore[arg-type]
    if "user" in spec:
        user = _map(spec["user"], "identity.user")
        if "issuer" not in user or "subject" not in user:
            raise TestFileError("identity.user names an issuer and a subject")
        claims = {
            "iss": user["issuer"],
            "sub": user["subject"],
            **_map(user.get("claims"), "identity.user.claims"),
        }
        identities.append(
            Identity(
                kind="oidc",
                subject=str(user["subject"]),
                issuer=str(user["issuer"]),
                claims=claims,
                issued_at=claims.get("iat") if isinstance(claims.get("iat"), int) else None,
            )
        )
    unknown = set(spec) - {"workload", "jwt_svid", "user"}
    if unknown:
        raise TestFileError(f"identity: unknown keys {sorted(unknown)} (workload, jwt_svid, user)")
    return Principal(tuple(identities))


def _state(spec: dict[str, Any], now: float) -> StateSnapshot:
    revs, grants, excs, sigs = [], [], [], []
    for i, r in enumerate(spec.get("revocations") or []):
        revs.append(
            Revocation(f"rev_{i}", str(r["kind"]), str(r["value"]), "test", "test", now - 1, source="api")
        )
    for i, g in enumerate(spec.get("grants") or []):
        scope = Scope(tuple(g.get("hosts", ())), tuple(g.get("paths", ())), tuple(g.get("methods", ())))
        grants.append(
            Grant(
                f"grt_{i}",
                str(g["principal"]),
                scope,
                now - 60,
                now + 3600,
                "test",
                "b",
                "a",
                now - 60,
                approved_at=now - 60,
            )
        )
    for i, e in enumerate(spec.get("exceptions") or []):
        scope = Scope(tuple(e.get("hosts", ())), tuple(e.get("paths", ())), tuple(e.get("methods", ())))
        excs.append(
            ExceptionGrant(
                f"exc_{i}",
                str(e["principal"]),
                scope,
                "test",
                "a",
                now - 60,
                now + 3600,
                approved_by="b",
                approved_at=now - 60,
            )
        )
    for s in spec.get("signals") or []:
        kind, _, subject = str(s["subject"]).partition(":")
        sigs.append(Signal(kind, subject, str(s["key"]), str(s["value"]), "test", now - 1, now + 3600))
    return StateSnapshot.build(1, revocations=revs, grants=grants, exceptions=excs, signals=sigs)


def _got(d: Decision, resp: CheckResponse) -> dict[str, Any]:
    """What Envoy is told: the decision, and the response rendered as Envoy gets it."""
    md = json_format.MessageToDict(resp.dynamic_metadata)
    got: dict[str, Any] = {
        "decision": "allow" if d.allowed else "deny",
        "status": d.status if d.allowed else resp.denied_response.status.code,
        "reason": d.reason,
        "rule": d.rule,
        "metadata": md,
    }
    if d.allowed:
        got["upstream_headers"] = {o.header.key: o.header.value for o in resp.ok_response.headers}
        got["client_headers"] = {
            o.header.key: o.header.value for o in resp.ok_response.response_headers_to_add
        }
    else:
        got["upstream_headers"] = {}
        got["client_headers"] = {o.header.key: o.header.value for o in resp.denied_response.headers}
        got["body"] = resp.denied_response.body
    return got


def _matches(expected: dict[str, Any], got: dict[str, Any]) -> bool:
    for key, want in expected.items():
        have = got.get(key)
        if key in ("upstream_headers", "client_headers", "metadata"):
            if not isinstance(have, dict):
                return False
            if any(
                have.get(str(k)) != (None if v is None else v if key == "metadata" else str(v))
                for k, v in want.items()
            ):
                return False
        elif have != want:
            return False
    return True


def run_case(
    engine: Engine, case: dict[str, Any], base: Path, file: str, default_now: datetime
) -> CaseResult:
    unknown = set(case) - _CASE_KEYS
    if unknown:
        raise TestFileError(f"unknown keys {sorted(unknown)}")
    name = str(case.get("name") or "(unnamed)")
    expected = _map(case.get("expect"), "expect")
    if not expected or set(expected) - _EXPECT_KEYS:
        raise TestFileError(f"expect names some of {sorted(_EXPECT_KEYS)}")
    if "decision" in expected and expected["decision"] not in ("allow", "deny"):
        raise TestFileError("expect.decision is allow or deny")
    for key in ("upstream_headers", "client_headers", "metadata"):
        if key in expected:
            _map(expected[key], f"expect.{key}")
    now = _time(case["now"], "now") if "now" in case else default_now
    if "identity" in case and "credentials" in case:
        raise TestFileError("a case gives identity (taken as verified) or credentials (verified), not both")
    try:
        request = _request(case, base)
        state = _state(_only(_map(case.get("state"), "state"), _STATE_KEYS, "state"), now.timestamp())
    except (KeyError, TypeError, OSError) as exc:
        raise TestFileError(f"{type(exc).__name__}: {exc}") from exc
    principal = _identities(_map(case["identity"], "identity")) if "identity" in case else None
    decision, response = decide_offline(request, engine, now, state, principal=principal)
    got = _got(decision, response)
    passed = _matches(expected, got)
    shown = {k: v for k, v in got.items() if k in _BASICS or k in expected}
    return CaseResult(file, name, passed, dict(expected), shown)


def run_file(path: Path, config: Path | None = None, now: datetime | None = None) -> list[CaseResult]:
    """Every case of one test file. TestFileError when the file (or a case) cannot be run."""
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TestFileError(f"{path}: cannot read the test file ({type(exc).__name__})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("tests"), list):
        raise TestFileError(f"{path}: a test file is a mapping with a list of tests")
    cfg_path = config or (path.parent / str(doc["config"]) if doc.get("config") else None)
    if cfg_path is None:
        raise TestFileError(f"{path}: names no config (config: in the file, or --config)")
    try:
        engine = load_engine(cfg_path)
    except AuthzError as exc:
        raise TestFileError(f"{path}: config {cfg_path}: {exc.detail}") from exc
    default_now = now or (_time(doc["now"], "now") if doc.get("now") else datetime.now(UTC))
    results = []
    for i, case in enumerate(doc["tests"]):
        if not isinstance(case, dict):
            raise TestFileError(f"{path}: tests[{i}] is a mapping")
        try:
            results.append(run_case(engine, case, path.parent, str(path), default_now))
        except TestFileError as exc:
            raise TestFileError(f"{path}: tests[{i}] ({case.get('name', '')}): {exc}") from exc
    return results


def junit(results: list[CaseResult]) -> str:
    """JUnit XML: one testsuite, one testcase per case, a failure element for each that failed."""
    failed = sum(not r.passed for r in results)
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<testsuite name="ext-authz policy tests" tests="{len(results)}" failures="{failed}">',
    ]
    for r in results:
        attrs = (
            f'classname="{escape(r.file, {chr(34): "&quot;"})}" name="{escape(r.name, {chr(34): "&quot;"})}"'
        )
        if r.passed:
            lines.append(f"  <testcase {attrs}/>")
        else:
            msg = escape(r.line(), {chr(34): "&quot;"})
            lines.append(f'  <testcase {attrs}><failure message="{msg}"/></testcase>')
    lines.append("</testsuite>")
    return "\n".join(lines) + "\n"
