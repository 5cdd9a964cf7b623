"""The settings: frozen types with their keys, defaults and limits, each defined once.

These types do not know YAML (``config/load.py`` reads a file into them) and they are what every other
module reads. Validation happens once, here, when settings are built; the hot path reads plain
attributes. Unknown keys are errors: in a security configuration a typo must not silently turn into a
default. The JSON Schema of the configuration file is derived from these types
(``ext-authz config schema``).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import math
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import PydanticCustomError

from .httpclient import is_loopback_url
from .match import PatternError, Selector
from .spiffe_id import SpiffeId, SpiffeIdError, TrustDomain, workload_id
from .stores import SCHEMES

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "DEFAULT_ADMIN_LISTEN",
    "DEFAULT_HTTP_LISTEN",
    "DEFAULT_LISTEN",
    "DEFAULT_REDACT_HEADERS",
    "DEFAULT_STATE",
    "JWT_SVID_ALGORITHMS",
    "MAX_CHAIN",
    "MAX_TOKEN_BYTES",
    "MAX_XFCC_BYTES",
    "AdminSettings",
    "CacheSettings",
    "CheckSettings",
    "DecisionLogSettings",
    "DeviceSettings",
    "ExceptionsSettings",
    "GrantsSettings",
    "IssuerSettings",
    "JwtSvidSettings",
    "Limits",
    "MatchSettings",
    "MtlsSettings",
    "QuarantineSettings",
    "RuleSettings",
    "Settings",
    "SharedSignalsSettings",
    "SignalsSettings",
    "SsfReceiverSettings",
    "SsfStreamSettings",
    "SsfTransmitterSettings",
    "StateSettings",
    "StepUpSettings",
    "TlsFiles",
    "TlsServer",
    "TrustDomainSettings",
    "is_loopback",
    "json_schema",
    "parse_duration",
]

DEFAULT_LISTEN = "unix:///run/ext-authz/check.sock"  # the fast path: native, and the mode says who calls
DEFAULT_HTTP_LISTEN = "127.0.0.1:9192"
DEFAULT_ADMIN_LISTEN = "unix:///run/ext-authz/admin.sock"
DEFAULT_STATE = "sqlite:///var/lib/ext-authz/state.db"
DEFAULT_REDACT_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key")

JWT_SVID_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512")
ASYMMETRIC_ALGORITHMS = (*JWT_SVID_ALGORITHMS, "EdDSA")

# The verifiers' own hard bounds: a configured limit above them could never take effect.
MAX_TOKEN_BYTES = 16 * 1024  # the JWT verifier refuses longer tokens whatever the config says
MAX_CHAIN = 8  # intermediates considered for X.509 path building
MAX_XFCC_BYTES = 64 * 1024  # an XFCC header longer than this is not parsed

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: object) -> float:
    """``90``, ``90s``, ``250ms``, ``15m``, ``4h``, ``7d`` → seconds. Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 15m or 4h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(value.strip()) if isinstance(value, str) else None
        if m is None:
            raise ValueError(f"expected a duration such as 30s, 15m or 4h, got {value!r}")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration, got {value!r}")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def _duration_schema(description: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {
        "anyOf": [
            {"type": "number", "minimum": 0},
            {"type": "string", "pattern": _DURATION.pattern},
        ]
    }
    if description:
        schema["description"] = description
    return schema


Duration = Annotated[float, BeforeValidator(parse_duration), WithJsonSchema(_duration_schema())]


def _none_as_empty(value: object) -> object:
    return () if value is None else value


def _one_or_many(value: object) -> object:
    """A single string stands for a list of one; nothing for an empty list."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return value


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("expected a non-empty string")
    return value


Text = Annotated[StrictStr, AfterValidator(_non_empty)]
_ONE_OR_MANY_SCHEMA = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
TextList = Annotated[tuple[Text, ...], BeforeValidator(_one_or_many), WithJsonSchema(_ONE_OR_MANY_SCHEMA)]


def _relative_path(value: object, info: ValidationInfo) -> object:
    """Relative paths are relative to the config file's folder."""
    if value is None:
        return None
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a non-empty file path")
    if "://" in value:
        raise ValueError(f"expected a file path, got the URL {value!r}")
    path = Path(value)
    base = (info.context or {}).get("base")
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path


FilePath = Annotated[Path, BeforeValidator(_relative_path), WithJsonSchema({"type": "string"})]


def _listen_address(value: str) -> str:
    if value.startswith("unix://"):
        if not value[len("unix://") :].startswith("/"):
            raise ValueError("a unix socket address is unix:///absolute/path")
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT or unix:///path, got {value!r}")
    return value


ListenAddress = Annotated[StrictStr, AfterValidator(_listen_address)]


def _spiffe_id(value: str) -> str:
    try:
        return str(workload_id(value))
    except SpiffeIdError as exc:
        raise ValueError(f"{value!r} is not a workload's SPIFFE ID: {exc}") from exc


SpiffeIdText = Annotated[StrictStr, AfterValidator(_spiffe_id)]
SpiffeIdList = Annotated[
    tuple[SpiffeIdText, ...], BeforeValidator(_one_or_many), WithJsonSchema(_ONE_OR_MANY_SCHEMA)
]


def is_loopback(address: str) -> bool:
    """Is a ``HOST:PORT`` listen address reachable only from this host?"""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _socket_mode(value: object) -> int:
    """``"0660"`` or ``0o660`` → 0o660; only owner and group bits."""
    if isinstance(value, bool):
        raise ValueError('expected a file mode such as "0660"')
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value.strip()):
        mode = int(value.strip(), 8)
    elif isinstance(value, int):
        mode = value
    else:
        raise ValueError(f'expected a file mode such as "0660", got {value!r}')
    if mode & 0o007:
        raise ValueError("the Check socket must not be reachable by other users: no bits for others")
    if not mode & 0o600 == 0o600:
        raise ValueError("the owner (ext-authz) needs read and write on its socket")
    return mode


