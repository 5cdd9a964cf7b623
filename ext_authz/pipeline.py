"""The pure decision pipeline: RequestContext + Engine + now → Decision.

No sockets, no threads, no wall clock: time, trust material and policy are passed in. The only
mutable thing touched is the verified-credential cache, which never changes an outcome.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .config import Config
from .errors import CredentialError
from .identity.cache import LruCache
from .identity.jwt import TokenSettings, verify_token
from .identity.spiffe_id import SpiffeId, SpiffeIdError
from .identity.x509_svid import verify_x509_svid
from .identity.xfcc import chain_from_xfcc, decode_certificate
from .model import EMPTY_MAP, Decision, Identity, Principal, RequestContext
from .policy import Policy
from .trust.bundles import TrustSnapshot

__all__ = ["Caches", "Engine", "decide", "verify_principal"]


@dataclass(frozen=True, slots=True)
class Engine:
    """One loaded generation of config, trust material and compiled policy. Swapped whole."""

    config: Config
    trust: TrustSnapshot
    policy: Policy
    tokens: TokenSettings
    revision: str


@dataclass(slots=True)
class Caches:
    x509: LruCache[str] = field(default_factory=lambda: LruCache(10_000))
    tokens: LruCache[str] = field(default_factory=lambda: LruCache(10_000))

    @classmethod
    def sized(cls, size: int) -> Caches:
        return cls(LruCache(size), LruCache(size))


def _workload(
    ctx: RequestContext, engine: Engine, caches: Caches, now: datetime, ts: float
) -> Identity | None:
    creds = ctx.credentials
    if engine.config.mtls_source == "principal":
        if not creds.principal:
            return None
        try:
            sid = SpiffeId.parse(creds.principal)
        except SpiffeIdError as exc:
            raise CredentialError(
                "cert_not_svid", f"source.principal is not a SPIFFE ID ({exc})", credential="x509"
            ) from exc
        if sid.trust_domain.name not in engine.trust.domains:
            raise CredentialError(
                "unknown_trust_domain",
                f"trust domain {sid.trust_domain.name!r} is not configured",
                credential="x509",
            )
        return Identity(
            kind="x509_svid",
            spiffe_id=str(sid),
            trust_domain=sid.trust_domain.name,
            path=sid.path,
            subject=str(sid),
        )
    if creds.peer_certificate is None:
        return None
    # Keyed on the leaf as Envoy sent it: once a leaf is proven to chain to a root of its trust
    # domain (under this trust revision), the intermediates that proved it are not needed again.
    # The entry expires with the first certificate of that path to expire.
    key = creds.peer_certificate
    ident = caches.x509.get(key, engine.trust.revision, ts)
    if ident is None:
        leaf = decode_certificate(creds.peer_certificate)
        ident = verify_x509_svid(leaf, chain_from_xfcc(creds.xfcc), engine.trust, now)
        caches.x509.put(key, engine.trust.revision, ident)
    if creds.principal and creds.principal != ident.spiffe_id:
        raise CredentialError(
            "principal_mismatch",
            "source.principal differs from the certificate's SPIFFE ID",
            credential="x509",
        )
    return ident


def _token(ctx: RequestContext, engine: Engine, caches: Caches, ts: float) -> Identity | None:
    creds = ctx.credentials
    if creds.bearer_malformed:
        raise CredentialError(
            "token_malformed", "Authorization: Bearer without a well-formed token", credential="token"
        )
    if creds.bearer is None:
        return None
    # A token's verdict depends on the trust material *and* the config (audiences, algorithms, leeway).
    revision = f"{engine.revision}/{engine.trust.revision}"
    ident = caches.tokens.get(creds.bearer, revision, ts)
    if ident is None:
        ident = verify_token(creds.bearer, engine.trust, engine.tokens, ts)
        caches.tokens.put(creds.bearer, revision, ident)
    return ident


def verify_principal(ctx: RequestContext, engine: Engine, caches: Caches, now: datetime) -> Principal:
    """Verify every credential presented. Raises CredentialError if any one fails."""
    ts = now.timestamp()
    return Principal(workload=_workload(ctx, engine, caches, now, ts), token=_token(ctx, engine, caches, ts))


_ANONYMOUS: Mapping[str, Any] = {
    "authenticated": False,
    "kind": "",
    "kinds": [],
    "spiffe_id": "",
    "trust_domain": "",
    "path": "",
    "subject": "",
    "issuer": "",
    "claims": {},
    "audiences": [],
    "issued_at": 0,
    "expires_at": 0,
    "x509": {},
    "token": {},
}


def identity_for_cel(principal: Principal) -> Mapping[str, Any]:
    primary = principal.primary
    if primary is None:
        return _ANONYMOUS
    out = primary.as_cel()
    if principal.workload is not None and principal.token is not None:
        tok = principal.token
        out.update(
            subject=tok.subject,
            issuer=tok.issuer,
            claims=dict(tok.claims),
            audiences=list(tok.audiences),
            issued_at=tok.issued_at or 0,
            expires_at=tok.expires_at or 0,
        )
    out["kinds"] = list(principal.kinds)
    out["x509"] = principal.workload.as_cel() if principal.workload else {}
    out["token"] = principal.token.as_cel() if principal.token else {}
    return out


def activation(ctx: RequestContext, principal: Principal, now: datetime) -> dict[str, Any]:
    http = ctx.http
    request: dict[str, Any] = {
        "method": http.method if http else "",
        "path": http.path if http else "",
        "host": http.host if http else "",
        "scheme": http.scheme if http else "",
        "protocol": http.protocol if http else "",
        "headers": dict(http.headers) if http else {},
        "context_extensions": dict(ctx.context_extensions),
    }
    return {
        "request": request,
        "source": {"address": ctx.source_address, "principal": ctx.source_principal},
        "identity": identity_for_cel(principal),
        "signals": dict(EMPTY_MAP),
        "grants": [],
        "now": now,
    }


def decide(ctx: RequestContext, engine: Engine, caches: Caches, now: datetime, decision_id: str) -> Decision:
    try:
        principal = verify_principal(ctx, engine, caches, now)
    except CredentialError as exc:
        return Decision(
            decision_id=decision_id,
            allowed=False,
            status=401,
            reason=exc.reason,
            credential_failed=exc.credential,
            detail=exc.detail,
        )
    result = engine.policy.evaluate(ctx, principal.authenticated, lambda: activation(ctx, principal, now))
    return Decision(
        decision_id=decision_id,
        allowed=result.allowed,
        status=200 if result.allowed else (401 if result.reason == "no_credential" else 403),
        reason=result.reason,
        rule=result.rule,
        principal=principal,
        shadow=result.shadow,
        shadow_allowed=result.shadow_allowed,
        detail=result.detail,
    )
