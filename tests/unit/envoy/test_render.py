"""Decision → CheckResponse: statuses, identity headers, forged-header removal, challenges, metadata."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from google.protobuf import json_format

from ext_authz._proto.envoy.external_auth_pb2 import CheckResponse
from ext_authz.envoy.render import IDENTITY_HEADERS, render, render_wire
from ext_authz.model import Decision, Identity, Principal, ShadowResult

FRONTEND = "spiffe://example.org/ns/frontend/sa/web"
GRPC_OK, GRPC_PERMISSION_DENIED, GRPC_UNAUTHENTICATED = 0, 7, 16
SECRET_DETAIL = "leaf is valid 2030-01-01 .. 2030-01-02 (internal detail)"

WORKLOAD = Identity(
    kind="x509_svid", spiffe_id=FRONTEND, trust_domain="example.org", path="/ns/frontend/sa/web"
)
ALICE = Identity(kind="oidc", subject="alice", issuer="https://idp.example.com", audiences=("backend-api",))
JWT_SVID = Identity(kind="jwt_svid", spiffe_id=FRONTEND, subject=FRONTEND, trust_domain="example.org")


def allowed(principal: Principal, **kw: Any) -> Decision:
    return Decision(
        decision_id="d-1", allowed=True, status=200, reason="allowed", rule="r", principal=principal, **kw
    )


def denied(status: int, reason: str, **kw: Any) -> Decision:
    return Decision(
        decision_id="d-2", allowed=False, status=status, reason=reason, detail=SECRET_DETAIL, **kw
    )


def set_headers(resp: Any) -> dict[str, str]:
    """The upstream request headers an OkHttpResponse sets, checking each one overwrites."""
    out: dict[str, str] = {}
    for opt in resp.ok_response.headers:
        assert opt.HasField("append")
        assert opt.append.value is False
        out[opt.header.key] = opt.header.value
    return out


def denied_headers(resp: Any) -> dict[str, str]:
    return {opt.header.key: opt.header.value for opt in resp.denied_response.headers}


def metadata(resp: Any) -> dict[str, Any]:
    value: dict[str, Any] = json_format.MessageToDict(resp.dynamic_metadata)
    return value


# --- allowed ---------------------------------------------------------------------------------------


def test_allowed_workload_sets_identity_headers_upstream() -> None:
    resp = render(allowed(Principal.of(WORKLOAD)), {":path": "/api/x"})

    assert resp.status.code == GRPC_OK
    assert resp.HasField("ok_response")
    assert not resp.HasField("denied_response")
    assert set_headers(resp) == {
        "x-ext-authz-decision-id": "d-1",
        "x-spiffe-id": FRONTEND,
        "x-ext-authz-identity-kind": "x509_svid",
    }
    # Identity headers we do not set are removed even when Envoy did not show us a client copy.
    assert sorted(resp.ok_response.headers_to_remove) == [
        "x-ext-authz-exception-id",
        "x-ext-authz-grant-ids",
        "x-ext-authz-issuer",
        "x-ext-authz-reason",
        "x-ext-authz-subject",
    ]


def test_allowed_token_bearer_sets_subject_and_issuer() -> None:
    resp = render(allowed(Principal.of(ALICE)))

    assert set_headers(resp) == {
        "x-ext-authz-decision-id": "d-1",
        "x-ext-authz-subject": "alice",
        "x-ext-authz-issuer": "https://idp.example.com",
        "x-ext-authz-identity-kind": "oidc",
    }


def test_allowed_workload_and_token_sets_both() -> None:
    headers = set_headers(render(allowed(Principal.of(WORKLOAD, ALICE))))

    assert headers["x-spiffe-id"] == FRONTEND
    assert headers["x-ext-authz-subject"] == "alice"
    assert headers["x-ext-authz-identity-kind"] == "x509_svid,oidc"


def test_allowed_jwt_svid_names_its_spiffe_id() -> None:
    headers = set_headers(render(allowed(Principal.of(JWT_SVID))))

    assert headers["x-spiffe-id"] == FRONTEND
    assert headers["x-ext-authz-subject"] == FRONTEND
    assert "x-ext-authz-issuer" not in headers  # a JWT-SVID without iss


def test_allowed_anonymous_sets_only_the_decision_id() -> None:
    resp = render(allowed(Principal()), {"x-spiffe-id": FRONTEND})

    assert set_headers(resp) == {"x-ext-authz-decision-id": "d-1"}
    assert "x-spiffe-id" in resp.ok_response.headers_to_remove


def test_forged_identity_headers_we_do_not_set_are_removed() -> None:
    client = {
        ":path": "/api/x",
        "x-spiffe-id": "spiffe://example.org/ns/admin/sa/root",
        "x-ext-authz-subject": "admin",
        "x-ext-authz-issuer": "https://evil.example",
        "x-ext-authz-reason": "allowed",
        "x-ext-authz-exception-id": "exc_forged",
        "x-unrelated": "kept",
    }

    resp = render(allowed(Principal.of(WORKLOAD)), client)

    removed = list(resp.ok_response.headers_to_remove)
    assert sorted(removed) == [
        "x-ext-authz-exception-id",
        "x-ext-authz-grant-ids",
        "x-ext-authz-issuer",
        "x-ext-authz-reason",
        "x-ext-authz-subject",
    ]
    assert set(removed).isdisjoint(set_headers(resp))  # a header we set is overwritten, never removed
    assert set_headers(resp)["x-spiffe-id"] == FRONTEND


@pytest.mark.parametrize("seen", [True, False], ids=["client-copies-seen", "client-copies-hidden"])
def test_every_identity_header_is_either_set_or_removed(seen: bool) -> None:
    client = dict.fromkeys(IDENTITY_HEADERS, "forged") if seen else None

    for principal in (Principal(), Principal.of(WORKLOAD), Principal.of(ALICE)):
        resp = render(allowed(principal), client)
        handled = set(set_headers(resp)) | set(resp.ok_response.headers_to_remove)
        assert handled >= set(IDENTITY_HEADERS), principal
        assert set(resp.ok_response.headers_to_remove).isdisjoint(set_headers(resp))
        assert all(v != "forged" for v in set_headers(resp).values())


# --- denied ------------------------------------------------------------------------------------------


def test_token_failure_is_401_with_an_invalid_token_challenge() -> None:
    resp = render(denied(401, "token_expired", credential_failed="token"))

    assert resp.status.code == GRPC_UNAUTHENTICATED
    assert resp.HasField("denied_response")
    assert not resp.HasField("ok_response")
    assert resp.denied_response.status.code == 401
    headers = denied_headers(resp)
    assert headers["www-authenticate"] == 'Bearer error="invalid_token", error_description="token_expired"'
    assert headers["x-ext-authz-reason"] == "token_expired"
    assert headers["x-ext-authz-decision-id"] == "d-2"
    assert headers["content-type"] == "application/json"


def test_no_credential_is_401_with_a_bearer_challenge_without_error() -> None:
    resp = render(denied(401, "no_credential"))

    assert resp.status.code == GRPC_UNAUTHENTICATED
    assert resp.denied_response.status.code == 401
    challenge = denied_headers(resp)["www-authenticate"]
    assert challenge.startswith("Bearer")
    assert "error" not in challenge
    assert denied_headers(resp)["x-ext-authz-reason"] == "no_credential"


def test_certificate_failure_is_401_without_an_invalid_token_error() -> None:
    resp = render(denied(401, "cert_expired", credential_failed="x509"))

    assert resp.status.code == GRPC_UNAUTHENTICATED
    assert resp.denied_response.status.code == 401
    assert "invalid_token" not in denied_headers(resp).get("www-authenticate", "")


@pytest.mark.parametrize("reason", ["no_rule", "policy_denied", "policy_error", "request_invalid"])
def test_forbidden_is_403_without_a_challenge(reason: str) -> None:
    resp = render(denied(403, reason, principal=Principal.of(WORKLOAD)))

    assert resp.status.code == GRPC_PERMISSION_DENIED
    assert resp.denied_response.status.code == 403
    headers = denied_headers(resp)
    assert "www-authenticate" not in headers
    assert headers["x-ext-authz-reason"] == reason
    assert "x-spiffe-id" not in headers  # identity headers go upstream only


@pytest.mark.parametrize("status", [401, 403, 429, 503])
def test_denied_response_carries_the_http_status(status: int) -> None:
    resp = render(denied(status, "some_reason"))

    assert resp.denied_response.status.code == status
    assert resp.status.code == (GRPC_UNAUTHENTICATED if status == 401 else GRPC_PERMISSION_DENIED)
    assert resp.status.code != GRPC_OK  # a denial never allows


@pytest.mark.parametrize(
    "decision",
    [
        denied(401, "token_signature", credential_failed="token"),
        denied(403, "policy_denied", rule="no-admin"),
    ],
    ids=["401", "403"],
)
def test_body_is_json_with_reason_and_decision_id_and_no_detail(decision: Decision) -> None:
    resp = render(decision)

    body = json.loads(resp.denied_response.body)
    assert body["reason"] == decision.reason
    assert body["decision_id"] == "d-2"
    assert set(body) == {"error", "reason", "decision_id"}
    wire = resp.SerializeToString()
    assert SECRET_DETAIL.encode() not in wire
    assert b"internal detail" not in wire


# --- dynamic metadata ------------------------------------------------------------------------------


def test_metadata_on_allow() -> None:
    md = metadata(render(allowed(Principal.of(WORKLOAD, ALICE))))

    assert md["decision_id"] == "d-1"
    assert md["reason"] == "allowed"
    assert md["rule"] == "r"
    assert md["identity_kind"] == "x509_svid,oidc"
    assert md["spiffe_id"] == FRONTEND
    assert md["allowed"] is True
    assert "shadow_allowed" not in md


def test_metadata_on_denial() -> None:
    md = metadata(render(denied(403, "policy_denied", rule="no-admin", principal=Principal.of(ALICE))))

    assert md["decision_id"] == "d-2"
    assert md["reason"] == "policy_denied"
    assert md["rule"] == "no-admin"
    assert md["identity_kind"] == "oidc"
    assert md["allowed"] is False
    assert md["status"] == 403


def test_metadata_on_unauthenticated_denial() -> None:
    md = metadata(render(denied(401, "no_credential")))

    assert (md["decision_id"], md["reason"], md["rule"], md["identity_kind"]) == (
        "d-2",
        "no_credential",
        "",
        "",
    )


def test_metadata_reports_shadow_results() -> None:
    decision = denied(
        403,
        "no_rule",
        shadow=(ShadowResult("billing-shadow", "allow", True), ShadowResult("other", "deny", False)),
        shadow_allowed=True,
    )

    md = metadata(render(decision))

    assert md["shadow_allowed"] is True
    assert md["shadow_matched"] == ["billing-shadow"]


def test_response_round_trips_on_the_wire() -> None:
    resp = render(allowed(Principal.of(WORKLOAD)), {"x-ext-authz-subject": "forged"})

    again = CheckResponse.FromString(resp.SerializeToString())

    assert again == resp
    assert "x-ext-authz-subject" in again.ok_response.headers_to_remove


# --- templates: built once per shape, each response carries its own decision id --------------------


@pytest.mark.parametrize(
    "decision",
    [
        allowed(Principal.of(WORKLOAD, ALICE), grant_ids=("g1",), exception_id="x1"),
        denied(401, "token_expired", credential_failed="token"),
        denied(403, "revoked", revocation_id="rev_1", revocation_kind="jti", principal=Principal.of(ALICE)),
    ],
    ids=["allow", "401", "403"],
)
def test_responses_of_one_shape_differ_only_in_their_decision_id(decision: Decision) -> None:
    first = render(decision)
    first_wire = first.SerializeToString()
    other = dataclasses.replace(decision, decision_id="d-9")  # same length: same framing

    second = render(other)

    assert first.SerializeToString() == first_wire  # the template was copied, not handed out
    assert first_wire.count(decision.decision_id.encode()) == (2 if decision.allowed else 3)
    assert second.SerializeToString() == first_wire.replace(decision.decision_id.encode(), b"d-9")


def test_a_different_shape_gets_its_own_response() -> None:
    a = render(allowed(Principal.of(WORKLOAD), grant_ids=("g1",)))
    b = render(allowed(Principal.of(WORKLOAD), grant_ids=("g2",)))
    c = render(allowed(Principal.of(ALICE)))

    assert metadata(a)["grant_ids"] == ["g1"]
    assert metadata(b)["grant_ids"] == ["g2"]
    assert set_headers(c)[IDENTITY_HEADERS[1]] == "alice"


def test_the_upstream_is_told_which_exception_and_grants_let_a_request_through() -> None:
    d = dataclasses.replace(
        allowed(Principal.of(WORKLOAD)), exception_id="exc_1", grant_ids=("grt_1", "grt_2")
    )
    headers = set_headers(render(d))
    assert headers["x-ext-authz-exception-id"] == "exc_1"
    assert headers["x-ext-authz-grant-ids"] == "grt_1,grt_2"
    removed = render(d).ok_response.headers_to_remove
    assert "x-ext-authz-exception-id" not in removed and "x-ext-authz-grant-ids" not in removed


# --- render_wire: the Check server's serialized response -----------------------------------------

WIRE_DECISIONS = [
    allowed(Principal.of(WORKLOAD, ALICE), grant_ids=("g1",), exception_id="x1"),
    allowed(Principal()),
    denied(401, "token_expired", credential_failed="token"),
    denied(403, "revoked", revocation_id="rev_1", revocation_kind="jti", principal=Principal.of(ALICE)),
]


@pytest.mark.parametrize("decision", WIRE_DECISIONS, ids=["allow", "anonymous", "401", "403"])
@pytest.mark.parametrize("decision_id", ["0123456789abcdef0123456789abcdef", "fedcba9876543210" * 2, "d-1"])
def test_render_wire_is_the_serialized_response(decision: Decision, decision_id: str) -> None:
    d = dataclasses.replace(decision, decision_id=decision_id)

    wire = render_wire(d)

    assert CheckResponse.FromString(wire) == render(d)
    assert wire.count(decision_id.encode()) == (2 if d.allowed else 3)


@pytest.mark.parametrize("subject", ["@" * 32, "x" + "@" * 40, "@" * 31])
def test_render_wire_writes_the_id_only_where_it_belongs(subject: str) -> None:
    """A token's subject is the identity provider's, not ours: one that contains the placeholder must
    come out as it was, with the decision id only in the header and the metadata."""
    user = Identity(kind="oidc", subject=subject, issuer="https://idp.example.com")
    did = "0123456789abcdef0123456789abcdef"
    d = dataclasses.replace(allowed(Principal.of(user)), decision_id=did)

    resp = CheckResponse.FromString(render_wire(d))

    assert resp == render(d)
    assert set_headers(resp)[IDENTITY_HEADERS[1]] == subject
    assert set_headers(resp)["x-ext-authz-decision-id"] == did
    assert metadata(resp)["decision_id"] == did


def test_render_wire_never_answers_with_another_principals_or_shadows_response() -> None:
    """Responses are found again by the identity of the decision's principal and shadow results: a
    principal built anew (a new caller, or one whose id an old one had) gets its own response."""
    did = "0123456789abcdef0123456789abcdef"
    seen = []
    for i in range(50):  # principals made and dropped: ids get reused
        user = Identity(kind="oidc", subject=f"user-{i}", issuer="https://idp.example.com")
        shadow = (ShadowResult("s", "allow", i % 2 == 0),)
        d = dataclasses.replace(
            allowed(Principal.of(user)), decision_id=did, shadow=shadow, shadow_allowed=True
        )
        resp = CheckResponse.FromString(render_wire(d))
        assert resp == render(d)
        seen.append((set_headers(resp)[IDENTITY_HEADERS[1]], metadata(resp)["shadow_matched"]))
    assert seen == [(f"user-{i}", ["s"] if i % 2 == 0 else []) for i in range(50)]