class Section(BaseModel):
    """A configuration section: frozen, unknown keys refused, an empty section means defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=False)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_default(cls, data: object) -> object:
        return {} if data is None else data


class TrustDomainSettings(Section):
    """One SPIFFE trust domain: bundle files, or the Workload API (bundles never mix)."""

    x509_bundle: FilePath | None = Field(None, description="PEM roots, or SPIFFE bundle JSON")
    jwt_bundle: FilePath | None = Field(None, description="SPIFFE bundle JSON / JWKS: keys with use=jwt-svid")
    workload_api: StrictStr | None = Field(None, description="unix:///path of a SPIFFE Workload API socket")

    @model_validator(mode="after")
    def _one_source(self) -> TrustDomainSettings:
        if self.workload_api is not None:
            if not self.workload_api.startswith("unix:///"):
                raise _SubKeyError("workload_api", "expected the agent socket as unix:///path")
            if self.x509_bundle is not None or self.jwt_bundle is not None:
                raise ValueError("either workload_api or bundle files, not both: bundles never mix")
        if self.x509_bundle is None and self.jwt_bundle is None and self.workload_api is None:
            raise ValueError("needs at least one of x509_bundle, jwt_bundle, workload_api")
        return self


def _algorithms(allowed: tuple[str, ...]) -> Any:
    def check(values: tuple[str, ...]) -> tuple[str, ...]:
        for alg in values:
            if alg not in allowed:
                raise ValueError(
                    f"algorithm {alg!r} is not allowed; expected some of {sorted(allowed)}"
                    " (never none or HS*)"
                )
        if not values:
            raise ValueError("at least one algorithm")
        return values

    return AfterValidator(check)


Binding = Literal["optional", "required"]
_BINDING = (
    "optional: a token with cnf x5t#S256 is checked against the peer certificate (RFC 8705), one without"
    " is accepted; required: one without is refused (401 token_binding)"
)


def _origins(values: tuple[str, ...]) -> tuple[str, ...]:
    for v in values:
        parts = urllib.parse.urlsplit(v)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError(f"{v!r}: an origin is scheme://host[:port], nothing after it")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"{v!r}: an origin is scheme://host[:port], nothing after it")
    return values


class JwtSvidSettings(Section):
    audiences: TextList = Field((), description="a JWT-SVID must name one of these (aud)")
    binding: Binding = Field("optional", description=_BINDING)
    algorithms: Annotated[TextList, _algorithms(JWT_SVID_ALGORITHMS)] = JWT_SVID_ALGORITHMS
    leeway: Duration = 30.0


class IssuerSettings(Section):
    """An OIDC (or plain JWT) issuer, keyed by the tokens' ``iss``."""

    jwks: StrictStr | None = Field(None, description="a JWKS file, or an https:// URL")
    discovery: StrictBool = Field(
        False, description="find jwks_uri at {issuer}/.well-known/openid-configuration"
    )
    refresh: Annotated[Duration, AfterValidator(lambda v: max(1.0, v))] = 300.0
    max_stale: Duration = 86_400.0
    ca: FilePath | None = Field(None, description="extra CA bundle to verify the issuer's HTTPS server")
    audiences: TextList = Field(..., description="required: tokens must be meant for us")
    algorithms: Annotated[TextList, _algorithms(ASYMMETRIC_ALGORITHMS)] = ("RS256", "ES256")
    leeway: Duration = 30.0
    subject_claim: Text = "sub"
    binding: Binding = Field("optional", description=_BINDING)
    dpop: Binding = Field(
        "optional",
        description="optional: a token with cnf jkt needs the DPoP scheme and a valid proof (RFC 9449), one"
        " without is a bearer token; required: only DPoP-bound tokens (401 token_binding otherwise)",
    )
    dpop_max_age: Duration = Field(60.0, description="how old a DPoP proof may be (its iat), plus leeway")
    dpop_origins: Annotated[TextList, AfterValidator(_origins)] = Field(
        (),
        description="this service's public origins (https://api.example.com): a DPoP proof's htu must name"
        " one, with the request's path; empty: the request's own scheme and Host, which its caller chooses",
    )

    @model_validator(mode="before")
    @classmethod
    def _some_key_source(cls, data: object) -> object:
        if (
            (data is None or isinstance(data, dict))
            and not (data or {}).get("jwks")
            and not (data or {}).get("discovery")
        ):
            raise _SubKeyError("jwks", "is required: a JWKS file, an https URL, or discovery: true")
        return data

    @field_validator("jwks")
    @classmethod
    def _jwks_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        if value.startswith("https://"):
            return value
        if "://" in value:
            raise ValueError("a JWKS URL must be https://")
        path = _relative_path(value, info)
        return str(path)

    @field_validator("audiences")
    @classmethod
    def _some_audience(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("is required: tokens must be meant for us")
        return value

    @model_validator(mode="after")
    def _key_source(self) -> IssuerSettings:
        if self.discovery and self.jwks:
            raise ValueError("either jwks or discovery: true, not both")
        if not self.discovery and not self.jwks:
            raise _SubKeyError("jwks", "is required: a JWKS file, an https URL, or discovery: true")
        return self

    @property
    def jwks_file(self) -> Path | None:
        return None if self.jwks is None or self.jwks.startswith("https://") else Path(self.jwks)

    @property
    def jwks_url(self) -> str:
        return self.jwks if self.jwks is not None and self.jwks.startswith("https://") else ""

    @property
    def remote(self) -> bool:
        return self.jwks_file is None


def _check_selector(m: MatchSettings) -> MatchSettings:
    for sub, args in (
        ("hosts", (m.hosts, (), ())),
        ("paths", ((), m.paths, ())),
        ("methods", ((), (), m.methods)),
    ):
        try:
            Selector.compile(*args)
        except PatternError as exc:
            raise _SubKeyError(sub, str(exc)) from exc
    return m


class MatchSettings(Section):
    """Selectors (see ext_authz/match.py): every listed one must match; empty means any."""

    hosts: Annotated[TextList, AfterValidator(lambda hs: tuple(h.lower() for h in hs))] = Field(
        (), description="host patterns: `*` matches any characters; the port is ignored unless given"
    )
    paths: TextList = Field(
        (), description="path patterns: `*` matches any characters, `/` included; no query"
    )
    methods: Annotated[TextList, AfterValidator(lambda ms: tuple(m.upper() for m in ms))] = ()
    context_extensions: Mapping[StrictStr, StrictStr] = Field(
        default_factory=dict, description="from Envoy's per-route check_settings"
    )


def _acr_values(values: tuple[str, ...]) -> tuple[str, ...]:
    for v in values:  # they go into a quoted WWW-Authenticate parameter, space-separated
        if not re.fullmatch(r"[\x21\x23-\x5b\x5d-\x7e]+", v):
            raise ValueError(f"{v!r}: an acr value is printable ASCII without spaces, quotes or backslashes")
    return values


class StepUpSettings(Section):
    """RFC 9470: what the user's authentication must be for this rule to allow; else 401 with a
    challenge the client can take to its identity provider."""

    acr_values: Annotated[TextList, AfterValidator(_acr_values)] = Field(
        (), description="accepted authentication context classes (the token's acr)"
    )
    max_age: Duration | None = Field(None, description="the token's auth_time at most this long ago")

    @model_validator(mode="after")
    def _something(self) -> StepUpSettings:
        if not self.acr_values and self.max_age is None:
            raise _SubKeyError("acr_values", "a step_up names acr_values, a max_age, or both")
        return self


class CelValue(Section):
    """A value computed per request: a CEL expression over what rules see (`identity`, `request`,
    `source`, `signals`, `grants`, `now`), type-checked at load."""

    cel: Text


# A header's (or a body's) value: a literal string, or {cel: EXPR}. Metadata also takes numbers and
# booleans.
TextValue = Annotated[StrictStr | CelValue, Field(union_mode="left_to_right")]
MetadataValue = Annotated[
    StrictBool | StrictInt | float | StrictStr | CelValue, Field(union_mode="left_to_right")
]
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")
# Headers no rule may set or remove: ext-authz's own (identity, decision id, reason), hop-by-hop ones, and
# those that change how a message is framed or routed.
OWNED_HEADERS = ("x-spiffe-id", "x-forwarded-client-cert")
OWNED_PREFIX = "x-ext-authz-"
HOP_BY_HOP = (
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
)


def _header_names(names: Mapping[str, Any] | tuple[str, ...]) -> Any:
    for name in names:
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"{name!r}: a header name is lower-case token characters (RFC 9110), no ':'")
        if name in OWNED_HEADERS or name.startswith(OWNED_PREFIX):
            raise ValueError(f"{name!r} is ext-authz's own: no rule may set or remove it")
        if name.startswith("x-envoy-"):
            raise ValueError(f"{name!r} is Envoy's own (x-envoy-*): no rule may set or remove it")
        if name in HOP_BY_HOP:
            raise ValueError(f"{name!r} is hop-by-hop or frames the message: no rule may set or remove it")
    return names


