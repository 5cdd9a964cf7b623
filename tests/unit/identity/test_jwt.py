"""Bearer tokens: JWT-SVIDs and OIDC JWTs, each refusal asserted by its exact ``reason`` code.

Keys are generated once per module with ``ext_authz.dev.pki``; only their public halves are put into
the trust snapshot. Time is pinned (``NOW``); nothing here reads the wall clock. Tokens that no
honest signer would produce (``alg: none``, HMAC key confusion, hostile headers) are hand-crafted.
The Wycheproof JSON Web Signature vectors run against the module's own key selection and
signature check.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from joserfc.jwk import ECKey, Key, RSAKey

from ext_authz.dev.pki import jwk_public, mint_jwt, new_jwt_key, spiffe_bundle
from ext_authz.errors import CredentialError, TrustError
from ext_authz.identity.jwt import (
    MAX_TOKEN_BYTES,
    TokenSettings,
    _b64json,
    peek_unverified,
    select_key,
    verify_signature,
    verify_token,
)
from ext_authz.model import Identity
from ext_authz.settings import JWT_SVID_ALGORITHMS, IssuerSettings, JwtSvidSettings
from ext_authz.trust.bundles import IssuerTrust, JwtKeys, TrustDomainTrust, TrustSnapshot, parse_jwks
from ext_authz.trust.revision import TrustRevision

NOW = 1_900_000_000.0
LEEWAY = 30.0
TD_A = "example.org"
TD_B = "other.org"
WORKLOAD = f"spiffe://{TD_A}/ns/prod/sa/billing"
WORKLOAD_B = f"spiffe://{TD_B}/ns/prod/sa/ledger"
SVID_AUDIENCE = "spiffe://example.org/ext-authz"
IDP = "https://idp.example.com"
IDP_SINGLE_KEY = "https://single.example.com"
API_AUDIENCE = "api://orders"

Claims = dict[str, Any]


@dataclass(frozen=True)
class Keys:
    """Private signing keys, by role. The snapshot holds only their public halves."""

    a_es256: Key
    a_es384: Key
    a_es512: Key
    a_rsa: Key
    a_shared_kid: Key
    b_es256: Key
    b_shared_kid: Key
    idp_rsa: Key
    idp_ec: Key
    single: Key
    stranger_ec: Key


def _public(key: Key, **extra: str) -> Key:
    jwk = jwk_public(key, **extra)
    if isinstance(key, RSAKey):
        return RSAKey.import_key(jwk)
    return ECKey.import_key(jwk)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(
        a_es256=new_jwt_key("ES256", kid="a-es256"),
        a_es384=new_jwt_key("ES384", kid="a-es384"),
        a_es512=new_jwt_key("ES512", kid="a-es512"),
        a_rsa=new_jwt_key("RS256", kid="a-rsa"),
        a_shared_kid=new_jwt_key("ES256", kid="shared"),
        b_es256=new_jwt_key("ES256", kid="b-es256"),
        b_shared_kid=new_jwt_key("ES256", kid="shared"),
        idp_rsa=new_jwt_key("RS256", kid="idp-rsa"),
        idp_ec=new_jwt_key("ES256", kid="idp-ec"),
        single=new_jwt_key("ES256"),
        stranger_ec=new_jwt_key("ES256", kid="a-es256"),
    )


@pytest.fixture(scope="module")
def trust(keys: Keys) -> TrustSnapshot:
    a_keys = {
        "a-es256": _public(keys.a_es256),
        "a-es384": _public(keys.a_es384),
        "a-es512": _public(keys.a_es512),
        "a-rsa": _public(keys.a_rsa),
        # The same RSA key published a second time, pinned to one algorithm by its JWK "alg".
        "a-rsa-rs256-only": _public(keys.a_rsa, kid="a-rsa-rs256-only", alg="RS256"),
        "shared": _public(keys.a_shared_kid),
    }
    b_keys = {"b-es256": _public(keys.b_es256), "shared": _public(keys.b_shared_kid)}
    return TrustSnapshot(
        revision=TrustRevision("r1"),
        domains={
            TD_A: TrustDomainTrust(TD_A, jwt_keys=JwtKeys(by_kid=a_keys)),
            TD_B: TrustDomainTrust(TD_B, jwt_keys=JwtKeys(by_kid=b_keys)),
            "x509-only.org": TrustDomainTrust("x509-only.org"),
        },
        issuers={
            IDP: IssuerTrust(
                IDP, JwtKeys(by_kid={"idp-rsa": _public(keys.idp_rsa), "idp-ec": _public(keys.idp_ec)})
            ),
            IDP_SINGLE_KEY: IssuerTrust(IDP_SINGLE_KEY, JwtKeys(without_kid=(_public(keys.single),))),
        },
    )


def _settings(
    *,
    svid_algorithms: tuple[str, ...] = JWT_SVID_ALGORITHMS,
    idp_algorithms: tuple[str, ...] = ("RS256", "ES256", "PS256"),
    subject_claim: str = "sub",
) -> TokenSettings:
    return TokenSettings(
        jwt_svid=JwtSvidSettings(audiences=(SVID_AUDIENCE,), algorithms=svid_algorithms, leeway=LEEWAY),
        issuers={
            IDP: IssuerSettings(
                jwks="idp-jwks.json",
                audiences=(API_AUDIENCE,),
                algorithms=idp_algorithms,
                leeway=LEEWAY,
                subject_claim=subject_claim,
            ),
            IDP_SINGLE_KEY: IssuerSettings(jwks="single-jwks.json", audiences=(API_AUDIENCE,)),
        },
    )


SETTINGS = _settings()


def _with(base: Claims, overrides: Mapping[str, Any]) -> Claims:
    """``base`` with ``overrides`` applied; an override of ``None`` removes the claim."""
    out = dict(base)
    for name, value in overrides.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def svid_claims(**overrides: Any) -> Claims:
    base = {"sub": WORKLOAD, "aud": [SVID_AUDIENCE], "exp": int(NOW) + 300, "iat": int(NOW) - 10}
    return _with(base, overrides)


def oidc_claims(**overrides: Any) -> Claims:
    base = {
        "iss": IDP,
        "sub": "alice",
        "aud": API_AUDIENCE,
        "exp": int(NOW) + 300,
        "iat": int(NOW) - 10,
        "nbf": int(NOW) - 10,
        "email": "alice@example.com",
    }
    return _with(base, overrides)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64_json(value: Mapping[str, Any]) -> str:
    return _b64(json.dumps(dict(value), separators=(",", ":")).encode())


def craft(header: Mapping[str, Any], claims: Mapping[str, Any], signature: bytes = b"\x01" * 64) -> str:
    """A compact JWS with whatever header, claims and signature bytes the test wants."""
    return f"{_b64_json(header)}.{_b64_json(claims)}.{_b64(signature)}"


def es256_signed(key: Key, header: Mapping[str, Any], claims: Claims) -> str:
    """Signed for real (ES256), with header parameters a signing library may refuse to emit."""
    private = key.private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    signing_input = f"{_b64_json(header)}.{_b64_json(claims)}"
    r, s = decode_dss_signature(private.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def verify(
    token: str, trust: TrustSnapshot, settings: TokenSettings = SETTINGS, now: float = NOW
) -> Identity:
    return verify_token(token, trust, settings, now)


def reason(token: str, trust: TrustSnapshot, settings: TokenSettings = SETTINGS, now: float = NOW) -> str:
    with pytest.raises(CredentialError) as caught:
        verify_token(token, trust, settings, now)
    assert caught.value.credential == "token"
    return caught.value.reason


def _signing_key(keys: Keys, alg: str) -> Key:
    """Trust domain A's key for ``alg``: one EC key per curve, one RSA key for RS* and PS*."""
    return {"ES256": keys.a_es256, "ES384": keys.a_es384, "ES512": keys.a_es512}.get(alg, keys.a_rsa)


