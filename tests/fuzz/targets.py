"""Fuzz targets: each takes untrusted bytes and checks the one contract that matters for its input.

Hostile requests become denials with a reason code; bad configs become ConfigErrors; parsers raise only
their own declared error. Anything else escaping is a finding. Shared by the hypothesis properties
(tests/fuzz/test_properties.py), the short atheris run in `make test` and the long one in `make fuzz`.
"""

from __future__ import annotations

import base64
import contextlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from urllib.parse import quote

from google.protobuf.message import DecodeError

from ext_authz._proto.envoy.external_auth_pb2 import CheckRequest
from ext_authz.config import parse_settings
from ext_authz.dev.demo import init_demo
from ext_authz.envoy.normalize import normalize
from ext_authz.envoy.render import render
from ext_authz.errors import REASON_STATUS, ConfigError, CredentialError
from ext_authz.identity.jwt import verify_token
from ext_authz.identity.x509_svid import verify_x509_svid
from ext_authz.identity.xfcc import (
    MultipleCertificates,
    XfccTooComplex,
    chain_from_xfcc,
    decode_certificate,
    parse_xfcc,
)
from ext_authz.loader import load_engine
from ext_authz.pipeline import Caches, Engine, decide
from ext_authz.spiffe_id import SpiffeId, SpiffeIdError

NOW = datetime(2033, 3, 1, 12, 0, tzinfo=UTC)  # the demo PKI below is issued at this time


@dataclass(frozen=True)
class Demo:
    dir: Path
    engine: Engine
    config_text: str
    tokens: dict[str, str]
    leaf: str
    chain: str