# What no header value may hold (RFC 9110 field values: visible characters, space, tab, obs-text).
HEADER_VALUE_FORBIDDEN = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _literal_values(headers: Mapping[str, Any]) -> Any:
    for name, v in headers.items():
        if isinstance(v, str) and HEADER_VALUE_FORBIDDEN.search(v):
            raise ValueError(f"{name}: a header value holds no control character (CR, LF, NUL …)")
    return headers


Headers = Annotated[
    Mapping[StrictStr, TextValue], AfterValidator(_header_names), AfterValidator(_literal_values)
]
RESERVED_METADATA = (
    "decision_id",
    "allowed",
    "status",
    "reason",
    "rule",
    "identity_kind",
    "spiffe_id",
    "revocation_id",
    "revocation_kind",
    "exception_id",
    "grant_ids",
    "shadow_allowed",
    "shadow_matched",
)


def _metadata_keys(md: Mapping[str, Any]) -> Any:
    for key in md:
        if not key or key in RESERVED_METADATA:
            raise ValueError(
                f"{key!r}: a metadata key is not empty and not ext-authz's own"
                f" ({', '.join(RESERVED_METADATA)})"
            )
    return md


class RuleResponseSettings(Section):
    """What the rule's decision answers besides allow or deny (docs/responses.md). Allow rules:
    upstream_headers, remove_headers, client_headers. Deny rules: status, headers, body. Both: metadata."""

    upstream_headers: Headers = Field(
        default_factory=dict,
        description="allow: headers set on the request to the upstream (a client's copy is replaced)",
    )
    remove_headers: Annotated[
        TextList, AfterValidator(lambda hs: _header_names(tuple(h.lower() for h in hs)))
    ] = Field((), description="allow: request headers the upstream must not see (a session cookie)")
    client_headers: Headers = Field(
        default_factory=dict, description="allow: headers added to the response the client gets"
    )
    status: Annotated[StrictInt, Field(ge=300, le=599)] | None = Field(
        None, description="deny: the HTTP status (3xx with a location header is a redirect)"
    )
    headers: Headers = Field(default_factory=dict, description="deny: headers of the denial the client gets")
    body: TextValue | None = Field(None, description="deny: the body of the denial")
    redirect_hosts: TextList = Field(
        (),
        description="deny: hosts a location computed by CEL may send the client to (a literal location"
        " needs none)",
    )
    metadata: Annotated[Mapping[StrictStr, MetadataValue], AfterValidator(_metadata_keys)] = Field(
        default_factory=dict,
        description="dynamic metadata for the filters after ext_authz (rate limits, the access log)",
    )

    @model_validator(mode="after")
    def _redirect(self) -> RuleResponseSettings:
        location = self.headers.get("location")
        if self.status is not None and 300 <= self.status < 400 and location is None:
            raise _SubKeyError("headers", f"a {self.status} redirect needs a location header")
        if isinstance(location, CelValue) and not self.redirect_hosts:
            raise _SubKeyError(
                "redirect_hosts",
                "a location computed by CEL needs redirect_hosts: the hosts it may send a client to"
                " (else a request could choose where a user is sent)",
            )
        return self


LiteralHeaders = Annotated[
    Mapping[StrictStr, StrictStr], AfterValidator(_header_names), AfterValidator(_literal_values)
]


class ReasonResponseSettings(Section):
    """How a denial for one reason is answered when no rule's response says (literals only)."""

    status: Annotated[StrictInt, Field(ge=300, le=599)] | None = Field(None, description="the HTTP status")
    headers: LiteralHeaders = Field(default_factory=dict, description="headers of the denial")
    body: StrictStr | None = Field(None, description="the body of the denial")

    @model_validator(mode="after")
    def _redirect(self) -> ReasonResponseSettings:
        if self.status is not None and 300 <= self.status < 400 and "location" not in self.headers:
            raise _SubKeyError("headers", f"a {self.status} redirect needs a location header")
        return self


def _denial_reasons(reasons: Mapping[str, Any]) -> Any:
    from .errors import REASON_STATUS

    for reason in reasons:
        if reason not in REASON_STATUS or reason in ("allowed", "exception"):
            known = ", ".join(r for r in REASON_STATUS if r not in ("allowed", "exception"))
            raise ValueError(f"{reason!r} is not a denial reason; expected one of {known}")
    return reasons


class ResponseSettings(Section):
    """How denials are answered, whatever rule decided."""

    reasons: Annotated[Mapping[StrictStr, ReasonResponseSettings], AfterValidator(_denial_reasons)] = Field(
        default_factory=dict,
        description="per denial reason (quarantined, no_credential …): status, headers and body, when the"
        " deciding rule names no response of its own",
    )

    reason_header: StrictBool = Field(
        True,
        description="send x-ext-authz-reason (and the reason in the default body) on denials; false for a"
        " deployment that must not reveal why (the decision id is still sent)",
    )


class RuleSettings(Section):
    name: Text
    description: StrictStr = ""
    effect: Literal["allow", "deny"] = "allow"
    mode: Literal["enforce", "shadow"] = "enforce"
    match: Annotated[MatchSettings, AfterValidator(_check_selector)] = Field(default_factory=MatchSettings)
    when: Text | None = Field(None, description="a CEL condition")
    anonymous: StrictBool = Field(
        False, description="an allow rule that also admits callers without credentials"
    )
    exceptable: StrictBool = Field(
        False,
        description="a deny rule that a break-glass exception may override (none may, unless it says so)",
    )
    step_up: StepUpSettings | None = Field(
        None, description="an allow rule that also requires a strong or recent user authentication (RFC 9470)"
    )
    response: RuleResponseSettings | None = Field(
        None, description="headers, status, body and metadata of this rule's decision (docs/responses.md)"
    )

    @model_validator(mode="after")
    def _step_up_on_allow(self) -> RuleSettings:
        if self.step_up is not None and self.effect != "allow":
            raise _SubKeyError("step_up", "only an allow rule can require a step-up")
        r = self.response
        if r is not None:
            keys: tuple[str, ...]
            if self.effect == "allow":
                keys, what = ("status", "headers", "body", "redirect_hosts"), "a deny rule's"
            else:
                keys, what = ("upstream_headers", "remove_headers", "client_headers"), "an allow rule's"
            wrong = [k for k in keys if k in r.model_fields_set]
            if wrong:
                raise _SubKeyError(f"response.{wrong[0]}", f"is {what}: this rule's effect is {self.effect}")
        return self


class MtlsSettings(Section):
    source: Literal["certificate", "principal"] = Field(
        "certificate",
        description="certificate: verify source.certificate;"
        " principal: trust Envoy's verified source.principal",
    )


