"""X.509-SVID verification: the SPIFFE leaf rules, path validation per trust domain, time windows.

Every certificate is made by the real factories in ``ext_authz.dev.pki`` at a pinned ``NOW``; each
broken leaf is named after the rule it breaks and the test asserts the exact ``reason`` code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import Store

from ext_authz.dev.pki import Issued, PrivateKey, cert_pem, make_ca, make_leaf, new_ec_key
from ext_authz.errors import CredentialError
from ext_authz.identity.x509_svid import (
    MAX_CERT_BYTES,
    MAX_NAME_CONSTRAINTS,
    MAX_RSA_BITS,
    MAX_RSA_EXPONENT,
    MAX_SANS,
    _issuer_path,
    _names,
    verify_x509_svid,
)
from ext_authz.model import Identity
from ext_authz.trust.bundles import JwtKeys, TrustDomainTrust, TrustSnapshot
from ext_authz.trust.revision import TrustRevision

NOW = datetime(2031, 3, 14, 12, 0, tzinfo=UTC)
TD_A = "example.org"
TD_B = "other.org"
WORKLOAD = f"spiffe://{TD_A}/ns/prod/sa/billing"
WORKLOAD_B = f"spiffe://{TD_B}/ns/prod/sa/ledger"

LeafFactory = Callable[..., Issued]


# ---------------------------------------------------------------------------------------------------
# PKI: two trust domains, each a root and an intermediate; made once per module.


@pytest.fixture(scope="module")
def root_a() -> Issued:
    return make_ca(f"{TD_A} root", spiffe_td=TD_A, now=NOW)


@pytest.fixture(scope="module")
def intermediate_a(root_a: Issued) -> Issued:
    return make_ca(f"{TD_A} intermediate", parent=root_a, spiffe_td=TD_A, now=NOW)


@pytest.fixture(scope="module")
def root_b() -> Issued:
    return make_ca(f"{TD_B} root", spiffe_td=TD_B, now=NOW)


@pytest.fixture(scope="module")
def intermediate_b(root_b: Issued) -> Issued:
    return make_ca(f"{TD_B} intermediate", parent=root_b, spiffe_td=TD_B, now=NOW)


@pytest.fixture(scope="module")
def leaf_key() -> PrivateKey:
    return new_ec_key()


@pytest.fixture(scope="module")
def trust(root_a: Issued, root_b: Issued) -> TrustSnapshot:
    """Both trust domains configured, each with its own X.509 bundle; plus a JWT-only domain."""
    return TrustSnapshot(
        revision=TrustRevision("r1"),
        domains={
            TD_A: TrustDomainTrust(TD_A, (root_a.cert,), store=Store([root_a.cert])),
            TD_B: TrustDomainTrust(TD_B, (root_b.cert,), store=Store([root_b.cert])),
            "jwt-only.org": TrustDomainTrust("jwt-only.org", jwt_keys=JwtKeys()),
        },
    )


@pytest.fixture(scope="module")
def leaf(leaf_key: PrivateKey) -> LeafFactory:
    """A valid SVID for WORKLOAD unless the keyword arguments break a rule."""

    def factory(issuer: Issued, uris: Sequence[str] = (WORKLOAD,), **kwargs: Any) -> Issued:
        kwargs.setdefault("key", leaf_key)
        kwargs.setdefault("now", NOW)
        return make_leaf(issuer, uris, **kwargs)

    return factory


@pytest.fixture(scope="module")
def good_leaf(leaf: LeafFactory, intermediate_a: Issued) -> Issued:
    return leaf(intermediate_a)


def _verify(leaf: Issued, chain: Sequence[Issued], trust: TrustSnapshot, now: datetime = NOW) -> Identity:
    return verify_x509_svid(leaf.pem, tuple(c.pem for c in chain), trust, now)


def _reason(leaf: Issued, chain: Sequence[Issued], trust: TrustSnapshot, now: datetime = NOW) -> str:
    with pytest.raises(CredentialError) as caught:
        _verify(leaf, chain, trust, now)
    assert caught.value.credential == "x509"
    return caught.value.reason


# ---------------------------------------------------------------------------------------------------
# Valid SVIDs


def test_valid_svid_via_intermediate_from_chain(
    good_leaf: Issued, intermediate_a: Issued, trust: TrustSnapshot
) -> None:
    ident = _verify(good_leaf, [intermediate_a], trust)
    assert ident.kind == "x509_svid"
    assert ident.spiffe_id == WORKLOAD


def test_identity_fields(good_leaf: Issued, intermediate_a: Issued, trust: TrustSnapshot) -> None:
    ident = _verify(good_leaf, [intermediate_a], trust)
    cert = good_leaf.cert
    assert ident.spiffe_id == WORKLOAD
    assert ident.subject == WORKLOAD
    assert ident.trust_domain == TD_A
    assert ident.path == "/ns/prod/sa/billing"
    assert ident.expires_at == int(cert.not_valid_after_utc.timestamp())
    assert ident.expires_at == int((NOW + timedelta(days=1)).timestamp())
    assert ident.issued_at == int(cert.not_valid_before_utc.timestamp())
    assert ident.cert_sha256 == cert.fingerprint(hashes.SHA256()).hex()
    assert ident.cert_serial == format(cert.serial_number, "x")
    assert ident.issuer == intermediate_a.cert.subject.rfc4514_string()
    assert ident.audiences == ()
    assert dict(ident.claims) == {}


def test_valid_svid_issued_by_root_needs_no_chain(
    leaf: LeafFactory, root_a: Issued, trust: TrustSnapshot
) -> None:
    assert _verify(leaf(root_a), [], trust).spiffe_id == WORKLOAD


def test_leaf_repeated_in_chain_is_fine(
    good_leaf: Issued, intermediate_a: Issued, trust: TrustSnapshot
) -> None:
    assert _verify(good_leaf, [good_leaf, intermediate_a], trust).spiffe_id == WORKLOAD


def test_second_trust_domain_verifies_against_its_own_bundle(
    leaf: LeafFactory, intermediate_b: Issued, trust: TrustSnapshot
) -> None:
    ident = _verify(leaf(intermediate_b, (WORKLOAD_B,)), [intermediate_b], trust)
    assert (ident.trust_domain, ident.path) == (TD_B, "/ns/prod/sa/ledger")


def test_validity_window_edges_are_inclusive(
    good_leaf: Issued, intermediate_a: Issued, trust: TrustSnapshot
) -> None:
    for at in (good_leaf.cert.not_valid_before_utc, good_leaf.cert.not_valid_after_utc):
        assert _verify(good_leaf, [intermediate_a], trust, now=at).spiffe_id == WORKLOAD


# ---------------------------------------------------------------------------------------------------
# Path validation and trust domains


def test_missing_intermediate(good_leaf: Issued, trust: TrustSnapshot) -> None:
    assert _reason(good_leaf, [], trust) == "cert_untrusted"


def test_leaf_from_other_trust_domains_ca_claiming_example_org(
    leaf: LeafFactory, intermediate_b: Issued, trust: TrustSnapshot
) -> None:
    impostor = leaf(intermediate_b, (WORKLOAD,))
    assert _reason(impostor, [intermediate_b], trust) == "cert_untrusted"


@pytest.mark.parametrize("signer", ["intermediate", "root"])
def test_bundles_never_mix(
    signer: str,
    leaf: LeafFactory,
    root_a: Issued,
    intermediate_a: Issued,
    trust: TrustSnapshot,
) -> None:
    """A's CA must not vouch for a B leaf, though both trust domains are configured."""
    issuer = intermediate_a if signer == "intermediate" else root_a
    chain = [intermediate_a] if signer == "intermediate" else []
    # The same issuer and chain verify a leaf of A: only the claimed trust domain differs.
    assert _verify(leaf(issuer, (WORKLOAD,)), chain, trust).trust_domain == TD_A
    assert _reason(leaf(issuer, (WORKLOAD_B,)), chain, trust) == "cert_untrusted"