# ---------------------------------------------------------------------------------------------------
# Valid tokens


@pytest.mark.parametrize("alg", JWT_SVID_ALGORITHMS)
def test_valid_jwt_svid(alg: str, keys: Keys, trust: TrustSnapshot) -> None:
    token = mint_jwt(_signing_key(keys, alg), svid_claims(), alg=alg)
    ident = verify(token, trust)
    assert ident.kind == "jwt_svid"
    assert ident.spiffe_id == WORKLOAD
    assert ident.subject == WORKLOAD
    assert ident.trust_domain == TD_A
    assert ident.path == "/ns/prod/sa/billing"
    assert ident.audiences == (SVID_AUDIENCE,)
    assert ident.expires_at == int(NOW) + 300
    assert ident.issued_at == int(NOW) - 10
    assert ident.claims["sub"] == WORKLOAD


@pytest.mark.parametrize("typ", ["JWT", "JOSE", None])
def test_jwt_svid_typ_jwt_jose_or_absent(typ: str | None, keys: Keys, trust: TrustSnapshot) -> None:
    token = mint_jwt(keys.a_es256, svid_claims(), typ=typ)
    assert verify(token, trust).spiffe_id == WORKLOAD


def test_jwt_svid_audience_list_needs_one_configured_member(keys: Keys, trust: TrustSnapshot) -> None:
    token = mint_jwt(keys.a_es256, svid_claims(aud=["someone-else", SVID_AUDIENCE]))
    assert verify(token, trust).audiences == ("someone-else", SVID_AUDIENCE)