class CacheSettings(Section):
    size: Annotated[StrictInt, Field(ge=0)] = Field(
        10_000, description="verified-credential LRU entries per kind"
    )


class QuarantineSettings(Section):
    """A principal denied ``denials`` times within ``window`` is revoked for ``duration``."""

    denials: Annotated[StrictInt, Field(ge=1)]
    window: Duration = 60.0
    duration: Duration = 900.0
    count: Annotated[
        tuple[Literal["policy_denied", "no_rule", "policy_error"], ...], BeforeValidator(_one_or_many)
    ] = Field(
        ("policy_denied",),
        description="which denials count: by default only explicit deny rules (what exceeds policy)",
    )
    attribution: Literal["user", "workload"] = Field(
        "user",
        description="whom a denial counts against: the user when a user token is present (user),"
        " or always the workload",
    )


class ExceptionsSettings(Section):
    max_duration: Annotated[Duration, Field(gt=0)] = 4 * 3600.0
    require_approval: StrictBool = Field(
        True, description="an exception has no effect until a second, different caller approves it"
    )


class GrantsSettings(Section):
    max_duration: Annotated[Duration, Field(gt=0)] = 8 * 3600.0
    require_approval: StrictBool = Field(
        True, description="a grant has no effect until a second, different caller approves it"
    )


class SignalsSettings(Section):
    max_ttl: Annotated[Duration, Field(gt=0)] = Field(
        24 * 3600.0, description="the longest a signal may stay fresh: stale facts are unknown facts"
    )


def _ssf_url(value: str) -> str:
    """https, or http on loopback (a sidecar, a test): never plaintext across a network."""
    parts = urllib.parse.urlsplit(value)
    if parts.scheme == "https" and parts.hostname:
        return value
    if parts.scheme == "http" and is_loopback_url(value):
        return value
    raise ValueError(f"expected an https:// URL (http:// only on loopback), got {value!r}")


SsfUrl = Annotated[StrictStr, AfterValidator(_ssf_url)]


class SsfReceiverSettings(Section):
    """One transmitter we take Security Event Tokens from (SSF 1.0: CAEP, RISC)."""

    issuer: SsfUrl = Field(..., description="the SETs' iss (the transmitter's issuer)")
    jwks: StrictStr = Field(..., description="the transmitter's keys: a JWKS file, or an https:// URL")
    audience: Text = Field(..., description="the SETs' aud: how the transmitter names us")
    delivery: Literal["push", "poll"] = Field("push", description="push: POST /ssf/events; poll: we poll")
    poll_url: SsfUrl | None = Field(None, description="with delivery: poll (else from stream management)")
    poll_interval: Duration = 5.0
    for_issuers: TextList = Field(
        ...,
        description="token issuers (and spiffe://TRUST-DOMAIN for workloads) whose subjects its events"
        " may name",
    )
    authorization_file: FilePath | None = Field(
        None,
        description="a shared bearer secret: required on its pushes, sent on our polls and stream management",
    )
    algorithms: Annotated[TextList, _algorithms(ASYMMETRIC_ALGORITHMS)] = ("RS256", "ES256")
    max_age: Duration = Field(
        3600.0, description="SETs issued (iat) longer ago are refused: stale or replayed"
    )
    leeway: Duration = 30.0
    hold: Duration = Field(
        86_400.0,
        description="how long a revocation of credentials issued before an event stays"
        " (longer than they live)",
    )
    refresh: Annotated[Duration, AfterValidator(lambda v: max(1.0, v))] = 300.0
    max_stale: Duration = 86_400.0
    ca: FilePath | None = Field(None, description="extra CA bundle for the transmitter's HTTPS server")
    manage_stream: StrictBool = Field(
        False,
        description="configure and verify our stream at the transmitter (SSF §8), for those that expect it",
    )
    push_url: SsfUrl | None = Field(
        None, description="with manage_stream and push: where the transmitter reaches our /ssf/events"
    )
    devices: StrictBool = Field(
        False,
        description="its events may name devices on their own (opaque ids, tied to no issuer: any device"
        " this transmitter names is affected, whoever uses it); a device with a user only narrows",
    )
    opaque_subject: Literal["event", "session", "device"] = Field(
        "event",
        description="what an opaque sub_id names: event (a session in session-revoked, a device in"
        " device-compliance-change), or always a session, or always a device",
    )
    session_wildcards: TextList = Field(
        (),
        description="session ids the transmitter sends to mean every session of the user (Keycloak's"
        " 'log out all sessions' sends ALL): read as the user's sessions, never as one named so",
    )
    critical_subject_members: TextList = Field(
        (),
        description="complex-subject members that must be honoured or the event discarded (SSF 1.0 §3.4),"
        " with those the transmitter's metadata lists (manage_stream)",
    )

    @field_validator("jwks")
    @classmethod
    def _jwks(cls, value: str, info: ValidationInfo) -> str:
        if "://" in value:
            return _ssf_url(value)
        return str(_relative_path(value, info))

    @property
    def jwks_file(self) -> Path | None:
        return None if "://" in self.jwks else Path(self.jwks)

    @property
    def jwks_url(self) -> str:
        return self.jwks if "://" in self.jwks else ""

    @model_validator(mode="after")
    def _delivery(self) -> SsfReceiverSettings:
        if self.delivery == "poll" and self.poll_url is None and not self.manage_stream:
            raise _SubKeyError("poll_url", "is required with delivery: poll (or manage_stream: true)")
        if self.manage_stream and self.delivery == "push" and self.push_url is None:
            raise _SubKeyError("push_url", "is required with manage_stream and delivery: push")
        return self


class SsfStreamSettings(Section):
    """A receiver of our SETs: one stream."""

    audience: Text = Field(..., description="how we name the receiver (the SETs' aud)")
    delivery: Literal["push", "poll"] = "push"
    push_url: SsfUrl | None = Field(None, description="with delivery: push, the receiver's endpoint")
    authorization_file: FilePath = Field(
        ..., description="the stream's shared bearer secret: sent on our pushes, required on its polls"
    )
    for_issuers: TextList = Field(
        (),
        description="only revocations of these issuers' users (and spiffe://TRUST-DOMAIN workloads);"
        " empty: all",
    )
    send_reasons: StrictBool = Field(
        False,
        description="include each revocation's reason text (reason_admin): it may say more than you share",
    )

    @model_validator(mode="after")
    def _push_url(self) -> SsfStreamSettings:
        if self.delivery == "push" and self.push_url is None:
            raise _SubKeyError("push_url", "is required with delivery: push")
        return self


class SsfTransmitterSettings(Section):
    """Our revocations and quarantines, sent as CAEP SETs."""

    issuer: SsfUrl = Field(..., description="our iss: the base URL receivers reach our http_listen at")
    key: FilePath = Field(..., description="the private signing key: a JWK (JSON) or PEM file")
    algorithm: Literal[ASYMMETRIC_ALGORITHMS] | None = None  # type: ignore[valid-type]
    streams: tuple[SsfStreamSettings, ...] = ()


