"""Frozen values that flow through the pipeline: request in, identity, decision out."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

__all__ = [
    "EMPTY_MAP",
    "Credentials",
    "Decision",
    "HttpRequest",
    "Identity",
    "IdentityKind",
    "Principal",
    "RequestContext",
    "ShadowResult",
    "path_without_query",
]

IdentityKind = Literal["x509_svid", "jwt_svid", "oidc"]

EMPTY_MAP: Mapping[str, Any] = MappingProxyType({})


def path_without_query(path: str) -> str:
    """``/a/b?x=1#f`` → ``/a/b``: what path patterns are matched against."""
    cut = len(path)
    for sep in ("?", "#"):
        i = path.find(sep)
        if 0 <= i < cut:
            cut = i
    return path[:cut]


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str  # as Envoy sent it: includes the query string, undecoded
    host: str
    scheme: str
    protocol: str
    headers: Mapping[str, str]  # lower-case keys

    @property
    def path_only(self) -> str:
        """The path without query string or fragment."""
        return path_without_query(self.path)


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the caller presented, unverified."""

    peer_certificate: str | None = None  # the leaf as Envoy sent it: URL-encoded PEM (decoded on demand)
    xfcc: str = ""  # the x-forwarded-client-cert header; its Chain holds untrusted intermediates
    principal: str | None = None  # Envoy's source.principal (URI SAN of a verified peer)
    bearer: str | None = None  # the raw token after "Bearer "
    bearer_malformed: bool = False  # an Authorization: Bearer header that is not a token


@dataclass(frozen=True, slots=True)
class RequestContext:
    http: HttpRequest | None  # None for a network (L4) check
    source_address: str
    destination_address: str
    source_principal: str
    context_extensions: Mapping[str, str]
    credentials: Credentials
    request_id: str = ""
    header_count: int = 0  # as Envoy sent them, before joining repeated names
    header_bytes: int = 0  # names + values
    body_bytes: int = 0  # a body is present only if Envoy was told to send it


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified identity. Nothing here is set unless a verifier proved it."""

    kind: IdentityKind
    spiffe_id: str = ""
    trust_domain: str = ""
    path: str = ""
    subject: str = ""
    issuer: str = ""
    audiences: tuple[str, ...] = ()
    issued_at: int | None = None
    expires_at: int | None = None  # epoch seconds; the credential is useless after it
    claims: Mapping[str, Any] = field(default_factory=lambda: EMPTY_MAP)
    cert_sha256: str = ""
    cert_serial: str = ""

    def as_cel(self) -> dict[str, Any]:
        return {
            "authenticated": True,
            "kind": self.kind,
            "spiffe_id": self.spiffe_id,
            "trust_domain": self.trust_domain,
            "path": self.path,
            "subject": self.subject,
            "issuer": self.issuer,
            "claims": dict(self.claims),
            "audiences": list(self.audiences),
            "issued_at": self.issued_at if self.issued_at is not None else 0,
            "expires_at": self.expires_at if self.expires_at is not None else 0,
        }


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the peer workload (X.509-SVID) and/or the bearer of a token."""

    workload: Identity | None = None
    token: Identity | None = None

    @property
    def authenticated(self) -> bool:
        return self.workload is not None or self.token is not None

    @property
    def primary(self) -> Identity | None:
        return self.workload or self.token

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(i.kind for i in (self.workload, self.token) if i is not None)

    @property
    def spiffe_id(self) -> str:
        """The peer's SPIFFE ID, or a JWT-SVID's subject when there is no peer SVID."""
        if self.workload is not None:
            return self.workload.spiffe_id
        if self.token is not None:
            return self.token.spiffe_id
        return ""


@dataclass(frozen=True, slots=True)
class ShadowResult:
    rule: str
    effect: str
    matched: bool
    error: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    decision_id: str
    allowed: bool
    status: int  # HTTP status Envoy returns on denial; 200 when allowed
    reason: str
    rule: str = ""
    principal: Principal = field(default_factory=Principal)
    shadow: tuple[ShadowResult, ...] = ()
    shadow_allowed: bool | None = None  # what the decision would be if shadow rules were enforced
    credential_failed: str = ""  # "x509" | "token" when a presented credential was refused
    detail: str = ""  # log-only explanation, never sent to a client
    revocation_id: str = ""  # the revocation that refused this request
    revocation_kind: str = ""
    exception_id: str = ""  # the break-glass exception that changed this decision to allow
    grant_ids: tuple[str, ...] = ()  # active grants covering this request (visible to policy)
    new_session: tuple[str, float] | None = None  # (sid, first use) to record: a session seen first here
