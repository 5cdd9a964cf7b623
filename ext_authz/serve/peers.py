"""Who is on the other end of a TLS listener (the Check port over TCP, the admin API over TCP).

The TLS handshake (grpcio) requires a client certificate chaining to one of the configured trust
domains' roots. That pool mixes trust domains, so it proves little on its own: every call is then
checked here, in full, as an X.509-SVID — exactly one URI SAN, the SPIFFE leaf rules, a path to a root
of *its own* trust domain's bundle at ``now`` — and only the SPIFFE ID so verified is compared with the
allow-list and recorded as the caller. Verdicts are cached per certificate and trust revision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.serialization import Encoding

from ..clock import Clock
from ..errors import CredentialError, Error
from ..identity.cache import LruCache
from ..identity.x509_svid import verify_x509_svid
from ..identity.xfcc import split_pem_chain
from ..settings import TlsFiles
from ..trust.bundles import TrustSnapshot

__all__ = ["PeerRefused", "ServerIdentity", "SvidPeers", "files_identity", "tls_server_credentials"]

log = logging.getLogger("ext_authz")


class PeerRefused(Error):
    """The caller is not a verified X.509-SVID on the allow-list; the message says why (for logs)."""


class SvidPeers:
    def __init__(
        self,
        trust: Callable[[], TrustSnapshot],
        allowed: Callable[[], tuple[str, ...]],
        clock: Clock,
        cache_size: int = 1024,
    ) -> None:
        self.trust = trust
        self.allowed = allowed
        self.clock = clock
        self._cache: LruCache[str] = LruCache(cache_size)

    def verify(self, auth: Mapping[str, list[bytes]] | None) -> str:
        """The caller's verified SPIFFE ID, if it is on the allow-list; else PeerRefused."""
        certs = (auth or {}).get("x509_pem_cert") or []
        if len(certs) != 1:
            raise PeerRefused("no client certificate")
        leaf = certs[0].decode("ascii", "replace")
        trust = self.trust()
        now = self.clock.now()
        ident = self._cache.get(leaf, trust.key, now.timestamp())
        if ident is None:
            chain = b"".join((auth or {}).get("x509_pem_cert_chain") or []).decode("ascii", "replace")
            try:
                ident = verify_x509_svid(leaf, split_pem_chain(chain), trust, now)
            except CredentialError as exc:
                raise PeerRefused(
                    f"client certificate is not a valid X.509-SVID ({exc.reason}: {exc.detail})"
                ) from exc
            self._cache.put(leaf, trust.key, ident)
        if ident.spiffe_id not in self.allowed():
            raise PeerRefused(f"{ident.spiffe_id} is not on the allow-list")
        return ident.spiffe_id


def _roots_pem(trust: TrustSnapshot, only: tuple[str, ...]) -> bytes:
    """The handshake pool: the X.509 roots of the trust domains callers may come from."""
    pem = b""
    for name, td in sorted(trust.domains.items()):
        if only and name not in only:
            continue
        pem += b"".join(c.public_bytes(Encoding.PEM) for c in td.x509_roots)
    return pem


# The server's own certificate: (certificate chain PEM, key PEM) and a stamp that changes with them.
ServerIdentity = Callable[[], tuple[bytes, bytes, object] | None]


def files_identity(files: TlsFiles) -> ServerIdentity:
    """Certificate and key files, read again whenever either changes."""

    def current() -> tuple[bytes, bytes, object] | None:
        try:
            stamp = (files.cert.stat().st_mtime_ns, files.key.stat().st_mtime_ns)
            return files.cert.read_bytes(), files.key.read_bytes(), stamp
        except OSError as exc:
            log.error("TLS: cannot read %s/%s (keeping the current ones): %s", files.cert, files.key, exc)
            return None

    return current


def tls_server_credentials(
    identity: ServerIdentity,
    trust: Callable[[], TrustSnapshot],
    trust_domains: Callable[[], tuple[str, ...]],
    client_ca: Path | None = None,
) -> grpc.ServerCredentials:
    """Server TLS that requires a client certificate. The server's certificate and the handshake pool
    are taken again whenever the identity or the trust material changes (checked per connection)."""
    state: dict[str, object] = {}

    def configuration() -> grpc.ServerCertificateConfiguration | None:
        snapshot = trust()
        current = identity()
        if current is None:
            return None
        chain, key, ident_stamp = current
        stamp = (ident_stamp, snapshot.key)
        if stamp == state.get("stamp"):
            return None
        try:
            roots = client_ca.read_bytes() if client_ca is not None else _roots_pem(snapshot, trust_domains())
        except OSError as exc:
            log.error("TLS: cannot read %s (keeping the current roots): %s", client_ca, exc)
            return None
        pair = (key, chain)
        if not roots:
            log.error(
                "TLS: no client roots yet (trust domains without X.509 bundles); keeping the current ones"
            )
            if "stamp" in state:
                return None
        state["stamp"] = stamp
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=roots or None)

    initial = configuration()
    if initial is None:
        raise OSError("no TLS certificate and key to serve (see the log)")
    return grpc.dynamic_ssl_server_credentials(initial, configuration, require_client_authentication=True)
