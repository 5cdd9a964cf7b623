"""The v1 configuration contract: load, validate once, fill defaults.

Every error names the file, the key and what was expected. Unknown keys are errors: in a
security configuration a typo must not silently turn into a default.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from .errors import ConfigError
from .identity.spiffe_id import SpiffeId, SpiffeIdError, TrustDomain
from .identity.x509_svid import MAX_CHAIN
from .identity.xfcc import MAX_XFCC_BYTES

__all__ = [
    "DEFAULT_ADMIN_LISTEN",
    "DEFAULT_HTTP_LISTEN",
    "DEFAULT_LISTEN",
    "DEFAULT_STATE",
    "JWT_SVID_ALGORITHMS",
    "AdminConfig",
    "CacheConfig",
    "Config",
    "DecisionLogConfig",
    "DeviceConfig",
    "IssuerConfig",
    "JwtSvidConfig",
    "MatchConfig",
    "QuarantineConfig",
    "RuleConfig",
    "TrustDomainConfig",
    "load_config",
    "parse_config",
    "parse_duration",
]

DEFAULT_LISTEN = "127.0.0.1:9191"
DEFAULT_HTTP_LISTEN = "127.0.0.1:9192"
DEFAULT_ADMIN_LISTEN = "unix:///run/ext-authz/admin.sock"
DEFAULT_STATE = "sqlite:///var/lib/ext-authz/state.db"

JWT_SVID_ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512")
_ASYMMETRIC_ALGORITHMS = frozenset((*JWT_SVID_ALGORITHMS, "EdDSA"))
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"))


@dataclass(frozen=True, slots=True)
class TrustDomainConfig:
    name: str
    x509_bundle: Path | None = None
    jwt_bundle: Path | None = None
    workload_api: str | None = None


@dataclass(frozen=True, slots=True)
class JwtSvidConfig:
    audiences: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = JWT_SVID_ALGORITHMS
    leeway: float = 30.0


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    issuer: str
    jwks: Path | None  # a JWKS file, or None when the keys come from jwks_url / discovery
    audiences: tuple[str, ...]
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway: float = 30.0
    subject_claim: str = "sub"
    jwks_url: str = ""  # https URL of the JWKS (given, or found through OIDC discovery)
    discovery: bool = False  # find jwks_uri at {issuer}/.well-known/openid-configuration
    refresh: float = 300.0  # refetch this often
    max_stale: float = 86_400.0  # keep using the last keys this long when fetching fails
    ca: Path | None = None  # extra CA bundle to verify the issuer's HTTPS server

    @property
    def remote(self) -> bool:
        return self.jwks is None


@dataclass(frozen=True, slots=True)
class MatchConfig:
    hosts: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    context_extensions: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RuleConfig:
    name: str
    effect: str  # allow | deny
    mode: str  # enforce | shadow
    match: MatchConfig
    when: str | None
    anonymous: bool
    key: str  # where the rule lives in the file, e.g. "rules[2]"


@dataclass(frozen=True, slots=True)
class QuarantineConfig:
    """An identity denied ``denials`` times within ``window`` is revoked for ``duration``."""

    denials: int
    window: float
    duration: float


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    """Where a request's device id comes from: a token claim, else a request header."""

    claim: str = "device_id"
    header: str = ""


@dataclass(frozen=True, slots=True)
class AdminConfig:
    """TCP admin listeners need mTLS and an allow-list of caller SPIFFE IDs."""

    allowed_spiffe_ids: tuple[str, ...] = ()
    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None


@dataclass(frozen=True, slots=True)
class DecisionLogConfig:
    path: str = "stdout"  # stdout, or a file (appended)
    headers: bool = False  # include request headers (redacted) in each record
    redact_headers: tuple[str, ...] = (
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
    )
    queue: int = 10_000

    redact_headers_default: ClassVar[tuple[str, ...]] = (
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
    )  # records waiting for a slow sink before they are dropped (and counted)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    size: int = 10_000