def test_unknown_trust_domain(leaf: LeafFactory, intermediate_a: Issued, trust: TrustSnapshot) -> None:
    stranger = leaf(intermediate_a, ("spiffe://unconfigured.org/workload",))
    assert _reason(stranger, [intermediate_a], trust) == "unknown_trust_domain"


def test_trust_domain_without_x509_bundle(
    leaf: LeafFactory, intermediate_a: Issued, trust: TrustSnapshot
) -> None:
    jwt_only = leaf(intermediate_a, ("spiffe://jwt-only.org/workload",))
    assert _reason(jwt_only, [intermediate_a], trust) == "unknown_trust_domain"


def test_empty_trust_snapshot(good_leaf: Issued, intermediate_a: Issued) -> None:
    assert _reason(good_leaf, [intermediate_a], TrustSnapshot()) == "unknown_trust_domain"


# ---------------------------------------------------------------------------------------------------
# Time


def test_leaf_expired(leaf: LeafFactory, intermediate_a: Issued, trust: TrustSnapshot) -> None:
    expired = leaf(intermediate_a, not_before=NOW - timedelta(days=2), not_after=NOW - timedelta(seconds=1))
    assert _reason(expired, [intermediate_a], trust) == "cert_expired"


def test_leaf_not_yet_valid(leaf: LeafFactory, intermediate_a: Issued, trust: TrustSnapshot) -> None:
    early = leaf(intermediate_a, not_before=NOW + timedelta(seconds=1), not_after=NOW + timedelta(days=1))
    assert _reason(early, [intermediate_a], trust) == "cert_expired"


