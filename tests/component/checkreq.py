"""Build real CheckRequests from the demo identities."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from ext_authz._proto.envoy.external_auth_pb2 import CheckRequest


def leaf_and_chain(demo: Path, workload: str) -> tuple[str, str]:
    pem = (demo / "svid" / f"{workload}.pem").read_text()
    leaf = pem[: pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")] + "\n"
    return leaf, pem


def check_request(
    demo: Path,
    *,
    workload: str | None = None,
    token: str | None = None,
    path: str = "/api/orders",
    method: str = "GET",
    listener: str = "mesh",
    headers: dict[str, str] | None = None,
) -> CheckRequest:
    req = CheckRequest()
    a = req.attributes
    h = a.request.http
    h.method = method
    h.path = path
    h.host = "backend.internal"
    h.scheme = "https"
    h.protocol = "HTTP/1.1"
    h.headers[":method"] = method
    h.headers[":path"] = path
    h.headers[":authority"] = "backend.internal"
    for k, v in (headers or {}).items():
        h.headers[k] = v
    a.source.address.socket_address.address = "127.0.0.1"
    a.source.address.socket_address.port_value = 40000
    a.context_extensions["listener"] = listener
    if workload is not None:
        leaf, chain = leaf_and_chain(demo, workload)
        a.source.certificate = quote(leaf, safe="")
        h.headers["x-forwarded-client-cert"] = (
            f'By=spiffe://example.org/ns/backend/sa/api;Chain="{quote(chain, safe="")}"'
        )
    if token is not None:
        h.headers["authorization"] = f"Bearer {token}"
    return req
