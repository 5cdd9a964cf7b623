"""Frozen values that flow through the pipeline: request in, identity, decision out."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import field
from types import MappingProxyType
from typing import Any, Literal, TypeVar

from .principal import user_key, workload_scope
from .spiffe_id import SpiffeId
from .values import value

__all__ = [
    "EMPTY_MAP",
    "CountDenial",
    "Credentials",
    "Decision",
    "Effect",
    "HttpRequest",
    "Identity",
    "IdentityKind",
    "NewSession",
    "Principal",
    "ProofUsed",
    "RequestContext",
    "Response",
    "ShadowResult",
    "UnknownKeyId",
    "path_without_query",
]

IdentityKind = Literal["x509_svid", "jwt_svid", "oidc"]
Channel = Literal["peer", "bearer"]  # the connection's certificate, or a token in the request

EMPTY_MAP: Mapping[str, Any] = MappingProxyType({})
_T = TypeVar("_T")


def _first(items: Iterator[_T]) -> _T | None:
    return next(items, None)


def path_without_query(path: str) -> str:
    """``/a/b?x=1#f`` → ``/a/b``: what path patterns are matched against."""
    if "?" not in path and "#" not in path:  # most paths: nothing to cut
        return path
    cut = len(path)
    for sep in ("?", "#"):
        i = path.find(sep)
        if 0 <= i < cut:
            cut = i
    return path[:cut]


@value
class HttpRequest:
    method: str
    path: str  # as Envoy sent it: includes the query string, undecoded
    host: str
    scheme: str
    protocol: str
    headers: Mapping[str, str]  # lower-case keys
    path_only: str = field(init=False)  # the path without query string or fragment (computed once)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path_only", path_without_query(self.path))


@value
class Credentials:
    """What the caller presented, unverified."""

    peer_certificate: str | None = None  # the leaf as Envoy sent it: URL-encoded PEM (decoded on demand)
    xfcc: str = ""  # the x-forwarded-client-cert header; its Chain holds untrusted intermediates
    principal: str | None = None  # Envoy's source.principal (URI SAN of a verified peer)
    bearer: str | None = None  # the raw token after "Bearer " (or "DPoP ")
    bearer_malformed: bool = False  # an Authorization: Bearer header that is not a token
    scheme: str = "bearer"  # how the token was sent: bearer, or dpop (Authorization: DPoP)
    dpop: str | None = None  # the DPoP header: a proof of possession (RFC 9449); None without one


@value
class RequestContext:
    http: HttpRequest | None  # None for a network (L4) check
    source_address: str  # the downstream peer Envoy saw ("host:port", "[v6]:port" or "unix:PATH")
    source_principal: str
    context_extensions: Mapping[str, str]
    credentials: Credentials
    request_id: str = ""
    header_count: int = 0  # as Envoy sent them, before joining repeated names
    header_bytes: int = 0  # names + values
    body_bytes: int = 0  # a body is present only if Envoy was told to send it


@value
class Identity:
    """A verified identity. Nothing here is set unless a verifier proved it.

    ``principal`` is the key every state record uses for it (see ext_authz/principal.py): the SPIFFE ID
    of a workload, ``ISSUER#SUBJECT`` of a user. ``scope`` prefixes its token-scoped values (``jti``,
    ``sid``): the token's issuer, or ``spiffe://TRUST-DOMAIN`` for a JWT-SVID.
    """

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
    cert_serial: str = ""  # lower-case hex, no leading zeros
    cert_issuer: str = ""  # the certificate issuer's name, canonical (see identity/names.py)
    principal: str = field(init=False, default="")
    scope: str = field(init=False, default="")
    channel: Channel = field(init=False, default="bearer")

    def __post_init__(self) -> None:
        # The one place that says how state names an identity (see ext_authz/principal.py).
        if self.kind == "oidc":
            principal, scope = user_key(self.issuer, self.subject), self.issuer
        else:
            principal, scope = self.spiffe_id, workload_scope(self.trust_domain) if self.trust_domain else ""
        object.__setattr__(self, "principal", principal)
        object.__setattr__(self, "scope", scope)
        object.__setattr__(self, "channel", "peer" if self.kind == "x509_svid" else "bearer")

    @classmethod
    def workload(cls, kind: IdentityKind, sid: SpiffeId, **proved: Any) -> Identity:
        """A workload's identity from its verified SPIFFE ID (``kind`` x509_svid or jwt_svid), with
        whatever else its verifier ``proved`` (times, audiences, certificate fields). The one place that
        says which fields a SPIFFE ID fills."""
        return cls(
            kind=kind,
            spiffe_id=str(sid),
            trust_domain=sid.trust_domain.name,
            path=sid.path,
            subject=str(sid),
            **proved,
        )

    @property
    def is_user(self) -> bool:
        """A person's token (OIDC), as opposed to a workload's credential."""
        return self.kind == "oidc"

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
            "bound": self.bound,
        }

    @property
    def bound(self) -> str:
        """How this token is bound to its holder: ``x5t#S256`` (RFC 8705, a certificate's thumbprint,
        checked against the request's peer certificate), ``dpop`` (RFC 9449, a key the request proved it
        holds), both comma-separated, else ''. Checked before policy runs."""
        cnf = self.claims.get("cnf") if self.channel == "bearer" else None
        if not isinstance(cnf, dict):
            return ""
        # The same test the binding check makes: a member that is not a non-empty string binds nothing
        # (and is refused there).
        return ",".join(
            m
            for m, k in (("x5t#S256", "x5t#S256"), ("dpop", "jkt"))
            if isinstance(cnf.get(k), str) and cnf[k]
        )