def test_leaf_checked_at_the_given_now_not_the_wall_clock(
    good_leaf: Issued, intermediate_a: Issued, trust: TrustSnapshot
) -> None:
    later = good_leaf.cert.not_valid_after_utc + timedelta(seconds=1)
    assert _reason(good_leaf, [intermediate_a], trust, now=later) == "cert_expired"
    earlier = good_leaf.cert.not_valid_before_utc - timedelta(seconds=1)
    assert _reason(good_leaf, [intermediate_a], trust, now=earlier) == "cert_expired"


def test_intermediate_expired(leaf: LeafFactory, root_a: Issued, trust: TrustSnapshot) -> None:
    """The leaf itself is in its window: the path fails, so the reason is cert_untrusted."""
    expired_ca = make_ca(
        f"{TD_A} expired intermediate",
        parent=root_a,
        spiffe_td=TD_A,
        not_before=NOW - timedelta(days=30),
        not_after=NOW - timedelta(seconds=1),
    )
    assert _reason(leaf(expired_ca), [expired_ca], trust) == "cert_untrusted"


def test_identity_expires_with_the_first_certificate_of_the_path(
    leaf: LeafFactory, root_a: Issued, trust: TrustSnapshot
) -> None:
    """A cached identity must not outlive an intermediate that expires before the leaf."""
    short_ca = make_ca(
        f"{TD_A} short-lived intermediate",
        parent=root_a,
        spiffe_td=TD_A,
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(hours=1),
    )
    long_leaf = leaf(short_ca, not_before=NOW - timedelta(hours=1), not_after=NOW + timedelta(days=2))
    ident = _verify(long_leaf, [short_ca], trust)
    assert ident.expires_at == int(short_ca.cert.not_valid_after_utc.timestamp())
    assert ident.expires_at < int(long_leaf.cert.not_valid_after_utc.timestamp())


def test_root_expired(leaf: LeafFactory) -> None:
    expired_root = make_ca(
        f"{TD_A} expired root",
        spiffe_td=TD_A,
        not_before=NOW - timedelta(days=30),
        not_after=NOW - timedelta(seconds=1),
    )
    trust = TrustSnapshot(
        domains={TD_A: TrustDomainTrust(TD_A, (expired_root.cert,), store=Store([expired_root.cert]))}
    )
    assert _reason(leaf(expired_root), [], trust) == "cert_untrusted"


# ---------------------------------------------------------------------------------------------------
# The SPIFFE leaf rules: each leaf below breaks exactly one and is otherwise a good SVID.

NOT_SVID_LEAVES: dict[str, dict[str, Any]] = {
    "leaf_two_uri_sans": {"uris": (WORKLOAD, f"spiffe://{TD_A}/other")},
    "leaf_spiffe_and_https_uri_sans": {"uris": (WORKLOAD, "https://example.org/billing")},
    "leaf_non_spiffe_uri": {"uris": ("https://example.org/ns/prod/sa/billing",)},
    "leaf_invalid_spiffe_id": {"uris": ("spiffe://Example.org/billing",)},
    "leaf_dns_only_san": {"uris": (), "dns": ("billing.example.org",)},
    "leaf_ip_only_san": {"uris": (), "ips": ("10.0.0.7",)},
    "leaf_no_san": {"uris": ()},
    "leaf_spiffe_id_without_path": {"uris": (f"spiffe://{TD_A}",)},
    "leaf_ca_true": {"ca": True},
    "leaf_no_digital_signature": {"digital_signature": False},
    "leaf_key_cert_sign": {"key_cert_sign": True},
    "leaf_no_key_usage": {"key_usage": False},
}