def test_jwt_svid_from_second_trust_domain(keys: Keys, trust: TrustSnapshot) -> None:
    ident = verify(mint_jwt(keys.b_es256, svid_claims(sub=WORKLOAD_B)), trust)
    assert (ident.trust_domain, ident.spiffe_id) == (TD_B, WORKLOAD_B)


@pytest.mark.parametrize(("kid", "alg"), [("idp-rsa", "RS256"), ("idp-ec", "ES256"), ("idp-rsa", "PS256")])
def test_valid_oidc_token(kid: str, alg: str, keys: Keys, trust: TrustSnapshot) -> None:
    key = keys.idp_rsa if kid == "idp-rsa" else keys.idp_ec
    ident = verify(mint_jwt(key, oidc_claims(), alg=alg), trust)
    assert ident.kind == "oidc"
    assert ident.subject == "alice"
    assert ident.issuer == IDP
    assert ident.audiences == (API_AUDIENCE,)
    assert ident.expires_at == int(NOW) + 300
    assert ident.issued_at == int(NOW) - 10
    assert ident.spiffe_id == ""
    assert ident.trust_domain == ""
    assert ident.claims["email"] == "alice@example.com"


def test_oidc_subject_from_configured_claim(keys: Keys, trust: TrustSnapshot) -> None:
    token = mint_jwt(keys.idp_ec, oidc_claims())
    assert verify(token, trust, _settings(subject_claim="email")).subject == "alice@example.com"


def test_oidc_subject_claim_missing(keys: Keys, trust: TrustSnapshot) -> None:
    token = mint_jwt(keys.idp_ec, oidc_claims(sub=None))
    assert reason(token, trust) == "token_claims"


def test_oidc_token_with_spiffe_sub_is_still_routed_by_issuer(keys: Keys, trust: TrustSnapshot) -> None:
    token = mint_jwt(keys.idp_ec, oidc_claims(sub=WORKLOAD))
    ident = verify(token, trust)
    assert (ident.kind, ident.subject, ident.spiffe_id) == ("oidc", WORKLOAD, "")


def test_oidc_without_kid_uses_the_issuers_only_key(keys: Keys, trust: TrustSnapshot) -> None:
    token = mint_jwt(keys.single, oidc_claims(iss=IDP_SINGLE_KEY), kid="")
    assert verify(token, trust).issuer == IDP_SINGLE_KEY


def test_oidc_without_kid_and_several_keys(keys: Keys, trust: TrustSnapshot) -> None:
    token = mint_jwt(keys.idp_ec, oidc_claims(), kid="")
    assert reason(token, trust) == "token_unknown_key"


def test_oidc_issuer_configured_but_no_keys_loaded(keys: Keys, trust: TrustSnapshot) -> None:
    bare = TrustSnapshot(domains=trust.domains, issuers={})
    assert reason(mint_jwt(keys.idp_ec, oidc_claims()), bare) == "token_issuer"


# ---------------------------------------------------------------------------------------------------
# Algorithms


@pytest.mark.parametrize("route", ["jwt_svid", "oidc"])
@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_token_alg_none_with_signature(route: str, alg: str, trust: TrustSnapshot) -> None:
    claims = svid_claims() if route == "jwt_svid" else oidc_claims()
    kid = "a-es256" if route == "jwt_svid" else "idp-ec"
    assert reason(craft({"alg": alg, "typ": "JWT", "kid": kid}, claims), trust) == "token_algorithm"


@pytest.mark.parametrize("route", ["jwt_svid", "oidc"])
def test_token_alg_none_unsigned(route: str, trust: TrustSnapshot) -> None:
    """The classic unsecured JWT: empty signature part. Refused before its alg is even read."""
    claims = svid_claims() if route == "jwt_svid" else oidc_claims()
    token = f"{_b64_json({'alg': 'none', 'typ': 'JWT'})}.{_b64_json(claims)}."
    assert reason(token, trust) == "token_malformed"


def _hs256_with_public_key_as_secret(public_key: Key, header: Mapping[str, Any], claims: Claims) -> str:
    """Key confusion: an HMAC keyed with the verifier's public RSA key (PEM bytes)."""
    assert isinstance(public_key, RSAKey)
    secret = public_key.as_pem(private=False)
    signing_input = f"{_b64_json(header)}.{_b64_json(claims)}"
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


