"""SET verification (RFC 8417, the SSF 1.0 profile): the published examples re-signed, and hostile SETs,
each refused with the RFC 8935 error code a transmitter can act on."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest

from ext_authz.dev import pki
from ext_authz.ssf.sets import MAX_SET_BYTES, SetError, verify_set
from ext_authz.trust.bundles import parse_jwks
from tests.ssfkit import CAEP, RISC, b64, mint_set, new_key, unsigned, with_header

ISS = "https://ssf.idp.example.com"
AUD = "https://authz.example.com"
KEY = new_key()
KEYS = parse_jwks(json.dumps({"keys": [pki.jwk_public(KEY, use="sig")]}).encode(), "test", require_use=None)
NOW = time.time()


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "iat": int(NOW),
        "jti": "set-1",
        "sub_id": {"format": "iss_sub", "iss": "https://idp.example.com", "sub": "alice"},
        "events": {CAEP + "session-revoked": {"event_timestamp": int(NOW) - 5}},
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def verify(token: str, **kw: Any) -> Any:
    args: dict[str, Any] = {
        "issuer": ISS,
        "audience": AUD,
        "keys": KEYS,
        "algorithms": ("ES256", "RS256"),
        "now": NOW,
        "max_age": 3600,
    }
    args.update(kw)
    return verify_set(token, **args)


def refused(token: str, **kw: Any) -> SetError:
    with pytest.raises(SetError) as info:
        verify(token, **kw)
    return info.value


def test_a_good_set_is_verified() -> None:
    ev = verify(mint_set(KEY, claims(txn="t-1")))
    assert (ev.issuer, ev.jti, ev.name, ev.txn) == (ISS, "set-1", "session-revoked", "t-1")
    assert ev.event_time == int(NOW) - 5
    assert ev.sub_id == {"format": "iss_sub", "iss": "https://idp.example.com", "sub": "alice"}


def test_an_audience_list_including_ours_is_accepted() -> None:
    assert verify(mint_set(KEY, claims(aud=["someone-else", AUD]))).audiences == ("someone-else", AUD)


def _hs256(c: dict[str, Any], secret: bytes) -> str:
    head = b64({"typ": "secevent+jwt", "alg": "HS256", "kid": "ssf-1"})
    body = b64(c)
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


PUBLIC_KEY_BYTES = json.dumps(pki.jwk_public(KEY)).encode()
NESTED = json.loads('{"a":' * 20 + "1" + "}" * 20)
TWO_EVENTS: dict[str, Any] = {CAEP + "session-revoked": {}, RISC + "account-disabled": {}}
HOSTILE = [
    ("alg none", unsigned(claims()), "invalid_request"),
    ("HS256 keyed with the public key's bytes", _hs256(claims(), PUBLIC_KEY_BYTES), "invalid_key"),
    ("signed by another key", mint_set(new_key(), claims()), "invalid_key"),
    ("an unknown kid", mint_set(new_key(kid="other"), claims(), kid="other"), "invalid_key"),
    ("no typ", mint_set(KEY, claims(), typ=None), "invalid_request"),
    ("typ JWT (an ID or access token)", mint_set(KEY, claims(), typ="JWT"), "invalid_request"),
    ("another issuer", mint_set(KEY, claims(iss="https://evil.example")), "invalid_issuer"),
    ("another audience", mint_set(KEY, claims(aud="https://other.example.com")), "invalid_audience"),
    ("no audience", mint_set(KEY, claims(aud=None)), "invalid_audience"),
    ("stale iat", mint_set(KEY, claims(iat=int(NOW) - 7200)), "invalid_request"),
    ("iat in the future", mint_set(KEY, claims(iat=int(NOW) + 3600)), "invalid_request"),
    ("no iat", mint_set(KEY, claims(iat=None)), "invalid_request"),
    ("no jti", mint_set(KEY, claims(jti=None)), "invalid_request"),
    ("exp (an ID token in disguise)", mint_set(KEY, claims(exp=int(NOW) + 60)), "invalid_request"),
    ("sub (SSF forbids it)", mint_set(KEY, claims(sub="alice")), "invalid_request"),
    ("two events", mint_set(KEY, claims(events=TWO_EVENTS)), "invalid_request"),
    ("no events", mint_set(KEY, claims(events={})), "invalid_request"),
    ("a payload not an object", mint_set(KEY, claims(events={CAEP + "x": "y"})), "invalid_request"),
    ("nested 20 deep", mint_set(KEY, claims(sub_id=NESTED)), "invalid_request"),
    ("oversized", mint_set(KEY, claims(pad="x" * MAX_SET_BYTES)), "invalid_request"),
    ("not a JWS", "not-a-token", "invalid_request"),
    ("a JWE", "a.b.c.d.e", "invalid_request"),
    ("crit header", with_header(mint_set(KEY, claims()), crit=["exp"]), "invalid_request"),
    ("jku header", with_header(mint_set(KEY, claims()), jku="https://evil.example/jwks"), "invalid_request"),
]


@pytest.mark.parametrize(("name", "token", "err"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_sets_are_refused_with_a_reason_code(name: str, token: str, err: str) -> None:
    assert refused(token).err == err, name


def test_an_algorithm_off_the_allow_list_is_refused() -> None:
    assert refused(mint_set(KEY, claims()), algorithms=("RS256",)).err == "invalid_key"


def test_a_tampered_payload_fails_the_signature() -> None:
    head, _, sig = mint_set(KEY, claims()).split(".")
    forged = f"{head}.{b64(claims(sub_id={'format': 'iss_sub', 'iss': 'x', 'sub': 'bob'}))}.{sig}"
    assert refused(forged).err == "invalid_key"


def test_event_timestamps_in_milliseconds_are_read_as_such() -> None:
    ev = verify(mint_set(KEY, claims(events={CAEP + "session-revoked": {"event_timestamp": 1615304991643}})))
    assert ev.event_time == pytest.approx(1615304991.643)


def test_a_legacy_payload_subject_stands_in_for_sub_id() -> None:
    legacy = {"subject": {"subject_type": "iss-sub", "iss": "https://idp.example.com", "sub": "alice"}}
    ev = verify(mint_set(KEY, claims(sub_id=None, events={RISC + "account-disabled": legacy})))
    assert ev.sub_id == legacy["subject"]
