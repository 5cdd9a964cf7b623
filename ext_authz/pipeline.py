"""The pure decision pipeline: RequestContext + Engine + now → Decision.

No sockets, no threads, no wall clock: time, trust material and policy are passed in. The only
mutable thing touched is the verified-credential cache, which never changes an outcome.
"""

from __future__ import annotations

import base64
import dataclasses
import heapq
import hmac
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import CredentialError, status_for
from .identity.cache import LruCache
from .identity.dpop import verify_proof
from .identity.jwt import TokenSettings, verify_token
from .identity.x509_svid import verify_x509_svid
from .identity.xfcc import MultipleCertificates, XfccTooComplex, chain_from_xfcc, decode_certificate
from .match import Target, parse_host
from .model import (
    CountDenial,
    Decision,
    Effect,
    Identity,
    NewSession,
    Principal,
    ProofUsed,
    RequestContext,
    Response,
    UnknownKeyId,
)
from .policy import Policy
from .policy.engine import StepUp
from .settings import IssuerSettings, Limits, ResponseSettings, Settings
from .spiffe_id import SpiffeId, SpiffeIdError
from .state.records import Signal
from .state.snapshot import StateSnapshot
from .trust.bundles import TrustSnapshot
from .trust.revision import Revision

__all__ = ["ANONYMOUS_IDENTITY", "Caches", "Engine", "decide", "proof_replayed", "verify_principal"]

# Decisions an open exception may turn into an allow: policy outcomes (and of those, an explicit deny
# rule's only where it says `exceptable: true`), never credential failures, revocations or quarantine.
_EXCEPTABLE = frozenset(("no_rule", "policy_denied", "policy_error"))


@dataclass(frozen=True, slots=True)
class Engine:
    """One loaded generation of settings, trust material and compiled policy. Swapped whole."""

    config: Settings
    trust: TrustSnapshot
    policy: Policy
    tokens: TokenSettings
    config_revision: str
    revision: Revision = field(init=False, repr=False, compare=False)  # computed once, read per Check

    def __post_init__(self) -> None:
        object.__setattr__(self, "revision", Revision(self.config_revision, self.trust.revision))

    def with_trust(self, trust: TrustSnapshot) -> Engine:
        """The same settings and policy over other trust material (a live source changed it)."""
        return dataclasses.replace(self, trust=trust)


MAX_PROOFS = 100_000  # DPoP proofs remembered against replay, per process
MAX_PROOFS_PER_KEY = 1_000  # … of which at most this many by one key at a time