@pytest.mark.parametrize("allow_hs256", [False, True], ids=["default_allow_list", "hs256_misconfigured"])
def test_token_hs256_key_confusion_oidc(allow_hs256: bool, keys: Keys, trust: TrustSnapshot) -> None:
    header = {"alg": "HS256", "typ": "JWT", "kid": "idp-rsa"}
    token = _hs256_with_public_key_as_secret(keys.idp_rsa, header, oidc_claims())
    # Even an allow-list that wrongly names HS256 cannot make an RSA key an HMAC secret.
    settings = SETTINGS
    if allow_hs256:  # the settings refuse HS256; this stands for a copy that bypassed them
        idp = SETTINGS.issuers[IDP].model_copy(update={"algorithms": ("RS256", "HS256")})
        settings = dataclasses.replace(SETTINGS, issuers={**SETTINGS.issuers, IDP: idp})
    assert reason(token, trust, settings) == "token_algorithm"


@pytest.mark.parametrize("allow_hs256", [False, True], ids=["default_allow_list", "hs256_misconfigured"])
def test_token_hs256_key_confusion_jwt_svid(allow_hs256: bool, keys: Keys, trust: TrustSnapshot) -> None:
    header = {"alg": "HS256", "typ": "JWT", "kid": "a-rsa"}
    token = _hs256_with_public_key_as_secret(keys.a_rsa, header, svid_claims())
    settings = SETTINGS
    if allow_hs256:  # the settings refuse HS256; this stands for a copy that bypassed them
        svid = SETTINGS.jwt_svid.model_copy(update={"algorithms": (*JWT_SVID_ALGORITHMS, "HS256")})
        settings = dataclasses.replace(SETTINGS, jwt_svid=svid)
    assert reason(token, trust, settings) == "token_algorithm"


def test_token_alg_not_in_issuer_allow_list(keys: Keys, trust: TrustSnapshot) -> None:
    token = mint_jwt(keys.idp_ec, oidc_claims(), alg="ES256")
    assert verify(token, trust).subject == "alice"
    assert reason(token, trust, _settings(idp_algorithms=("RS256",))) == "token_algorithm"


def test_token_alg_not_in_jwt_svid_allow_list(keys: Keys, trust: TrustSnapshot) -> None:
    token = mint_jwt(keys.a_rsa, svid_claims(), alg="RS256")
    assert reason(token, trust, _settings(svid_algorithms=("ES256",))) == "token_algorithm"


@pytest.mark.parametrize(("alg", "kid"), [("RS256", "a-es256"), ("PS256", "a-es256"), ("ES256", "a-rsa")])
def test_token_alg_does_not_fit_key_type(alg: str, kid: str, keys: Keys, trust: TrustSnapshot) -> None:
    signer = keys.a_rsa if alg[:2] in ("RS", "PS") else keys.a_es256
    assert reason(mint_jwt(signer, svid_claims(), alg=alg, kid=kid), trust) == "token_algorithm"


def test_token_rs256_header_with_ec_key_kid_oidc(keys: Keys, trust: TrustSnapshot) -> None:
    token = mint_jwt(keys.idp_rsa, oidc_claims(), alg="RS256", kid="idp-ec")
    assert reason(token, trust) == "token_algorithm"


def test_token_alg_differs_from_keys_published_alg(keys: Keys, trust: TrustSnapshot) -> None:
    """The same RSA key, published a second time with ``alg: RS256``, verifies only RS256."""
    pinned = "a-rsa-rs256-only"
    assert verify(mint_jwt(keys.a_rsa, svid_claims(), alg="RS256", kid=pinned), trust)
    assert reason(mint_jwt(keys.a_rsa, svid_claims(), alg="PS256", kid=pinned), trust) == "token_algorithm"
    assert verify(mint_jwt(keys.a_rsa, svid_claims(), alg="PS256", kid="a-rsa"), trust)


def test_token_without_alg(trust: TrustSnapshot) -> None:
    assert reason(craft({"typ": "JWT", "kid": "a-es256"}, svid_claims()), trust) == "token_algorithm"


# ---------------------------------------------------------------------------------------------------
# Keys and signatures


@pytest.mark.parametrize("route", ["jwt_svid", "oidc"])
def test_token_unknown_kid(route: str, keys: Keys, trust: TrustSnapshot) -> None:
    claims = svid_claims() if route == "jwt_svid" else oidc_claims()
    assert reason(mint_jwt(keys.a_es256, claims, kid="rotated-away"), trust) == "token_unknown_key"


def test_jwt_svid_without_kid(keys: Keys, trust: TrustSnapshot) -> None:
    assert reason(mint_jwt(keys.a_es256, svid_claims(), kid=""), trust) == "token_malformed"


