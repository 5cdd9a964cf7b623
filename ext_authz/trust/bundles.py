"""Load trust bundles: PEM roots, SPIFFE bundle JSON (RFC 7517 JWK set with ``use``), JWKS.

A SPIFFE bundle may carry both kinds of key: ``use: x509-svid`` entries (with ``x5c``) are
X.509 roots, ``use: jwt-svid`` entries are JWT-SVID signing keys. The same file may therefore
serve as a trust domain's ``x509_bundle`` and ``jwt_bundle``.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.x509.verification import Store
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from ..errors import TrustError
from .revision import TrustRevision

__all__ = [
    "IssuerTrust",
    "JwtKeys",
    "TrustDomainTrust",
    "TrustSnapshot",
    "parse_jwks",
    "parse_x509_bundle",
]

_ASYMMETRIC = (RSAKey, ECKey, OKPKey)


@dataclass(frozen=True, slots=True)
class JwtKeys:
    """Public keys by ``kid``; keys published without a ``kid`` are kept apart."""

    by_kid: Mapping[str, Key] = field(default_factory=dict)
    without_kid: tuple[Key, ...] = ()

    def __len__(self) -> int:
        return len(self.by_kid) + len(self.without_kid)


@dataclass(frozen=True, slots=True)
class TrustDomainTrust:
    name: str
    x509_roots: tuple[x509.Certificate, ...] = ()
    jwt_keys: JwtKeys = field(default_factory=JwtKeys)
    store: Store | None = None
    revision: str = ""  # changes exactly when this trust domain's material changes


@dataclass(frozen=True, slots=True)
class IssuerTrust:
    issuer: str
    keys: JwtKeys
    remote: bool = False  # keys fetched over HTTPS: they go stale
    fetched_at: float | None = None  # last successful fetch (remote only)
    max_stale: float = 86_400.0

    def stale(self, now: float) -> bool:
        """Remote keys never fetched, or not refreshed for longer than ``max_stale``."""
        if not self.remote:
            return False
        return self.fetched_at is None or now - self.fetched_at > self.max_stale


@dataclass(frozen=True, slots=True)
class TrustSnapshot:
    """Immutable trust material. ``revision`` changes exactly when the material changes."""

    revision: TrustRevision = field(default_factory=TrustRevision)
    domains: Mapping[str, TrustDomainTrust] = field(default_factory=dict)
    issuers: Mapping[str, IssuerTrust] = field(default_factory=dict)
    # SSF transmitters' SET-signing keys, by the transmitter's issuer (files here; URLs by a live source)
    transmitters: Mapping[str, IssuerTrust] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The revision as one string: what verified-credential caches are keyed by."""
        return self.revision.key

    def with_source(
        self,
        name: str,
        digest: str,
        *,
        domains: Mapping[str, TrustDomainTrust] | None = None,
        issuers: Mapping[str, IssuerTrust] | None = None,
        transmitters: Mapping[str, IssuerTrust] | None = None,
    ) -> TrustSnapshot:
        """This material with a live source's part replaced; the revision covers every source."""
        return TrustSnapshot(
            revision=self.revision.with_source(name, digest),
            domains=self.domains if domains is None else domains,
            issuers=self.issuers if issuers is None else issuers,
            transmitters=self.transmitters if transmitters is None else transmitters,
        )


def _load_json(data: bytes, source: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TrustError(f"{source}: not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise TrustError(f"{source}: not valid JSON (nested too deeply)") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise TrustError(f"{source}: expected a JWK set: an object with a 'keys' list")
    return doc


def _looks_like_json(data: bytes) -> bool:
    return data.lstrip()[:1] == b"{"


def parse_x509_bundle(data: bytes, source: str) -> tuple[x509.Certificate, ...]:
    """Roots from PEM, or from the ``use: x509-svid`` entries of a SPIFFE bundle."""
    if _looks_like_json(data):
        doc = _load_json(data, source)
        certs: list[x509.Certificate] = []
        for i, entry in enumerate(doc["keys"]):
            if not isinstance(entry, dict) or entry.get("use") != "x509-svid":
                continue
            x5c = entry.get("x5c")
            if not isinstance(x5c, list) or len(x5c) != 1 or not isinstance(x5c[0], str):
                raise TrustError(f"{source}: keys[{i}]: an x509-svid entry needs exactly one x5c certificate")
            try:
                der = base64.b64decode(x5c[0], validate=True)
                certs.append(x509.load_der_x509_certificate(der))
            except (ValueError, binascii.Error) as exc:
                raise TrustError(f"{source}: keys[{i}].x5c: not a DER certificate ({exc})") from exc
        if not certs:
            raise TrustError(f"{source}: no 'use: x509-svid' entries in the SPIFFE bundle")
        return tuple(certs)
    try:
        pem_certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TrustError(f"{source}: no PEM certificates could be read ({exc})") from exc
    return tuple(pem_certs)


def parse_jwks(data: bytes, source: str, *, require_use: str | None) -> JwtKeys:
    """Public signing keys from a JWK set.

    ``require_use="jwt-svid"`` for SPIFFE bundles: only entries with that ``use`` are taken.
    For OIDC issuers (``require_use=None``) entries with ``use`` other than ``sig`` are skipped.
    Entries whose ``key_ops`` is present but does not include ``verify`` are skipped as well.
    Symmetric (``oct``) keys and private keys are refused: a verifier holds public keys only.
    """
    doc = _load_json(data, source)
    by_kid: dict[str, Key] = {}
    without_kid: list[Key] = []
    for i, entry in enumerate(doc["keys"]):
        if not isinstance(entry, dict):
            raise TrustError(f"{source}: keys[{i}]: expected a JWK object")
        use = entry.get("use")
        if require_use is not None:
            if use != require_use:
                continue
        elif use not in (None, "sig"):
            continue
        key_ops = entry.get("key_ops")
        if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
            continue  # RFC 7517 §4.3: not published for verifying signatures
        if entry.get("kty") == "oct":
            raise TrustError(f"{source}: keys[{i}]: symmetric (oct) keys are not accepted")
        if any(p in entry for p in ("d", "p", "q", "dp", "dq", "qi")):
            raise TrustError(f"{source}: keys[{i}]: contains private key material; publish public keys only")
        public = {k: v for k, v in entry.items() if k not in ("use", "key_ops", "x5c", "x5t", "x5t#S256")}
        try:
            key = _import_jwk(public)
        except (JoseError, ValueError, TypeError, KeyError) as exc:  # KeyError: an unknown curve
            raise TrustError(
                f"{source}: keys[{i}]: not a usable public key ({type(exc).__name__}: {exc})"
            ) from exc
        kid = entry.get("kid")
        if isinstance(kid, str) and kid:
            if kid in by_kid:
                raise TrustError(f"{source}: keys[{i}]: duplicate kid {kid!r}")
            by_kid[kid] = key
        else:
            without_kid.append(key)
    if not by_kid and not without_kid:
        wanted = f"'use: {require_use}'" if require_use else "signing"
        raise TrustError(f"{source}: no {wanted} keys in the key set")
    return JwtKeys(by_kid=by_kid, without_kid=tuple(without_kid))


def _import_jwk(entry: dict[str, Any]) -> Key:
    kty = entry.get("kty")
    if kty == "RSA":
        return RSAKey.import_key(entry)
    if kty == "EC":
        return ECKey.import_key(entry)
    if kty == "OKP":
        return OKPKey.import_key(entry)
    raise ValueError(f"unsupported kty {kty!r}")