class ProofMemory:
    """The DPoP proofs seen, each until it could no longer pass for fresh. It fails closed: when full
    (MAX_PROOFS), or full for one key (MAX_PROOFS_PER_KEY: one caller cannot fill it for everyone), a new
    proof is refused rather than a live one forgotten (a forgotten one could be replayed). It outlives
    engine generations: a reload or a key rotation forgets nothing."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, str], float] = {}
        self.per_key: Counter[str] = Counter()
        self._expiry: list[tuple[float, str, str]] = []  # a heap: the earliest expiry first

    def see(self, jkt: str, jti: str, until: float, now: float) -> str:
        """'' for a proof not seen before (now remembered); else why it is refused."""
        expiry, seen = self._expiry, self.seen
        while expiry and expiry[0][0] < now:
            at, k, j = heapq.heappop(expiry)
            if seen.get((k, j)) == at:
                del seen[(k, j)]
                self.per_key[k] -= 1
                if self.per_key[k] <= 0:
                    del self.per_key[k]
        if (jkt, jti) in seen:
            return "the DPoP proof was used before (jti)"
        if self.per_key[jkt] >= MAX_PROOFS_PER_KEY:
            return f"more than {MAX_PROOFS_PER_KEY} fresh DPoP proofs of one key"
        if len(seen) >= MAX_PROOFS:
            return "the DPoP replay memory is full: proofs are refused until some expire"
        seen[(jkt, jti)] = until
        self.per_key[jkt] += 1
        heapq.heappush(expiry, (until, jkt, jti))
        return ""


@dataclass(slots=True)
class Caches:
    x509: LruCache[str] = field(default_factory=lambda: LruCache(10_000))
    tokens: LruCache[str] = field(default_factory=lambda: LruCache(10_000))
    # The Principal of each pair of identities the caches above hold: built (and its derived values
    # worked out) once per pair, not per Check. Keyed by the identities' ids; an entry holds the
    # identities themselves, so an id cannot be reused for another object while its entry lives.
    principals: dict[tuple[int, int], tuple[Identity | None, Identity | None, Principal]] = field(
        default_factory=dict
    )
    # DPoP proofs seen: (key thumbprint, jti) → until when a replay could still pass for fresh.
    proofs: ProofMemory = field(default_factory=lambda: ProofMemory())

    @classmethod
    def sized(cls, size: int) -> Caches:
        return cls(LruCache(size), LruCache(size))

    def replayed(self, jkt: str, jti: str, until: float, now: float) -> str:
        """'' for a DPoP proof not seen before (now remembered); else why it is refused."""
        return self.proofs.see(jkt, jti, until, now)

    def principal(self, workload: Identity | None, token: Identity | None) -> Principal:
        key = (id(workload), id(token))
        hit = self.principals.get(key)
        if hit is not None and hit[0] is workload and hit[1] is token:
            return hit[2]
        principal = Principal.of(workload, token)
        bound = max(self.x509.size, self.tokens.size)  # caching off: identities are never the same
        if bound > 0:
            if len(self.principals) >= bound:
                self.principals.clear()  # bounded: distinct credentials only cost building afresh
            self.principals[key] = (workload, token, principal)
        return principal


def _workload(
    ctx: RequestContext, engine: Engine, caches: Caches, now: datetime, ts: float
) -> Identity | None:
    creds = ctx.credentials
    if engine.config.mtls.source == "principal":
        if not creds.principal:
            return None
        try:
            sid = SpiffeId.parse(creds.principal)
        except SpiffeIdError as exc:
            raise CredentialError(
                "cert_not_svid", f"source.principal is not a SPIFFE ID ({exc})", credential="x509"
            ) from exc
        if not sid.path:
            raise CredentialError(
                "cert_not_svid", "source.principal names a trust domain, not a workload", credential="x509"
            )
        if sid.trust_domain.name not in engine.trust.domains:
            raise CredentialError(
                "unknown_trust_domain",
                f"trust domain {sid.trust_domain.name!r} is not configured",
                credential="x509",
            )
        return Identity.workload("x509_svid", sid)
    if creds.peer_certificate is None:
        return None
    limits = engine.config.limits
    if len(creds.peer_certificate) > limits.max_chain_bytes or len(creds.xfcc) > limits.max_chain_bytes:
        raise CredentialError(
            "cert_chain_too_large",
            f"peer certificate or XFCC header is over limits.max_chain_bytes ({limits.max_chain_bytes})",
            credential="x509",
        )
    # Keyed on the leaf as Envoy sent it: once a leaf is proven to chain to a root of its trust
    # domain (under this trust revision), the intermediates that proved it are not needed again.
    # The entry expires with the first certificate of that path to expire.
    key = creds.peer_certificate
    ident = caches.x509.get(key, engine.trust.key, ts)
    if ident is None:
        try:
            leaf = decode_certificate(creds.peer_certificate)
            chain = chain_from_xfcc(creds.xfcc)
        except MultipleCertificates as exc:
            raise CredentialError("cert_malformed", str(exc), credential="x509") from exc
        except XfccTooComplex as exc:
            raise CredentialError("cert_chain_too_large", f"XFCC header: {exc}", credential="x509") from exc
        if len(chain) > limits.max_chain_length + 1:  # Envoy's Chain starts with the leaf
            raise CredentialError(
                "cert_chain_too_large",
                f"{len(chain)} certificates in the chain; limits.max_chain_length is "
                f"{limits.max_chain_length} intermediates",
                credential="x509",
            )
        ident = verify_x509_svid(leaf, chain, engine.trust, now)
        caches.x509.put(key, engine.trust.key, ident)
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
    max_bytes = engine.config.limits.max_token_bytes
    if len(creds.bearer) > max_bytes:
        raise CredentialError(
            "token_too_large", f"token is over limits.max_token_bytes ({max_bytes})", credential="token"
        )
    # A token's verdict depends on the trust material *and* the config (audiences, algorithms, leeway).
    revision = engine.revision.key
    ident = caches.tokens.get(creds.bearer, revision, ts)
    if ident is None:
        ident = verify_token(creds.bearer, engine.trust, engine.tokens, ts)
        caches.tokens.put(creds.bearer, revision, ident)
    elif ident.kind == "oidc":
        issuer = engine.trust.issuers.get(ident.issuer)
        if issuer is not None and issuer.stale(ts):  # a cached verdict must not outlive its keys' freshness
            raise CredentialError(
                "trust_stale", f"keys of issuer {ident.issuer} are stale", credential="token"
            )
    return ident


def verify_principal(ctx: RequestContext, engine: Engine, caches: Caches, now: datetime) -> Principal:
    """Verify every credential presented. Raises CredentialError if any one fails."""
    return _verified(ctx, engine, caches, now)[0]


def _verified(
    ctx: RequestContext, engine: Engine, caches: Caches, now: datetime
) -> tuple[Principal, ProofUsed | None]:
    """The principal of every credential presented, and the DPoP proof used (if any). Raises
    CredentialError if any one fails.

    Whatever a hostile credential makes a verifier raise, it is that credential's failure (401),
    never an internal fault that Envoy's failure_mode_allow could turn into an allow.
    """
    ts = now.timestamp()
    try:
        workload = _workload(ctx, engine, caches, now, ts)
    except CredentialError:
        raise
    except Exception as exc:
        raise CredentialError(
            "cert_malformed", f"certificate could not be verified ({type(exc).__name__})", credential="x509"
        ) from exc
    try:
        token = _token(ctx, engine, caches, ts)
    except CredentialError:
        raise
    except Exception as exc:
        raise CredentialError(
            "token_malformed", f"token could not be verified ({type(exc).__name__})", credential="token"
        ) from exc
    used = _check_binding(token, workload, ctx, engine, caches, ts) if token is not None else None
    return caches.principal(workload, token), used


def _check_dpop(
    token: Identity,
    jkt: str,
    ctx: RequestContext,
    issuer: IssuerSettings | None,
    caches: Caches,
    ts: float,
    cfg: Settings,
) -> ProofUsed:
    max_age = issuer.dpop_max_age if issuer is not None else 60.0
    creds = ctx.credentials
    if creds.scheme != "dpop":
        raise _binding_error("a DPoP-bound token sent as Bearer: it needs the DPoP scheme and a proof")
    if not creds.dpop:
        raise CredentialError("dpop_proof", "no DPoP proof (the DPoP header)", credential="token")
    http = ctx.http
    if http is None or not creds.bearer:
        raise CredentialError("dpop_proof", "a DPoP proof needs an HTTP request", credential="token")
    leeway = issuer.leeway if issuer is not None else 30.0
    # The URL the proof must name: this service's own origin when the issuer names them (dpop_origins),
    # else what the request says (its Host is the caller's to choose: see docs).
    origins = issuer.dpop_origins if issuer is not None else ()
    urls = tuple(f"{o.rstrip('/')}{http.path_only}" for o in origins) or (
        f"{http.scheme or 'https'}://{http.host}{http.path_only}",
    )
    proof = verify_proof(
        creds.dpop, token=creds.bearer, method=http.method, url=urls, now=ts, max_age=max_age, leeway=leeway
    )
    if not hmac.compare_digest(proof.jkt.encode(), jkt.encode()):
        raise _binding_error("the DPoP proof is signed by another key than the token is bound to (jkt)")
    until = proof.iat + max_age + leeway
    refused = caches.replayed(proof.jkt, proof.jti, until, ts)
    if refused:
        raise CredentialError("dpop_proof", refused, credential="token")
    return ProofUsed(proof.jkt, proof.jti, until)


def _binding_error(detail: str) -> CredentialError:
    return CredentialError("token_binding", detail, credential="token")


def _check_binding(
    token: Identity, peer: Identity | None, ctx: RequestContext, engine: Engine, caches: Caches, ts: float
) -> ProofUsed | None:
    """A token bound to its holder is accepted only with the holder's proof: RFC 8705 (``cnf``
    ``x5t#S256``: the request's verified peer certificate has that thumbprint) and RFC 9449 (``cnf``
    ``jkt``: sent with the DPoP scheme and a fresh, unreplayed proof signed by that key). An issuer's
    ``binding: required`` refuses a token without a certificate binding, ``dpop: required`` one without
    a key binding. A ``cnf`` naming only methods not checked here is refused: read as a bare bearer
    token, the binding would mean nothing. The DPoP proof used, if any."""
    cfg = engine.config
    issuer = cfg.issuers.get(token.issuer) if token.kind != "jwt_svid" else None
    if token.kind == "jwt_svid":
        cert_required, dpop_required = cfg.jwt_svid.binding == "required", False
    else:
        cert_required = issuer is not None and issuer.binding == "required"
        dpop_required = issuer is not None and issuer.dpop == "required"
    creds = ctx.credentials
    cnf = token.claims.get("cnf")
    if cnf is not None and (not isinstance(cnf, dict) or not ({"x5t#S256", "jkt"} & set(cnf))):
        methods = sorted(str(k)[:32] for k in cnf)[:4] if isinstance(cnf, dict) else []
        raise _binding_error(
            f"cnf binds the token by {methods or 'nothing usable'}; x5t#S256 (RFC 8705) and jkt"
            " (RFC 9449) are checked here"
        )
    cnf = cnf or {}
    used = None
    if "jkt" in cnf:
        jkt = cnf["jkt"]
        if not isinstance(jkt, str) or not jkt:
            raise _binding_error("cnf jkt is not a key thumbprint")
        used = _check_dpop(token, jkt, ctx, issuer, caches, ts, cfg)
    elif creds.scheme == "dpop":
        raise _binding_error("the DPoP scheme with a token not bound to a key (no cnf jkt)")
    elif dpop_required:
        raise _binding_error("the issuer requires a DPoP-bound token (cnf jkt)")
    if "x5t#S256" not in cnf:
        if cert_required:
            raise _binding_error("the issuer requires a certificate-bound token (cnf x5t#S256)")
        return used
    thumbprint = cnf.get("x5t#S256")
    if not isinstance(thumbprint, str):
        raise _binding_error("cnf x5t#S256 is not a thumbprint")
    if peer is None or not peer.cert_sha256:
        raise CredentialError(
            "token_binding",
            "the token is bound to a certificate, and the request presents none (verified)",
            credential="token",
        )
    ours = base64.urlsafe_b64encode(bytes.fromhex(peer.cert_sha256)).rstrip(b"=").decode()
    if not hmac.compare_digest(thumbprint.encode(), ours.encode()):
        raise CredentialError(
            "token_binding", "the token is bound to another certificate (cnf x5t#S256)", credential="token"
        )
    return used


# What CEL's `identity` holds for a caller without a credential; every key an identity can have.
ANONYMOUS_IDENTITY: Mapping[str, Any] = {
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
    "bound": "",
}


def identity_for_cel(principal: Principal, claims: Mapping[str, Any] | None = None) -> Mapping[str, Any]:
    """CEL's ``identity``; ``claims``: the token's claims as a transmitter since changed them (CAEP
    token-claims-change about that token), over what it carries."""
    primary = principal.primary
    if primary is None:
        return ANONYMOUS_IDENTITY
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
            bound=tok.bound,
        )
    out["kinds"] = list(principal.kinds)
    out["x509"] = principal.workload.as_cel() if principal.workload else {}
    out["token"] = principal.token.as_cel() if principal.token else {}
    if claims and principal.token is not None:
        # identity.claims are the token's whenever there is one (with an X.509-SVID too)
        out["token"]["claims"] = {**out["token"].get("claims", {}), **claims}
        out["claims"] = {**out.get("claims", {}), **claims}
    return out


def _changed_claims(signals: Mapping[str, Signal], issuer: str) -> dict[str, Any] | None:
    """A token's ``claims.NAME`` signals (JSON values) as the claims policy sees: those its own issuer
    said (a transmitter whose iss is the token's), or an operator. Another transmitter's say-so is only
    ``signals.token``: it may not change what a token it did not issue claims (a role, a group)."""
    out: dict[str, Any] = {}
    for key, sig in signals.items():
        if not key.startswith("claims.") or (sig.source == "ssf" and sig.set_by != f"ssf:{issuer}"):
            continue
        try:
            out[key[len("claims.") :]] = json.loads(sig.value)
        except ValueError:
            out[key[len("claims.") :]] = sig.value  # set by an operator as plain text
    return out or None


def activation(
    ctx: RequestContext,
    principal: Principal,
    now: datetime,
    signals: Mapping[str, Any] | None = None,
    grants: list[dict[str, Any]] | None = None,
    claims: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
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
        "identity": identity_for_cel(principal, claims),
        "signals": dict(signals)
        if signals is not None
        else {"device": {}, "workload": {}, "user": {}, "token": {}},
        "grants": grants if grants is not None else [],
        "now": now,
    }


_EMPTY_STATE = StateSnapshot()


def _device_id(ctx: RequestContext, principal: Principal, engine: Engine) -> str:
    dev = engine.config.device
    token = principal.token
    if token is not None:
        value = token.claims.get(dev.claim)
        if isinstance(value, str) and value:
            return value
    if dev.header and ctx.http is not None:
        return ctx.http.headers.get(dev.header, "")
    return ""


def _scoped_claim(ident: Identity, claim: str) -> str:
    """A token-scoped value (``jti``, ``sid``) as state names it: ``ISSUER#VALUE``."""
    value = ident.claims.get(claim)
    return f"{ident.scope}#{value}" if isinstance(value, str) and value and ident.scope else ""


def _revocation_checks(principal: Principal, device: str) -> list[tuple[str, str, int | None]]:
    """Every (kind, value, issued_at) a revocation could name this caller by, each value exactly as state
    keys it, with when the credential it came from was issued (a revocation may cover older ones only)."""
    checks: list[tuple[str, str, int | None]] = []
    for ident in principal.identities:
        iat = ident.issued_at
        if ident.spiffe_id:
            checks.append(("spiffe_id", ident.spiffe_id, iat))
        if ident.cert_sha256:
            checks.append(("cert", ident.cert_sha256, iat))
            checks.append(("cert", f"{ident.cert_serial}@{ident.cert_issuer}", iat))
        if ident.is_user:
            checks.append(("sub", ident.principal, iat))
        for kind in ("jti", "sid"):
            value = _scoped_claim(ident, kind)
            if value:
                checks.append((kind, value, iat))
    if device:
        # A device revocation refuses what was issued before it, as a user's does: the credential that
        # carried the device id (a token's claim), else the newest the caller presented. Without one:
        # refused (fail closed).
        checks.append(("device", device, _device_credential_iat(principal)))
    for ident in principal.identities:
        checks.append(("quarantine", ident.principal, None))
    return checks


def _device_credential_iat(principal: Principal) -> int | None:
    token = principal.token
    if token is not None:
        return token.issued_at
    issued = [i.issued_at for i in principal.identities if i.issued_at is not None]
    return max(issued) if issued else None


def _narrowing_context(principal: Principal, engine: Engine) -> dict[str, str]:
    """What a request has, from its verified credentials, of each kind a revocation may be narrowed to
    (Revocation.also). Only what a credential says can take a request out of a narrowed revocation: a
    device id from a request header is the client's word, so it is not here (unknown: refused)."""
    context: dict[str, str] = {}
    user = principal.user
    if user is not None:
        context["sub"] = user.principal
    if principal.spiffe_id:
        context["spiffe_id"] = principal.spiffe_id
    token = principal.token
    if token is not None:
        sid = _scoped_claim(token, "sid")
        if sid:
            context["sid"] = sid
        device = token.claims.get(engine.config.device.claim)
        if isinstance(device, str) and device:
            context["device"] = device
        tenant = token.claims.get(engine.config.tenant.claim)
        if isinstance(tenant, str) and tenant:
            context["tenant"] = tenant
    return context


def _credential_age(
    principal: Principal, engine: Engine, state: StateSnapshot, ts: float
) -> tuple[str, str, NewSession | None]:
    """('', '', new session) when fine, else (reason, detail, None). A session's first use is
    recorded whether or not ``max_session_age`` is set, so turning it on later counts from then."""
    tok = principal.token
    if tok is None:
        return "", "", None
    cfg = engine.config
    if cfg.max_token_age is not None:
        if tok.issued_at is None:
            return "token_too_old", "max_token_age is set and the token has no iat", None
        if ts - tok.issued_at > cfg.max_token_age:
            return "token_too_old", f"token issued {int(ts - tok.issued_at)}s ago", None
    session = _scoped_claim(tok, "sid")
    if not session:
        return "", "", None
    first = state.sessions.get(session)
    if first is None:
        return "", "", NewSession(session, ts)
    if cfg.max_session_age is not None and ts - first > cfg.max_session_age:
        return "session_too_old", f"session first used {int(ts - first)}s ago", None
    return "", "", None


def _over_limits(ctx: RequestContext, limits: Limits) -> tuple[str, str] | None:
    """(reason, detail) when the request carries more than the configured limits allow."""
    if ctx.header_count > limits.max_headers:
        return (
            "request_headers_too_large",
            f"{ctx.header_count} headers; limits.max_headers is {limits.max_headers}",
        )
    if ctx.header_bytes > limits.max_header_bytes:
        return (
            "request_headers_too_large",
            f"{ctx.header_bytes} bytes of headers; limits.max_header_bytes is {limits.max_header_bytes}",
        )
    if ctx.body_bytes > limits.max_body_bytes:
        return (
            "body_too_large",
            f"{ctx.body_bytes} bytes of body; limits.max_body_bytes is {limits.max_body_bytes}",
        )
    return None


def target_of(ctx: RequestContext) -> Target | None:
    """What rules and scopes match on; None when an HTTP request's host is not a host."""
    http = ctx.http
    if http is None:
        return Target("", None, "")
    host = parse_host(http.host)
    if host is None:
        return None
    return Target(http.method, host, http.path_only)


def _stepped_up(principal: Principal, state: StateSnapshot, req: StepUp, now: float) -> bool:
    """Does the user's token meet ``req`` (RFC 9470)? Its ``acr`` must be one of ``acr_values`` — and if
    the identity provider said since it was issued that the user's assurance went down (CAEP
    assurance-level-change), so must the level it named: a decrease can only take acceptance away.
    Its ``auth_time`` must be at most ``max_age`` ago. Tokens without the claims (JWT-SVIDs, plain JWTs)
    do not meet it."""
    tok = principal.token
    if tok is None or not tok.is_user:
        return False
    if req.acr_values:
        acr = tok.claims.get("acr")
        if not isinstance(acr, str) or acr not in req.acr_values:
            return False
        lowered = state.signal("user", tok.principal, "assurance_direction", now)
        if lowered is not None and lowered.value == "decrease" and lowered.set_at > (tok.issued_at or 0):
            # A decrease only ever takes acceptance away: the level named must be acceptable too.
            level = state.signal("user", tok.principal, "assurance_level", now)
            if level is None or level.value not in req.acr_values:
                return False
    if req.max_age is not None:
        auth_time = tok.claims.get("auth_time")
        if isinstance(auth_time, bool) or not isinstance(auth_time, int | float):
            return False
        if now - auth_time > req.max_age:
            return False
    return True


def _challenge(req: StepUp) -> str:
    """The RFC 9470 §3 challenge: the client takes acr_values / max_age to its identity provider."""
    parts = [
        'Bearer error="insufficient_user_authentication"',
        'error_description="A stronger or more recent authentication is required"',
    ]
    if req.acr_values:
        parts.append(f'acr_values="{" ".join(req.acr_values)}"')
    if req.max_age is not None:
        parts.append(f'max_age="{int(req.max_age)}"')
    return ", ".join(parts)


def _refused(decision_id: str, reason: str, detail: str, **kw: Any) -> Decision:
    return Decision(
        decision_id=decision_id, allowed=False, status=status_for(reason), reason=reason, detail=detail, **kw
    )


def decide(
    ctx: RequestContext,
    engine: Engine,
    caches: Caches,
    now: datetime,
    decision_id: str,
    state: StateSnapshot = _EMPTY_STATE,
    *,
    principal: Principal | None = None,
) -> Decision:
    """Decide one request. ``principal``: identities taken as verified (``ext-authz test`` only, to test
    policy apart from key material); by default every credential the request carries is verified."""
    return _finished(_decide(ctx, engine, caches, now, decision_id, state, principal), engine)


def proof_replayed(decision_id: str, engine: Engine) -> Decision:
    """The answer to a request whose DPoP proof another process sharing the state store used first."""
    refused = _refused(
        decision_id,
        "dpop_proof",
        "the DPoP proof was used before (jti), at another replica or worker",
        credential_failed="token",
    )
    return _finished(refused, engine)


def _finished(decision: Decision, engine: Engine) -> Decision:
    """A denial with what ``response`` says of its reason."""
    if decision.allowed:
        return decision
    cfg = engine.config.response
    if decision.response is None and cfg.reasons:
        fixed = _reason_response(cfg, decision.reason)
        if fixed is not None:
            decision = dataclasses.replace(decision, response=fixed)
    if not cfg.reason_header:
        decision = dataclasses.replace(decision, hide_reason=True)
    return decision


_REASON_RESPONSES: dict[int, tuple[ResponseSettings, dict[str, Response]]] = {}


def _reason_response(cfg: ResponseSettings, reason: str) -> Response | None:
    """``response.reasons`` as Response values, made once per config (the entry holds the config, so
    its id is never reused while the entry lives)."""
    known = _REASON_RESPONSES.get(id(cfg))
    if known is None or known[0] is not cfg:
        made = {
            r: Response(status=rc.status or 0, headers=tuple(rc.headers.items()), body=rc.body)
            for r, rc in cfg.reasons.items()
        }
        if len(_REASON_RESPONSES) >= 16:
            _REASON_RESPONSES.clear()
        known = _REASON_RESPONSES[id(cfg)] = (cfg, made)
    return known[1].get(reason)


def _decide(
    ctx: RequestContext,
    engine: Engine,
    caches: Caches,
    now: datetime,
    decision_id: str,
    state: StateSnapshot,
    principal: Principal | None,
) -> Decision:
    over = _over_limits(ctx, engine.config.limits)
    if over is not None:
        return _refused(decision_id, *over)
    target = target_of(ctx)
    if target is None:
        assert ctx.http is not None
        return _refused(
            decision_id, "request_invalid", "the Host is not a name or IP literal with an optional port"
        )
    given = principal is not None  # identities taken as verified: not a function of the credentials
    used: ProofUsed | None = None
    try:
        if principal is None:
            principal, used = _verified(ctx, engine, caches, now)
    except CredentialError as exc:
        effects: tuple[Effect, ...] = ()
        if exc.reason == "token_unknown_key" and exc.issuer:
            effects = (UnknownKeyId(exc.issuer),)
        return _refused(
            decision_id, exc.reason, exc.detail, credential_failed=exc.credential, effects=effects
        )
    decision = _decide_verified(ctx, engine, now, decision_id, state, principal, target, given)
    if used is None:
        return decision
    return dataclasses.replace(decision, effects=(*decision.effects, used))


def _decide_verified(
    ctx: RequestContext,
    engine: Engine,
    now: datetime,
    decision_id: str,
    state: StateSnapshot,
    principal: Principal,
    target: Target,
    given: bool,
) -> Decision:
    ts = now.timestamp()
    device = _device_id(ctx, principal, engine)
    if state.any_revocations and (principal.authenticated or device):
        context = _narrowing_context(principal, engine)
        # A workload's revocation is narrowed only by what its own credential says: a user token it
        # forwards must not speak for it (its device or tenant claim would take the workload out).
        workload_context = {k: v for k, v in context.items() if k == "spiffe_id"}
        for kind, value, issued_at in _revocation_checks(principal, device):
            narrowing = workload_context if kind in ("spiffe_id", "cert") else context
            rev = state.revoked(kind, value, ts, issued_at, narrowing)
            if rev is not None:
                return _refused(
                    decision_id,
                    "quarantined" if kind == "quarantine" else "revoked",
                    f"{kind} revoked by {rev.created_by}: {rev.reason}",
                    principal=principal,
                    revocation_id=rev.id,
                    revocation_kind=kind,
                )
    age_reason, age_detail, new_session = _credential_age(principal, engine, state, ts)
    if age_reason:
        return _refused(decision_id, age_reason, age_detail, principal=principal, credential_failed="token")

    keys = principal.keys  # who grants, exceptions and quarantines can name
    covering = [g for g in state.grants_for(keys, ts) if g.scope.matches(target)]
    signals_read: list[str] = []  # filled if (and when) a condition needs the activation

    # A token a transmitter has said more about since it was issued (CAEP token-claims-change): what
    # policy sees of it changes, so nothing about it is remembered from its credentials alone.
    token = principal.token
    token_key = _scoped_claim(token, "jti") if token is not None else ""
    token_facts = state.fresh_signals("token", token_key, ts) if token_key else {}
    token_signals = {k: s.value for k, s in token_facts.items()}
    changed = _changed_claims(token_facts, token.issuer) if token is not None and token_facts else None

    def build() -> dict[str, Any]:
        workload = principal.spiffe_id
        user = principal.user
        sig = {
            "device": state.signals_for("device", device, ts),
            "workload": state.signals_for("workload", workload, ts),
            "user": state.signals_for("user", user.principal if user is not None else "", ts),
            "token": token_signals,
        }
        signals_read.extend(f"{kind}.{key}" for kind, facts in sig.items() for key in sorted(facts))
        grants = [
            {
                "id": g.id,
                "principal": g.principal,
                "reason": g.reason,
                "approver": g.approver,
                "not_after": int(g.not_after),
            }
            for g in covering
        ]
        return activation(ctx, principal, now, sig, grants, changed)

    built: list[dict[str, Any]] = []

    def view() -> dict[str, Any]:
        """What conditions and responses see, built at most once per Check (and only if asked)."""
        if not built:
            built.append(build())
        return built[0]

    def stepped(req: StepUp) -> bool:
        return _stepped_up(principal, state, req, ts)

    creds = ctx.credentials
    # What the identity was verified from: conditions reading only the identity are remembered per key.
    identity_key = None if given or changed else (creds.peer_certificate, creds.principal, creds.bearer)
    result = engine.policy.evaluate(
        target, ctx.context_extensions, principal.authenticated, view, stepped, identity_key
    )
    allowed, reason, exception_id = result.allowed, result.reason, ""
    if not allowed and reason in _EXCEPTABLE and result.exceptable and keys:
        for exc_grant in state.exceptions_for(keys, ts):
            if exc_grant.scope.matches(target):
                allowed, reason, exception_id = True, "exception", exc_grant.id
                break
    response: Response | None = None
    response_errors: tuple[tuple[str, str], ...] = ()
    if result.rule and (reason == "allowed" or reason == "policy_denied"):
        # The deciding rule's response: an allow rule's when it allowed, a deny rule's when it denied.
        # Not when an exception or a step-up decided, and never a shadow rule's.
        response, response_errors = engine.policy.respond(result.rule, view, identity_key)
    effects_list: list[Effect] = []
    if new_session is not None:
        effects_list.append(new_session)
    quarantine = engine.config.quarantine
    if quarantine is not None and not allowed and reason in quarantine.count:
        accountable = principal.accountable(quarantine.attribution)
        if accountable:
            effects_list.append(CountDenial(accountable))
    return Decision(
        decision_id=decision_id,
        allowed=allowed,
        status=200 if allowed else status_for(reason),
        reason=reason,
        rule=result.rule,
        principal=principal,
        shadow=result.shadow,
        shadow_allowed=result.shadow_allowed,
        detail=result.detail,
        exception_id=exception_id,
        grant_ids=tuple([g.id for g in covering]) if covering else (),
        signals_read=tuple(signals_read) if signals_read else (),
        policy_errors=result.errors,
        challenge=_challenge(result.step_up) if result.step_up is not None else "",
        effects=tuple(effects_list) if effects_list else (),
        response=response,
        response_errors=response_errors,
        strip_headers=engine.policy.strip_headers if allowed else (),
    )