@pytest.mark.parametrize("how", list(NOT_SVID_LEAVES))
def test_leaf_breaking_a_spiffe_rule_is_not_an_svid(
    how: str, leaf: LeafFactory, intermediate_a: Issued, trust: TrustSnapshot
) -> None:
    kwargs = dict(NOT_SVID_LEAVES[how])
    uris = kwargs.pop("uris", (WORKLOAD,))
    assert _reason(leaf(intermediate_a, uris, **kwargs), [intermediate_a], trust) == "cert_not_svid"


# ---------------------------------------------------------------------------------------------------
# Malformed input

GARBAGE_PEMS: dict[str, str] = {
    "empty": "",
    "not_pem": "hello, I am a certificate",
    "pem_armour_with_junk_body": "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    "non_ascii": "-----BEGIN CERTIFICATE-----\nzertifikat\u00e4\n-----END CERTIFICATE-----\n",
}


@pytest.mark.parametrize("name", list(GARBAGE_PEMS))
def test_garbage_leaf_pem(name: str, intermediate_a: Issued, trust: TrustSnapshot) -> None:
    with pytest.raises(CredentialError) as caught:
        verify_x509_svid(GARBAGE_PEMS[name], (intermediate_a.pem,), trust, NOW)
    assert caught.value.reason == "cert_malformed"


@pytest.mark.parametrize("name", list(GARBAGE_PEMS))
def test_garbage_chain_pem(
    name: str, good_leaf: Issued, intermediate_a: Issued, trust: TrustSnapshot
) -> None:
    with pytest.raises(CredentialError) as caught:
        verify_x509_svid(good_leaf.pem, (intermediate_a.pem, GARBAGE_PEMS[name]), trust, NOW)
    assert caught.value.reason == "cert_malformed"