def test_token_signature_tampered(keys: Keys, trust: TrustSnapshot) -> None:
    token = mint_jwt(keys.a_es256, svid_claims())
    head, payload, sig = token.split(".")
    flipped = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    flipped[10] ^= 0x01
    assert reason(f"{head}.{payload}.{_b64(bytes(flipped))}", trust) == "token_signature"


def test_token_payload_swapped_under_old_signature(keys: Keys, trust: TrustSnapshot) -> None:
    token = mint_jwt(keys.a_es256, svid_claims())
    head, _, sig = token.split(".")
    forged = _b64_json(svid_claims(sub=f"spiffe://{TD_A}/admin"))
    assert reason(f"{head}.{forged}.{sig}", trust) == "token_signature"


@pytest.mark.parametrize("route", ["jwt_svid", "oidc"])
def test_token_signed_by_swapped_key(route: str, keys: Keys, trust: TrustSnapshot) -> None:
    """Signed by a key nobody trusts, naming a trusted kid."""
    claims = svid_claims() if route == "jwt_svid" else oidc_claims()
    kid = "a-es256" if route == "jwt_svid" else "idp-ec"
    assert reason(mint_jwt(keys.stranger_ec, claims, kid=kid), trust) == "token_signature"


def test_token_signature_of_wrong_length(keys: Keys, trust: TrustSnapshot) -> None:
    header = {"alg": "ES256", "typ": "JWT", "kid": "a-es256"}
    assert reason(craft(header, svid_claims(), signature=b"\x00" * 65), trust) == "token_signature"


def test_jwt_svid_key_only_from_subs_trust_domain(keys: Keys, trust: TrustSnapshot) -> None:
    """Signed with B's key, kid present in B's bundle, sub in A: A's bundle has no such kid."""
    token = mint_jwt(keys.b_es256, svid_claims(sub=WORKLOAD))
    assert verify(mint_jwt(keys.b_es256, svid_claims(sub=WORKLOAD_B)), trust).trust_domain == TD_B
    assert reason(token, trust) == "token_unknown_key"


def test_jwt_svid_kid_collision_across_trust_domains(keys: Keys, trust: TrustSnapshot) -> None:
    """Both bundles publish kid "shared"; B's key must not verify a token whose sub is in A."""
    assert verify(mint_jwt(keys.a_shared_kid, svid_claims(sub=WORKLOAD)), trust).trust_domain == TD_A
    assert verify(mint_jwt(keys.b_shared_kid, svid_claims(sub=WORKLOAD_B)), trust).trust_domain == TD_B
    assert reason(mint_jwt(keys.b_shared_kid, svid_claims(sub=WORKLOAD)), trust) == "token_signature"


def test_key_in_spiffe_bundle_without_use_jwt_svid_is_not_loaded(keys: Keys) -> None:
    bundle = json.loads(spiffe_bundle([], [keys.a_es256]))
    bundle["keys"].append(jwk_public(keys.stranger_ec, kid="no-use"))
    bundle["keys"].append(jwk_public(keys.b_es256, kid="sig-use", use="sig"))
    jwt_keys = parse_jwks(json.dumps(bundle).encode(), "bundle.json", require_use="jwt-svid")
    assert set(jwt_keys.by_kid) == {"a-es256"}
    trust = TrustSnapshot(domains={TD_A: TrustDomainTrust(TD_A, jwt_keys=jwt_keys)})
    assert verify(mint_jwt(keys.a_es256, svid_claims()), trust).spiffe_id == WORKLOAD
    assert reason(mint_jwt(keys.stranger_ec, svid_claims(), kid="no-use"), trust) == "token_unknown_key"
    assert reason(mint_jwt(keys.b_es256, svid_claims(), kid="sig-use"), trust) == "token_unknown_key"


# ---------------------------------------------------------------------------------------------------
# Claims: audience, time, subject, issuer


@pytest.mark.parametrize("route", ["jwt_svid", "oidc"])
@pytest.mark.parametrize(
    "aud",
    [["someone-else"], "someone-else", None, [], "", [1, 2], 42],
    ids=["wrong_list", "wrong_string", "missing", "empty_list", "empty_string", "not_strings", "number"],
)
def test_token_audience(route: str, aud: Any, keys: Keys, trust: TrustSnapshot) -> None:
    if route == "jwt_svid":
        token = mint_jwt(keys.a_es256, _with(svid_claims(), {"aud": aud}))
    else:
        token = mint_jwt(keys.idp_ec, _with(oidc_claims(), {"aud": aud}))
    assert reason(token, trust) == "token_audience"


