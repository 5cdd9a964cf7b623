"""X.509-SVID verification: the SPIFFE leaf rules plus RFC 5280 path validation.

Path validation (``cryptography``'s ``ClientVerifier``) runs against the roots of the bundle of
the leaf's *own* trust domain only: bundles never mix. Intermediates come from the caller (the
XFCC ``Chain`` field) and are untrusted path-building material.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, VerificationError

from ..errors import CredentialError
from ..model import Identity
from ..settings import MAX_CHAIN
from ..trust.bundles import TrustSnapshot
from .names import canonical_name
from .spiffe_id import SpiffeId, SpiffeIdError

__all__ = ["MAX_CHAIN", "spiffe_id_from_leaf", "verify_x509_svid"]


def _fail(reason: str, detail: str) -> CredentialError:
    return CredentialError(reason, detail, credential="x509")


def _load_pem(pem: str, what: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError, x509.InvalidVersion) as exc:
        raise _fail("cert_malformed", f"{what} is not a PEM certificate ({exc})") from exc


def spiffe_id_from_leaf(leaf: x509.Certificate) -> SpiffeId:
    """Apply the X.509-SVID leaf rules and return the SPIFFE ID the leaf names."""
    try:
        exts = leaf.extensions  # parsed here, once: a duplicate or malformed extension is refused
        san = exts.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise _fail("cert_not_svid", "leaf has no subjectAltName extension") from exc
    except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
        raise _fail("cert_malformed", f"leaf extensions cannot be parsed ({exc})") from exc
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise _fail("cert_not_svid", f"leaf must have exactly one URI SAN, has {len(uris)}")
    try:
        sid = SpiffeId.parse(uris[0])
    except SpiffeIdError as exc:
        raise _fail("cert_not_svid", f"leaf URI SAN is not a SPIFFE ID ({exc})") from exc
    if not sid.path:
        raise _fail("cert_not_svid", "leaf SPIFFE ID has no path (it names a trust domain, not a workload)")
    try:
        bc = exts.get_extension_for_class(x509.BasicConstraints).value
        if bc.ca:
            raise _fail("cert_not_svid", "leaf has cA=true")
    except x509.ExtensionNotFound:
        pass
    try:
        ku = exts.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise _fail("cert_not_svid", "leaf has no keyUsage; digitalSignature is required") from exc
    if not ku.digital_signature:
        raise _fail("cert_not_svid", "leaf keyUsage lacks digitalSignature")
    if ku.key_cert_sign or ku.crl_sign:
        raise _fail("cert_not_svid", "leaf keyUsage has keyCertSign or cRLSign")
    return sid


def verify_x509_svid(
    leaf_pem: str,
    chain_pems: tuple[str, ...],
    trust: TrustSnapshot,
    now: datetime,
) -> Identity:
    """Verify a PEM leaf (plus untrusted intermediates) as an X.509-SVID at ``now``."""
    leaf = _load_pem(leaf_pem, "peer certificate")
    sid = spiffe_id_from_leaf(leaf)
    td = trust.domains.get(sid.trust_domain.name)
    if td is None or td.store is None:
        raise _fail("unknown_trust_domain", f"no X.509 bundle for trust domain {sid.trust_domain.name!r}")
    if now < leaf.not_valid_before_utc or now > leaf.not_valid_after_utc:
        raise _fail(
            "cert_expired", f"leaf is valid {leaf.not_valid_before_utc} .. {leaf.not_valid_after_utc}"
        )
    leaf_text = leaf_pem.strip()
    intermediates: list[x509.Certificate] = []
    for i, pem in enumerate(chain_pems[: MAX_CHAIN + 1]):
        if pem.strip() == leaf_text:
            continue  # Envoy's XFCC Chain starts with the leaf itself
        cert = _load_pem(pem, f"chain certificate {i}")
        if cert != leaf:
            intermediates.append(cert)
    verifier = (
        PolicyBuilder()
        .store(td.store)
        .time(now)
        .max_chain_depth(MAX_CHAIN)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=_EE_POLICY)
        .build_client_verifier()
    )
    try:
        verified = verifier.verify(leaf, intermediates[:MAX_CHAIN])
    except VerificationError as exc:
        raise _fail("cert_untrusted", f"no valid path to a root of {sid.trust_domain.name!r}: {exc}") from exc
    except ValueError as exc:  # a certificate that loads lazily may still fail to parse in full here
        raise _fail("cert_malformed", f"a certificate in the chain cannot be parsed ({exc})") from exc
    return Identity(
        kind="x509_svid",
        spiffe_id=str(sid),
        trust_domain=sid.trust_domain.name,
        path=sid.path,
        subject=str(sid),
        issued_at=int(leaf.not_valid_before_utc.timestamp()),
        # Usable until the first certificate of the validated path expires.
        expires_at=int(min(c.not_valid_after_utc for c in verified.chain).timestamp()),
        cert_sha256=hashlib.sha256(leaf.public_bytes(_DER)).hexdigest(),
        cert_serial=format(leaf.serial_number, "x"),
        issuer=leaf.issuer.rfc4514_string(),
        cert_issuer=canonical_name(leaf.issuer),
    )


# The SPIFFE leaf rules above replace the Web PKI end-entity rules (which demand DNS-style SANs).
_EE_POLICY = ExtensionPolicy.permit_all()
_DER = Encoding.DER