# ---------------------------------------------------------------------------------------------------
# Bounded cost: what a caller sends cannot make verification expensive (bench/hostile.py measures the
# CPU; these tests pin the rules that bound it).


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca_cert(
    cn: str,
    issuer: x509.Name,
    signer: PrivateKey,
    public_key: CertificatePublicKeyTypes,
    *,
    extensions: Sequence[x509.ExtensionType] = (),
) -> str:
    """A CA certificate with any public key (no private key needed) and extra extensions, as PEM."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    )
    for ext in extensions:
        builder = builder.add_extension(ext, critical=isinstance(ext, x509.NameConstraints))
    return cert_pem(builder.sign(signer, hashes.SHA256()))


def _leaf_of(cn: str, signer: PrivateKey, leaf_key: PrivateKey) -> str:
    """A good SVID for WORKLOAD whose issuer is the CA named ``cn`` with key ``signer``."""
    issuer = Issued(
        x509.load_pem_x509_certificate(_ca_cert(cn, _name(cn), signer, signer.public_key()).encode()), signer
    )
    return make_leaf(issuer, (WORKLOAD,), key=leaf_key, now=NOW).pem


def _reason_pem(leaf_pem: str, chain: Sequence[str], trust: TrustSnapshot) -> CredentialError:
    with pytest.raises(CredentialError) as caught:
        verify_x509_svid(leaf_pem, tuple(chain), trust, NOW)
    return caught.value


def test_a_certificate_over_the_size_cap_is_refused_before_it_is_parsed(
    leaf: LeafFactory, good_leaf: Issued, intermediate_a: Issued, trust: TrustSnapshot
) -> None:
    names = [f"n{i}.x" for i in range(600)]
    fat_leaf = leaf(intermediate_a, dns=names)
    assert len(fat_leaf.pem) > MAX_CERT_BYTES
    err = _reason_pem(fat_leaf.pem, [intermediate_a.pem], trust)
    assert (err.reason, str(MAX_CERT_BYTES) in err.detail) == ("cert_chain_too_large", True)
    # In the chain, even a certificate that plays no part in the path.
    fat_junk = make_leaf(intermediate_a, dns=names, now=NOW).pem
    err = _reason_pem(good_leaf.pem, [fat_junk, intermediate_a.pem], trust)
    assert (err.reason, "chain certificate 0" in err.detail) == ("cert_chain_too_large", True)


def test_a_leaf_with_more_names_than_the_cap_is_refused(
    leaf: LeafFactory, intermediate_a: Issued, trust: TrustSnapshot
) -> None:
    at_cap = leaf(intermediate_a, dns=[f"n{i}.x" for i in range(MAX_SANS - 1)])  # + the URI SAN
    assert _verify(at_cap, [intermediate_a], trust).spiffe_id == WORKLOAD
    over = leaf(intermediate_a, dns=[f"n{i}.x" for i in range(MAX_SANS)])
    assert len(over.pem) <= MAX_CERT_BYTES
    err = _reason_pem(over.pem, [intermediate_a.pem], trust)
    assert (err.reason, f"at most {MAX_SANS}" in err.detail) == ("cert_chain_too_large", True)


def test_a_leaf_with_a_realistic_number_of_names_fits(
    leaf: LeafFactory, intermediate_a: Issued, trust: TrustSnapshot
) -> None:
    dns = [f"billing-{i}.prod.svc.cluster.local" for i in range(60)]
    roomy = leaf(intermediate_a, dns=dns)
    assert len(roomy.pem) <= MAX_CERT_BYTES
    assert _verify(roomy, [intermediate_a], trust).spiffe_id == WORKLOAD


def test_names_read_from_the_der_are_the_names(
    good_leaf: Issued, root_a: Issued, intermediate_a: Issued, root_b: Issued
) -> None:
    key = new_ec_key()
    nc = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("example.org"), x509.DNSName("example.net")],
        excluded_subtrees=[x509.DNSName("bad.example.org")],
    )
    constrained = x509.load_pem_x509_certificate(
        _ca_cert("constrained", root_a.cert.subject, root_a.key, key.public_key(), extensions=[nc]).encode()
    )
    for cert in (good_leaf.cert, root_a.cert, intermediate_a.cert, root_b.cert, constrained):
        issuer, subject, subtrees = _names(cert)
        assert (issuer, subject) == (cert.issuer.public_bytes(), cert.subject.public_bytes())
        assert subtrees == (3 if cert is constrained else 0)


def test_roots_and_unrelated_certificates_in_the_chain_are_left_out(
    good_leaf: Issued, root_a: Issued, intermediate_a: Issued, intermediate_b: Issued, trust: TrustSnapshot
) -> None:
    chain = [good_leaf, root_a, intermediate_b, intermediate_a]
    assert _verify(good_leaf, chain, trust).spiffe_id == WORKLOAD
    candidates = [(i, c.cert) for i, c in enumerate(chain[1:])]
    assert _issuer_path(good_leaf.cert, candidates) == [intermediate_a.cert]


def test_certificates_signing_each_other_in_a_loop_give_a_short_path(
    leaf_key: PrivateKey, trust: TrustSnapshot
) -> None:
    """Five self-issued CAs with one key, or two names issuing each other: path building would check
    signatures round the loop until its budget ran out; it is handed at most one path instead."""
    key = new_ec_key()
    loop = [_ca_cert("loop", _name("loop"), key, key.public_key()) for _ in range(5)]
    leaf_pem = _leaf_of("loop", key, leaf_key)
    assert _reason_pem(leaf_pem, [leaf_pem, *loop], trust).reason == "cert_untrusted"
    leaf_cert = x509.load_pem_x509_certificate(leaf_pem.encode())
    load = x509.load_pem_x509_certificate
    assert _issuer_path(leaf_cert, [(i, load(p.encode())) for i, p in enumerate(loop)]) == []

    x_by_y = [_ca_cert("X", _name("Y"), key, key.public_key()) for _ in range(3)]
    y_by_x = [_ca_cert("Y", _name("X"), key, key.public_key()) for _ in range(2)]
    leaf_pem = _leaf_of("X", key, leaf_key)
    assert _reason_pem(leaf_pem, [*x_by_y, *y_by_x], trust).reason == "cert_untrusted"
    leaf_cert = x509.load_pem_x509_certificate(leaf_pem.encode())
    path = _issuer_path(leaf_cert, [(i, load(p.encode())) for i, p in enumerate([*x_by_y, *y_by_x])])
    assert path == [load(x_by_y[0].encode())]  # the first X; the Y that leads back to X is left out


def test_of_certificates_with_one_subject_the_first_sent_is_tried(
    good_leaf: Issued, root_a: Issued, intermediate_a: Issued, trust: TrustSnapshot
) -> None:
    """Another CA with the intermediate's very name (a re-key, a cross-sign): only the first sent is
    path material, so a client sends its issuer first, as TLS requires."""
    namesake = make_ca(f"{TD_A} intermediate", parent=root_a, spiffe_td=TD_A, now=NOW)
    assert namesake.cert.subject == intermediate_a.cert.subject
    assert _verify(good_leaf, [intermediate_a, namesake], trust).spiffe_id == WORKLOAD
    assert _reason(good_leaf, [namesake, intermediate_a], trust) == "cert_untrusted"


def test_a_few_name_constraints_on_the_path_are_enforced(
    leaf_key: PrivateKey, root_a: Issued, trust: TrustSnapshot
) -> None:
    """A CA that constrains its names (a handful of subtrees) is a normal PKI: it verifies, and its
    constraints hold."""
    key = new_ec_key()
    nc = x509.NameConstraints(permitted_subtrees=[x509.DNSName("example.org")], excluded_subtrees=None)
    constrained = _ca_cert("constrained", root_a.cert.subject, root_a.key, key.public_key(), extensions=[nc])
    issuer = Issued(x509.load_pem_x509_certificate(constrained.encode()), key)
    inside = make_leaf(issuer, (WORKLOAD,), key=leaf_key, now=NOW, dns=("api.example.org",)).pem
    assert verify_x509_svid(inside, (constrained,), trust, NOW).spiffe_id == WORKLOAD
    outside = make_leaf(issuer, (WORKLOAD,), key=leaf_key, now=NOW, dns=("api.example.com",)).pem
    assert _reason_pem(outside, [constrained], trust).reason == "cert_untrusted"


def test_many_name_constraints_on_the_path_are_refused(
    leaf_key: PrivateKey, root_a: Issued, good_leaf: Issued, intermediate_a: Issued, trust: TrustSnapshot
) -> None:
    """Each constraint is checked against each name below it: a request could make that millions."""
    key = new_ec_key()
    nc = x509.NameConstraints(
        permitted_subtrees=None, excluded_subtrees=[x509.DNSName("b")] * (MAX_NAME_CONSTRAINTS + 1)
    )
    constrained = _ca_cert("constrained", root_a.cert.subject, root_a.key, key.public_key(), extensions=[nc])
    issuer = Issued(x509.load_pem_x509_certificate(constrained.encode()), key)
    leaf_pem = make_leaf(issuer, (WORKLOAD,), key=leaf_key, now=NOW).pem
    err = _reason_pem(leaf_pem, [constrained], trust)
    assert (err.reason, "name-constraint subtrees" in err.detail) == ("cert_untrusted", True)
    # Not on the path: left out like any unrelated certificate.
    assert (
        verify_x509_svid(good_leaf.pem, (constrained, intermediate_a.pem), trust, NOW).spiffe_id == WORKLOAD
    )


def test_a_name_constrained_root_in_the_bundle_still_constrains(leaf: LeafFactory) -> None:
    key = new_ec_key()
    nc = x509.NameConstraints(permitted_subtrees=[x509.DNSName("example.org")], excluded_subtrees=None)
    root_pem = _ca_cert("constrained root", _name("constrained root"), key, key.public_key(), extensions=[nc])
    root = Issued(x509.load_pem_x509_certificate(root_pem.encode()), key)
    constrained = TrustSnapshot(
        domains={TD_A: TrustDomainTrust(TD_A, (root.cert,), store=Store([root.cert]))}
    )
    assert _verify(leaf(root, dns=("api.example.org",)), [], constrained).spiffe_id == WORKLOAD
    assert _reason(leaf(root, dns=("api.example.com",)), [], constrained) == "cert_untrusted"


def test_a_leaf_with_name_constraints_is_not_an_svid(
    leaf_key: PrivateKey, intermediate_a: Issued, trust: TrustSnapshot
) -> None:
    nc = x509.NameConstraints(permitted_subtrees=[x509.DNSName("example.org")], excluded_subtrees=None)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("workload"))
        .issuer_name(intermediate_a.cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(WORKLOAD)]), critical=False
        )
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(nc, critical=True)
    )
    leaf_pem = cert_pem(builder.sign(intermediate_a.key, hashes.SHA256()))
    err = _reason_pem(leaf_pem, [intermediate_a.pem], trust)
    assert (err.reason, "nameConstraints" in err.detail) == ("cert_not_svid", True)


def _odd_modulus(bits: int) -> int:
    return int.from_bytes(hashes.Hash(hashes.SHAKE256(bits // 8)).finalize(), "big") | (1 << (bits - 1)) | 1


@pytest.mark.parametrize(
    ("bits", "exponent"), [(2048, MAX_RSA_EXPONENT + 2), (3072, (1 << 3071) + 1), (MAX_RSA_BITS + 8, 65537)]
)
def test_an_rsa_key_made_to_verify_slowly_is_refused_on_the_path(
    bits: int, exponent: int, leaf_key: PrivateKey, root_a: Issued, trust: TrustSnapshot
) -> None:
    """One signature check with a 3072-bit public exponent costs about 10 ms."""
    slow = rsa.RSAPublicNumbers(exponent, _odd_modulus(bits)).public_key()
    ca_pem = _ca_cert("slow", root_a.cert.subject, root_a.key, slow)
    signer = Issued(x509.load_pem_x509_certificate(ca_pem.encode()), root_a.key)  # any key: never checked
    leaf_pem = make_leaf(signer, (WORKLOAD,), key=leaf_key, now=NOW).pem
    err = _reason_pem(leaf_pem, [ca_pem], trust)
    assert (err.reason, "RSA key" in err.detail) == ("cert_untrusted", True)


def test_an_ordinary_rsa_intermediate_verifies(
    leaf: LeafFactory, root_a: Issued, trust: TrustSnapshot
) -> None:
    rsa_ca = make_ca(
        f"{TD_A} rsa intermediate",
        parent=root_a,
        spiffe_td=TD_A,
        now=NOW,
        key=rsa.generate_private_key(65537, 2048),
    )
    assert _verify(leaf(rsa_ca), [rsa_ca], trust).spiffe_id == WORKLOAD


# ---------------------------------------------------------------------------------------------------
# Signatures from the root down: a caller's forged certificates can only sit under the genuine ones,
# so checking top down meets the first forgery with a genuine CA's key, after one or two checks.


def _forged_path(top_issuer: x509.Name, n: int) -> tuple[list[str], PrivateKey]:
    """``n`` P-384 CAs, F0 … F(n-1), each signed by the next one's key; the top names ``top_issuer``
    and signs itself. Returns their PEMs (F0 first) and F0's key, which signs the leaf."""
    from cryptography.hazmat.primitives.asymmetric import ec

    keys = [ec.generate_private_key(ec.SECP384R1()) for _ in range(n)]
    issuers = [_name(f"F{i + 1}") for i in range(n - 1)] + [top_issuer]
    pems = [_ca_cert(f"F{i}", issuers[i], keys[min(i + 1, n - 1)], keys[i].public_key()) for i in range(n)]
    return pems, keys[0]


