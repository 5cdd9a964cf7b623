"""Wycheproof signature vectors for ES256, RS256 and PS256 through our JWS verification path.

Each vector is a public key, a message, a signature and a verdict. The key is loaded the way trust
material is (``parse_jwks``) and chosen the way a token's header chooses it (``select_key``); the
signature goes into a compact JWS that ``verify_signature`` checks, as it checks every token. A JWS
signs ``BASE64URL(header) "." BASE64URL(payload)``, which a vector's arbitrary message cannot be, so
the one substitution is the bytes signed: joserfc's algorithm object (the one ``verify_signature``
dispatches to, shared by every registry) is handed the vector's message instead of the token's signing
input. Everything else — compact parsing, the allow-list, the key-type check, base64url of the
signature, P1363 → DER for ECDSA, PKCS#1 v1.5 / PSS (salt = hash length, RFC 7518 §3.5) in
``cryptography``, and how a refusal becomes a reason code — runs as it does for a real token.

Verdicts: "valid" must be accepted, "invalid" refused (``token_signature``). "acceptable" (one case:
RS256 tcId 8, a DigestInfo without its NULL parameter, a legacy encoding) must be *refused*: we take
the strict side, as OpenSSL does; if a dependency ever starts accepting it, this test says so.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from joserfc.jws import JWSRegistry

from ext_authz.errors import CredentialError
from ext_authz.identity.jwt import select_key, verify_signature
from ext_authz.trust.bundles import parse_jwks

WYCHEPROOF = Path(__file__).resolve().parents[3] / "tests" / "data" / "vectors" / "wycheproof"
FILES = {
    "ES256": ("ecdsa_secp256r1_sha256_p1363_test.json", "ecdsa_p1363_verify_schema_v1.json"),
    "RS256": ("rsa_signature_2048_sha256_test.json", "rsassa_pkcs1_verify_schema_v1.json"),
    "PS256": ("rsa_pss_2048_sha256_mgf1_32_test.json", "rsassa_pss_verify_schema_v1.json"),
}
# "acceptable" vectors: what we do with each (tcId → expected verdict), and why (module docstring).
ACCEPTABLE = {("RS256", 8): "invalid"}
KID = "wycheproof"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _fixed(hex_int: str, size: int) -> str:
    """A Wycheproof coordinate (hex, possibly with a leading 00) as a JWK base64url field."""
    return _b64(int(hex_int, 16).to_bytes(size, "big"))


def _jwk(alg: str, group: dict[str, Any]) -> dict[str, Any]:
    """The group's public key as a JWK. Files publish one for most groups; the ECDSA edge-case keys
    have only coordinates, so their JWK is built from those (the kid is ours either way)."""
    published = group.get("publicKeyJwk") or group.get("keyJwk")
    if published is not None:
        jwk = {k: v for k, v in published.items() if k not in ("kid", "alg")}
    elif alg == "ES256":
        pub = group["publicKey"]
        assert pub["curve"] == "secp256r1"
        jwk = {"kty": "EC", "crv": "P-256", "x": _fixed(pub["wx"], 32), "y": _fixed(pub["wy"], 32)}
    else:
        pub = group["publicKey"]
        jwk = {
            "kty": "RSA",
            "n": _b64(bytes.fromhex(pub["modulus"]).lstrip(b"\0")),
            "e": _b64(bytes.fromhex(pub["publicExponent"]).lstrip(b"\0")),
        }
    return jwk | {"kid": KID, "alg": alg}


def _load(alg: str) -> tuple[int, list[Any]]:
    name, schema = FILES[alg]
    path = WYCHEPROOF / name
    if not path.is_file():
        return 0, []
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["schema"] == schema
    params: list[Any] = []
    for group in doc["testGroups"]:
        assert group["sha"] == "SHA-256"
        if alg == "PS256":  # RFC 7518 §3.5: MGF1 with the same hash, salt as long as the hash
            assert (group["mgf"], group["mgfSha"], group["sLen"]) == ("MGF1", "SHA-256", 32)
        jwk = _jwk(alg, group)
        for case in group["tests"]:
            params.append(pytest.param(alg, jwk, case, id=f"{alg}-tc{case['tcId']}"))
    return int(doc["numberOfTests"]), params


LOADED = {alg: _load(alg) for alg in FILES}
CASES = [p for _, params in LOADED.values() for p in params]


@pytest.mark.parametrize("alg", sorted(FILES))
def test_vector_file_present_and_complete(alg: str) -> None:
    count, params = LOADED[alg]
    assert params, f"Wycheproof vectors missing: {WYCHEPROOF / FILES[alg][0]}"
    assert len(params) == count, f"{alg}: {len(params)} cases read, the file says {count}"


@contextmanager
def _signing(alg: str, msg: bytes) -> Iterator[list[bytes]]:
    """While inside, joserfc's ``alg`` verifies ``msg`` in place of the token's signing input; the
    list collects the signing inputs it was handed (so a test knows the signature check ran)."""
    model = JWSRegistry.algorithms[alg]
    original = model.verify
    seen: list[bytes] = []

    def verify(signing_input: bytes, sig: bytes, key: Any) -> bool:
        seen.append(signing_input)
        return original(msg, sig, key)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(model, "verify", verify)
        yield seen


def _verdict(alg: str, jwk: dict[str, Any], msg: bytes, sig: bytes) -> str | None:
    """None if our path accepts the signature, else the reason code it refuses it with."""
    keys = parse_jwks(json.dumps({"keys": [jwk]}).encode(), "wycheproof", require_use=None)
    header = {"alg": alg, "kid": KID, "typ": "JWT"}
    token = f"{_b64(json.dumps(header).encode())}.{_b64(msg) or 'e30'}.{_b64(sig)}"
    key = select_key(keys, header["kid"], alg, kid_required=True)
    with _signing(alg, msg) as seen:
        try:
            verify_signature(token, key, alg)
        except CredentialError as exc:
            refused: str | None = exc.reason
        else:
            refused = None
    assert seen, "the signature check was never reached"
    return refused


@pytest.mark.parametrize(("alg", "jwk", "case"), CASES)
def test_wycheproof_signature(alg: str, jwk: dict[str, Any], case: dict[str, Any]) -> None:
    expected = ACCEPTABLE.get((alg, case["tcId"]), case["result"])
    assert expected in ("valid", "invalid"), f"tcId {case['tcId']}: decide what {case['result']!r} means"
    refused = _verdict(alg, jwk, bytes.fromhex(case["msg"]), bytes.fromhex(case["sig"]))
    what = f"{alg} tcId {case['tcId']} ({case['comment'] or 'no comment'}; flags {case['flags']})"
    if expected == "valid":
        assert refused is None, f"{what}: a valid signature was refused ({refused})"
    else:
        assert refused == "token_signature", f"{what}: expected token_signature, got {refused or 'accepted'}"


def test_substitution_is_what_a_real_token_goes_through() -> None:
    """The substituted verify is the very one a real token reaches: a token signed over its own
    signing input verifies with the substitution feeding it that same input, and fails with another."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from joserfc import jws
    from joserfc.jwk import ECKey

    private = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()))
    token = jws.serialize_compact({"alg": "ES256", "kid": KID}, b"{}", private)
    public = private.as_dict(private=False) | {"kid": KID, "alg": "ES256"}
    header, payload, sig = token.split(".")
    signing_input = f"{header}.{payload}".encode()
    signature = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4))
    assert _verdict("ES256", public, signing_input, signature) is None
    assert _verdict("ES256", public, signing_input + b"x", signature) == "token_signature"
