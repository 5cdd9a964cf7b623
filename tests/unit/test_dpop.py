"""DPoP (RFC 9449): a token bound to a key is accepted only with a fresh proof of that key, for this
request, once. Real keys and tokens, the whole pipeline, and the response Envoy gets."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from joserfc import jws
from joserfc.jwk import ECKey, OctKey, RSAKey

from ext_authz.envoy.normalize import normalize
from ext_authz.envoy.render import render
from ext_authz.identity.dpop import token_hash
from ext_authz.pipeline import Caches, decide, identity_for_cel
from tests.component.checkreq import check_request
from tests.unit.test_pipeline_trust import ALLOWED, NOW, TS, Trust, outcome, trust  # noqa: F401

URL = "https://backend.internal/user/profile"


@pytest.fixture(scope="module")
def t(trust: Trust) -> Trust:  # noqa: F811 - the demo's trust, shared with test_pipeline_trust
    return trust


HOLDER = ECKey.generate_key("P-256")
OTHER = ECKey.generate_key("P-256")


def bound_token(t: Trust, key: Any = HOLDER, **changes: Any) -> str:
    return t.token(cnf={"jkt": key.thumbprint()}, **changes)


def proof(
    token: str,
    key: Any = HOLDER,
    *,
    htm: str = "GET",
    htu: str = URL,
    iat: float = TS,
    jti: str | None = None,
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
    alg: str = "ES256",
) -> str:
    head = {"typ": "dpop+jwt", "alg": alg, "jwk": key.as_dict(private=False), **(header or {})}
    body = {"jti": jti or uuid.uuid4().hex, "htm": htm, "htu": htu, "iat": int(iat), "ath": token_hash(token)}
    body.update(claims or {})
    payload = json.dumps({k: v for k, v in body.items() if v is not None})
    return jws.serialize_compact(head, payload, key, algorithms=[alg])


def decide_with(
    t: Trust,
    token: str,
    dpop: str | None,
    *,
    scheme: str = "DPoP",
    caches: Caches | None = None,
    path: str = "/user/profile",
    method: str = "GET",
) -> Any:
    headers = {"authorization": f"{scheme} {token}"}
    if dpop is not None:
        headers["dpop"] = dpop
    ctx = normalize(check_request(t.dir, path=path, method=method, listener="edge", headers=headers))
    return decide(ctx, t.engine, caches or Caches(), NOW, "d" * 32)


def test_a_bound_token_with_its_proof_passes_and_policy_sees_it(t: Trust) -> None:
    tok = bound_token(t)
    d = decide_with(t, tok, proof(tok))
    assert outcome(d) == ALLOWED
    assert identity_for_cel(d.principal)["token"]["bound"] == "dpop"


def test_the_same_proof_twice_is_a_replay(t: Trust) -> None:
    tok = bound_token(t)
    p = proof(tok)
    caches = Caches()
    assert decide_with(t, tok, p, caches=caches).allowed
    d = decide_with(t, tok, p, caches=caches)
    assert outcome(d) == (False, 401, "dpop_proof")
    www = {h.header.key: h.header.value for h in render(d).denied_response.headers}["www-authenticate"]
    assert www.startswith('DPoP error="invalid_dpop_proof", algs="ES256')
    assert decide_with(t, tok, proof(tok), caches=caches).allowed  # a new proof: fine


def _private_jwk() -> dict[str, Any]:
    return HOLDER.as_dict(private=True)


@pytest.mark.parametrize(
    ("make", "reason", "why"),
    [
        (lambda tok: proof(tok, htu="http://backend.internal/user/profile"), "dpop_proof", "another scheme"),
        (lambda tok: proof(tok, htu="https://other.internal/user/profile"), "dpop_proof", "another host"),
        (
            lambda tok: proof(tok, htu="https://backend.internal:8443/user/profile"),
            "dpop_proof",
            "another port",
        ),
        (lambda tok: proof(tok, htu="https://backend.internal/User/profile"), "dpop_proof", "path case"),
        (
            lambda tok: proof(tok, htu="https://backend.internal/user/profile/"),
            "dpop_proof",
            "trailing slash",
        ),
        (lambda tok: proof(tok, htm="POST"), "dpop_proof", "another method"),
        (lambda tok: proof(tok, iat=TS - 600), "dpop_proof", "stale"),
        (lambda tok: proof(tok, iat=TS + 600), "dpop_proof", "from the future"),
        (lambda tok: proof(tok, claims={"ath": None}), "dpop_proof", "no ath"),
        (lambda tok: proof(tok, claims={"ath": token_hash(tok + "x")}), "dpop_proof", "ath of another token"),
        (lambda tok: proof(tok, key=OTHER), "token_binding", "signed by another key than cnf.jkt"),
        (lambda tok: proof(tok, header={"jwk": _private_jwk()}), "dpop_proof", "a private key in the jwk"),
        (lambda tok: proof(tok, header={"typ": "JWT"}), "dpop_proof", "typ not dpop+jwt"),
        (lambda tok: proof(tok, claims={"jti": None}), "dpop_proof", "no jti"),
        (lambda tok: None, "dpop_proof", "no proof at all"),
        (lambda tok: "eyJ0eXAiOiJkcG9wK2p3dCIsImFsZyI6Im5vbmUifQ.e30.", "dpop_proof", "alg none"),
        (lambda tok: "a" * 10_000, "dpop_proof", "oversized"),
        (lambda tok: "not.a.jws.at.all", "dpop_proof", "malformed"),
    ],
)
def test_a_proof_that_does_not_hold_is_refused(t: Trust, make: Any, reason: str, why: str) -> None:
    tok = bound_token(t)
    d = decide_with(t, tok, make(tok))
    assert outcome(d) == (False, 401, reason), why


def test_hs256_with_a_symmetric_jwk_is_refused(t: Trust) -> None:
    tok = bound_token(t)
    secret = OctKey.generate_key(256)
    head = {"typ": "dpop+jwt", "alg": "HS256", "jwk": secret.as_dict(private=True)}
    body = {"jti": "x", "htm": "GET", "htu": URL, "iat": int(TS), "ath": token_hash(tok)}
    forged = jws.serialize_compact(head, json.dumps(body), secret, algorithms=["HS256"])
    assert outcome(decide_with(t, tok, forged)) == (False, 401, "dpop_proof")


def test_a_proof_for_another_token_is_refused(t: Trust) -> None:
    tok = bound_token(t)
    other = bound_token(t, jti="another-token")
    assert outcome(decide_with(t, tok, proof(other))) == (False, 401, "dpop_proof")


def test_the_binding_decides_the_scheme(t: Trust) -> None:
    tok = bound_token(t)
    # A DPoP-bound token sent as Bearer (what a thief who copied only the token would do).
    assert outcome(decide_with(t, tok, None, scheme="Bearer")) == (False, 401, "token_binding")
    assert outcome(decide_with(t, tok, proof(tok), scheme="Bearer")) == (False, 401, "token_binding")
    # The DPoP scheme with a token bound to nothing.
    plain = t.token()
    assert outcome(decide_with(t, plain, proof(plain))) == (False, 401, "token_binding")


def test_an_rsa_proof_works_too(t: Trust) -> None:
    key = RSAKey.generate_key(2048)
    tok = bound_token(t, key=key)
    assert decide_with(t, tok, proof(tok, key=key, alg="PS256")).allowed


def test_an_issuer_may_require_dpop(t: Trust) -> None:
    import yaml

    from ext_authz.loader import load_engine

    cfg = yaml.safe_load((t.dir / "trust.yaml").read_text())
    cfg["issuers"]["https://idp.example.com"]["dpop"] = "required"
    path = t.dir / "dpop-required.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    engine = load_engine(path)
    plain = t.token()
    ctx = normalize(check_request(t.dir, path="/user/profile", listener="edge", token=plain))
    assert outcome(decide(ctx, engine, Caches(), NOW, "d" * 32)) == (False, 401, "token_binding")
    tok = bound_token(t)
    headers = {"authorization": f"DPoP {tok}", "dpop": proof(tok)}
    ctx = normalize(check_request(t.dir, path="/user/profile", listener="edge", headers=headers))
    assert decide(ctx, engine, Caches(), NOW, "d" * 32).allowed


# -- interop: the RFC's own example (tests/data/dpop/rfc9449.json, with its source) -------------------
def test_the_rfcs_example_proof_verifies_and_its_neighbours_do_not() -> None:
    from pathlib import Path

    from ext_authz.errors import CredentialError
    from ext_authz.identity.dpop import verify_proof

    rfc = json.loads((Path(__file__).resolve().parents[1] / "data/dpop/rfc9449.json").read_text())
    assert token_hash(rfc["access_token"]) == rfc["ath"]
    args = {
        "token": rfc["access_token"],
        "method": rfc["method"],
        "url": rfc["url"],
        "max_age": 60,
        "leeway": 5,
    }
    got = verify_proof(rfc["resource_proof"], now=rfc["iat"] + 2, **args)
    assert (got.jkt, got.jti, got.iat) == (rfc["jkt"], rfc["jti"], rfc["iat"])
    for change in (
        {"method": "POST"},
        {"url": "https://resource.example.org/protectedresource/"},
        {"token": rfc["access_token"] + "x"},
    ):
        with pytest.raises(CredentialError):
            verify_proof(rfc["resource_proof"], now=rfc["iat"] + 2, **{**args, **change})
    with pytest.raises(CredentialError, match="too old"):
        verify_proof(rfc["resource_proof"], now=rfc["iat"] + 3600, **args)
    # The token request's proof carries no ath: at a resource it proves nothing about the token.
    with pytest.raises(CredentialError, match="ath"):
        verify_proof(
            rfc["token_request_proof"],
            now=1562262620,
            **{**args, "method": "POST", "url": "https://server.example.com/token"},
        )


def test_a_proof_key_made_to_verify_slowly_is_refused_unread(t: Trust) -> None:
    """The caller chooses the proof's key: an RSA modulus over 4096 bits, or a huge exponent, would make
    every verification cost milliseconds. Refused before any arithmetic."""
    import base64

    tok = bound_token(t)
    key = RSAKey.generate_key(2048)
    jwk = key.as_dict(private=False)
    for bad in (
        {**jwk, "e": base64.urlsafe_b64encode(b"\xff" * 512).rstrip(b"=").decode()},
        {**jwk, "n": "A" * 1400},
    ):
        p = proof(tok, key=key, alg="PS256", header={"jwk": bad})
        assert outcome(decide_with(t, tok, p)) == (False, 401, "dpop_proof")


# -- after review ------------------------------------------------------------------------------------
def test_with_dpop_origins_a_proof_must_name_this_service_whatever_the_host_says(t: Trust) -> None:
    """The Host is the caller's to choose: a proof made for another server that takes the same audience
    passed with that server's Host. With dpop_origins the proof must name one of ours."""
    import yaml

    from ext_authz.loader import load_engine

    cfg = yaml.safe_load((t.dir / "trust.yaml").read_text())
    cfg["issuers"]["https://idp.example.com"]["dpop_origins"] = ["https://backend.internal"]
    path = t.dir / "dpop-origins.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    engine = load_engine(path)
    tok = bound_token(t)
    elsewhere = "https://api.partner.example/user/profile"

    def check(host: str, htu: str) -> Any:
        headers = {"authorization": f"DPoP {tok}", "dpop": proof(tok, htu=htu), ":authority": host}
        req = check_request(t.dir, path="/user/profile", listener="edge", headers=headers)
        req.attributes.request.http.host = host
        return decide(normalize(req), engine, Caches(), NOW, "d" * 32)

    assert outcome(check("api.partner.example", elsewhere)) == (False, 401, "dpop_proof")
    assert check("api.partner.example", URL).allowed  # ours, whatever Host the caller sent
    assert check("backend.internal", URL).allowed