def _leaf_under(cn: str, signer: PrivateKey, leaf_key: PrivateKey) -> str:
    ca = _ca_cert(cn, _name(cn), signer, signer.public_key())
    return make_leaf(
        Issued(x509.load_pem_x509_certificate(ca.encode()), signer), (WORKLOAD,), key=leaf_key, now=NOW
    ).pem


def test_a_forged_path_to_the_roots_name_is_refused_at_its_top(
    leaf_key: PrivateKey, root_a: Issued, trust: TrustSnapshot
) -> None:
    """Five P-384 CAs, each signing the next, the top claiming the root's name: refused by the one
    check of the top against the root, not after five P-384 checks from the leaf up."""
    pems, f0 = _forged_path(root_a.cert.subject, 5)
    err = _reason_pem(_leaf_under("F0", f0, leaf_key), pems, trust)
    assert err.reason == "cert_untrusted"
    assert "path certificate 5 is not signed by the root it names" in err.detail


def test_a_copied_genuine_intermediate_above_forged_ones_is_refused_right_below_it(
    leaf_key: PrivateKey, intermediate_a: Issued, trust: TrustSnapshot
) -> None:
    """A CA certificate is public: put on top, it passes its own check, and the next one down (the
    first forgery) fails against the genuine CA's key."""
    pems, f0 = _forged_path(intermediate_a.cert.subject, 4)
    err = _reason_pem(_leaf_under("F0", f0, leaf_key), [*pems, intermediate_a.pem], trust)
    assert err.reason == "cert_untrusted"
    assert "path certificate 4 is not signed by path certificate 5" in err.detail


