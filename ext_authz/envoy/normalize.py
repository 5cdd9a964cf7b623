"""CheckRequest → RequestContext. The only place that reads an Envoy request protobuf."""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote

from ..model import Credentials, HttpRequest, RequestContext

__all__ = ["MAX_XFCC_BYTES", "normalize", "parse_xfcc", "split_pem_chain"]

MAX_XFCC_BYTES = 64 * 1024
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----")
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9\-_.~+/]+=*$")


def parse_xfcc(value: str) -> list[dict[str, list[str]]]:
    """Split an ``x-forwarded-client-cert`` value into elements of ``key -> [values]``.

    Elements are separated by ``,``, pairs by ``;``, key and value by ``=``; a value may be
    double-quoted (then ``,``, ``;`` and ``=`` are literal and ``\\"`` is a quote). Keys are
    case-insensitive and returned lower-case.
    """
    elements: list[dict[str, list[str]]] = []
    current: dict[str, list[str]] = {}
    buf: list[str] = []
    in_quotes = False
    escaped = False

    def end_pair() -> None:
        pair = "".join(buf).strip()
        buf.clear()
        if not pair:
            return
        key, sep, val = pair.partition("=")
        if not sep:
            return
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1].replace('\\"', '"')
        current.setdefault(key.strip().lower(), []).append(val)

    for ch in value:
        if escaped:
            buf.append(ch)
            escaped = False
        elif ch == "\\" and in_quotes:
            buf.append(ch)
            escaped = True
        elif ch == '"':
            in_quotes = not in_quotes
            buf.append(ch)
        elif ch == ";" and not in_quotes:
            end_pair()
        elif ch == "," and not in_quotes:
            end_pair()
            if current:
                elements.append(current)
            current = {}
        else:
            buf.append(ch)
    end_pair()
    if current:
        elements.append(current)
    return elements


def split_pem_chain(text: str) -> tuple[str, ...]:
    return tuple(m.group(0) for m in _PEM_CERT.finditer(text))


def _chain_from_xfcc(value: str) -> tuple[str, ...]:
    if not value or len(value) > MAX_XFCC_BYTES:
        return ()
    elements = parse_xfcc(value)
    if not elements:
        return ()
    # The last element was appended by the Envoy in front of us (SANITIZE_SET leaves only it).
    chains = elements[-1].get("chain", [])
    return split_pem_chain(unquote(chains[-1])) if chains else ()


def _bearer(headers: dict[str, str]) -> tuple[str | None, bool]:
    auth = headers.get("authorization")
    if auth is None:
        return None, False
    scheme, _, rest = auth.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None, False  # another scheme (Basic, …) is not our credential
    token = rest.strip()
    if not token or not _TOKEN_CHARS.match(token):
        return None, True
    return token, False


def _address(peer: Any) -> str:
    sock = peer.address.socket_address
    if sock.address:
        host = f"[{sock.address}]" if ":" in sock.address else sock.address  # IPv6: [::1]:port
        return f"{host}:{sock.port_value}"
    pipe = peer.address.pipe.path
    return f"unix:{pipe}" if pipe else ""


def normalize(request: Any) -> RequestContext:
    """Read a ``CheckRequest`` into a frozen RequestContext. Missing fields become empty values."""
    attrs = request.attributes
    http_req = None
    headers: dict[str, str] = {}
    if attrs.request.HasField("http"):
        h = attrs.request.http
        if h.headers:
            headers = {k.lower(): v for k, v in h.headers.items()}
        elif h.HasField("header_map"):
            for hv in h.header_map.headers:
                value = hv.raw_value.decode("utf-8", "replace") if hv.raw_value else hv.value
                key = hv.key.lower()
                headers[key] = f"{headers[key]},{value}" if key in headers else value
        http_req = HttpRequest(
            method=(h.method or headers.get(":method", "")).upper(),
            path=h.path or headers.get(":path", ""),
            host=h.host or headers.get(":authority", ""),
            scheme=h.scheme or headers.get(":scheme", ""),
            protocol=h.protocol,
            headers=MappingProxyType(headers),
        )
    cert = attrs.source.certificate
    bearer, malformed = _bearer(headers)
    creds = Credentials(
        peer_certificate=unquote(cert) if cert else None,
        chain=_chain_from_xfcc(headers.get("x-forwarded-client-cert", "")),
        principal=attrs.source.principal or None,
        bearer=bearer,
        bearer_malformed=malformed,
    )
    return RequestContext(
        http=http_req,
        source_address=_address(attrs.source),
        destination_address=_address(attrs.destination),
        source_principal=attrs.source.principal,
        context_extensions=MappingProxyType(dict(attrs.context_extensions)),
        credentials=creds,
        request_id=headers.get("x-request-id", ""),
    )
