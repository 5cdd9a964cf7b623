"""Decision → CheckResponse. The only place that builds an Envoy response protobuf.

Everything in a response except the decision id is a function of the decision's *shape* (outcome,
reason, rule, identity, revocation, grants, shadow results). A response is built once per shape, kept
as a template, and each Check copies it and writes its own decision id in: one C-level copy instead of
building a dozen messages and a Struct in Python on every request. :func:`render_wire` goes one step
further for the Check server: it keeps the template serialized and writes the id over a placeholder of
the same length, so a Check neither copies nor serializes a message.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import NamedTuple, cast

from google.protobuf.struct_pb2 import Struct
from google.protobuf.wrappers_pb2 import BoolValue
from google.rpc.status_pb2 import Status

from ext_authz._proto.envoy.base_pb2 import HeaderValue, HeaderValueOption
from ext_authz._proto.envoy.external_auth_pb2 import CheckResponse, DeniedHttpResponse, OkHttpResponse
from ext_authz._proto.envoy.http_status_pb2 import HttpStatus, StatusCode

from ..identity.dpop import DPOP_ALGORITHMS
from ..model import Decision, Response

__all__ = ["IDENTITY_HEADERS", "render", "render_wire"]

H_SPIFFE_ID = "x-spiffe-id"
H_SUBJECT = "x-ext-authz-subject"
H_ISSUER = "x-ext-authz-issuer"
H_KIND = "x-ext-authz-identity-kind"
H_DECISION = "x-ext-authz-decision-id"
H_REASON = "x-ext-authz-reason"
H_EXCEPTION = "x-ext-authz-exception-id"
H_GRANTS = "x-ext-authz-grant-ids"

# Headers only ext-authz may set upstream: a client's copy is always overwritten or removed.
IDENTITY_HEADERS = (H_SPIFFE_ID, H_SUBJECT, H_ISSUER, H_KIND, H_DECISION, H_REASON, H_EXCEPTION, H_GRANTS)

_GRPC_OK = 0
_GRPC_PERMISSION_DENIED = 7
_GRPC_UNAUTHENTICATED = 16
_NO_OVERWRITE = BoolValue(value=False)
_ID = "@decision_id@"  # stands for the decision id in a template's body
_MAX_TEMPLATES = 4096
# Stands for a decision id (32 hex digits) in a serialized template: the same length, so writing the id
# over it leaves every length prefix right. "@" is in no SPIFFE ID, reason or decision id.
_WIRE_ID = b"@" * 32


class _Shape(NamedTuple):
    """All a response depends on but the decision id. Templates are built from this alone."""

    allowed: bool
    status: int
    reason: str
    rule: str
    credential_failed: str
    kinds: tuple[str, ...]
    spiffe_id: str
    subject: str | None  # the token's subject; None without a token
    issuer: str
    revocation_id: str
    revocation_kind: str
    exception_id: str
    grant_ids: tuple[str, ...]
    shadow_allowed: bool | None
    shadow_matched: tuple[str, ...] | None  # None when no shadow rule ran
    challenge: str  # step_up_required: the RFC 9470 WWW-Authenticate value
    response: Response | None  # the deciding rule's
    strip_headers: tuple[str, ...]  # every header a rule may set upstream
    hide_reason: bool


def _shape(d: Decision) -> _Shape:
    p = d.principal
    tok = p.token
    return _Shape(
        d.allowed,
        d.status,
        d.reason,
        d.rule,
        d.credential_failed,
        p.kinds,
        p.spiffe_id,
        tok.subject if tok is not None else None,
        tok.issuer if tok is not None else "",
        d.revocation_id,
        d.revocation_kind,
        d.exception_id,
        d.grant_ids,
        d.shadow_allowed,
        tuple(s.rule for s in d.shadow if s.matched) if d.shadow else None,
        d.challenge,
        d.response,
        d.strip_headers,
        d.hide_reason,
    )


def _identity_headers(s: _Shape, decision_id: str) -> dict[str, str]:
    out = {H_DECISION: decision_id}
    if s.spiffe_id:
        out[H_SPIFFE_ID] = s.spiffe_id
    if s.subject is not None:
        out[H_SUBJECT] = s.subject
        if s.issuer:
            out[H_ISSUER] = s.issuer
    if s.kinds:
        out[H_KIND] = ",".join(s.kinds)
    if s.exception_id:  # the upstream is told when break-glass let a request through
        out[H_EXCEPTION] = s.exception_id
    if s.grant_ids:
        out[H_GRANTS] = ",".join(s.grant_ids)
    return out


def _metadata(s: _Shape, decision_id: str) -> Struct:
    md = Struct()
    md.update(
        {
            "decision_id": decision_id,
            "allowed": s.allowed,
            "status": s.status,
            "reason": s.reason,
            "rule": s.rule,
            "identity_kind": ",".join(s.kinds),
            "spiffe_id": s.spiffe_id,
        }
    )
    if s.revocation_id:
        md.update({"revocation_id": s.revocation_id, "revocation_kind": s.revocation_kind})
    if s.exception_id:
        md["exception_id"] = s.exception_id
    if s.grant_ids:
        md["grant_ids"] = list(s.grant_ids)
    if s.shadow_matched is not None:
        md.update({"shadow_allowed": bool(s.shadow_allowed), "shadow_matched": list(s.shadow_matched)})
    if s.response is not None and s.response.metadata:
        md.update(json.loads(s.response.metadata))  # its keys are never ours (checked at load)
    return md


def _option(key: str, value: str) -> HeaderValueOption:
    return HeaderValueOption(header=HeaderValue(key=key, value=value), append=_NO_OVERWRITE)


def _build(s: _Shape, decision_id: str) -> CheckResponse:
    r = s.response
    if s.allowed:
        set_headers = _identity_headers(s, decision_id)  # the decision id first
        upstream = dict(r.upstream) if r is not None else {}
        # Removed whether or not Envoy showed them to us (allowed_headers may hide a forged copy): our
        # identity headers, and any header a rule may set upstream that this response does not set.
        forged = [h for h in IDENTITY_HEADERS if h not in set_headers]
        forged += [h for h in s.strip_headers if h not in upstream]
        if r is not None:
            forged += [h for h in r.remove if h not in upstream and h not in forged]
        return CheckResponse(
            status=Status(code=_GRPC_OK),
            ok_response=OkHttpResponse(
                headers=[_option(k, v) for k, v in (*set_headers.items(), *upstream.items())],
                headers_to_remove=forged,
                response_headers_to_add=[_option(k, v) for k, v in r.client] if r is not None else [],
            ),
            dynamic_metadata=_metadata(s, decision_id),
        )
    mine = dict(r.headers) if r is not None else {}
    headers = [_option(H_DECISION, decision_id)]  # the decision id first, on every denial
    if not s.hide_reason:
        headers.append(_option(H_REASON, s.reason))
    if "content-type" not in mine:
        headers.append(_option("content-type", "application/json"))
    if s.status == 401 and "www-authenticate" not in mine:
        if s.challenge:
            challenge = s.challenge
        elif s.reason == "dpop_proof":  # RFC 9449 §7.1: the scheme is DPoP, with the algorithms we take
            challenge = f'DPoP error="invalid_dpop_proof", algs="{" ".join(DPOP_ALGORITHMS)}"'
        elif s.credential_failed == "token":
            challenge = (
                'Bearer error="invalid_token"'
                if s.hide_reason
                else f'Bearer error="invalid_token", error_description="{s.reason}"'
            )
        else:
            challenge = 'Bearer realm="ext-authz"'
        headers.append(_option("www-authenticate", challenge))
    headers.extend(_option(k, v) for k, v in mine.items())
    if r is not None and r.body is not None:
        body = r.body
    else:
        default: dict[str, str] = {
            "error": {401: "unauthenticated", 403: "forbidden"}.get(s.status, "rejected")
        }
        if not s.hide_reason:
            default["reason"] = s.reason
        default["decision_id"] = decision_id
        body = json.dumps(default, separators=(",", ":")) + "\n"
    status = r.status if r is not None and r.status else s.status
    return CheckResponse(
        status=Status(
            code=_GRPC_UNAUTHENTICATED if s.status == 401 else _GRPC_PERMISSION_DENIED,
            message="denied" if s.hide_reason else s.reason,
        ),
        denied_response=DeniedHttpResponse(
            status=HttpStatus(code=cast(StatusCode, status)), headers=headers, body=body
        ),
        dynamic_metadata=_metadata(s, decision_id),
    )


_templates: dict[_Shape, CheckResponse] = {}
_wire_templates: dict[_Shape, tuple[bytes, int] | None] = {}


def _template(shape: _Shape) -> CheckResponse:
    template = _templates.get(shape)
    if template is None:
        if len(_templates) >= _MAX_TEMPLATES:  # bounded: shapes are few, but grant ids and rules vary
            _templates.clear()
        template = _templates[shape] = _build(shape, _ID)
    return template


def render(decision: Decision, request_headers: Mapping[str, str] | None = None) -> CheckResponse:
    """Build the CheckResponse. Forged identity headers are removed whether or not
    ``request_headers`` (the caller's, kept for callers and tests) show them."""
    shape = _shape(decision)
    resp = CheckResponse()
    if decision.response is not None and not decision.response.cacheable:
        resp.CopyFrom(_build(shape, _ID))  # read from the request: no template kept of it
    else:
        resp.CopyFrom(_template(shape))
    did = decision.decision_id
    resp.dynamic_metadata.fields["decision_id"].string_value = did
    if decision.allowed:
        resp.ok_response.headers[0].header.value = did  # H_DECISION comes first
    else:
        denied = resp.denied_response
        denied.headers[0].header.value = did  # H_DECISION comes first
        if decision.response is None or decision.response.body is None:
            denied.body = denied.body.replace(_ID, did)
    return resp


# The serialized templates again, found without building a _Shape: by the decision's scalar fields and
# the identities of its principal and shadow results (the pipeline's caches hand the same objects to
# every Check of a caller; the entry holds them, so their ids cannot be reused while it lives).
_wire_by_id: dict[tuple[object, ...], tuple[object, object, object, object, tuple[bytes, int] | None]] = {}


def render_wire(decision: Decision) -> bytes:
    """The serialized CheckResponse: what :func:`render` builds, as bytes. A decision id of 32 hex
    digits (every Check's) is written over the serialized template's placeholders; any other id, or a
    template in which the placeholder also appears elsewhere (say, in a token's subject), is rendered
    and serialized in full."""
    d = decision
    principal, shadow, response = d.principal, d.shadow, d.response
    if response is not None and not response.cacheable:
        return bytes(render(d).SerializeToString())
    key = (
        id(principal),
        id(shadow),
        id(response),
        id(d.strip_headers),
        d.hide_reason,
        d.allowed,
        d.status,
        d.reason,
        d.rule,
        d.credential_failed,
        d.revocation_id,
        d.revocation_kind,
        d.exception_id,
        d.grant_ids,
        d.shadow_allowed,
        d.challenge,
    )
    hit = _wire_by_id.get(key)
    if (
        hit is not None
        and hit[0] is principal
        and hit[1] is shadow
        and hit[2] is response
        and hit[3] is d.strip_headers
    ):
        entry = hit[4]
    else:
        entry = _wire_template(_shape(d))
        if len(_wire_by_id) >= _MAX_TEMPLATES:
            _wire_by_id.clear()
        _wire_by_id[key] = (principal, shadow, response, d.strip_headers, entry)
    did = d.decision_id
    if entry is None or len(did) != 32 or not did.isascii() or not did.isalnum():
        return bytes(render(d).SerializeToString())
    wire, expected = entry
    return wire.replace(_WIRE_ID, did.encode(), expected)


def _wire_template(shape: _Shape) -> tuple[bytes, int] | None:
    """The serialized template of ``shape`` and how many placeholders it holds; None when the
    placeholder also appears where no decision id goes."""
    if shape in _wire_templates:
        return _wire_templates[shape]
    wire = _build(shape, _WIRE_ID.decode()).SerializeToString()
    # The id is in the decision-id header and the metadata, and a denial's default body: nowhere else.
    own_body = shape.response is not None and shape.response.body is not None
    expected = 2 if shape.allowed or own_body else 3
    entry = (wire, expected) if wire.count(_WIRE_ID) == expected else None
    if len(_wire_templates) >= _MAX_TEMPLATES:
        _wire_templates.clear()
    _wire_templates[shape] = entry
    return entry
