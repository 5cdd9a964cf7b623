"""Bearer tokens: JWT-SVIDs (SPIFFE) and OIDC JWTs (per issuer).

Routing by what the token claims, before anything is trusted: a token whose ``iss`` is a
configured issuer is an OIDC token; otherwise a token whose ``sub`` is a SPIFFE ID is a JWT-SVID
and is checked against the JWT bundle of that SPIFFE ID's trust domain. Keys are only ever taken
from the key set the claims point to, and the header's ``alg`` must be on that source's
allow-list (never ``none``, never HS*) and fit the key's type.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import BadSignatureError, JoseError
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from ..errors import CredentialError
from ..model import Identity
from ..settings import MAX_TOKEN_BYTES, IssuerSettings, JwtSvidSettings
from ..spiffe_id import SpiffeId, SpiffeIdError
from ..trust.bundles import JwtKeys, TrustSnapshot

__all__ = [
    "MAX_TOKEN_BYTES",
    "TokenSettings",
    "peek_unverified",
    "select_key",
    "verify_signature",
    "verify_token",
]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_KEY_TYPES: dict[str, type[Key]] = {"RS": RSAKey, "PS": RSAKey, "ES": ECKey, "Ed": OKPKey}


@dataclass(frozen=True, slots=True)
class TokenSettings:
    jwt_svid: JwtSvidSettings
    issuers: Mapping[str, IssuerSettings]


def _fail(reason: str, detail: str) -> CredentialError:
    return CredentialError(reason, detail, credential="token")


def _b64json(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        value = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError) as exc:
        raise _fail("token_malformed", f"token {what} is not base64url JSON") from exc
    if not isinstance(value, dict):
        raise _fail("token_malformed", f"token {what} is not a JSON object")
    return value


def peek_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, *unverified*: only for choosing how to verify."""
    if len(token) > MAX_TOKEN_BYTES:
        raise _fail("token_malformed", f"token is longer than {MAX_TOKEN_BYTES} bytes")
    parts = token.split(".")
    if len(parts) != 3 or not all(parts):
        raise _fail("token_malformed", "token is not a compact JWS (three non-empty parts)")
    return _b64json(parts[0], "header"), _b64json(parts[1], "payload")


def select_key(keys: JwtKeys, kid: object, alg: str, *, kid_required: bool) -> Key:
    if isinstance(kid, str) and kid:
        key = keys.by_kid.get(kid)
        if key is None:
            raise _fail("token_unknown_key", f"no key with kid {kid!r}")
    elif kid_required:
        raise _fail("token_malformed", "token header has no kid")
    else:
        candidates = list(keys.without_kid) or list(keys.by_kid.values())
        if len(candidates) != 1:
            raise _fail("token_unknown_key", "token has no kid and the key set has more than one key")
        key = candidates[0]
    wanted = _KEY_TYPES.get(alg[:2])
    if wanted is None or not isinstance(key, wanted):
        raise _fail("token_algorithm", f"alg {alg} does not fit the {key.key_type} key it names")
    key_alg = key.get("alg") if hasattr(key, "get") else None
    if isinstance(key_alg, str) and key_alg and key_alg != alg:
        raise _fail("token_algorithm", f"key is published for {key_alg}, token uses {alg}")
    return key


def verify_signature(token: str, key: Key, alg: str) -> None:
    try:
        obj = jws.extract_compact(token.encode("ascii"))
        ok = jws.validate_compact(obj, key, algorithms=[alg])
    except BadSignatureError as exc:
        raise _fail("token_signature", "signature does not verify") from exc
    except (JoseError, ValueError, UnicodeEncodeError) as exc:
        raise _fail("token_malformed", f"token cannot be verified ({type(exc).__name__})") from exc
    if not ok:
        raise _fail("token_signature", "signature does not verify")


def _numeric(claims: Mapping[str, Any], name: str, *, required: bool) -> int | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise _fail("token_claims", f"token has no {name} claim")
        return None
    # ``not abs(value) < 2**53`` also refuses NaN, ±Infinity and integers too large for a float.
    if isinstance(value, bool) or not isinstance(value, int | float) or not abs(value) < 2**53:
        raise _fail("token_claims", f"{name} is not a number")
    return int(value)


def _audiences(claims: Mapping[str, Any]) -> tuple[str, ...]:
    aud = claims.get("aud")
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
        return tuple(aud)
    raise _fail("token_audience", "token has no usable aud claim")


