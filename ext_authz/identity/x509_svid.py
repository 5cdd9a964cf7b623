"""X.509-SVID verification: the SPIFFE leaf rules plus RFC 5280 path validation.

Path validation (``cryptography``'s ``ClientVerifier``) runs against the roots of the bundle of
the leaf's *own* trust domain only: bundles never mix. Intermediates come from the caller (the
XFCC ``Chain`` field) and are untrusted path-building material.

What the caller sends is bounded before anything costly runs, so a cold verification stays within a
few milliseconds of CPU whatever the certificates hold:

- each certificate, the leaf too, is at most MAX_CERT_BYTES of PEM (``cert_chain_too_large``), read
  before it is parsed: that bounds the names and extensions the leaf rules turn into objects; and the
  leaf has at most MAX_SANS subjectAltNames (``cert_chain_too_large``);
- the intermediates handed to path building are one path, found by name from the leaf's issuer in
  the order the caller sent them (read from the DER, not parsed): for each name the first certificate
  with that subject, none that is self-issued (a root is a trust anchor, and anchors come from the
  bundle), none that would lead back to a name already on the path. Path building then tries at
  most one intermediate per step, so a chain of certificates that sign each other in a loop, or many
  with one subject, cannot make it check signatures over and over;
- a certificate on that path may carry at most MAX_NAME_CONSTRAINTS name-constraint subtrees (the
  checks grow with constraints × names; a CA that constrains its trust domain needs one or two), and
  no RSA key whose signature check is slow by design (over MAX_RSA_BITS bits or with a public
  exponent over MAX_RSA_EXPONENT) — ``cert_untrusted``; a leaf with name constraints is not an SVID;
- when the path has intermediates, its signatures are checked from the root down before path
  validation checks them from the leaf up: a forged certificate can only sit below the genuine ones
  (a copied intermediate is public), so the first signature that fails is the one right under the
  last genuine certificate, checked with a genuine CA's key. A chain of certificates the caller made
  to be slow to verify (five P-384 CAs claiming the root's name) is refused after one check, not
  five; a forged leaf under copied genuine CAs after one check per genuine CA and one more, all with
  the deployment's own keys. A chain that verifies has its signatures checked twice (cold only:
  verified SVIDs are cached), so a path of one intermediate is left to path validation alone.
"""

from __future__ import annotations

import hashlib
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, VerificationError

from ..errors import CredentialError
from ..model import Identity
from ..settings import MAX_CHAIN
from ..spiffe_id import SpiffeId, SpiffeIdError
from ..trust.bundles import TrustDomainTrust, TrustSnapshot
from .names import canonical_name

__all__ = [
    "MAX_CERT_BYTES",
    "MAX_CHAIN",
    "MAX_NAME_CONSTRAINTS",
    "MAX_RSA_BITS",
    "MAX_RSA_EXPONENT",
    "MAX_SANS",
    "spiffe_id_from_leaf",
    "verify_x509_svid",
]

# An X.509-SVID is under 1 KiB of PEM, a CA certificate 1-2 KiB; a leaf this size still parses in
# about 1.5 ms at worst (thousands of tiny names), where a certificate as large as
# limits.max_chain_bytes allows would take ten times that.
MAX_CERT_BYTES = 4 * 1024
# One URI SAN makes an SVID; DNS names beside it are a handful. Past this the leaf is refused before
# path validation turns every name into an object once more.
MAX_SANS = 128
MAX_RSA_BITS = 8192  # a signature check with a 16384-bit key costs 2-9 ms
# Name constraints are checked against every name of every certificate below: 450 subtrees over a
# 128-SAN leaf cost 16 ms. A CA constraining its trust domain (the SPIFFE URI, a DNS suffix) needs few.
MAX_NAME_CONSTRAINTS = 16
MAX_RSA_EXPONENT = 65537  # with a 3072-bit exponent, one check costs 10 ms


def _fail(reason: str, detail: str) -> CredentialError:
    return CredentialError(reason, detail, credential="x509")


def _load_pem(pem: str, what: str) -> x509.Certificate:
    if len(pem) > MAX_CERT_BYTES:
        raise _fail(
            "cert_chain_too_large",
            f"{what} is {len(pem)} bytes of PEM; a certificate may have at most {MAX_CERT_BYTES}",
        )
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
    if len(san) > MAX_SANS:
        raise _fail(
            "cert_chain_too_large", f"leaf has {len(san)} subjectAltNames; at most {MAX_SANS} are read"
        )
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
    try:
        exts.get_extension_for_class(x509.NameConstraints)
    except x509.ExtensionNotFound:
        return sid
    raise _fail("cert_not_svid", "leaf has nameConstraints, an extension of CA certificates")