def test_a_path_that_names_no_root_is_refused_without_a_signature_check(
    leaf_key: PrivateKey, trust: TrustSnapshot
) -> None:
    pems, f0 = _forged_path(_name("nobody's root"), 5)
    err = _reason_pem(_leaf_under("F0", f0, leaf_key), pems, trust)
    assert err.reason == "cert_untrusted"
    assert "no certificate on it names one as issuer" in err.detail


def test_of_two_roots_with_one_name_either_may_sign_the_path(leaf: LeafFactory) -> None:
    """A root rotated with its name kept: the bundle holds both while their chains overlap."""
    old = make_ca(f"{TD_A} root", spiffe_td=TD_A, now=NOW)
    new = make_ca(f"{TD_A} root", spiffe_td=TD_A, now=NOW)
    assert old.cert.subject == new.cert.subject
    for roots in ((old.cert, new.cert), (new.cert, old.cert)):
        rotating = TrustSnapshot(
            revision=TrustRevision("r1"),
            domains={TD_A: TrustDomainTrust(TD_A, roots, store=Store(list(roots)))},
        )
        for signer in (old, new):
            inter = make_ca(f"{TD_A} intermediate", parent=signer, spiffe_td=TD_A, now=NOW)
            second = make_ca(f"{TD_A} second", parent=inter, spiffe_td=TD_A, now=NOW)
            svid = leaf(second)
            assert _verify(svid, [second, inter], rotating).spiffe_id == WORKLOAD


