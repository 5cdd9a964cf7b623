"""CheckRequest → RequestContext. The only place that reads an Envoy request protobuf.

Headers are read only up to the configured limits: a request with more headers or header bytes than
``limits`` allows is not read further (the pipeline then refuses it with its reason code), so the
work here is bounded whatever a caller sends.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

from ..model import EMPTY_MAP, Credentials, HttpRequest, RequestContext
from ..settings import Limits

__all__ = ["normalize"]

_DEFAULT_LIMITS = Limits()

# RFC 6750 b64token: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_TOKEN_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"


def _is_b64token(token: str) -> bool:
    """Deleting every b64token character leaves nothing: one table pass in C (half a regex's time on a
    JWT, and a bearer is read on every Check)."""
    body = token.rstrip("=")
    return bool(body) and body.isascii() and not body.encode().translate(None, _TOKEN_ALPHABET)


def _bearer(headers: dict[str, str]) -> tuple[str | None, bool, str]:
    """(the token, whether a token was meant but is malformed, its scheme: bearer or dpop)."""
    auth = headers.get("authorization")
    if auth is None:
        return None, False, "bearer"
    parts = auth.strip().split(None, 1)
    scheme = parts[0].lower() if parts else ""
    if scheme not in ("bearer", "dpop"):
        if scheme.startswith(("bearer", "dpop")):
            return None, True, "bearer"  # "Bearer<junk>": meant as a token, not well formed
        return None, False, "bearer"  # another scheme (Basic, …) is not our credential
    token = parts[1].strip() if len(parts) > 1 else ""
    if not _is_b64token(token):
        return None, True, scheme
    return token, False, scheme


def _address(peer: Any) -> str:
    sock = peer.address.socket_address
    host = sock.address  # one read: each makes a new string
    if host:
        if ":" in host:  # IPv6: [::1]:port
            return f"[{host}]:{sock.port_value}"
        return f"{host}:{sock.port_value}"
    pipe = peer.address.pipe.path
    return f"unix:{pipe}" if pipe else ""


def _headers(h: Any, limits: Limits) -> tuple[dict[str, str], int, int]:
    """(headers with lower-case keys, count, bytes), reading no further once a limit is passed."""
    max_count, max_bytes = limits.max_headers, limits.max_header_bytes
    headers: dict[str, str] = {}
    count = size = 0
    header_map = h.headers  # one read: each read of a protobuf field costs a lookup
    if header_map:
        count = len(header_map)
        if count > max_count:
            return {}, count, 0
        # At most max_count entries, each as long as Envoy allowed. (Iterating the map itself: dict()
        # of it goes through a Python-level keys view.)
        headers = {k: header_map[k] for k in header_map}
        names = "".join(headers)
        size = len(names) + sum(map(len, headers.values()))
        if size > max_bytes:
            return {}, count, size
        if not names.islower():  # Envoy sends lower-case names; anyone else may not
            headers = {k.lower(): v for k, v in headers.items()}
        return headers, count, size
    if h.HasField("header_map"):
        joined: dict[str, list[str]] = {}
        for hv in h.header_map.headers:
            count += 1
            value = hv.raw_value.decode("utf-8", "replace") if hv.raw_value else hv.value
            size += len(hv.key) + len(value)
            if count > max_count or size > max_bytes:
                return {}, count, size
            joined.setdefault(hv.key.lower(), []).append(value)
        headers = {k: ",".join(v) for k, v in joined.items()}  # one join per name: linear
    return headers, count, size


def normalize(request: Any, limits: Limits = _DEFAULT_LIMITS) -> RequestContext:
    """Read a ``CheckRequest`` into a frozen RequestContext. Missing fields become empty values.

    Only what the verifiers, rules and records read is taken: each protobuf field read costs."""
    attrs = request.attributes
    http_req = None
    headers: dict[str, str] = {}
    count = size = body = 0
    req = attrs.request
    if req.HasField("http"):
        h = req.http
        headers, count, size = _headers(h, limits)
        body = max(len(h.raw_body), len(h.body))
        http_req = HttpRequest(
            (h.method or headers.get(":method", "")).upper(),
            h.path or headers.get(":path", ""),
            h.host or headers.get(":authority", ""),
            h.scheme or headers.get(":scheme", ""),
            h.protocol,
            MappingProxyType(headers),
        )
    source = attrs.source
    principal = source.principal
    bearer, malformed, scheme = _bearer(headers)
    creds = Credentials(
        source.certificate or None,
        headers.get("x-forwarded-client-cert", ""),
        principal or None,
        bearer,
        malformed,
        scheme,
        headers.get("dpop"),
    )
    extensions = attrs.context_extensions
    return RequestContext(
        http_req,
        _address(source),
        principal,
        MappingProxyType({k: extensions[k] for k in extensions}) if extensions else EMPTY_MAP,
        creds,
        headers.get("x-request-id", ""),
        count,
        size,
        body,
    )