class SharedSignalsSettings(Section):
    receivers: tuple[SsfReceiverSettings, ...] = ()
    transmitter: SsfTransmitterSettings | None = None

    @field_validator("receivers")
    @classmethod
    def _unique(cls, value: tuple[SsfReceiverSettings, ...]) -> tuple[SsfReceiverSettings, ...]:
        seen: set[str] = set()
        for i, r in enumerate(value):
            if r.issuer in seen:
                raise _SubKeyError(f"receivers[{i}].issuer", f"{r.issuer} has another receiver already")
            seen.add(r.issuer)
        return value


class DeviceSettings(Section):
    """Where a request's device id comes from: a token claim, else a request header."""

    claim: Text = "device_id"
    header: Annotated[StrictStr, AfterValidator(str.lower)] = ""


class TenantSettings(Section):
    """Which token claim names a request's tenant: a revocation from a complex subject with a tenant part
    (SSF 1.0 §5) refuses only requests of that tenant."""

    claim: Text = "tenant"


class TlsFiles(Section):
    cert: FilePath = Field(..., description="certificate chain (PEM)")
    key: FilePath = Field(..., description="private key (PEM)")


class TlsServer(Section):
    """A TLS server identity: certificate and key files (re-read when they change), or this workload's
    own X509-SVID from the SPIFFE Workload API (rotating with it)."""

    cert: FilePath | None = Field(None, description="certificate chain (PEM)")
    key: FilePath | None = Field(None, description="private key (PEM)")
    workload_api: StrictStr | None = Field(
        None, description="unix:///path: serve this workload's own X509-SVID"
    )

    @model_validator(mode="after")
    def _one_source(self) -> TlsServer:
        if self.workload_api is not None:
            if not self.workload_api.startswith("unix:///"):
                raise _SubKeyError("workload_api", "expected the agent socket as unix:///path")
            if self.cert is not None or self.key is not None:
                raise ValueError("either cert and key, or workload_api, not both")
        elif self.cert is None or self.key is None:
            raise ValueError("needs cert and key, or workload_api")
        return self


class CheckSettings(Section):
    """Who may call Check: the callers' proof that they are Envoy."""

    socket_mode: Annotated[
        int,
        BeforeValidator(_socket_mode),
        WithJsonSchema({"anyOf": [{"type": "string", "pattern": "^0?[0-7]{3}$"}, {"type": "integer"}]}),
    ] = Field(0o660, description="file mode of a unix-socket `listen` (owner and group: Envoy's group)")
    tls: TlsServer | None = Field(None, description="TLS for a TCP `listen`, with client certificates")
    allowed_spiffe_ids: SpiffeIdList = Field(
        (), description="Envoys allowed to call Check over TLS, verified as X.509-SVIDs of their trust domain"
    )
    plaintext: StrictBool = Field(
        False,
        description="allow plaintext TCP on a non-loopback address (anyone who reaches it can call Check)",
    )


class AdminSettings(Section):
    """A TCP admin listener takes TLS; callers' certificates are verified as X.509-SVIDs."""

    allowed_spiffe_ids: SpiffeIdList = ()
    cert: FilePath | None = None
    key: FilePath | None = None
    client_ca: FilePath | None = Field(
        None, description="optional: accept client certificates only from these roots in the TLS handshake"
    )
    local_approvals: StrictBool = Field(
        False,
        description="accept approvals of exceptions and grants over the unix socket, where every caller"
        " names itself: for one operator or a demo; two people need two SVIDs on the TCP admin API",
    )


class StateTls(Section):
    ca: FilePath | None = Field(None, description="CA bundle for the Redis server (default: the system's)")
    cert: FilePath | None = None
    key: FilePath | None = None


def _state_url(value: object) -> object:
    return {"url": value} if isinstance(value, str) else value


def _url_or_section(schema: dict[str, Any]) -> None:
    """In the JSON Schema, ``state`` is a URL string or the section."""
    section = {"$ref": schema.pop("$ref")} if "$ref" in schema else schema.pop("allOf")[0]
    schema["anyOf"] = [{"type": "string"}, section]


def _sentinel_address(address: str) -> tuple[str, int] | None:
    """HOST:PORT or [V6]:PORT as (host, port); None if it is neither."""
    host, _, port = address.rpartition(":")
    bare_v6 = ":" in host and not (host.startswith("[") and host.endswith("]"))
    if not host.strip("[]") or bare_v6 or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.strip("[]"), int(port)


class StateSettings(Section):
    """Where continuous-trust state lives, and how it is protected."""

    url: StrictStr = Field(
        DEFAULT_STATE, description="memory://, sqlite:///PATH, redis://HOST:PORT/DB, rediss://…"
    )
    username: StrictStr | None = Field(None, description="Redis ACL user")
    password_file: FilePath | None = Field(None, description="Redis password (AUTH) from this file")
    password_env: StrictStr | None = Field(
        None, description="Redis password (AUTH) from this environment variable"
    )
    tls: StateTls | None = Field(
        None, description="rediss://: the server's CA and an optional client certificate"
    )
    hmac_key_file: FilePath | None = Field(
        None,
        description="shared key (at least 32 bytes) that authenticates every record (required for Redis)",
    )
    sentinels: tuple[StrictStr, ...] = Field(
        (),
        description="Redis Sentinels (HOST:PORT each); the URL's host then names the master: redis://mymaster/0",
    )
    sentinel_password_file: FilePath | None = Field(
        None,
        description="the Sentinels' own password (their requirepass) from this file, if they ask for one",
    )
    sentinel_password_env: StrictStr | None = Field(
        None, description="the Sentinels' own password from this environment variable"
    )
    sentinel_tls: StrictBool | None = Field(
        None,
        description="TLS to the Sentinels, with state.tls's CA and client certificate (default: on with"
        " rediss://)",
    )
    wait_replicas: Annotated[StrictInt, Field(ge=0, le=16)] = Field(
        0,
        description="a change is acknowledged once this many Redis replicas have it (WAIT); 0: the primary",
    )
    wait_timeout: Annotated[Duration, Field(gt=0, le=10)] = Field(
        1.0, description="how long a change waits for wait_replicas before it is reported as not acknowledged"
    )

    @model_validator(mode="after")
    def _consistent(self) -> StateSettings:
        scheme = self.scheme
        backend = SCHEMES.get(scheme)
        if backend is None:
            known = ", ".join(f"{name}://" for name in SCHEMES)
            raise _SubKeyError("url", f"expected the URL of a state backend ({known}), e.g. sqlite:///PATH")
        if backend.url_form and not self.url.startswith(backend.url_form):
            raise _SubKeyError("url", f"expected {backend.url_form}…")
        if backend.shared:
            netloc = self.url.split("://", 1)[1].split("/", 1)[0]
            if "?" in self.url or "#" in self.url:
                raise _SubKeyError(
                    "url",
                    "no query or fragment: credentials and TLS settings are keys of state (password_file,"
                    " password_env, username, tls), never URL options that would override them",
                )
            if "@" in netloc:
                raise _SubKeyError(
                    "url",
                    "a password is never written in the config: use password_file or password_env",
                )
            if self.hmac_key_file is None:
                raise _SubKeyError(
                    "hmac_key_file",
                    f"hmac_key_file is required with {scheme}://: every replica must be able to tell records"
                    " that ext-authz wrote from records anyone with access to the store wrote",
                )
        elif self.password_file or self.password_env or self.username or self.tls:
            raise ValueError(
                "username, password_file, password_env and tls are for a shared store: Redis only"
            )
        if self.password_file and self.password_env:
            raise ValueError("either password_file or password_env, not both")
        if (self.sentinels or self.wait_replicas) and not backend.shared:
            raise _SubKeyError("sentinels" if self.sentinels else "wait_replicas", "for Redis only")
        for i, address in enumerate(self.sentinels):
            if _sentinel_address(address) is None:
                raise _SubKeyError("sentinels", f"entry {i}: expected HOST:PORT ([V6]:PORT), got {address!r}")
        sentinel_keys = [
            k
            for k in ("sentinel_password_file", "sentinel_password_env", "sentinel_tls")
            if getattr(self, k) is not None
        ]
        if sentinel_keys and not self.sentinels:
            raise _SubKeyError(sentinel_keys[0], "takes effect only with sentinels")
        if self.sentinel_password_file and self.sentinel_password_env:
            raise ValueError("either sentinel_password_file or sentinel_password_env, not both")
        if self.sentinel_tls is False and self.scheme == "rediss":
            raise _SubKeyError(
                "sentinel_tls",
                "Sentinels in plaintext name the primary a TLS client then trusts with the Redis password:"
                " anyone on the path could name their own host with any certificate state.tls.ca signs."
                " Speak TLS to the Sentinels (the default with rediss://)",
            )
        if self.sentinels:
            name, _, db = self.url.split("://", 1)[1].partition("/")
            if ":" in name or not name:
                raise _SubKeyError(
                    "url", "with sentinels the URL names the master, not an address: redis://NAME/DB"
                )
            if db and not db.isdigit():
                raise _SubKeyError("url", f"the database is a number: redis://NAME/DB, got {db!r}")
        if self.tls is not None and not backend.tls:
            tls_schemes = ", ".join(f"{n}://" for n, b in SCHEMES.items() if b.tls)
            raise _SubKeyError("tls", f"TLS needs a TLS URL ({tls_schemes})")
        return self

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0] if "://" in self.url else ""

    @property
    def sentinel_addresses(self) -> tuple[tuple[str, int], ...]:
        """``sentinels`` as (host, port), IPv6 hosts without their brackets (checked when read)."""
        return tuple(a for a in map(_sentinel_address, self.sentinels) if a is not None)


