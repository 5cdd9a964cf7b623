"""Trust bundle loading: PEM roots, SPIFFE bundle JSON (x509-svid / jwt-svid entries), JWKS.

Every refusal is a ``TrustError`` naming the source; keys and certificates come from the real
factories in ``ext_authz.dev.pki`` and are made once per module.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding
from joserfc.jwk import ECKey, Key, RSAKey

from ext_authz.dev.pki import Issued, jwk_public, make_ca, new_jwt_key, spiffe_bundle
from ext_authz.errors import TrustError
from ext_authz.trust.bundles import TrustSnapshot, parse_jwks, parse_x509_bundle
from ext_authz.trust.revision import TrustRevision

NOW = datetime(2031, 3, 14, 12, 0, tzinfo=UTC)
SOURCE = "bundles/example.org.json"


@dataclass(frozen=True)
class Material:
    root_ec: Issued
    root_rsa: Issued
    ec: Key
    rsa: Key
    ec_no_kid: Key


@pytest.fixture(scope="module")
def m() -> Material:
    rsa_ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return Material(
        root_ec=make_ca("example.org root", spiffe_td="example.org", now=NOW),
        root_rsa=make_ca("example.org rsa root", spiffe_td="example.org", key=rsa_ca_key, now=NOW),
        ec=new_jwt_key("ES256", kid="ec-1"),
        rsa=new_jwt_key("RS256", kid="rsa-1"),
        ec_no_kid=new_jwt_key("ES256"),
    )


def _doc(*entries: Any, **extra: Any) -> bytes:
    return json.dumps({"keys": list(entries), **extra}).encode()


def _x509_entry(issued: Issued) -> dict[str, Any]:
    """An x509-svid entry as ``spiffe_bundle`` writes it."""
    entry = json.loads(spiffe_bundle([issued.cert], []))["keys"][0]
    assert isinstance(entry, dict)
    return entry


def _refused(match: str, data: bytes, *, jwks: bool = False, require_use: str | None = None) -> None:
    def load() -> object:
        return parse_jwks(data, SOURCE, require_use=require_use) if jwks else parse_x509_bundle(data, SOURCE)

    with pytest.raises(TrustError, match=match) as caught:
        load()
    assert caught.value.reason == "trust_invalid"
    assert SOURCE in str(caught.value)


# ---------------------------------------------------------------------------------------------------
# parse_x509_bundle: PEM


def test_pem_single_root(m: Material) -> None:
    assert parse_x509_bundle(m.root_ec.pem.encode(), SOURCE) == (m.root_ec.cert,)


def test_pem_several_roots_in_order(m: Material) -> None:
    data = ("\n" + m.root_rsa.pem + "\n" + m.root_ec.pem).encode()
    assert parse_x509_bundle(data, SOURCE) == (m.root_rsa.cert, m.root_ec.cert)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a certificate",
        b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    ],
    ids=["empty", "text", "junk_body"],
)
def test_pem_garbage(data: bytes) -> None:
    _refused("PEM", data)


def test_pem_private_key_is_not_a_root(m: Material) -> None:
    _refused("PEM", m.root_ec.key_pem.encode())


# ---------------------------------------------------------------------------------------------------
# parse_x509_bundle: SPIFFE bundle JSON


def test_spiffe_bundle_x509_svid_entries(m: Material) -> None:
    data = spiffe_bundle([m.root_ec.cert, m.root_rsa.cert], [m.ec, m.rsa]).encode()
    assert parse_x509_bundle(data, SOURCE) == (m.root_ec.cert, m.root_rsa.cert)


def test_spiffe_bundle_with_leading_whitespace_is_json(m: Material) -> None:
    data = b"  \n\t" + spiffe_bundle([m.root_ec.cert], []).encode()
    assert parse_x509_bundle(data, SOURCE) == (m.root_ec.cert,)


def test_spiffe_bundle_skips_other_entries(m: Material) -> None:
    data = _doc(jwk_public(m.ec, use="jwt-svid"), "not-an-object", _x509_entry(m.root_ec), {"use": "enc"})
    assert parse_x509_bundle(data, SOURCE) == (m.root_ec.cert,)


def test_spiffe_bundle_without_x509_svid_entries(m: Material) -> None:
    _refused("no 'use: x509-svid' entries", spiffe_bundle([], [m.ec]).encode())
    _refused("no 'use: x509-svid' entries", _doc())


@pytest.mark.parametrize(
    "x5c",
    [None, [], "MIIB", ["a", "b"], [1]],
    ids=["missing", "empty", "string_not_list", "two_certs", "not_string"],
)
def test_spiffe_bundle_x509_entry_needs_exactly_one_x5c(x5c: Any, m: Material) -> None:
    entry = _x509_entry(m.root_ec)
    if x5c is None:
        del entry["x5c"]
    else:
        entry["x5c"] = x5c
    _refused(r"keys\[0\]: an x509-svid entry needs exactly one x5c", _doc(entry))


@pytest.mark.parametrize(
    "x5c",
    ["!!not base64!!", base64.b64encode(b"not DER at all").decode()],
    ids=["not_base64", "not_der"],
)
def test_spiffe_bundle_x5c_not_a_certificate(x5c: str, m: Material) -> None:
    entry = _x509_entry(m.root_ec)
    entry["x5c"] = [x5c]
    _refused(r"keys\[1\]\.x5c: not a DER certificate", _doc(_x509_entry(m.root_rsa), entry))


def test_spiffe_bundle_x5c_is_standard_base64_der(m: Material) -> None:
    der = m.root_ec.cert.public_bytes(Encoding.DER)
    assert _x509_entry(m.root_ec)["x5c"] == [base64.b64encode(der).decode()]


@pytest.mark.parametrize(
    "data",
    [b"{", b'{"keys": [}', b"{\xff}", b'{"keys": {}}', b'{"no_keys": []}', b"{} trailing"],
    ids=["truncated", "broken", "not_utf8", "keys_not_list", "no_keys", "trailing_text"],
)
def test_bad_json(data: bytes) -> None:
    _refused("JSON|JWK set", data)
    _refused("JSON|JWK set", data, jwks=True)


def test_jwks_top_level_not_an_object() -> None:
    _refused("JWK set", b'[{"keys": []}]', jwks=True)


# ---------------------------------------------------------------------------------------------------
# parse_jwks


def test_jwks_by_kid_and_without_kid(m: Material) -> None:
    keys = parse_jwks(
        _doc(jwk_public(m.ec), jwk_public(m.rsa), jwk_public(m.ec_no_kid)), SOURCE, require_use=None
    )
    assert set(keys.by_kid) == {"ec-1", "rsa-1"}
    assert isinstance(keys.by_kid["ec-1"], ECKey)
    assert isinstance(keys.by_kid["rsa-1"], RSAKey)
    assert len(keys.without_kid) == 1
    assert len(keys) == 3
    assert keys.by_kid["ec-1"].as_dict(private=False) == jwk_public(m.ec)
    assert keys.by_kid["rsa-1"].private_key is None  # public halves only


def test_jwks_drops_use_key_ops_and_x5c_but_keeps_the_key(m: Material) -> None:
    entry = jwk_public(m.ec, use="sig")
    entry["key_ops"] = ["verify"]
    entry["x5c"] = ["ignored"]
    keys = parse_jwks(_doc(entry), SOURCE, require_use=None)
    assert set(keys.by_kid) == {"ec-1"}


def test_spiffe_bundle_as_jwt_bundle(m: Material) -> None:
    data = spiffe_bundle([m.root_ec.cert], [m.ec, m.rsa]).encode()
    keys = parse_jwks(data, SOURCE, require_use="jwt-svid")
    assert set(keys.by_kid) == {"ec-1", "rsa-1"}
    assert keys.without_kid == ()


@pytest.mark.parametrize(
    ("use", "taken_for_jwt_svid", "taken_for_oidc"),
    [
        ("jwt-svid", True, False),
        ("x509-svid", False, False),
        (None, False, True),
        ("sig", False, True),
        ("enc", False, False),
    ],
)
def test_require_use_filtering(
    use: str | None, taken_for_jwt_svid: bool, taken_for_oidc: bool, m: Material
) -> None:
    filler = jwk_public(m.rsa, use="jwt-svid") | {"kid": "filler-svid"}
    filler_oidc = jwk_public(m.rsa, use="sig") | {"kid": "filler-oidc"}
    entry = jwk_public(m.ec) if use is None else jwk_public(m.ec, use=use)
    for require_use, taken, other in (
        ("jwt-svid", taken_for_jwt_svid, filler),
        (None, taken_for_oidc, filler_oidc),
    ):
        keys = parse_jwks(_doc(other, entry), SOURCE, require_use=require_use)
        assert ("ec-1" in keys.by_kid) is taken, (require_use, use)


@pytest.mark.parametrize(
    ("key_ops", "taken"),
    [
        (["verify"], True),
        (["sign", "verify"], True),
        (["encrypt"], False),
        (["sign"], False),
        ([], False),
        ("verify", False),
    ],
)
def test_key_ops_without_verify_is_not_a_verification_key(key_ops: Any, taken: bool, m: Material) -> None:
    entry = jwk_public(m.ec)
    entry["key_ops"] = key_ops
    keys = parse_jwks(_doc(jwk_public(m.rsa), entry), SOURCE, require_use=None)
    assert ("ec-1" in keys.by_kid) is taken


def test_no_usable_keys(m: Material) -> None:
    _refused("no 'use: jwt-svid' keys", _doc(jwk_public(m.ec, use="sig")), jwks=True, require_use="jwt-svid")
    _refused("no signing keys", _doc(jwk_public(m.ec, use="enc")), jwks=True)
    _refused("no signing keys", _doc(), jwks=True)


@pytest.mark.parametrize("require_use", ["jwt-svid", None])
def test_oct_key_refused(require_use: str | None) -> None:
    oct_key = {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}
    if require_use:
        oct_key["use"] = require_use
    _refused(r"keys\[0\]: symmetric \(oct\) keys", _doc(oct_key), jwks=True, require_use=require_use)


@pytest.mark.parametrize("kind", ["ec", "rsa"])
@pytest.mark.parametrize("require_use", ["jwt-svid", None])
def test_private_key_material_refused(kind: str, require_use: str | None, m: Material) -> None:
    key = m.ec if kind == "ec" else m.rsa
    private = dict(key.as_dict(private=True))
    assert "d" in private
    if require_use:
        private["use"] = require_use
    _refused("private key material", _doc(private), jwks=True, require_use=require_use)


@pytest.mark.parametrize("param", ["d", "p", "q", "dp", "dq", "qi"])
def test_any_private_rsa_parameter_refused(param: str, m: Material) -> None:
    entry = jwk_public(m.rsa)
    entry[param] = m.rsa.as_dict(private=True)[param]
    _refused("private key material", _doc(entry), jwks=True)


def test_duplicate_kid(m: Material) -> None:
    other = new_jwt_key("ES256", kid="ec-1")
    _refused(r"keys\[1\]: duplicate kid 'ec-1'", _doc(jwk_public(m.ec), jwk_public(other)), jwks=True)


def test_duplicate_kid_in_a_skipped_entry_is_ignored(m: Material) -> None:
    data = _doc(jwk_public(m.ec, use="jwt-svid"), jwk_public(m.ec, use="x509-svid"))
    assert set(parse_jwks(data, SOURCE, require_use="jwt-svid").by_kid) == {"ec-1"}


@pytest.mark.parametrize(
    "entry",
    [
        "not-an-object",
        {"kty": "EC", "kid": "x", "crv": "P-256", "x": "AAAA"},
        {"kty": "RSA", "kid": "x", "e": "AQAB"},
        {"kty": "XYZ", "kid": "x"},
        {"kid": "x"},
    ],
    ids=["not_object", "ec_missing_y", "rsa_missing_n", "unknown_kty", "no_kty"],
)
def test_unusable_entry(entry: Any) -> None:
    _refused(r"keys\[0\]", _doc(entry), jwks=True)


def test_empty_kid_counts_as_no_kid(m: Material) -> None:
    entry = jwk_public(m.ec)
    entry["kid"] = ""
    keys = parse_jwks(_doc(entry), SOURCE, require_use=None)
    assert keys.by_kid == {}
    assert len(keys.without_kid) == 1


def test_trust_revision_covers_every_live_source() -> None:
    """Two live sources (JWKS over HTTPS, Workload API) update one snapshot in turn: the revision must
    change with either, and one source's update must not drop the other's part."""
    files = TrustSnapshot(revision=TrustRevision("base"))
    a = files.with_source("jwks", "k1")
    b = a.with_source("workload_api", "w1")
    c = b.with_source("jwks", "k2")
    back = c.with_source("jwks", "k1")
    assert len({files.key, a.key, b.key, c.key}) == 4
    assert back.revision == b.revision and back.key != a.key
    assert dict(c.revision.sources) == {"jwks": "k2", "workload_api": "w1"}
    assert all(t.revision.files == "base" for t in (a, b, c))
    assert files.key == "base" and c.key.startswith("base+")