def _tlv(der: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start, end of the contents) of the DER element at ``pos``; it must end by ``end``."""
    if pos + 2 > end:
        raise ValueError("truncated DER element")
    tag, length = der[pos], der[pos + 1]
    pos += 2
    if length & 0x80:
        size = length & 0x7F
        if not 1 <= size <= 4 or pos + size > end:
            raise ValueError("bad DER length")
        length = int.from_bytes(der[pos : pos + size], "big")
        pos += size
    if pos + length > end:
        raise ValueError("DER element runs past its container")
    return tag, pos, pos + length


_NAME_CONSTRAINTS_OID = b"\x55\x1d\x1e"  # 2.5.29.30, as its DER contents


def _count(der: bytes, pos: int, end: int) -> int:
    """How many DER elements follow each other from ``pos`` to ``end``."""
    n = 0
    while pos < end:
        _, _, pos = _tlv(der, pos, end)
        n += 1
    return n


def _subtrees(der: bytes, ext: int, ext_end: int) -> int:
    """The permitted plus excluded subtrees of a nameConstraints extension (the Extension's contents:
    extnID, optional critical, extnValue OCTET STRING of NameConstraints)."""
    tag, pos, end = _tlv(der, ext, ext_end)  # extnID
    tag, pos, end = _tlv(der, end, ext_end)
    if tag == 0x01:  # critical
        tag, pos, end = _tlv(der, end, ext_end)
    if tag != 0x04:
        raise ValueError("nameConstraints without its value")
    tag, pos, end = _tlv(der, pos, end)  # NameConstraints ::= SEQUENCE
    n = 0
    while pos < end:  # [0] permittedSubtrees, [1] excludedSubtrees: each a SEQUENCE OF GeneralSubtree
        _, contents, after = _tlv(der, pos, end)
        n += _count(der, contents, after)
        pos = after
    return n


def _names(cert: x509.Certificate, *, extensions: bool = True) -> tuple[bytes, bytes, int]:
    """(issuer, subject, name-constraint subtrees) from the DER, without parsing names or extensions:
    a few steps over the TBSCertificate's fields, then (unless ``extensions`` is false) one per
    extension."""
    der = cert.public_bytes(_DER)
    _, start, end = _tlv(der, 0, len(der))  # Certificate
    _, pos, tbs_end = _tlv(der, start, end)  # TBSCertificate
    fields: list[tuple[int, int, int, int]] = []  # tag, element start, contents start, end
    while pos < tbs_end and len(fields) < 10:  # at most ten fields (RFC 5280 4.1)
        tag, contents, after = _tlv(der, pos, tbs_end)
        fields.append((tag, pos, contents, after))
        pos = after
    first = 1 if fields and fields[0][0] == 0xA0 else 0  # [0] version
    # serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, …
    if len(fields) < first + 6 or fields[first + 2][0] != 0x30 or fields[first + 4][0] != 0x30:
        raise ValueError("TBSCertificate has no issuer and subject where they belong")
    issuer = der[fields[first + 2][1] : fields[first + 2][3]]
    subject = der[fields[first + 4][1] : fields[first + 4][3]]
    constrained = 0
    for tag, _, contents, after in fields[first + 6 :] if extensions else ():
        if tag != 0xA3:  # [3] extensions
            continue
        _, pos, exts_end = _tlv(der, contents, after)
        while pos < exts_end:
            _, ext, ext_end = _tlv(der, pos, exts_end)
            _, oid, oid_end = _tlv(der, ext, ext_end)
            if der[oid:oid_end] == _NAME_CONSTRAINTS_OID:
                constrained += _subtrees(der, ext, ext_end)
            pos = ext_end
    return issuer, subject, constrained


def _issuer_path(
    leaf: x509.Certificate, candidates: list[tuple[int, x509.Certificate]]
) -> list[x509.Certificate]:
    """The one path of (chain index, certificate) candidates from the leaf's issuer up, by name (see
    the module docstring)."""
    by_subject: dict[bytes, tuple[int, x509.Certificate, bytes, int]] = {}
    for i, cert in candidates:
        issuer, subject, constrained = _names(cert)
        if issuer != subject:
            by_subject.setdefault(subject, (i, cert, issuer, constrained))
    path: list[x509.Certificate] = []
    on_path: set[bytes] = set()
    want = _names(leaf, extensions=False)[0]
    while (found := by_subject.get(want)) is not None and len(path) < MAX_CHAIN:
        i, cert, issuer, constrained = found
        on_path.add(want)
        if issuer in on_path:
            break  # it would lead back down the path
        if constrained > MAX_NAME_CONSTRAINTS:
            raise _fail(
                "cert_untrusted",
                f"chain certificate {i} has {constrained} name-constraint subtrees; at most"
                f" {MAX_NAME_CONSTRAINTS} are evaluated",
            )
        try:
            key = cert.public_key()
        except (ValueError, UnsupportedAlgorithm):
            key = None  # path validation refuses it as an issuer
        if isinstance(key, rsa.RSAPublicKey) and (
            key.key_size > MAX_RSA_BITS or key.public_numbers().e > MAX_RSA_EXPONENT
        ):
            raise _fail(
                "cert_untrusted",
                f"chain certificate {i} has an RSA key over {MAX_RSA_BITS} bits or with a public "
                f"exponent over {MAX_RSA_EXPONENT}",
            )
        path.append(cert)
        want = issuer
    return path


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """Is ``cert``'s signature made by ``issuer``'s key (and its issuer name ``issuer``'s subject)?

    It accepts every signature algorithm path validation does, and more: a certificate this refuses,
    path validation refuses too."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _signed_from_a_root(leaf: x509.Certificate, path: list[x509.Certificate], td: TrustDomainTrust) -> None:
    """Refuse the path unless, for some certificate on it issued by a root of the bundle (by name), the
    signatures from that root down to the leaf all verify; checked top down, stopping at the first
    that fails (see the module docstring).

    Path validation ends a path at a certificate of the bundle (the leaf itself, if pinned there, or a
    certificate a root of that name issued), and it is handed exactly ``path``: the paths it could
    find are the prefixes of ``[leaf, *path]`` that end so. If none of them has good signatures, it
    would refuse the chain too, after checking them from the leaf up, with the keys the caller chose."""
    if leaf in td.x509_roots:
        return  # a leaf pinned in the bundle: path validation ends at the leaf itself
    anchors: dict[bytes, list[x509.Certificate]] = {}
    for root in td.x509_roots:
        anchors.setdefault(_names(root, extensions=False)[1], []).append(root)
    links = [leaf, *path]
    issuers = [_names(cert, extensions=False)[0] for cert in links]
    ends = [k for k, name in enumerate(issuers) if name in anchors]
    if not ends:
        raise _fail(
            "cert_untrusted",
            f"no valid path to a root of {td.name!r}: no certificate on it names one as issuer",
        )
    broken = ""
    for k in ends:  # the shortest first
        if not any(_issued_by(links[k], root) for root in anchors[issuers[k]]):
            broken = f"path certificate {k} is not signed by the root it names"
            continue  # a longer path may end at another root
        below = next((i for i in range(k - 1, -1, -1) if not _issued_by(links[i], links[i + 1])), None)
        if below is None:
            return
        # Every longer path has this link too: checking them would repeat the same failure.
        broken = f"path certificate {below} is not signed by path certificate {below + 1}"
        break
    raise _fail(
        "cert_untrusted",
        f"no valid path to a root of {td.name!r}: {broken} (0 is the leaf; checked from the root down)",
    )


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
    candidates: list[tuple[int, x509.Certificate]] = []
    for i, pem in enumerate(chain_pems[: MAX_CHAIN + 1]):
        if pem.strip() == leaf_text:
            continue  # Envoy's XFCC Chain starts with the leaf itself
        cert = _load_pem(pem, f"chain certificate {i}")
        if cert != leaf:
            candidates.append((i, cert))
    try:
        intermediates = _issuer_path(leaf, candidates)
    except ValueError as exc:
        raise _fail("cert_malformed", f"a certificate's DER cannot be read ({exc})") from exc
    # With one intermediate or none, path validation checks at most one signature with a key the
    # caller chose before it reaches a root: checked twice (here, then there) would cost more.
    if len(intermediates) > 1:
        try:
            _signed_from_a_root(leaf, intermediates, td)
        except ValueError as exc:
            raise _fail("cert_malformed", f"a certificate's DER cannot be read ({exc})") from exc
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
    return Identity.workload(
        "x509_svid",
        sid,
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