@pytest.mark.parametrize("route", ["jwt_svid", "oidc"])
def test_token_expired_beyond_leeway(route: str, keys: Keys, trust: TrustSnapshot) -> None:
    exp = int(NOW) - 60
    claims = svid_claims(exp=exp) if route == "jwt_svid" else oidc_claims(exp=exp)
    key = keys.a_es256 if route == "jwt_svid" else keys.idp_ec
    token = mint_jwt(key, claims)
    assert reason(token, trust, now=exp + LEEWAY + 1) == "token_expired"
    assert verify(token, trust, now=exp + LEEWAY).expires_at == exp  # the last accepted instant
    assert verify(token, trust, now=exp + LEEWAY - 1).expires_at == exp


@pytest.mark.parametrize("route", ["jwt_svid", "oidc"])
@pytest.mark.parametrize(
    "exp",
    [None, "1900000300", True, float("inf"), float("nan"), 10**400],
    ids=["missing", "string", "bool", "inf", "nan", "huge_int"],
)
def test_token_exp_missing_or_not_a_number(route: str, exp: Any, keys: Keys, trust: TrustSnapshot) -> None:
    if route == "jwt_svid":
        token = mint_jwt(keys.a_es256, _with(svid_claims(), {"exp": exp}))
    else:
        token = mint_jwt(keys.idp_ec, _with(oidc_claims(), {"exp": exp}))
    assert reason(token, trust) == "token_claims"


@pytest.mark.parametrize("route", ["jwt_svid", "oidc"])
def test_token_nbf_in_future(route: str, keys: Keys, trust: TrustSnapshot) -> None:
    nbf = int(NOW) + 120
    claims = svid_claims(nbf=nbf) if route == "jwt_svid" else oidc_claims(nbf=nbf)
    key = keys.a_es256 if route == "jwt_svid" else keys.idp_ec
    token = mint_jwt(key, claims)
    assert reason(token, trust) == "token_not_yet_valid"
    assert reason(token, trust, now=nbf - LEEWAY - 1) == "token_not_yet_valid"
    assert verify(token, trust, now=nbf - LEEWAY)  # within leeway


def test_token_iat_in_future(keys: Keys, trust: TrustSnapshot) -> None:
    token = mint_jwt(keys.idp_ec, oidc_claims(iat=int(NOW) + 120, nbf=None))
    assert reason(token, trust) == "token_not_yet_valid"
    assert verify(token, trust, now=NOW + 120 - LEEWAY).subject == "alice"


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_token_nbf_iat_not_numbers(claim: str, keys: Keys, trust: TrustSnapshot) -> None:
    token = mint_jwt(keys.idp_ec, _with(oidc_claims(), {claim: "yesterday"}))
    assert reason(token, trust) == "token_claims"


@pytest.mark.parametrize("sub", ["alice", None, "https://example.org/alice", 42])
def test_token_not_spiffe_and_unknown_issuer(sub: Any, keys: Keys, trust: TrustSnapshot) -> None:
    claims = _with(oidc_claims(iss="https://evil.example.com"), {"sub": sub})
    assert reason(mint_jwt(keys.idp_ec, claims), trust) == "token_issuer"


@pytest.mark.parametrize(
    "sub",
    [
        f"spiffe://{TD_A}/a//b",
        "spiffe://Example.org/billing",
        f"spiffe://{TD_A}/billing/",
        "spiffe://",
        f"spiffe://{TD_A}",
    ],
    ids=["empty_segment", "uppercase_td", "trailing_slash", "no_trust_domain", "trust_domain_not_workload"],
)
def test_jwt_svid_sub_invalid_spiffe_id(sub: str, keys: Keys, trust: TrustSnapshot) -> None:
    assert reason(mint_jwt(keys.a_es256, svid_claims(sub=sub)), trust) == "token_claims"


@pytest.mark.parametrize("td", ["unconfigured.org", "x509-only.org"])
def test_jwt_svid_trust_domain_without_jwt_bundle(td: str, keys: Keys, trust: TrustSnapshot) -> None:
    token = mint_jwt(keys.a_es256, svid_claims(sub=f"spiffe://{td}/workload"))
    assert reason(token, trust) == "unknown_trust_domain"


# ---------------------------------------------------------------------------------------------------
# Header and shape


@pytest.mark.parametrize("typ", ["foo", "jwt+foo", "at+jwt", 1])
def test_jwt_svid_typ_not_jwt_or_jose(typ: Any, keys: Keys, trust: TrustSnapshot) -> None:
    header = {"alg": "ES256", "typ": typ, "kid": "a-es256"}
    assert reason(es256_signed(keys.a_es256, header, svid_claims()), trust) == "token_malformed"


