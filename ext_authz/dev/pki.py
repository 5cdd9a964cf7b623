"""Factories for real certificates, keys, SPIFFE bundles and JWTs (demo and tests)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from joserfc import jws
from joserfc.jwk import ECKey, Key, RSAKey

__all__ = [
    "Issued",
    "cert_pem",
    "jwk_public",
    "key_pem",
    "load_issued",
    "make_ca",
    "make_leaf",
    "mint_jwt",
    "new_ec_key",
    "new_jwt_key",
    "spiffe_bundle",
]

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: PrivateKey

    @property
    def pem(self) -> str:
        return cert_pem(self.cert)

    @property
    def key_pem(self) -> str:
        return key_pem(self.key)


def load_issued(cert: bytes, key: bytes) -> Issued:
    """A certificate (the first in ``cert``) and its private key, from PEM, e.g. a demo CA on disk."""
    private = serialization.load_pem_private_key(key, password=None)
    assert isinstance(private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey)
    return Issued(x509.load_pem_x509_certificates(cert)[0], private)


def new_ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def key_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def _window(
    now: datetime | None, days: float, not_before: datetime | None, not_after: datetime | None
) -> tuple[datetime, datetime]:
    now = now or datetime.now(UTC)
    return (not_before or now - timedelta(minutes=5), not_after or now + timedelta(days=days))


def make_ca(
    name: str,
    *,
    parent: Issued | None = None,
    spiffe_td: str | None = None,
    key: PrivateKey | None = None,
    days: float = 365,
    now: datetime | None = None,
    path_length: int | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
) -> Issued:
    """A root (no parent) or intermediate CA. ``spiffe_td`` adds the trust domain's URI SAN."""
    key = key or new_ec_key()
    nb, na = _window(now, days, not_before, not_after)
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ext-authz demo"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    issuer_name = parent.cert.subject if parent else subject
    signer = parent.key if parent else key
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(nb)
        .not_valid_after(na)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
    )
    if parent is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()), critical=False
        )
    if spiffe_td:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{spiffe_td}")]),
            critical=False,
        )
    return Issued(builder.sign(signer, hashes.SHA256()), key)


def make_leaf(
    issuer: Issued,
    uris: Sequence[str] = (),
    *,
    dns: Sequence[str] = (),
    ips: Sequence[str] = (),
    key: PrivateKey | None = None,
    days: float = 1,
    now: datetime | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    ca: bool | None = False,
    digital_signature: bool = True,
    key_cert_sign: bool = False,
    key_usage: bool = True,
    eku: Sequence[x509.ObjectIdentifier] | None = (
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ),
    common_name: str = "workload",
) -> Issued:
    """An end-entity certificate; every SPIFFE leaf rule can be broken on purpose by a flag."""
    key = key or new_ec_key()
    nb, na = _window(now, days, not_before, not_after)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(nb)
        .not_valid_after(na)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    if key_usage:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=digital_signature,
                content_commitment=False,
                key_encipherment=isinstance(key, rsa.RSAPrivateKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    names += [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ip_address(i)) for i in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issued(builder.sign(issuer.key, hashes.SHA256()), key)


def new_jwt_key(alg: str = "ES256", kid: str | None = None) -> Key:
    params: dict[str, Any] = {"kid": kid} if kid else {}
    if alg.startswith("ES"):
        curve = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}[alg]
        return ECKey.generate_key(curve, parameters=params)  # type: ignore[arg-type]
    return RSAKey.generate_key(2048, parameters=params)  # type: ignore[arg-type]


def jwk_public(key: Key, **extra: str) -> dict[str, Any]:
    out = dict(key.as_dict(private=False))
    out.update(extra)
    return out


def spiffe_bundle(
    roots: Sequence[x509.Certificate], jwt_keys: Sequence[Key], *, refresh_hint: int = 300
) -> str:
    """A SPIFFE trust bundle (JWK set): x509-svid roots and jwt-svid keys."""
    keys: list[dict[str, Any]] = []
    for c in roots:
        pub = c.public_key()
        if isinstance(pub, ec.EllipticCurvePublicKey):
            jwk = ECKey.import_key(pub).as_dict(private=False)
        else:
            assert isinstance(pub, rsa.RSAPublicKey)
            jwk = RSAKey.import_key(pub).as_dict(private=False)
        jwk.pop("kid", None)
        jwk["use"] = "x509-svid"
        jwk["x5c"] = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode("ascii")]
        keys.append(jwk)
    for k in jwt_keys:
        keys.append(jwk_public(k, use="jwt-svid"))
    return json.dumps({"spiffe_refresh_hint": refresh_hint, "keys": keys}, indent=2) + "\n"


def mint_jwt(
    key: Key,
    claims: Mapping[str, Any],
    *,
    alg: str = "ES256",
    kid: str | None = None,
    typ: str | None = "JWT",
    extra_header: Mapping[str, Any] | None = None,
) -> str:
    header: dict[str, Any] = {"alg": alg}
    if typ:
        header["typ"] = typ
    kid = kid if kid is not None else key.kid
    if kid:
        header["kid"] = kid
    if extra_header:
        header.update(extra_header)
    payload = json.dumps(dict(claims), separators=(",", ":"))
    return jws.serialize_compact(header, payload, key, algorithms=[alg])
