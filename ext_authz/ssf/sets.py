"""Security Event Tokens (RFC 8417) as the SSF 1.0 profile has them, verified.

Pure: the token, the receiver's settings and keys, and ``now`` in; a :class:`SecurityEvent` or a
:class:`SetError` carrying the RFC 8935 error code out. What is checked, in order: the size and shape of
a compact JWS; ``typ: secevent+jwt``; an asymmetric ``alg`` on the receiver's allow-list that fits the key
its ``kid`` names in the transmitter's JWKS (never ``none``, never HS*); the signature; ``iss`` exactly
the receiver's issuer; our audience in ``aud``; ``iat`` present, not in the future and not older than
``max_age``; a ``jti``; no ``exp`` and no ``sub`` (SSF §4.1); a ``sub_id`` (verification and
stream-updated events aside, it is where the subject is); exactly one event. Replays are the
receiver's to refuse (it keeps the ids it has seen, in the state store).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import CredentialError, Error
from ..identity.jwt import select_key, verify_signature
from ..trust.bundles import JwtKeys

__all__ = [
    "ERROR_CODES",
    "MAX_SET_BYTES",
    "SecurityEvent",
    "SetError",
    "json_depth",
    "verify_set",
]

MAX_SET_BYTES = 64 * 1024
MAX_DEPTH = 12  # nesting of the claims: SSF's deepest (complex subject in sub_id) is 3
ERROR_CODES = (
    "invalid_request",
    "invalid_key",
    "invalid_issuer",
    "invalid_audience",
    "authentication_failed",
    "access_denied",
    "invalid_state",
)


class SetError(Error):
    """A SET refused, with the RFC 8935 §2.4 error code and a description for the transmitter."""

    def __init__(self, err: str, description: str) -> None:
        super().__init__(f"{err}: {description}")
        assert err in ERROR_CODES
        self.err = err
        self.description = description


@dataclass(frozen=True, slots=True)
class SecurityEvent:
    issuer: str
    jti: str
    iat: int
    audiences: tuple[str, ...]
    event_type: str  # the full event-type URI
    payload: Mapping[str, Any]
    sub_id: Mapping[str, Any] | None
    txn: str = ""

    @property
    def name(self) -> str:
        """The event type's last segment (``session-revoked``), for logs and metric labels."""
        return self.event_type.rstrip("/").rsplit("/", 1)[-1]

    @property
    def event_time(self) -> float:
        """When the event happened: ``event_timestamp`` (CAEP, seconds; milliseconds from older
        transmitters are read as such), else the SET's ``iat``."""
        ts = self.payload.get("event_timestamp")
        if isinstance(ts, int | float) and not isinstance(ts, bool) and ts > 0:
            return float(ts) / 1000 if ts > 10**11 else float(ts)
        return float(self.iat)


def json_depth(value: object, limit: int = MAX_DEPTH) -> int:
    """How deeply ``value`` nests (iteratively: a hostile document cannot exhaust the stack)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _segment(part: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError) as exc:
        raise SetError("invalid_request", f"the SET's {what} is not base64url JSON") from exc
    if not isinstance(value, dict):
        raise SetError("invalid_request", f"the SET's {what} is not a JSON object")
    if json_depth(value) > MAX_DEPTH:
        raise SetError("invalid_request", f"the SET's {what} nests deeper than {MAX_DEPTH}")
    try:  # JSON may escape a lone surrogate (\ud800), which is no text: nothing downstream could use it
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        raise SetError(
            "invalid_request", f"the SET's {what} holds a string that is not Unicode text"
        ) from exc
    return value


def peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, unverified: only to choose the receiver and the key."""
    if len(token) > MAX_SET_BYTES:
        raise SetError("invalid_request", f"the SET is larger than {MAX_SET_BYTES} bytes")
    parts = token.strip().split(".")
    if len(parts) == 5:
        raise SetError("invalid_request", "an encrypted SET (JWE) is not accepted: sign it, over TLS")
    if len(parts) != 3 or not all(parts):
        raise SetError("invalid_request", "the SET is not a signed compact JWS (three non-empty parts)")
    return _segment(parts[0], "header"), _segment(parts[1], "claims")


def _number(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 2**53:
        raise SetError("invalid_request", f"the SET's {name} is not a time")
    return int(value)


def verify_set(
    token: str,
    *,
    issuer: str,
    audience: str,
    keys: JwtKeys,
    algorithms: tuple[str, ...],
    now: float,
    max_age: float,
    leeway: float = 30.0,
) -> SecurityEvent:
    header, claims = peek(token)
    if header.get("typ") != "secevent+jwt":
        raise SetError("invalid_request", "typ is not secevent+jwt (SSF 1.0 §4.1.1)")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise SetError("invalid_key", f"alg {alg!r} is not accepted (allowed: {', '.join(algorithms)})")
    if any(h in header for h in ("crit", "jku", "x5u", "jwk")):
        raise SetError("invalid_request", "header uses crit/jku/x5u/jwk, which are not accepted")
    iss = claims.get("iss")
    if iss != issuer:
        raise SetError("invalid_issuer", "iss is not this receiver's transmitter")
    try:
        key = select_key(keys, header.get("kid"), alg, kid_required=False)
        verify_signature(token.strip(), key, alg)
    except CredentialError as exc:
        raise SetError("invalid_key", exc.detail) from exc
    aud = claims.get("aud")
    auds = (aud,) if isinstance(aud, str) else tuple(aud) if isinstance(aud, list) else ()
    if not all(isinstance(a, str) for a in auds) or audience not in auds:
        raise SetError("invalid_audience", "the SET is not addressed to this receiver (aud)")
    iat = _number(claims, "iat")
    if iat > now + leeway:
        raise SetError("invalid_request", "iat is in the future")
    if now - iat > max_age:
        raise SetError(
            "invalid_request", f"the SET is older than max_age ({int(max_age)}s): stale, or replayed"
        )
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > 256:
        raise SetError("invalid_request", "jti is required (a string of at most 256 characters)")
    if "exp" in claims or "sub" in claims:
        raise SetError("invalid_request", "a SET has no exp and no sub (SSF 1.0 §4.1.2, §4.1.7): use sub_id")
    events = claims.get("events")
    if not isinstance(events, dict) or len(events) != 1:
        raise SetError("invalid_request", "events holds exactly one event")
    ((event_type, payload),) = events.items()
    if not isinstance(payload, dict):
        raise SetError("invalid_request", "the event's payload is a JSON object")
    sub_id = claims.get("sub_id")
    if sub_id is None and isinstance(payload.get("subject"), dict):
        sub_id = payload["subject"]  # CAEP/RISC before SSF 1.0 put the subject in the payload
    if sub_id is not None and not isinstance(sub_id, dict):
        raise SetError("invalid_request", "sub_id is a subject identifier (a JSON object)")
    txn = claims.get("txn")
    return SecurityEvent(
        issuer=issuer,
        jti=jti,
        iat=iat,
        audiences=auds,
        event_type=str(event_type),
        payload=payload,
        sub_id=sub_id,
        txn=txn if isinstance(txn, str) else "",
    )