def _check_times(claims: Mapping[str, Any], now: float, leeway: float) -> tuple[int | None, int]:
    exp = _numeric(claims, "exp", required=True)
    assert exp is not None
    nbf = _numeric(claims, "nbf", required=False)
    iat = _numeric(claims, "iat", required=False)
    if now > exp + leeway:
        raise _fail("token_expired", "token has expired")
    if nbf is not None and now < nbf - leeway:
        raise _fail("token_not_yet_valid", "token is not valid yet (nbf)")
    if iat is not None and now < iat - leeway:
        raise _fail("token_not_yet_valid", "token is issued in the future (iat)")
    # OpenID Connect's auth_time: when the user authenticated. Step-up (max_age) trusts it, so a time
    # to come would pass any max_age for as long as the token lives: refused, as a future iat is.
    auth_time = _numeric(claims, "auth_time", required=False)
    if auth_time is not None:
        if now < auth_time - leeway:
            raise _fail("token_not_yet_valid", "token says the user authenticated in the future (auth_time)")
        if iat is not None and auth_time > iat + leeway:
            raise _fail("token_claims", "token says the user authenticated after it was issued (auth_time)")
    return iat, exp


def _check_audience(auds: tuple[str, ...], accepted: Sequence[str]) -> None:
    if not set(auds).intersection(accepted):
        raise _fail("token_audience", "token is not meant for this service (aud)")


def verify_token(token: str, trust: TrustSnapshot, settings: TokenSettings, now: float) -> Identity:
    """Verify a compact JWT at ``now`` (epoch seconds) and return who it proves."""
    header, claims = peek_unverified(token)
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise _fail("token_algorithm", "token header has no alg")
    if "crit" in header or "jku" in header or "x5u" in header or "jwk" in header:
        raise _fail("token_malformed", "token header uses crit/jku/x5u/jwk, which are not accepted")
    iss = claims.get("iss")
    issuer = settings.issuers.get(iss) if isinstance(iss, str) else None
    if issuer is not None:
        assert isinstance(iss, str)
        return _verify_oidc(token, header, claims, alg, iss, issuer, trust, now)
    sub = claims.get("sub")
    if isinstance(sub, str) and sub.startswith("spiffe://"):
        return _verify_jwt_svid(token, header, claims, alg, settings.jwt_svid, trust, now)
    raise _fail("token_issuer", "token is from an unknown issuer and is not a JWT-SVID")


def _verify_jwt_svid(
    token: str,
    header: Mapping[str, Any],
    claims: Mapping[str, Any],
    alg: str,
    cfg: JwtSvidSettings,
    trust: TrustSnapshot,
    now: float,
) -> Identity:
    if alg not in cfg.algorithms:
        raise _fail("token_algorithm", f"alg {alg!r} is not allowed for JWT-SVIDs")
    typ = header.get("typ")
    if typ is not None and typ not in ("JWT", "JOSE"):
        raise _fail("token_malformed", "JWT-SVID typ must be JWT or JOSE")
    try:
        sid = SpiffeId.parse(str(claims["sub"]))
    except SpiffeIdError as exc:
        raise _fail("token_claims", f"sub is not a valid SPIFFE ID ({exc})") from exc
    if not sid.path:
        raise _fail("token_claims", "sub names a trust domain, not a workload (no path)")
    td = trust.domains.get(sid.trust_domain.name)
    if td is None or not len(td.jwt_keys):
        raise _fail("unknown_trust_domain", f"no JWT bundle for trust domain {sid.trust_domain.name!r}")
    key = select_key(td.jwt_keys, header.get("kid"), alg, kid_required=True)
    verify_signature(token, key, alg)
    auds = _audiences(claims)
    _check_audience(auds, cfg.audiences)
    iat, exp = _check_times(claims, now, cfg.leeway)
    return Identity.workload(
        "jwt_svid",
        sid,
        issuer=str(claims.get("iss", "")),
        audiences=auds,
        issued_at=iat,
        expires_at=exp,
        claims=dict(claims),
    )


def _verify_oidc(
    token: str,
    header: Mapping[str, Any],
    claims: Mapping[str, Any],
    alg: str,
    issuer: str,
    cfg: IssuerSettings,
    trust: TrustSnapshot,
    now: float,
) -> Identity:
    if alg not in cfg.algorithms:
        raise _fail("token_algorithm", f"alg {alg!r} is not allowed for issuer {issuer}")
    it = trust.issuers.get(issuer)
    if it is None:
        raise _fail("token_issuer", f"no keys loaded for issuer {issuer}")
    if it.stale(now):
        raise _fail("trust_stale", f"keys of issuer {issuer} could not be refreshed for too long")
    try:
        key = select_key(it.keys, header.get("kid"), alg, kid_required=False)
    except CredentialError as exc:
        exc.issuer = issuer  # an unknown kid may mean this issuer rotated its keys
        raise
    verify_signature(token, key, alg)
    auds = _audiences(claims)
    _check_audience(auds, cfg.audiences)
    iat, exp = _check_times(claims, now, cfg.leeway)
    subject = claims.get(cfg.subject_claim)
    if not isinstance(subject, str) or not subject:
        raise _fail("token_claims", f"token has no {cfg.subject_claim} claim")
    if _CONTROL.search(subject):
        raise _fail("token_claims", f"{cfg.subject_claim} contains control characters")
    return Identity(
        kind="oidc",
        subject=subject,
        issuer=issuer,
        audiences=auds,
        issued_at=iat,
        expires_at=exp,
        claims=dict(claims),
    )