@cache
def demo() -> Demo:
    """A demo PKI, tokens and the demo policy, made once per process."""
    d = Path(tempfile.mkdtemp(prefix="ext-authz-fuzz-"))
    init_demo(d, now=NOW)
    chain = (d / "svid/frontend.pem").read_text()
    leaf = chain[: chain.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")] + "\n"
    tokens = {p.stem: p.read_text().strip() for p in (d / "tokens").glob("*.jwt")}
    return Demo(d, load_engine(d / "config.yaml"), (d / "config.yaml").read_text(), tokens, leaf, chain)


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")  # protobuf strings cannot hold lone surrogates


def check_decision(req: CheckRequest) -> None:
    """normalize → decide → render never raises, and a denial carries a known reason and status."""
    dm = demo()
    ctx = normalize(req)
    decision = decide(ctx, dm.engine, Caches.sized(0), NOW, "fuzz")
    if decision.reason not in REASON_STATUS:
        raise AssertionError(f"unknown reason {decision.reason!r}")
    if decision.allowed != (decision.status == 200):
        raise AssertionError(f"allowed={decision.allowed} with status {decision.status}")
    resp = render(decision, ctx.http.headers if ctx.http else None)
    if decision.allowed != resp.HasField("ok_response"):
        raise AssertionError("the rendered response disagrees with the decision")
    resp.SerializeToString()


def fuzz_check_request(data: bytes) -> None:
    """Raw bytes as a CheckRequest (what a broken or hostile client of the gRPC port could send)."""
    try:
        req = CheckRequest.FromString(data)
    except DecodeError:
        return  # refused by gRPC's deserializer before our servicer: Envoy sees an error, fails closed
    check_decision(req)


def structured_request(
    *,
    headers: dict[str, str],
    certificate: str | None,
    principal: str | None,
    l4: bool,
    method: str = "GET",
    path: str = "/api/orders",
    host: str = "backend.internal",
    extensions: dict[str, str] | None = None,
) -> CheckRequest:
    req = CheckRequest()
    a = req.attributes
    if not l4:
        h = a.request.http
        h.method, h.path, h.host = method, path, host
        for k, v in headers.items():
            h.headers[k] = v
    if certificate is not None:
        a.source.certificate = certificate
    if principal is not None:
        a.source.principal = principal
    for k, v in (extensions or {}).items():
        a.context_extensions[k] = v
    return req


def fuzz_structured_request(data: bytes) -> None:
    """Bytes spread over the fields that carry credentials: Authorization, XFCC, the certificate."""
    parts = _text(data).split("\x00")
    parts += [""] * (6 - len(parts))
    dm = demo()
    mode = len(parts[0]) % 4
    headers = {"authorization": parts[1], "x-forwarded-client-cert": parts[2], ":path": parts[3]}
    if mode == 1:  # a real token's pieces with fuzz spliced in
        headers["authorization"] = "Bearer " + dm.tokens["alice"][: len(parts[1]) % 400] + parts[1]
    if mode == 2:  # a real chain with fuzz around it
        headers["x-forwarded-client-cert"] = f'By=x;Chain="{quote(dm.chain[: len(parts[2]) * 7], safe="")}"'
    cert = quote(dm.leaf, safe="") + parts[4] if mode == 3 else parts[4] or None
    check_decision(
        structured_request(headers=headers, certificate=cert, principal=parts[5] or None, l4=mode == 0)
    )


def fuzz_spiffe_id(data: bytes) -> None:
    text = _text(data)
    try:
        sid = SpiffeId.parse(text)
    except SpiffeIdError:
        return
    if str(SpiffeId.parse(str(sid))) != str(sid):
        raise AssertionError("a parsed SPIFFE ID does not round-trip")


def fuzz_xfcc(data: bytes) -> None:
    """Any text as an XFCC header: elements, or XfccTooComplex, in bounded time."""
    text = _text(data)
    with contextlib.suppress(XfccTooComplex):
        parse_xfcc(text)
    with contextlib.suppress(XfccTooComplex):
        chain_from_xfcc(text)


def fuzz_certificate(data: bytes) -> None:
    """A PEM (or garbage) as the peer certificate and as the chain: CredentialError or an Identity."""
    dm = demo()
    text = _text(data)
    pem = (
        text
        if text.startswith("-----")
        else (
            "-----BEGIN CERTIFICATE-----\n"
            + base64.encodebytes(data).decode()
            + "-----END CERTIFICATE-----\n"
        )
    )
    try:
        decoded = decode_certificate(text)  # exactly one certificate, or MultipleCertificates
    except MultipleCertificates:
        decoded = dm.leaf
    for leaf, chain in ((pem, ()), (dm.leaf, (pem,)), (decoded, (dm.chain,))):
        with contextlib.suppress(CredentialError):
            verify_x509_svid(leaf, chain, dm.engine.trust, NOW)


def _segment(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def fuzz_jwt(data: bytes) -> None:
    """Raw text as a token, and fuzz as the header, payload or signature of a real token."""
    dm = demo()
    head, payload, sig = dm.tokens["alice"].split(".")
    text = _text(data)
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        obj = None
    candidates = [text, f"{_segment(data)}.{payload}.{sig}", f"{head}.{_segment(data)}.{sig}"]
    candidates.append(f"{head}.{payload}.{_segment(data)}")
    if isinstance(obj, dict):
        candidates.append(f"{_segment(json.dumps(obj).encode())}.{payload}.{sig}")
    for token in candidates:
        with contextlib.suppress(CredentialError):
            verify_token(token, dm.engine.trust, dm.engine.tokens, NOW.timestamp())


def fuzz_config(data: bytes) -> None:
    """Any bytes as a config file, and fuzz spliced into the demo config: a Config or a ConfigError."""
    dm = demo()
    source = dm.dir / "config.yaml"
    half = len(dm.config_text) * (data[0] if data else 0) // 256
    for text in (
        data,
        (dm.config_text[:half] + _text(data[1:]) + dm.config_text[half:]).encode("utf-8", "replace"),
    ):
        with contextlib.suppress(ConfigError):
            parse_settings(text, source)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "check_request": fuzz_check_request,
    "structured_request": fuzz_structured_request,
    "spiffe_id": fuzz_spiffe_id,
    "xfcc": fuzz_xfcc,
    "certificate": fuzz_certificate,
    "jwt": fuzz_jwt,
    "config": fuzz_config,
}


def seeds(name: str) -> list[bytes]:
    """Valid inputs for a target, for the fuzzer to start from."""
    dm = demo()
    chain = quote(dm.chain, safe="")
    real = structured_request(
        headers={
            "authorization": f"Bearer {dm.tokens['alice']}",
            "x-forwarded-client-cert": f'By=spiffe://example.org/ns/backend/sa/api;Chain="{chain}"',
            ":path": "/api/orders",
        },
        certificate=quote(dm.leaf, safe=""),
        principal=None,
        l4=False,
        extensions={"listener": "mesh"},
    )
    return {
        "check_request": [real.SerializeToString()],
        "structured_request": [f"x\x00Bearer {dm.tokens['alice']}\x00\x00/api/orders\x00\x00".encode()],
        "spiffe_id": [b"spiffe://example.org/ns/frontend/sa/web", b"spiffe://example.org"],
        "xfcc": [f'By=spiffe://a/b;Hash=ab;Chain="{quote(dm.chain, safe="")}";URI=spiffe://c/d'.encode()],
        "certificate": [dm.leaf.encode(), dm.chain.encode()],
        "jwt": [dm.tokens["alice"].encode(), json.dumps({"alg": "none", "typ": "JWT"}).encode()],
        "config": [b"\x80" + dm.config_text.encode()],
    }[name]