@dataclass(frozen=True, slots=True)
class Limits:
    """What one Check may carry before it is refused unread (each with its reason code)."""

    max_token_bytes: int = 8 * 1024  # token_too_large (401)
    # Above Envoy's own defaults (100 headers, 60 KiB), which count before Envoy adds its own
    # (x-request-id, x-forwarded-*, XFCC): a request Envoy accepted is not refused for its size here.
    max_headers: int = 200  # request_headers_too_large (431)
    max_header_bytes: int = 96 * 1024  # names + values; request_headers_too_large (431)
    max_chain_length: int = 5  # intermediates after the leaf; cert_chain_too_large (401)
    max_chain_bytes: int = 32 * 1024  # the peer certificate, and the XFCC header; cert_chain_too_large (401)
    max_body_bytes: int = 8 * 1024  # a body Envoy was told to send (with_request_body); body_too_large (413)
    cel_max_expression_bytes: int = 4096  # checked at load: a rule's `when`
    cel_max_comprehension_depth: int = 2  # checked at load: all/exists/exists_one/map/filter nested


MAX_TOKEN_BYTES = 16 * 1024  # the JWT verifier refuses longer tokens whatever the config says

# Upper ends are the verifiers' own hard bounds: a limit above them could never take effect.
_LIMIT_RANGES: dict[str, tuple[int, int]] = {
    "max_token_bytes": (256, MAX_TOKEN_BYTES),
    "max_headers": (1, 10_000),
    "max_header_bytes": (1024, 1024 * 1024),
    "max_chain_length": (0, MAX_CHAIN),
    "max_chain_bytes": (1024, MAX_XFCC_BYTES),
    "max_body_bytes": (0, 16 * 1024 * 1024),
    "cel_max_expression_bytes": (16, 64 * 1024),
    "cel_max_comprehension_depth": (0, 8),
}


@dataclass(frozen=True, slots=True)
class Config:
    source: Path
    listen: str = DEFAULT_LISTEN
    http_listen: str | None = DEFAULT_HTTP_LISTEN
    admin_listen: str = DEFAULT_ADMIN_LISTEN
    trust_domains: Mapping[str, TrustDomainConfig] = field(default_factory=dict)
    jwt_svid: JwtSvidConfig = field(default_factory=JwtSvidConfig)
    issuers: Mapping[str, IssuerConfig] = field(default_factory=dict)
    mtls_source: str = "certificate"
    state: str = DEFAULT_STATE
    rules: tuple[RuleConfig, ...] = ()
    cache: CacheConfig = field(default_factory=CacheConfig)
    reload_interval: float = 1.0
    shutdown_grace: float = 10.0
    state_retention: float = 3600.0  # ended revocations, grants, exceptions, signals: listed this long
    drain_delay: float = 3.0  # after SIGTERM: NOT_SERVING but still answering Checks, before stopping
    quarantine: QuarantineConfig | None = None
    exceptions_max_duration: float = 4 * 3600.0
    max_token_age: float | None = None
    max_session_age: float | None = None
    device: DeviceConfig = field(default_factory=DeviceConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    decision_log: DecisionLogConfig = field(default_factory=DecisionLogConfig)
    workers: int = 1
    limits: Limits = field(default_factory=Limits)
    # The Check port's HTTP/2 server: grpcio's grpc.aio, or "native" (pygrpc-native).
    transport: str = "grpcio"
    event_loop: str = "uvloop"  # or "asyncio" (the standard library's)

    def watched_files(self) -> tuple[Path, ...]:
        """The config file and every trust file it names: a change to any of them reloads."""
        files: list[Path] = [self.source]
        for td in self.trust_domains.values():
            files.extend(p for p in (td.x509_bundle, td.jwt_bundle) if p is not None)
        files.extend(i.jwks for i in self.issuers.values() if i.jwks is not None)
        return tuple(dict.fromkeys(files))


def parse_duration(value: object, file: str, key: str) -> float:
    """``90``, ``90s``, ``250ms``, ``15m``, ``4h``, ``7d`` → seconds."""
    if isinstance(value, bool):
        raise ConfigError(file, key, "expected a duration such as 30s, 15m or 4h")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value).strip()) if isinstance(value, str) else None
        if m is None:
            raise ConfigError(file, key, f"expected a duration such as 30s, 15m or 4h, got {value!r}")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(seconds):
        raise ConfigError(file, key, f"expected a finite duration, got {value!r}")
    if seconds < 0:
        raise ConfigError(file, key, "a duration cannot be negative")
    return seconds