def test_one_caller_cannot_flush_the_replay_memory(t: Trust, monkeypatch: pytest.MonkeyPatch) -> None:
    """Full, the memory refuses new proofs rather than forgetting live ones; one key fills at most its
    share. (A flood once evicted the victim's proof, whose replay then passed.)"""
    import ext_authz.pipeline as pipeline

    monkeypatch.setattr(pipeline, "MAX_PROOFS", 5)
    monkeypatch.setattr(pipeline, "MAX_PROOFS_PER_KEY", 3)
    caches = Caches()
    tok = bound_token(t)
    victim = proof(tok)
    assert decide_with(t, tok, victim, caches=caches).allowed
    mallory_key = ECKey.generate_key("P-256")
    mallory = bound_token(t, key=mallory_key, jti="mallory")
    results = [decide_with(t, mallory, proof(mallory, key=mallory_key), caches=caches) for _ in range(5)]
    assert [r.allowed for r in results] == [True, True, True, False, False]  # her share, then refused
    assert outcome(decide_with(t, tok, victim, caches=caches)) == (False, 401, "dpop_proof")  # still seen


def test_a_reload_forgets_no_proof(t: Trust) -> None:
    from ext_authz.pipeline import ProofMemory

    memory = ProofMemory()
    assert memory.see("k", "j", TS + 60, TS) == ""
    carried = Caches()
    carried.proofs = memory  # what serve/runtime does when a new generation is installed
    assert carried.replayed("k", "j", TS + 60, TS + 1) != ""
    assert carried.replayed("k", "j", TS + 60, TS + 61) == ""  # expired: free again


