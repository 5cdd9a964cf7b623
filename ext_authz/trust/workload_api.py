"""Trust bundles streamed from the SPIFFE Workload API (edge code), with the `spiffe` package.

For every trust domain configured with ``workload_api: unix:///…``, its X.509 roots and JWT keys
are taken from the Workload API's streams (the agent's own trust domain and federated ones alike)
and swapped into the engine whole. A broken stream is retried by the client with backoff; until it
returns, the last bundles stay in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from cryptography.x509.verification import Store
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey

from ..settings import Settings
from .bundles import JwtKeys, TrustDomainTrust, TrustSnapshot
from .sources import OnChange

__all__ = ["WorkloadApiTrust"]

log = logging.getLogger("ext_authz.trust")
_SHA256 = hashes.SHA256()


def _jwk(key: Any) -> Key | None:
    if isinstance(key, rsa.RSAPublicKey):
        return RSAKey.import_key(key)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ECKey.import_key(key)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return OKPKey.import_key(key)
    return None


@dataclasses.dataclass
class _Latest:
    roots: dict[str, tuple[x509.Certificate, ...]] = dataclasses.field(default_factory=dict)
    jwt: dict[str, JwtKeys] = dataclasses.field(default_factory=dict)
    jwt_digest: dict[str, str] = dataclasses.field(default_factory=dict)
    svid: tuple[bytes, bytes] | None = None  # our own X509-SVID: (certificate chain PEM, key PEM)
    answered: set[str] = dataclasses.field(default_factory=set)  # which streams have answered: x509, jwt


def _svid_pem(svid: Any) -> tuple[bytes, bytes] | None:
    """The default X509-SVID of an X509 context as PEM (chain, key), for a TLS server."""
    if svid is None:
        return None
    chain = b"".join(c.public_bytes(Encoding.PEM) for c in svid.cert_chain)
    key = svid.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    return chain, key


class _Stream:
    """One Workload API socket: both streams, callbacks marshalled onto the event loop."""

    def __init__(
        self, socket: str, loop: asyncio.AbstractEventLoop, update: Callable[[str, Any], None]
    ) -> None:
        self.socket = socket
        self.loop = loop
        self.update = update
        self.client: Any = None
        self.handlers: list[Any] = []
        self.errors = 0

    def start(self) -> bool:
        from spiffe.workloadapi.workload_api_client import RetryPolicy, WorkloadApiClient

        try:
            self.client = WorkloadApiClient(socket_path=self.socket)
        except Exception as exc:  # the socket is not there yet: the agent may still be starting
            log.warning("Workload API at %s not available yet: %s", self.socket, exc)
            return False
        policy = RetryPolicy(
            max_retries=RetryPolicy.UNLIMITED_RETRIES,
            base_backoff_in_seconds=0.1,
            backoff_factor=2,
            max_backoff=5,
        )
        self.handlers = [
            self.client.stream_x509_contexts(
                self._on_x509, self._on_error, retry_connect=True, retry_policy=policy
            ),
            self.client.stream_jwt_bundles(
                self._on_jwt, self._on_error, retry_connect=True, retry_policy=policy
            ),
        ]
        return True

    def _on_x509(self, context: Any) -> None:
        self.loop.call_soon_threadsafe(self.update, "x509", context)

    def _on_jwt(self, bundles: Any) -> None:
        self.loop.call_soon_threadsafe(self.update, "jwt", bundles)

    def _on_error(self, exc: Exception) -> None:
        self.errors += 1
        log.warning("Workload API stream at %s: %s (keeping the last bundles)", self.socket, exc)

    def stop(self) -> None:
        for h in self.handlers:
            with contextlib.suppress(Exception):
                h.cancel()
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()


class WorkloadApiTrust:
    """A trust source: keeps Workload-API trust domains current (see sources.py), and this workload's
    own X509-SVID for the TLS listeners configured to serve it (``check.tls.workload_api``)."""

    name = "workload_api"

    def __init__(self, on_change: OnChange) -> None:
        self.on_change = on_change
        self.latest: dict[str, _Latest] = {}
        self.streams: dict[str, _Stream] = {}
        self.domains: dict[str, str] = {}  # trust domain -> socket
        self.svid_sockets: set[str] = set()  # sockets whose X509-SVID a TLS listener serves
        self.updated = asyncio.Event()
        self._retry: asyncio.Task[None] | None = None

    def configure(self, settings: Settings) -> None:
        self.domains = {
            name: td.workload_api for name, td in settings.trust_domains.items() if td.workload_api
        }
        tls = settings.check.tls
        self.svid_sockets = {tls.workload_api} if tls is not None and tls.workload_api else set()

    @property
    def sockets(self) -> set[str]:
        return set(self.domains.values()) | self.svid_sockets

    def svid(self, socket: str) -> tuple[bytes, bytes] | None:
        """The latest X509-SVID the Workload API at ``socket`` issued to this process, as PEM."""
        latest = self.latest.get(socket)
        return latest.svid if latest is not None else None

    def _on_update(self, socket: str, kind: str, update: Any) -> None:
        """Each update is the whole set: a trust domain it no longer holds (federation ended) is gone."""
        latest = self.latest.setdefault(socket, _Latest())
        latest.answered.add(kind)
        bundle_set = update
        if kind == "x509":
            latest.roots = {}
            latest.svid = _svid_pem(update.default_svid)
            bundle_set = update.x509_bundle_set
        else:
            latest.jwt, latest.jwt_digest = {}, {}
        for bundle in bundle_set.bundles:
            td = bundle.trust_domain.name
            if kind == "x509":
                latest.roots[td] = tuple(
                    sorted(bundle.x509_authorities, key=lambda c: c.fingerprint(_SHA256))
                )
            else:
                by_kid: dict[str, Key] = {}
                parts = []
                for kid, pub in sorted(bundle.jwt_authorities.items()):
                    k = _jwk(pub)
                    if k is not None:
                        by_kid[kid] = k
                        parts.append(
                            kid.encode() + pub.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
                        )
                latest.jwt[td] = JwtKeys(by_kid=by_kid)
                latest.jwt_digest[td] = hashlib.sha256(b"|".join(parts)).hexdigest()[:16]
        self.on_change()
        self.updated.set()

    def contribute(self, trust: TrustSnapshot) -> TrustSnapshot:
        if not self.domains:
            return trust
        domains = dict(trust.domains)
        parts = []
        for td, socket in sorted(self.domains.items()):
            latest = self.latest.get(socket, _Latest())
            roots = latest.roots.get(td, ())
            jwt = latest.jwt.get(td, JwtKeys())
            rev = hashlib.sha256(
                b"".join(c.public_bytes(Encoding.DER) for c in roots) + latest.jwt_digest.get(td, "").encode()
            ).hexdigest()[:16]
            domains[td] = TrustDomainTrust(
                name=td,
                x509_roots=roots,
                jwt_keys=jwt,
                store=Store(list(roots)) if roots else None,
                revision=rev,
            )
            parts.append(f"{td}={rev}")
        return trust.with_source(self.name, "|".join(parts), domains=domains)

    async def start(self, timeout: float = 10.0) -> None:
        """Open a stream per socket; wait (bounded) for each agent's first answer before serving. A
        configured trust domain the answer does not hold (a federation not set up yet) is not waited for."""
        self._connect()
        if self.sockets:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._answered(), timeout)
            self._retry = asyncio.create_task(self._keep_connecting())
            for td, socket in sorted(self.domains.items()):
                latest = self.latest.get(socket, _Latest())
                if td not in latest.roots and td not in latest.jwt:
                    log.warning("the Workload API at %s has no bundle for trust domain %s (yet)", socket, td)

    async def _answered(self) -> None:
        while not all(
            {"x509", "jwt"} <= self.latest.get(s, _Latest()).answered
            if s in self.domains.values()
            else "x509" in self.latest.get(s, _Latest()).answered
            for s in self.sockets
        ):
            self.updated.clear()
            await self.updated.wait()

    def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        for socket in self.sockets:
            if socket not in self.streams:
                stream = _Stream(socket, loop, self._updater(socket))
                if stream.start():
                    self.streams[socket] = stream

    def _updater(self, socket: str) -> Callable[[str, Any], None]:
        def update(kind: str, bundles: Any) -> None:
            self._on_update(socket, kind, bundles)

        return update

    async def _keep_connecting(self) -> None:
        while True:  # a socket that did not exist at start (agent not up yet) is picked up later
            await asyncio.sleep(1.0)
            self._connect()

    async def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry
        for s in self.streams.values():
            await asyncio.to_thread(s.stop)
        self.streams.clear()