class _Section:
    """A mapping being read: remembers the file and key path for error messages."""

    def __init__(self, data: object, file: str, key: str, allowed: frozenset[str]) -> None:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(file, key or "(top level)", f"expected a mapping, got {_kind(data)}")
        for k in data:
            if not isinstance(k, str) or k not in allowed:
                raise ConfigError(
                    file, self._join(key, str(k)), f"unknown key; expected one of {sorted(allowed)}"
                )
        self.data: dict[str, Any] = data
        self.file = file
        self.key = key

    @staticmethod
    def _join(key: str, sub: str) -> str:
        return f"{key}.{sub}" if key else sub

    def where(self, sub: str) -> str:
        return self._join(self.key, sub)

    def has(self, name: str) -> bool:
        return name in self.data and self.data[name] is not None

    def text(self, name: str, default: str | None = None, *, required: bool = False) -> str | None:
        if not self.has(name):
            if required:
                raise ConfigError(self.file, self.where(name), "is required")
            return default
        value = self.data[name]
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(self.file, self.where(name), f"expected a non-empty string, got {_kind(value)}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        if not self.has(name):
            return default
        value = self.data[name]
        if not isinstance(value, bool):
            raise ConfigError(self.file, self.where(name), f"expected true or false, got {_kind(value)}")
        return value

    def str_list(self, name: str) -> tuple[str, ...]:
        if not self.has(name):
            return ()
        value = self.data[name]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(self.file, self.where(name), "expected a list of non-empty strings")
        return tuple(value)

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        value = self.text(name, default)
        assert value is not None
        if value not in choices:
            raise ConfigError(self.file, self.where(name), f"expected one of {list(choices)}, got {value!r}")
        return value

    def section(self, name: str, allowed: frozenset[str]) -> _Section:
        return _Section(self.data.get(name), self.file, self.where(name), allowed)

    def path(self, name: str, base: Path) -> Path | None:
        value = self.text(name)
        if value is None:
            return None
        if "://" in value:
            raise ConfigError(
                self.file,
                self.where(name),
                "expected a file path (URL sources arrive with live trust sources)",
            )
        p = Path(value)
        return p if p.is_absolute() else base / p


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number"}.get(
        type(value), type(value).__name__
    )


def _listen(section: _Section, name: str, default: str | None) -> str | None:
    value = section.text(name, default)
    if value is None:
        return None
    if value.startswith("unix://"):
        if not value[len("unix://") :].startswith("/"):
            raise ConfigError(
                section.file, section.where(name), "a unix socket address is unix:///absolute/path"
            )
        return value
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(
            section.file, section.where(name), f"expected HOST:PORT or unix:///path, got {value!r}"
        )
    return value


def _algorithms(
    section: _Section, name: str, default: tuple[str, ...], allowed: frozenset[str]
) -> tuple[str, ...]:
    algs = section.str_list(name) or default
    for alg in algs:
        if alg not in allowed:
            raise ConfigError(
                section.file,
                section.where(name),
                f"algorithm {alg!r} is not allowed; expected some of {sorted(allowed)} (never none or HS*)",
            )
    return algs


_TOP = frozenset(
    (
        "listen",
        "http_listen",
        "admin_listen",
        "trust_domains",
        "jwt_svid",
        "issuers",
        "mtls",
        "state",
        "rules",
        "cache",
        "reload_interval",
        "shutdown_grace",
        "drain_delay",
        "state_retention",
        "quarantine",
        "exceptions",
        "max_token_age",
        "max_session_age",
        "device",
        "admin",
        "decision_log",
        "workers",
        "transport",
        "limits",
        "event_loop",
    )
)


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise ConfigError(str(p), "", f"cannot read the file ({exc.strerror or exc})") from exc
    return parse_config(text, p)