def _path_patterns(patterns: tuple[str, ...]) -> tuple[str, ...]:
    for p in patterns:
        try:
            compiled = re.compile(p)
        except re.error as exc:
            raise ValueError(f"{p!r} is not a regular expression: {exc}") from exc
        if compiled.fullmatch(""):
            raise ValueError(f"{p!r} matches the empty string: it would match everywhere")
    return patterns


class DecisionLogSettings(Section):
    enabled: StrictBool = Field(True, description="off: no record is written (live streams still work)")
    path: Text = Field("stdout", description="stdout, or a file (appended)")
    headers: StrictBool = Field(False, description="include request headers (redacted) in each record")
    redact_headers: Annotated[TextList, AfterValidator(lambda hs: tuple(h.lower() for h in hs))] = (
        DEFAULT_REDACT_HEADERS
    )
    redact_paths: Annotated[TextList, AfterValidator(_path_patterns)] = Field(
        (),
        description="more regular expressions (Python re) whose matches in a logged, streamed, traced or"
        " reported path are replaced by [REDACTED], after the defaults (docs/observing.md); policy sees"
        " the real path",
    )
    queue: Annotated[StrictInt, Field(ge=1)] = Field(
        10_000, description="records waiting for the writer before they are dropped (and counted)"
    )

    def path_patterns(self) -> tuple[re.Pattern[str], ...]:
        return tuple(re.compile(p) for p in self.redact_paths)


def _otlp_url(value: str) -> str:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL (OTLP/HTTP), got {value!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError("no user, password, query or fragment in the URL: it is logged when an export fails")
    return value


class TracingSettings(Section):
    """OpenTelemetry: one span per Check, exported over OTLP/HTTP (needs ``ext-authz[tracing]``)."""

    endpoint: Annotated[StrictStr, AfterValidator(_otlp_url)] = Field(
        ..., description="the collector's OTLP/HTTP traces URL, e.g. http://127.0.0.1:4318/v1/traces"
    )
    service_name: Text = "ext-authz"
    sample_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        1.0, description="share of new traces sampled; a request's own sampling decision is kept"
    )
    timeout: Annotated[Duration, Field(gt=0, le=60)] = Field(10.0, description="per OTLP export")
    flush_interval: Annotated[Duration, Field(gt=0, le=60)] = Field(
        1.0, description="spans are exported in batches at least this often"
    )
    queue: Annotated[StrictInt, Field(ge=1)] = Field(
        4096, description="spans waiting for export before new ones are dropped"
    )
    follow_caller_sampling: StrictBool = Field(
        True,
        description="a request that says it is sampled is recorded (W3C/B3 parent-based sampling); false:"
        " every span is sampled at sample_ratio, whatever the caller asks (callers cannot force 100%)",
    )
    plaintext: StrictBool = Field(
        False, description="allow http:// to a collector beyond loopback (spans carry paths and decisions)"
    )

    @model_validator(mode="after")
    def _plaintext(self) -> TracingSettings:
        parts = urllib.parse.urlsplit(self.endpoint)
        if parts.scheme == "http" and not self.plaintext and not is_loopback(f"{parts.hostname}:0"):
            raise _SubKeyError(
                "endpoint",
                "http:// only to a collector on loopback; across a network use https://, or say"
                " plaintext: true (a collector in the same pod, a trusted node network)",
            )
        return self

    @model_validator(mode="after")
    def _installed(self) -> TracingSettings:
        import importlib

        for module in (
            "opentelemetry.sdk.trace",
            "opentelemetry.exporter.otlp.proto.http.trace_exporter",
            "opentelemetry.propagators.b3",
        ):
            try:  # imported, not only found: a broken install is a config error, not a failed start
                importlib.import_module(module)
            except ImportError as exc:
                hint = ""
                if "opentelemetry.proto" in str(exc):
                    # xds-protos (which ext-authz 0.1 needed) ships old copies of these files: an
                    # environment that had it may still hold them, or lack them once it was removed
                    hint = "; then: pip install --force-reinstall --no-deps opentelemetry-proto"
                raise ValueError(
                    f"tracing needs the extra: pip install 'ext-authz[tracing]'{hint} ({module}: {exc})"
                ) from exc
        return self


def _limit(low: int, high: int, default: int, description: str) -> Any:
    return Field(default, ge=low, le=high, description=description)