@pytest.mark.parametrize("cnf", [{"jkt": None}, {"jkt": ""}, {"jkt": 7}])
def test_a_jkt_that_is_no_thumbprint_is_refused_and_binds_nothing(t: Trust, cnf: dict[str, Any]) -> None:
    tok = t.token(cnf=cnf)
    d = decide_with(t, tok, None, scheme="Bearer")
    assert outcome(d) == (False, 401, "token_binding")


def test_proof_headers_and_urls_that_read_two_ways_are_refused(t: Trust) -> None:
    import base64

    def b64(doc: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode()

    tok = bound_token(t)
    body = {"jti": "j", "htm": "GET", "htu": URL, "iat": int(TS), "ath": token_hash(tok)}
    for extra in ({"b64": False, "crit": ["b64"]}, {"crit": ["exp"]}):
        head = {"typ": "dpop+jwt", "alg": "ES256", "jwk": HOLDER.as_dict(private=False), **extra}
        refused = decide_with(t, tok, f"{b64(head)}.{b64(body)}.c2ln")
        assert outcome(refused) == (False, 401, "dpop_proof")
        assert "b64 or crit" in refused.detail
    tabbed = "https://backend.internal/user/prof\tile"
    assert outcome(decide_with(t, tok, proof(tok, htu=tabbed))) == (False, 401, "dpop_proof")