def test_a_leaf_the_root_signed_verifies_whatever_path_sits_above_it(
    leaf: LeafFactory, root_a: Issued, root_b: Issued, trust: TrustSnapshot
) -> None:
    """The chain holds a certificate with the root's name issued by another CA (a cross-signature):
    the path ends at the root as soon as the leaf names it, and the check from the root down agrees."""
    cross = make_ca(f"{TD_A} root", parent=root_b, spiffe_td=TD_A, now=NOW)
    assert cross.cert.subject == root_a.cert.subject and cross.cert.issuer != cross.cert.subject
    svid = leaf(root_a)
    assert _issuer_path(svid.cert, [(0, cross.cert)]) == [cross.cert]
    assert _verify(svid, [cross], trust).spiffe_id == WORKLOAD


def test_a_failing_link_under_one_root_is_not_checked_again_for_a_longer_path(
    leaf_key: PrivateKey, root_a: Issued, intermediate_a: Issued
) -> None:
    """Two roots named on one path: the genuine intermediate under the first verifies, the forged leaf
    under it does not, and every longer path (to the second root) runs through that same leaf: the
    check stops there rather than try the second root too."""
    root_c = make_ca("c root", spiffe_td=TD_A, now=NOW)
    roots = (root_a.cert, root_c.cert)
    two_roots = TrustSnapshot(
        revision=TrustRevision("r1"), domains={TD_A: TrustDomainTrust(TD_A, roots, store=Store(list(roots)))}
    )
    attacker = new_ec_key()
    cross_pem = cert_pem(
        x509.CertificateBuilder()
        .subject_name(root_a.cert.subject)  # the first root's name, issued (it says) by the second
        .issuer_name(root_c.cert.subject)
        .public_key(attacker.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(attacker, hashes.SHA256())
    )
    forged = make_leaf(Issued(intermediate_a.cert, attacker), (WORKLOAD,), key=leaf_key, now=NOW)
    err = _reason_pem(forged.pem, [intermediate_a.pem, cross_pem], two_roots)
    assert err.reason == "cert_untrusted"
    assert "path certificate 0 is not signed by path certificate 1" in err.detail


def test_a_leaf_pinned_in_the_bundle_verifies_with_a_chain_sent(leaf: LeafFactory, root_a: Issued) -> None:
    """Path validation ends at a certificate of the bundle, the leaf itself included."""
    upper = make_ca(f"{TD_A} upper", parent=root_a, spiffe_td=TD_A, now=NOW)
    lower = make_ca(f"{TD_A} lower", parent=upper, spiffe_td=TD_A, now=NOW)
    svid = leaf(lower)
    pinned = TrustSnapshot(
        revision=TrustRevision("r1"),
        domains={TD_A: TrustDomainTrust(TD_A, (svid.cert,), store=Store([svid.cert]))},
    )
    assert _verify(svid, [lower, upper], pinned).spiffe_id == WORKLOAD