HOSTILE_HEADERS: dict[str, Any] = {
    "jku": {"jku": "https://evil.example.com/jwks.json"},
    "x5u": {"x5u": "https://evil.example.com/cert.pem"},
    "crit": {"crit": ["urn:example:ignored"], "urn:example:ignored": True},
    "crit_empty": {"crit": []},
}


@pytest.mark.parametrize("route", ["jwt_svid", "oidc"])
@pytest.mark.parametrize("name", [*HOSTILE_HEADERS, "jwk"])
def test_token_header_refused(name: str, route: str, keys: Keys, trust: TrustSnapshot) -> None:
    """A validly signed token is still refused when its header carries jku/x5u/jwk/crit."""
    key = keys.a_es256 if route == "jwt_svid" else keys.idp_ec
    claims = svid_claims() if route == "jwt_svid" else oidc_claims()
    header: dict[str, Any] = {"alg": "ES256", "typ": "JWT", "kid": key.kid}
    assert verify(es256_signed(key, header, claims), trust)  # the same token without it is fine
    header.update({"jwk": jwk_public(key)} if name == "jwk" else HOSTILE_HEADERS[name])
    assert reason(es256_signed(key, header, claims), trust) == "token_malformed"


def test_oversize_token(keys: Keys, trust: TrustSnapshot) -> None:
    pad = MAX_TOKEN_BYTES * 3 // 4
    token = mint_jwt(keys.a_es256, svid_claims(pad="x" * pad))
    while len(token) > MAX_TOKEN_BYTES:
        pad -= 1
        token = mint_jwt(keys.a_es256, svid_claims(pad="x" * pad))
    assert MAX_TOKEN_BYTES - 4 <= len(token) <= MAX_TOKEN_BYTES
    assert verify(token, trust).spiffe_id == WORKLOAD  # just under the limit: fine
    bigger = mint_jwt(keys.a_es256, svid_claims(pad="x" * (pad + 3)))
    assert len(bigger) > MAX_TOKEN_BYTES
    assert reason(bigger, trust) == "token_malformed"
    assert reason("a" * (MAX_TOKEN_BYTES + 1), trust) == "token_malformed"


MALFORMED_TOKENS: dict[str, str] = {
    "empty": "",
    "one_part": "abc",
    "two_parts": "eyJhbGciOiJFUzI1NiJ9.e30",
    "four_parts": "eyJhbGciOiJFUzI1NiJ9.e30.c2ln.c2ln",
    "empty_header": ".e30.c2ln",
    "empty_payload": "eyJhbGciOiJFUzI1NiJ9..c2ln",
    "bad_base64_header": "!!!.e30.c2ln",
    "header_not_json": f"{_b64(b'not json')}.e30.c2ln",
    "header_not_object": f"{_b64(b'[1,2]')}.e30.c2ln",
    "payload_not_json": f"eyJhbGciOiJFUzI1NiJ9.{_b64(b'not json')}.c2ln",
    "payload_not_object": f"eyJhbGciOiJFUzI1NiJ9.{_b64(b'123')}.c2ln",
    "payload_not_utf8": f"eyJhbGciOiJFUzI1NiJ9.{_b64(bytes([0xFF, 0xFE]))}.c2ln",
    "bearer_prefix_left_in": "Bearer eyJhbGciOiJFUzI1NiJ9.e30.c2ln",
}


@pytest.mark.parametrize("name", list(MALFORMED_TOKENS))
def test_token_malformed(name: str, trust: TrustSnapshot) -> None:
    assert reason(MALFORMED_TOKENS[name], trust) == "token_malformed"


def test_peek_unverified_reads_without_verifying(keys: Keys) -> None:
    token = mint_jwt(keys.stranger_ec, svid_claims(), kid="whoever")
    header, claims = peek_unverified(token)
    assert header == {"alg": "ES256", "typ": "JWT", "kid": "whoever"}
    assert claims == svid_claims()


@pytest.mark.parametrize("name", list(MALFORMED_TOKENS))
def test_peek_unverified_refuses_malformed(name: str) -> None:
    with pytest.raises(CredentialError) as caught:
        peek_unverified(MALFORMED_TOKENS[name])
    assert caught.value.reason == "token_malformed"


# ---------------------------------------------------------------------------------------------------
# Wycheproof JSON Web Signature vectors

REPO_ROOT = Path(__file__).resolve().parents[3]
WYCHEPROOF = REPO_ROOT / "tests" / "data" / "vectors" / "wycheproof"
JWS_FILE = WYCHEPROOF / "json_web_signature_test.json"