@value
class Principal:
    """Who is calling: every verified credential, the connection's first (peer), then bearer tokens.

    What the pipeline, the response and the record read of it is worked out once, here."""

    identities: tuple[Identity, ...] = ()
    workload: Identity | None = field(init=False, repr=False, compare=False)  # the peer's X.509-SVID
    token: Identity | None = field(init=False, repr=False, compare=False)  # a JWT-SVID or a user's token
    user: Identity | None = field(init=False, repr=False, compare=False)  # a person's token (OIDC)
    kinds: tuple[str, ...] = field(init=False, repr=False, compare=False)
    # Every principal key this caller holds (what grants, exceptions and quarantine name).
    keys: tuple[str, ...] = field(init=False, repr=False, compare=False)
    # The peer's SPIFFE ID, or a JWT-SVID's subject when there is no peer SVID.
    spiffe_id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ids = self.identities
        first = _first
        object.__setattr__(self, "workload", first(i for i in ids if i.channel == "peer"))
        object.__setattr__(self, "token", first(i for i in ids if i.channel == "bearer"))
        object.__setattr__(self, "user", first(i for i in ids if i.is_user))
        object.__setattr__(self, "kinds", tuple(i.kind for i in ids))
        object.__setattr__(self, "keys", tuple(dict.fromkeys(i.principal for i in ids)))
        object.__setattr__(self, "spiffe_id", first(i.spiffe_id for i in ids if i.spiffe_id) or "")

    @classmethod
    def of(cls, *identities: Identity | None) -> Principal:
        return cls(tuple(i for i in identities if i is not None))

    @property
    def authenticated(self) -> bool:
        return bool(self.identities)

    @property
    def primary(self) -> Identity | None:
        return self.identities[0] if self.identities else None

    def accountable(self, attribution: str = "user") -> str:
        """Whom a denial counts against. ``user``: the user when a user token is present, else the
        workload; ``workload``: the workload (peer, else JWT-SVID), else the user."""
        user = self.user
        if attribution == "user" and user is not None:
            return user.principal
        for i in self.identities:
            if not i.is_user:
                return i.principal
        return user.principal if user is not None else ""


@value
class ShadowResult:
    rule: str
    effect: str
    matched: bool
    error: str = ""


@value
class Response:
    """What a rule's decision answers besides allow or deny, every value worked out (literals, and CEL
    results that passed their checks). Allowed: ``upstream`` headers set on the request, ``remove``d
    request headers, ``client`` headers on the response. Denied: ``status`` (0: the reason's own),
    ``headers`` and ``body`` (None: the default one). Both: ``metadata``, JSON of an object."""

    upstream: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()
    client: tuple[tuple[str, str], ...] = ()
    status: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    body: str | None = None
    metadata: str = ""
    # The same for every request of these credentials (literals, or read only from identity): its
    # rendered response may be kept as a template. A response read from the request is rendered each time.
    cacheable: bool = True


@value
class NewSession:
    """A session (``ISSUER#sid``) seen for the first time: remember when."""

    key: str
    first_seen: float


@value
class CountDenial:
    """A denial that counts toward quarantining ``principal``."""

    principal: str


@value
class UnknownKeyId:
    """A token named a key id its issuer's keys lack: maybe the issuer rotated; refetch them."""

    issuer: str


@value
class ProofUsed:
    """A DPoP proof this request used, already remembered by this process. RFC 9449 §11.1: a proof is
    used once; a fleet (or workers) sharing a state store claims it there before the answer stands."""

    jkt: str
    jti: str
    until: float  # after this it could no longer pass for fresh: forgotten then

    @property
    def key(self) -> str:
        return f"dpop\0{self.jkt}\0{self.jti}"


Effect = NewSession | CountDenial | UnknownKeyId | ProofUsed


@value
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
    signals_read: tuple[str, ...] = ()  # fresh signal keys the conditions were given (kind.key)
    policy_errors: tuple[tuple[str, str], ...] = ()  # (rule, error) of conditions that failed to evaluate
    effects: tuple[Effect, ...] = ()  # what the edge must carry out; the core decided it
    challenge: str = ""  # step_up_required: the RFC 9470 WWW-Authenticate value
    response: Response | None = None  # the deciding rule's response (docs/responses.md)
    response_errors: tuple[tuple[str, str], ...] = ()  # (rule, error) of response values left out
    # Headers any rule may set upstream: a client's copy is removed unless this response sets it.
    strip_headers: tuple[str, ...] = ()
    hide_reason: bool = False  # response.reason_header: false