def parse_config(text: bytes | str, source: Path) -> Config:
    file = str(source)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(file, "", f"not valid YAML: {exc}") from exc
    top = _Section(data, file, "", _TOP)
    base = source.parent

    trust_domains: dict[str, TrustDomainConfig] = {}
    tds = top.data.get("trust_domains") or {}
    if not isinstance(tds, dict):
        raise ConfigError(file, "trust_domains", "expected a mapping of trust domain name to its bundles")
    for name, _ in tds.items():
        key = f"trust_domains.{name}"
        try:
            td = TrustDomain(str(name))
        except SpiffeIdError as exc:
            raise ConfigError(file, key, f"not a valid trust domain name: {exc}") from exc
        sec = top.section("trust_domains", frozenset(map(str, tds))).section(
            str(name), frozenset(("x509_bundle", "jwt_bundle", "workload_api"))
        )
        cfg = TrustDomainConfig(
            name=td.name,
            x509_bundle=sec.path("x509_bundle", base),
            jwt_bundle=sec.path("jwt_bundle", base),
            workload_api=sec.text("workload_api"),
        )
        if cfg.workload_api is not None:
            if not cfg.workload_api.startswith("unix:///"):
                raise ConfigError(file, f"{key}.workload_api", "expected the agent socket as unix:///path")
            if cfg.x509_bundle is not None or cfg.jwt_bundle is not None:
                raise ConfigError(
                    file, key, "either workload_api or bundle files, not both: bundles never mix"
                )
        if cfg.x509_bundle is None and cfg.jwt_bundle is None and cfg.workload_api is None:
            raise ConfigError(file, key, "needs at least one of x509_bundle, jwt_bundle, workload_api")
        trust_domains[td.name] = cfg

    jwt_sec = top.section("jwt_svid", frozenset(("audiences", "algorithms", "leeway")))
    jwt_svid = JwtSvidConfig(
        audiences=jwt_sec.str_list("audiences"),
        algorithms=_algorithms(jwt_sec, "algorithms", JWT_SVID_ALGORITHMS, frozenset(JWT_SVID_ALGORITHMS)),
        leeway=parse_duration(jwt_sec.data.get("leeway", 30), file, jwt_sec.where("leeway")),
    )
    if any(td.jwt_bundle or td.workload_api for td in trust_domains.values()) and not jwt_svid.audiences:
        raise ConfigError(file, "jwt_svid.audiences", "required when a trust domain has a jwt_bundle")

    issuers: dict[str, IssuerConfig] = {}
    iss_data = top.data.get("issuers") or {}
    if not isinstance(iss_data, dict):
        raise ConfigError(file, "issuers", "expected a mapping of issuer (the token's iss) to its settings")
    iss_top = top.section("issuers", frozenset(map(str, iss_data)))
    for iss in iss_data:
        sec = iss_top.section(
            str(iss),
            frozenset(
                (
                    "jwks",
                    "discovery",
                    "refresh",
                    "max_stale",
                    "ca",
                    "audiences",
                    "algorithms",
                    "leeway",
                    "subject_claim",
                )
            ),
        )
        if str(iss).startswith("spiffe://"):
            raise ConfigError(file, sec.key, "JWT-SVIDs are verified through trust_domains, not issuers")
        raw_jwks = sec.text("jwks")
        discovery = sec.flag("discovery", False)
        jwks: Path | None = None
        jwks_url = ""
        if raw_jwks and raw_jwks.startswith("https://"):
            jwks_url = raw_jwks
        elif raw_jwks and "://" in raw_jwks:
            raise ConfigError(file, sec.where("jwks"), "a JWKS URL must be https://")
        elif raw_jwks:
            jwks = sec.path("jwks", base)
        if discovery and raw_jwks:
            raise ConfigError(file, sec.key, "either jwks or discovery: true, not both")
        if discovery and not str(iss).startswith("https://"):
            raise ConfigError(file, sec.where("discovery"), "OIDC discovery needs an https:// issuer")
        if jwks is None and not jwks_url and not discovery:
            raise ConfigError(
                file, sec.where("jwks"), "is required: a JWKS file, an https URL, or discovery: true"
            )
        audiences = sec.str_list("audiences")
        if not audiences:
            raise ConfigError(file, sec.where("audiences"), "is required: tokens must be meant for us")
        issuers[str(iss)] = IssuerConfig(
            issuer=str(iss),
            jwks=jwks,
            audiences=audiences,
            algorithms=_algorithms(sec, "algorithms", ("RS256", "ES256"), _ASYMMETRIC_ALGORITHMS),
            leeway=parse_duration(sec.data.get("leeway", 30), file, sec.where("leeway")),
            subject_claim=sec.text("subject_claim", "sub") or "sub",
            jwks_url=jwks_url,
            discovery=discovery,
            refresh=max(1.0, parse_duration(sec.data.get("refresh", "5m"), file, sec.where("refresh"))),
            max_stale=parse_duration(sec.data.get("max_stale", "24h"), file, sec.where("max_stale")),
            ca=sec.path("ca", base),
        )

    mtls = top.section("mtls", frozenset(("source",)))
    cache = top.section("cache", frozenset(("size",)))
    size = cache.data.get("size", 10_000)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ConfigError(file, "cache.size", "expected a whole number of entries (0 disables caching)")

    state = top.text("state", DEFAULT_STATE) or DEFAULT_STATE
    if not state.startswith(("memory://", "sqlite:///", "redis://", "rediss://")):
        raise ConfigError(file, "state", "expected memory://, sqlite:///PATH or redis://HOST:PORT/DB")

    rules = _rules(top, file)
    listen_value = _listen(top, "listen", DEFAULT_LISTEN) or DEFAULT_LISTEN

    quarantine = None
    if top.has("quarantine"):
        q = top.section("quarantine", frozenset(("denials", "window", "duration")))
        denials = q.data.get("denials")
        if isinstance(denials, bool) or not isinstance(denials, int) or denials < 1:
            raise ConfigError(file, "quarantine.denials", "expected a whole number of denials, at least 1")
        quarantine = QuarantineConfig(
            denials=denials,
            window=parse_duration(q.data.get("window", "60s"), file, "quarantine.window"),
            duration=parse_duration(q.data.get("duration", "15m"), file, "quarantine.duration"),
        )
    exc_sec = top.section("exceptions", frozenset(("max_duration",)))
    max_exc = parse_duration(exc_sec.data.get("max_duration", "4h"), file, "exceptions.max_duration")
    if max_exc <= 0:
        raise ConfigError(
            file, "exceptions.max_duration", "must be longer than zero: exceptions are time-boxed"
        )
    dev = top.section("device", frozenset(("claim", "header")))
    admin = top.section("admin", frozenset(("allowed_spiffe_ids", "cert", "key", "client_ca")))
    allowed = admin.str_list("allowed_spiffe_ids")
    for i, sid in enumerate(allowed):
        spiffe_id_or_error(sid, file, f"admin.allowed_spiffe_ids[{i}]")
    admin_cfg = AdminConfig(
        allowed_spiffe_ids=allowed,
        cert=admin.path("cert", base),
        key=admin.path("key", base),
        client_ca=admin.path("client_ca", base),
    )
    admin_listen = _listen(top, "admin_listen", DEFAULT_ADMIN_LISTEN) or DEFAULT_ADMIN_LISTEN
    if not admin_listen.startswith("unix://") and not (
        allowed and admin_cfg.cert and admin_cfg.key and admin_cfg.client_ca
    ):
        raise ConfigError(
            file,
            "admin_listen",
            "a TCP admin address needs mTLS (admin.cert, admin.key, admin.client_ca)"
            " and admin.allowed_spiffe_ids",
        )

    dl = top.section("decision_log", frozenset(("path", "headers", "redact_headers", "queue")))
    dl_queue = dl.data.get("queue", 10_000)
    if isinstance(dl_queue, bool) or not isinstance(dl_queue, int) or dl_queue < 1:
        raise ConfigError(file, "decision_log.queue", "expected a whole number of records, at least 1")
    redact = (
        dl.str_list("redact_headers")
        if dl.has("redact_headers")
        else DecisionLogConfig.redact_headers_default
    )
    decision_log = DecisionLogConfig(
        path=dl.text("path", "stdout") or "stdout",
        headers=dl.flag("headers", False),
        redact_headers=tuple(h.lower() for h in redact),
        queue=dl_queue,
    )

    workers = top.data.get("workers", 1)
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 64:
        raise ConfigError(file, "workers", "expected a whole number of serving processes, 1 to 64")
    if workers > 1 and state.startswith("memory://"):
        raise ConfigError(
            file, "workers", "several workers need a shared state store (sqlite:/// or redis://)"
        )
    if workers > 1 and listen_value.startswith("unix://"):
        raise ConfigError(
            file, "workers", "several workers share a TCP port (SO_REUSEPORT); listen is a unix socket"
        )

    lim = top.section("limits", frozenset(_LIMIT_RANGES))
    limit_values: dict[str, int] = {}
    for name, (low, high) in _LIMIT_RANGES.items():
        if lim.has(name):
            value = lim.data[name]
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(file, lim.where(name), f"expected a whole number from {low} to {high}")
            limit_values[name] = value
    limits = Limits(**limit_values)

    event_loop = top.choice("event_loop", ("uvloop", "asyncio"), "uvloop")
    if event_loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise ConfigError(file, "event_loop", "uvloop is not installed; install it or use asyncio")
    transport = top.choice("transport", ("grpcio", "native"), "grpcio")
    if transport == "native" and importlib.util.find_spec("pygrpc_native") is None:
        raise ConfigError(
            file, "transport", "native needs the pygrpc-native package: pip install 'ext-authz[native]'"
        )

    def _age(name: str) -> float | None:
        return parse_duration(top.data[name], file, name) if top.has(name) else None

    return Config(
        source=source,
        listen=listen_value,
        # `http_listen: null` (or "") turns the HTTP health endpoints off.
        http_listen=None
        if "http_listen" in top.data and top.data["http_listen"] in (None, "")
        else _listen(top, "http_listen", DEFAULT_HTTP_LISTEN),
        admin_listen=admin_listen,
        trust_domains=trust_domains,
        jwt_svid=jwt_svid,
        issuers=issuers,
        mtls_source=mtls.choice("source", ("certificate", "principal"), "certificate"),
        state=state,
        rules=rules,
        cache=CacheConfig(size=size),
        reload_interval=max(
            0.05, parse_duration(top.data.get("reload_interval", 1), file, "reload_interval")
        ),
        shutdown_grace=parse_duration(top.data.get("shutdown_grace", 10), file, "shutdown_grace"),
        drain_delay=parse_duration(top.data.get("drain_delay", 3), file, "drain_delay"),
        state_retention=parse_duration(top.data.get("state_retention", "1h"), file, "state_retention"),
        quarantine=quarantine,
        exceptions_max_duration=max_exc,
        max_token_age=_age("max_token_age"),
        max_session_age=_age("max_session_age"),
        device=DeviceConfig(
            claim=dev.text("claim", "device_id") or "device_id", header=(dev.text("header", "") or "").lower()
        ),
        admin=admin_cfg,
        decision_log=decision_log,
        workers=workers,
        transport=transport,
        event_loop=event_loop,
        limits=limits,
    )


