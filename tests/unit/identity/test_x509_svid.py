"""X.509-SVID verification: the SPIFFE leaf rules, path validation per trust domain, time windows.

Every certificate is made by the real factories in ``ext_authz.dev.pki`` at a pinned ``NOW``; each
broken leaf is named after the rule it breaks and the test asserts the exact ``reason`` code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.x509.verification import Store

from ext_authz.dev.pki import Issued, PrivateKey, make_ca, make_leaf, new_ec_key
from ext_authz.errors import CredentialError
from ext_authz.identity.x509_svid import verify_x509_svid
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
