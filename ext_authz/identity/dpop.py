"""DPoP proofs (RFC 9449 §4.3): the holder of a DPoP-bound token proves, on every request, that it has the
private key the token is bound to (``cnf.jkt``, the key's RFC 7638 thumbprint).

Verified here, in this order, each failure a ``dpop_proof`` refusal with what was wrong: one proof, a
compact JWS within the size limit; its header says ``typ: dpop+jwt``, an asymmetric ``alg`` on the
allow-list and a public ``jwk`` (no private member); the signature verifies with that key; the claims
bind it to this request (``htm`` the method, ``htu`` the URL without query or fragment, compared after
RFC 3986 normalization of scheme and host, default port dropped), to this moment (``iat`` within
``max_age`` back and ``leeway`` ahead), and to this token (``ath``, the base64url SHA-256 of it). Replay
(the ``jti`` seen before) is the caller's to check: it needs state."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import JWKRegistry
from joserfc.jws import JWSRegistry

from ..errors import CredentialError

__all__ = ["DPOP_ALGORITHMS", "MAX_PROOF_BYTES", "Proof", "verify_proof"]

DPOP_ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA")
MAX_PROOF_BYTES = 8 * 1024
MAX_JTI = 256
MAX_RSA_N_CHARS = 683  # base64url of a 4096-bit modulus
_UNSAFE_URL = re.compile(r"[\x00-\x20\x7f]")  # urlsplit drops tabs and newlines: none is taken
_PRIVATE = frozenset(("d", "p", "q", "dp", "dq", "qi", "oth", "k"))
_KTY = {"ES": "EC", "RS": "RSA", "PS": "RSA", "Ed": "OKP"}


class _ProofRegistry(JWSRegistry):
    """A proof carries its public key in its header: an RSA one is past joserfc's default 512 bytes."""

    max_header_length = 4096
    max_payload_length = 4096


_REGISTRY = _ProofRegistry(algorithms=DPOP_ALGORITHMS)


@dataclass(frozen=True, slots=True)
class Proof:
    jkt: str  # the RFC 7638 SHA-256 thumbprint of the proof's key
    jti: str
    iat: float


def _fail(detail: str) -> CredentialError:
    return CredentialError("dpop_proof", detail, credential="token")


def _b64json(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError) as exc:
        raise _fail(f"the proof's {what} is not base64url JSON") from exc
    if not isinstance(value, dict):
        raise _fail(f"the proof's {what} is not a JSON object")
    return value


def _origin_and_path(url: str) -> tuple[str, str, str] | None:
    """(scheme, host[:port], path) normalized (RFC 3986 §6.2.2–6.2.3): scheme and host lower-case, the
    default port dropped; query and fragment ignored; None if it is no http(s) URL."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or parts.username or parts.password:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != {"http": 80, "https": 443}[scheme]:
        host = f"{host}:{port}"
    return scheme, host, parts.path or "/"


def token_hash(token: str) -> str:
    """``ath``: the base64url (no padding) SHA-256 of the access token's ASCII."""
    return base64.urlsafe_b64encode(hashlib.sha256(token.encode("ascii")).digest()).rstrip(b"=").decode()


def verify_proof(
    proof: str,
    *,
    token: str,
    method: str,
    url: str | tuple[str, ...],
    now: float,
    max_age: float,
    leeway: float,
    algorithms: tuple[str, ...] = DPOP_ALGORITHMS,
) -> Proof:
    """The verified proof, or CredentialError ``dpop_proof`` saying what is wrong with it. ``url``: the
    request's URL, or every URL it may be named by (this service's origins, each with the path)."""
    if len(proof) > MAX_PROOF_BYTES:
        raise _fail(f"the proof is longer than {MAX_PROOF_BYTES} bytes")
    segments = proof.split(".")
    if len(segments) != 3 or not all(segments[:2]):
        raise _fail("the proof is not one compact JWS")
    header = _b64json(segments[0], "header")
    if header.get("typ") != "dpop+jwt":
        raise _fail("the proof's typ is not dpop+jwt")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise _fail(f"the proof's alg is not one of {', '.join(algorithms)}")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict) or not isinstance(jwk.get("kty"), str):
        raise _fail("the proof's header has no public key (jwk)")
    if _PRIVATE & set(jwk):
        raise _fail("the proof's jwk holds a private key")
    if "b64" in header or "crit" in header:  # the claims are read as base64url JSON, and only that
        raise _fail("the proof's header names b64 or crit")
    if jwk["kty"] != _KTY.get(alg[:2]):
        raise _fail(f"the proof's jwk is not a key for {alg}")
    if jwk["kty"] == "RSA":  # the caller chose this key: one made to verify slowly is refused unread
        n, e = jwk.get("n"), jwk.get("e")
        if not isinstance(n, str) or not isinstance(e, str) or len(n) > MAX_RSA_N_CHARS or len(e) > 6:
            raise _fail("the proof's RSA key is over 4096 bits, or its exponent over 32 bits")
    try:
        key = JWKRegistry.import_key(jwk)
        obj = jws.extract_compact(proof.encode("ascii"), registry=_REGISTRY)
        ok = jws.validate_compact(obj, key, algorithms=[alg], registry=_REGISTRY)
        jkt = key.thumbprint()
    except BadSignatureError as exc:
        raise _fail("the proof's signature does not verify") from exc
    except (JoseError, ValueError, TypeError, UnicodeEncodeError) as exc:
        raise _fail(f"the proof cannot be verified ({type(exc).__name__})") from exc
    if not ok:
        raise _fail("the proof's signature does not verify")
    claims = _b64json(segments[1], "claims")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI:
        raise _fail("the proof has no usable jti")
    if claims.get("htm") != method:
        raise _fail("the proof is for another method (htm)")
    htu = claims.get("htu")
    urls = (url,) if isinstance(url, str) else url
    if not isinstance(htu, str) or _UNSAFE_URL.search(htu):
        raise _fail("the proof has no usable htu")
    named = _origin_and_path(htu)
    if named is None or all(_origin_and_path(u) != named for u in urls):
        raise _fail("the proof is for another URL (htu)")
    iat = claims.get("iat")
    if isinstance(iat, bool) or not isinstance(iat, int | float) or not abs(iat) < 2**53:
        raise _fail("the proof has no usable iat")
    if iat > now + leeway:
        raise _fail("the proof is issued in the future (iat)")
    if iat < now - max_age - leeway:
        raise _fail("the proof is too old (iat)")
    ath = claims.get("ath")
    if not isinstance(ath, str) or not hmac.compare_digest(ath.encode(), token_hash(token).encode()):
        raise _fail("the proof is for another token (ath)")
    return Proof(jkt=str(jkt), jti=jti, iat=float(iat))
