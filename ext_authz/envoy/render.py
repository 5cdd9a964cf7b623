"""Decision → CheckResponse. The only place that builds an Envoy response protobuf."""

from __future__ import annotations

import json
from collections.abc import Mapping

from envoy.config.core.v3.base_pb2 import HeaderValue, HeaderValueOption
from envoy.service.auth.v3.external_auth_pb2 import CheckResponse, DeniedHttpResponse, OkHttpResponse
from envoy.type.v3.http_status_pb2 import HttpStatus
from google.protobuf.struct_pb2 import Struct
from google.protobuf.wrappers_pb2 import BoolValue
from google.rpc.status_pb2 import Status

from ..model import Decision

__all__ = ["IDENTITY_HEADERS", "identity_headers", "render"]

H_SPIFFE_ID = "x-spiffe-id"
H_SUBJECT = "x-ext-authz-subject"
H_ISSUER = "x-ext-authz-issuer"
H_KIND = "x-ext-authz-identity-kind"
H_DECISION = "x-ext-authz-decision-id"
H_REASON = "x-ext-authz-reason"

# Headers only ext-authz may set upstream: a client's copy is always overwritten or removed.
IDENTITY_HEADERS = (H_SPIFFE_ID, H_SUBJECT, H_ISSUER, H_KIND, H_DECISION, H_REASON)

_GRPC_OK = 0
_GRPC_PERMISSION_DENIED = 7
_GRPC_UNAUTHENTICATED = 16
_NO_OVERWRITE = BoolValue(value=False)


def identity_headers(decision: Decision) -> dict[str, str]:
    p = decision.principal
    out = {H_DECISION: decision.decision_id}
    if p.spiffe_id:
        out[H_SPIFFE_ID] = p.spiffe_id
    if p.token is not None:
        out[H_SUBJECT] = p.token.subject
        if p.token.issuer:
            out[H_ISSUER] = p.token.issuer
    if p.kinds:
        out[H_KIND] = ",".join(p.kinds)
    return out


def _metadata(decision: Decision) -> Struct:
    md = Struct()
    p = decision.principal
    md.update(
        {
            "decision_id": decision.decision_id,
            "allowed": decision.allowed,
            "status": decision.status,
            "reason": decision.reason,
            "rule": decision.rule,
            "identity_kind": ",".join(p.kinds),
            "spiffe_id": p.spiffe_id,
        }
    )
    if decision.revocation_id:
        md.update({"revocation_id": decision.revocation_id, "revocation_kind": decision.revocation_kind})
    if decision.exception_id:
        md["exception_id"] = decision.exception_id
    if decision.grant_ids:
        md["grant_ids"] = list(decision.grant_ids)
    if decision.shadow:
        md.update(
            {
                "shadow_allowed": bool(decision.shadow_allowed),
                "shadow_matched": [s.rule for s in decision.shadow if s.matched],
            }
        )
    return md


def _option(key: str, value: str) -> HeaderValueOption:
    return HeaderValueOption(header=HeaderValue(key=key, value=value), append=_NO_OVERWRITE)


def render(decision: Decision, request_headers: Mapping[str, str] | None = None) -> CheckResponse:
    """Build the CheckResponse. ``request_headers`` are the caller's, to strip forged copies."""
    if decision.allowed:
        set_headers = identity_headers(decision)
        # Removed whether or not Envoy showed them to us (allowed_headers may hide a forged copy).
        forged = [h for h in IDENTITY_HEADERS if h not in set_headers]
        return CheckResponse(
            status=Status(code=_GRPC_OK),
            ok_response=OkHttpResponse(
                headers=[_option(k, v) for k, v in set_headers.items()],
                headers_to_remove=forged,
            ),
            dynamic_metadata=_metadata(decision),
        )
    headers = [
        _option(H_REASON, decision.reason),
        _option(H_DECISION, decision.decision_id),
        _option("content-type", "application/json"),
    ]
    if decision.status == 401:
        if decision.credential_failed == "token":
            challenge = f'Bearer error="invalid_token", error_description="{decision.reason}"'
        else:
            challenge = 'Bearer realm="ext-authz"'
        headers.append(_option("www-authenticate", challenge))
    body = json.dumps(
        {
            "error": "unauthenticated" if decision.status == 401 else "forbidden",
            "reason": decision.reason,
            "decision_id": decision.decision_id,
        },
        separators=(",", ":"),
    )
    return CheckResponse(
        status=Status(
            code=_GRPC_UNAUTHENTICATED if decision.status == 401 else _GRPC_PERMISSION_DENIED,
            message=decision.reason,
        ),
        denied_response=DeniedHttpResponse(
            status=HttpStatus(code=decision.status), headers=headers, body=body + "\n"
        ),
        dynamic_metadata=_metadata(decision),
    )