def _wycheproof_cases() -> tuple[int, list[Any]]:
    """(numberOfTests, params). A missing file gives no params; test_wycheproof_file_present fails."""
    if not JWS_FILE.is_file():
        return 0, []
    doc = json.loads(JWS_FILE.read_text(encoding="utf-8"))
    assert doc["schema"] == "json_web_signature_schema_v1.json"
    params: list[Any] = []
    for group in doc["testGroups"]:
        public = group.get("public")
        private_kty = group.get("private", {}).get("kty")
        for case in group["tests"]:
            marks: list[pytest.MarkDecorator] = []
            if public is None or public.get("kty") == "oct" or private_kty == "oct":
                marks.append(pytest.mark.skip(reason="HMAC/symmetric key: never a verification key here"))
            elif _is_jwe(case["jws"]):
                marks.append(pytest.mark.skip(reason="JWE, not JWS"))
            params.append(pytest.param(public, case, id=f"tc{case['tcId']}-{case['comment']}", marks=marks))
    return int(doc["numberOfTests"]), params


def _is_jwe(token: str) -> bool:
    if token.count(".") == 4:
        return True
    try:
        return "enc" in _b64json(token.split(".")[0], "header")
    except CredentialError:
        return False


WYCHEPROOF_COUNT, WYCHEPROOF_CASES = _wycheproof_cases()


def test_wycheproof_file_present() -> None:
    assert JWS_FILE.is_file(), f"Wycheproof vectors missing: {JWS_FILE}"
    assert len(WYCHEPROOF_CASES) == WYCHEPROOF_COUNT > 0
    runnable = [p for p in WYCHEPROOF_CASES if not p.marks]
    assert len(runnable) >= 300, "most cases use asymmetric keys and must run, not skip"


def _wycheproof_verify(token: str, public: Mapping[str, Any]) -> None:
    """The verifier's steps that a bare JWS exercises: load the key, pick it by kid for the header's
    alg (allow-list and key-type fit), check the signature. Raises on refusal."""
    jwt_keys = parse_jwks(json.dumps({"keys": [dict(public)]}).encode(), "wycheproof", require_use=None)
    header = _b64json(token.split(".")[0], "header")
    alg = header.get("alg")
    alg = alg if isinstance(alg, str) else ""
    key = select_key(jwt_keys, header.get("kid"), alg, kid_required=False)
    verify_signature(token, key, alg)


@pytest.mark.parametrize(("public", "case"), WYCHEPROOF_CASES)
def test_wycheproof_jws(public: dict[str, Any], case: dict[str, Any]) -> None:
    token = case["jws"]
    assert case["result"] in ("valid", "invalid")
    if case["result"] == "invalid":
        with pytest.raises((CredentialError, TrustError)) as caught:
            _wycheproof_verify(token, public)
        if {"ModifiedPadding", "ModifiedSignature"}.intersection(case["flags"]):
            assert getattr(caught.value, "reason", None) == "token_signature"
        return
    header = _b64json(token.split(".")[0], "header")
    published_alg = public.get("alg")
    if published_alg is not None and published_alg != header["alg"]:
        # Valid signature, but the key's JWK says it is for another algorithm (RFC 7520 figures
        # re-used with a mismatched "alg"). We hold a key to the one algorithm it is published
        # for; the signature itself must still verify.
        with pytest.raises(CredentialError) as caught:
            _wycheproof_verify(token, public)
        assert caught.value.reason == "token_algorithm"
        unpinned = {k: v for k, v in public.items() if k != "alg"}
        _wycheproof_verify(token, unpinned)
        return
    assert header["alg"] in JWT_SVID_ALGORITHMS
    _wycheproof_verify(token, public)


# ---------------------------------------------------------------------------------------------------
# Hostile shapes found in review: they must be denials with a reason, never an escaping exception.


@pytest.mark.parametrize("part", ["header", "payload"])
def test_deeply_nested_json_is_malformed_not_a_crash(part: str, keys: Keys, trust: TrustSnapshot) -> None:
    nested = base64.urlsafe_b64encode(b"[" * 100_000 + b"]" * 100_000).rstrip(b"=").decode()
    good = mint_jwt(keys.idp_ec, oidc_claims()).split(".")
    parts = [nested, good[1], good[2]] if part == "header" else [good[0], nested, good[2]]
    assert reason(".".join(parts), trust) == "token_malformed"


@pytest.mark.parametrize("sub", ["alice\r\nx-spiffe-id: spiffe://example.org/admin", "alice\x00", "a\x7fb"])
def test_subject_with_control_characters_is_refused(sub: str, keys: Keys, trust: TrustSnapshot) -> None:
    """A subject becomes an upstream header value: control characters must never get that far."""
    assert reason(mint_jwt(keys.idp_ec, _with(oidc_claims(), {"sub": sub})), trust) == "token_claims"