_RULE_KEYS = frozenset(("name", "effect", "mode", "match", "when", "anonymous", "description"))
_MATCH_KEYS = frozenset(("hosts", "paths", "methods", "context_extensions"))


def _rules(top: _Section, file: str) -> tuple[RuleConfig, ...]:
    raw = top.data.get("rules")
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(file, "rules", "expected a list of rules")
    seen: set[str] = set()
    rules: list[RuleConfig] = []
    for i, item in enumerate(raw):
        key = f"rules[{i}]"
        sec = _Section(item, file, key, _RULE_KEYS)
        name = sec.text("name", required=True)
        assert name is not None
        if name in seen:
            raise ConfigError(file, sec.where("name"), f"duplicate rule name {name!r}")
        seen.add(name)
        m = sec.section("match", _MATCH_KEYS)
        methods = tuple(x.upper() for x in m.str_list("methods"))
        for meth in methods:
            if meth not in _METHODS:
                raise ConfigError(file, m.where("methods"), f"unknown HTTP method {meth!r}")
        for p in m.str_list("paths"):
            if not p.startswith("/") and p != "*":
                raise ConfigError(file, m.where("paths"), f"a path pattern starts with '/', got {p!r}")
        ext_raw = m.data.get("context_extensions") or {}
        if not isinstance(ext_raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in ext_raw.items()
        ):
            raise ConfigError(file, m.where("context_extensions"), "expected a mapping of string to string")
        when = sec.text("when")
        rules.append(
            RuleConfig(
                name=name,
                effect=sec.choice("effect", ("allow", "deny"), "allow"),
                mode=sec.choice("mode", ("enforce", "shadow"), "enforce"),
                match=MatchConfig(
                    hosts=tuple(h.lower() for h in m.str_list("hosts")),
                    paths=m.str_list("paths"),
                    methods=methods,
                    context_extensions=dict(ext_raw),
                ),
                when=when,
                anonymous=sec.flag("anonymous", False),
                key=key,
            )
        )
    return tuple(rules)


def spiffe_id_or_error(value: str, file: str, key: str) -> SpiffeId:
    try:
        return SpiffeId.parse(value)
    except SpiffeIdError as exc:
        raise ConfigError(file, key, f"not a valid SPIFFE ID: {exc}") from exc