class Limits(Section):
    """What one Check may carry before it is refused unread (each with its reason code)."""

    max_token_bytes: StrictInt = _limit(256, MAX_TOKEN_BYTES, 8 * 1024, "bearer token → 401 token_too_large")
    # Above Envoy's own defaults (100 headers, 60 KiB), which count before Envoy adds its own
    # (x-request-id, x-forwarded-*, XFCC): a request Envoy accepted is not refused for its size here.
    max_headers: StrictInt = _limit(1, 10_000, 200, "request headers → 431 request_headers_too_large")
    max_header_bytes: StrictInt = _limit(1024, 1024 * 1024, 96 * 1024, "names + values → 431")
    max_chain_length: StrictInt = _limit(
        0, MAX_CHAIN, 5, "intermediates in the XFCC Chain → 401 cert_chain_too_large"
    )
    max_chain_bytes: StrictInt = _limit(
        1024, MAX_XFCC_BYTES, 32 * 1024, "peer certificate, XFCC header → 401"
    )
    max_body_bytes: StrictInt = _limit(
        0, 16 * 1024 * 1024, 8 * 1024, "a body Envoy sends → 413 body_too_large"
    )
    cel_max_expression_bytes: StrictInt = _limit(16, 64 * 1024, 4096, "checked at load: a rule's `when`")
    max_response_body_bytes: StrictInt = _limit(
        0, 1024 * 1024, 16 * 1024, "a rule's denial body (literal at load, CEL per request)"
    )
    max_response_header_bytes: StrictInt = _limit(
        64, 64 * 1024, 8 * 1024, "each header value a rule sets (literal at load, CEL per request)"
    )
    cel_max_comprehension_depth: StrictInt = _limit(0, 8, 2, "checked at load: nested all/exists/map/filter")


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class Settings(Section):
    """The whole configuration (v1 contract: keys are extended, never renamed)."""

    source: SkipJsonSchema[Path] = Field(Path("ext-authz.yaml"), exclude=True)
    listen: ListenAddress = Field(
        DEFAULT_LISTEN, description="Envoy's ext_authz gRPC target: HOST:PORT or unix:///path"
    )
    check: CheckSettings = Field(default_factory=CheckSettings)
    http_listen: Annotated[ListenAddress | None, BeforeValidator(lambda v: None if v == "" else v)] = Field(
        DEFAULT_HTTP_LISTEN, description="GET /metrics /healthz /readyz; null disables"
    )
    admin_listen: ListenAddress = DEFAULT_ADMIN_LISTEN
    trust_domains: Mapping[StrictStr, TrustDomainSettings] = Field(default_factory=dict)
    jwt_svid: JwtSvidSettings = Field(default_factory=JwtSvidSettings)
    issuers: Mapping[StrictStr, IssuerSettings] = Field(default_factory=dict)
    mtls: MtlsSettings = Field(default_factory=MtlsSettings)
    state: Annotated[StateSettings, BeforeValidator(_state_url)] = Field(
        default_factory=StateSettings,
        description="a URL, or a mapping with url and its protection",
        json_schema_extra=_url_or_section,
    )
    rules: Annotated[tuple[RuleSettings, ...], BeforeValidator(_none_as_empty)] = ()
    cache: CacheSettings = Field(default_factory=CacheSettings)
    reload_interval: Annotated[Duration, AfterValidator(lambda v: max(0.05, v))] = 1.0
    shutdown_grace: Duration = 10.0
    drain_delay: Duration = 3.0
    state_retention: Duration = Field(
        3600.0, description="ended records are listed this long, then forgotten"
    )
    quarantine: QuarantineSettings | None = None
    exceptions: ExceptionsSettings = Field(default_factory=ExceptionsSettings)
    grants: GrantsSettings = Field(default_factory=GrantsSettings)
    signals: SignalsSettings = Field(default_factory=SignalsSettings)
    audit_retention: Duration = Field(
        90 * 86400.0, description="how long the audit log keeps every change (apart from state_retention)"
    )
    max_token_age: Duration | None = None
    max_session_age: Duration | None = None
    device: DeviceSettings = Field(default_factory=DeviceSettings)
    tenant: TenantSettings = Field(default_factory=TenantSettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    decision_log: DecisionLogSettings = Field(default_factory=DecisionLogSettings)
    response: ResponseSettings = Field(default_factory=ResponseSettings)
    tracing: TracingSettings | None = Field(None, description="OpenTelemetry traces; off when absent")
    workers: Annotated[StrictInt, Field(ge=1, le=64)] = 1
    limits: Limits = Field(default_factory=Limits)
    transport: Literal["auto", "grpcio", "native"] = Field(
        "auto",
        description="the Check port's HTTP/2 server. auto: native (pygrpc-native, when installed) on a"
        " unix-socket listen without TLS — the sidecar, where it is safe — else grpcio",
    )
    shared_signals: SharedSignalsSettings = Field(default_factory=SharedSignalsSettings)
    allow_empty: StrictBool = Field(
        False,
        description="accept a configuration with no trust source or no rules (which refuses every"
        " request); without it such a file is invalid, so a truncated file never replaces a good one",
    )
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    @model_validator(mode="before")
    @classmethod
    def _source(cls, data: object, info: ValidationInfo) -> object:
        """Where the settings came from is the loader's to say, never the file's."""
        if isinstance(data, dict):
            if "source" in data:
                raise _KeyError("source", "unknown key: where the settings came from is not a setting")
            source = (info.context or {}).get("source")
            if source is not None:
                data = {**data, "source": source}
        return data

    @field_validator("trust_domains", "issuers", mode="before")
    @classmethod
    def _empty_mapping(cls, value: object) -> object:
        return {} if value is None else value

    @field_validator("trust_domains")
    @classmethod
    def _trust_domain_names(
        cls, value: Mapping[str, TrustDomainSettings]
    ) -> Mapping[str, TrustDomainSettings]:
        out: dict[str, TrustDomainSettings] = {}
        for name, td in value.items():
            try:
                out[TrustDomain(name).name] = td
            except SpiffeIdError as exc:
                raise _KeyError(f"trust_domains.{name}", f"not a valid trust domain name: {exc}") from exc
        return out

    @field_validator("issuers")
    @classmethod
    def _issuer_names(cls, value: Mapping[str, IssuerSettings]) -> Mapping[str, IssuerSettings]:
        for iss, ic in value.items():
            key = f"issuers.{iss}"
            if iss.startswith("spiffe://"):
                raise _KeyError(key, "JWT-SVIDs are verified through trust_domains, not issuers")
            if "#" in iss:
                # `ISSUER#SUBJECT` names a user (see ext_authz/principal.py): an issuer has no fragment.
                raise _KeyError(key, "an issuer cannot contain '#'")
            if ic.discovery and not iss.startswith("https://"):
                raise _KeyError(f"{key}.discovery", "OIDC discovery needs an https:// issuer")
        return value

    @field_validator("rules")
    @classmethod
    def _unique_rule_names(cls, rules: tuple[RuleSettings, ...]) -> tuple[RuleSettings, ...]:
        seen: set[str] = set()
        for i, rule in enumerate(rules):
            if rule.name in seen:
                raise _KeyError(f"rules[{i}].name", f"duplicate rule name {rule.name!r}")
            seen.add(rule.name)
        return rules

    @model_validator(mode="after")
    def _consistent(self, info: ValidationInfo) -> Settings:
        if (info.context or {}).get("source") is not None:  # a file: never an empty one by accident
            self._check_not_empty()
        self._check_tokens()
        self._check_shared_signals()
        self._check_listeners()
        self._check_workers_and_extras()
        self._check_reason_responses()
        return self

    def _check_reason_responses(self) -> None:
        limits = self.limits
        for reason, rc in self.response.reasons.items():
            if rc.body is not None and len(rc.body.encode()) > limits.max_response_body_bytes:
                raise _KeyError(
                    f"response.reasons.{reason}.body",
                    f"over limits.max_response_body_bytes ({limits.max_response_body_bytes})",
                )
            for name, value in rc.headers.items():
                if len(value.encode()) > limits.max_response_header_bytes:
                    raise _KeyError(
                        f"response.reasons.{reason}.headers.{name}",
                        f"over limits.max_response_header_bytes ({limits.max_response_header_bytes})",
                    )

    def _check_not_empty(self) -> None:
        if self.allow_empty:
            return
        if not self.trust_domains and not self.issuers:
            raise _KeyError(
                "trust_domains",
                "no trust source: name trust_domains or issuers (with none, every credential is refused;"
                " say allow_empty: true if that is meant)",
            )
        if not self.rules:
            raise _KeyError(
                "rules",
                "no rules: every request would be denied (say allow_empty: true if that is meant)",
            )

    def _check_shared_signals(self) -> None:
        ss = self.shared_signals
        if (ss.receivers or ss.transmitter is not None) and self.http_listen is None:
            raise _KeyError(
                "http_listen", "shared_signals needs http_listen (POST /ssf/events, the SSF endpoints)"
            )
        for i, r in enumerate(ss.receivers):
            for iss in r.for_issuers:
                if iss.startswith("spiffe://"):
                    if iss[len("spiffe://") :] not in self.trust_domains:
                        raise _KeyError(
                            f"shared_signals.receivers[{i}].for_issuers",
                            f"{iss}: not a configured trust domain",
                        )
                elif iss not in self.issuers:
                    raise _KeyError(
                        f"shared_signals.receivers[{i}].for_issuers", f"{iss}: not a configured issuer"
                    )

    def _check_tokens(self) -> None:
        if (
            any(td.jwt_bundle or td.workload_api for td in self.trust_domains.values())
            and not self.jwt_svid.audiences
        ):
            raise _KeyError("jwt_svid.audiences", "required when a trust domain has a jwt_bundle")

    def _svid_domains_known(self, key: str, ids: tuple[str, ...]) -> None:
        for sid in ids:
            td = SpiffeId.parse(sid).trust_domain.name
            cfg = self.trust_domains.get(td)
            if cfg is None or (cfg.x509_bundle is None and cfg.workload_api is None):
                raise _KeyError(
                    key, f"{sid}: its trust domain {td!r} needs an X.509 bundle in trust_domains to verify it"
                )

    def _check_listeners(self) -> None:
        check = self.check
        tcp = not self.listen.startswith("unix://")
        if check.tls is not None:
            if not tcp:
                raise _KeyError(
                    "check.tls", "TLS is for a TCP listen address; a unix socket is protected by its mode"
                )
            if not check.allowed_spiffe_ids:
                raise _KeyError(
                    "check.allowed_spiffe_ids", "required with check.tls: which Envoys may call Check"
                )
            if self.transport == "native":
                raise _KeyError(
                    "transport",
                    "native serves plaintext only (a unix socket or loopback):"
                    " use transport: grpcio for check.tls",
                )
            self._svid_domains_known("check.allowed_spiffe_ids", check.allowed_spiffe_ids)
        elif check.allowed_spiffe_ids:
            raise _KeyError("check.allowed_spiffe_ids", "takes effect only with check.tls")
        if tcp and check.tls is None and not check.plaintext:
            where = "on this host" if is_loopback(self.listen) else "beyond this host"
            raise _KeyError(
                "listen",
                f"{self.listen} is plaintext TCP, reachable by anything {where}, and Check has side effects:"
                " use a unix socket (the default), check.tls with allowed_spiffe_ids, or say"
                " check.plaintext: true",
            )
        admin = self.admin
        if not self.admin_listen.startswith("unix://"):
            if not (admin.allowed_spiffe_ids and admin.cert and admin.key):
                raise _KeyError(
                    "admin_listen",
                    "a TCP admin address needs TLS (admin.cert, admin.key) and admin.allowed_spiffe_ids",
                )
            self._svid_domains_known("admin.allowed_spiffe_ids", admin.allowed_spiffe_ids)

    def _check_workers_and_extras(self) -> None:
        if self.workers > 1 and self.state.scheme == "memory":
            raise _KeyError("workers", "several workers need a shared state store (sqlite:/// or redis://)")
        if self.workers > 1 and self.listen.startswith("unix://"):
            raise _KeyError(
                "workers", "several workers share a TCP port (SO_REUSEPORT); listen is a unix socket"
            )
        if self.workers > 1 and self.listen.endswith(":0"):
            raise _KeyError(
                "workers",
                "several workers share one TCP port: listen must name it (port 0 would give each its own)",
            )
        if self.event_loop == "uvloop" and not _installed("uvloop"):
            raise _KeyError("event_loop", "uvloop is not installed; install it or use asyncio")
        if self.transport == "native" and not _installed("pygrpc_native"):
            raise _KeyError(
                "transport", "native needs the pygrpc-native package: pip install 'ext-authz[native]'"
            )
        named = self.listen.rpartition(":")[0].lower().rstrip(".")
        if self.check_transport == "native" and named == "localhost":
            # grpcio binds every address localhost names; native binds one, and another local process
            # could then take the other (say [::1]:PORT) and answer an Envoy that resolves it there.
            raise _KeyError(
                "listen", "with transport: native, name the loopback address (127.0.0.1:PORT or [::1]:PORT)"
            )

    @property
    def check_transport(self) -> str:
        """The transport in force: ``auto`` resolved."""
        if self.transport != "auto":
            return self.transport
        native = self.listen.startswith("unix://") and self.check.tls is None and _installed("pygrpc_native")
        return "native" if native else "grpcio"

    def watched_files(self) -> tuple[Path, ...]:
        """The config file and every trust file it names: a change to any of them reloads."""
        files: list[Path] = [self.source]
        for td in self.trust_domains.values():
            files.extend(p for p in (td.x509_bundle, td.jwt_bundle) if p is not None)
        files.extend(p for i in self.issuers.values() if (p := i.jwks_file) is not None)
        ss = self.shared_signals
        files.extend(p for r in ss.receivers if (p := r.jwks_file) is not None)
        files.extend(p for r in ss.receivers if (p := r.authorization_file) is not None)  # rotated secrets
        if ss.transmitter is not None:
            files.append(ss.transmitter.key)
            files.extend(st.authorization_file for st in ss.transmitter.streams)
        return tuple(dict.fromkeys(files))


def json_schema() -> dict[str, Any]:
    """The configuration file's JSON Schema (draft 2020-12), for editors and CI."""
    schema = Settings.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ext-authz configuration"
    return schema


def _KeyError(key: str, message: str) -> PydanticCustomError:
    """A check across keys failed: it names the key it is about (the loader reports it as that key)."""
    return PydanticCustomError("config", "{message}", {"key": key, "message": message})


def _SubKeyError(sub: str, message: str) -> PydanticCustomError:
    """A check inside a section failed: it names the key within the section."""
    return PydanticCustomError("config_sub", "{message}", {"sub": sub, "message": message})
