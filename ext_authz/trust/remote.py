"""JWKS over HTTPS for OIDC issuers (edge code): periodic refresh, OIDC discovery, refetch on an
unknown ``kid`` (rate-limited), stale-if-error up to ``max_stale`` — after which that issuer's tokens
are refused with ``trust_stale`` (the check itself is in the pure core, with ``now`` passed in).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import http.client
import json
import logging
import ssl
import urllib.request
from typing import Any

from ..clock import Clock, SystemClock
from ..errors import TrustError
from ..httpclient import open_url
from ..settings import IssuerSettings, Settings
from .bundles import IssuerTrust, JwtKeys, TrustSnapshot, parse_jwks
from .sources import OnChange

__all__ = ["MAX_DOCUMENT_BYTES", "RemoteIssuer", "RemoteTrust", "fetch_json"]

log = logging.getLogger("ext_authz.trust")
MAX_DOCUMENT_BYTES = 1 << 20
MIN_REFETCH_INTERVAL = 30.0  # an unknown kid triggers at most one refetch per issuer this often


def fetch_json(url: str, context: ssl.SSLContext, timeout: float = 5.0) -> tuple[bytes, dict[str, Any]]:
    """GET an https URL; the body (bounded) and its JSON. Raises TrustError with the reason."""
    if not url.startswith("https://"):
        raise TrustError(f"{url}: only https:// URLs are fetched")
    req = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "ext-authz"})  # noqa: S310
    try:
        with open_url(req, timeout, context) as resp:  # https only; a redirect is an error, not followed
            if resp.status != 200:
                raise TrustError(f"{url}: HTTP {resp.status}")
            body: bytes = resp.read(MAX_DOCUMENT_BYTES + 1)
    except TrustError:
        raise
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise TrustError(f"{url}: {exc}") from exc
    if len(body) > MAX_DOCUMENT_BYTES:
        raise TrustError(f"{url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise TrustError(f"{url}: not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise TrustError(f"{url}: not a JSON object")
    return body, doc


@dataclasses.dataclass
class RemoteIssuer:
    issuer: str
    cfg: IssuerSettings
    clock: Clock = dataclasses.field(default_factory=SystemClock)
    keys: JwtKeys | None = None
    digest: str = ""
    fetched_at: float | None = None
    last_attempt: float = 0.0
    last_error: str = ""
    jwks_url: str = ""
    failures: int = 0

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if self.cfg.ca is not None:
            ctx.load_verify_locations(cafile=str(self.cfg.ca))
        return ctx

    def fetch(self) -> bool:
        """Blocking: refresh the keys. True when they changed. Raises TrustError on failure."""
        self.last_attempt = self.clock.now().timestamp()
        ctx = self.context()
        url = self.cfg.jwks_url or self.jwks_url
        if not url:
            disc = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
            _, doc = fetch_json(disc, ctx)
            if doc.get("issuer") != self.issuer:
                raise TrustError(f"{disc}: issuer is {doc.get('issuer')!r}, expected {self.issuer!r}")
            uri = doc.get("jwks_uri")
            if not isinstance(uri, str) or not uri.startswith("https://"):
                raise TrustError(f"{disc}: no https jwks_uri")
            self.jwks_url = url = uri
        body, _ = fetch_json(url, ctx)
        keys = parse_jwks(body, url, require_use=None)
        digest = hashlib.sha256(body).hexdigest()[:16]
        changed = digest != self.digest
        self.keys, self.digest, self.fetched_at = keys, digest, self.clock.now().timestamp()
        self.failures, self.last_error = 0, ""
        return changed


class RemoteTrust:
    """A trust source: keeps every remote issuer's keys fresh (see sources.py)."""

    name = "jwks"

    def __init__(self, on_change: OnChange, clock: Clock | None = None) -> None:
        self.on_change = on_change
        self.clock = clock or SystemClock()
        self.issuers: dict[str, RemoteIssuer] = {}
        self._task: asyncio.Task[None] | None = None
        self._refetching: set[str] = set()

    def configure(self, settings: Settings) -> None:
        wanted = {iss: ic for iss, ic in settings.issuers.items() if ic.remote}
        for iss in list(self.issuers):
            if iss not in wanted or self.issuers[iss].cfg != wanted[iss]:
                del self.issuers[iss]
        for iss, ic in wanted.items():
            self.issuers.setdefault(iss, RemoteIssuer(iss, ic, self.clock))

    def contribute(self, trust: TrustSnapshot) -> TrustSnapshot:
        """The latest remote keys; the revision changes only when keys change."""
        if not self.issuers:
            return trust
        issuers = dict(trust.issuers)
        parts = []
        for iss, ri in sorted(self.issuers.items()):
            if iss not in issuers:
                continue
            issuers[iss] = IssuerTrust(
                issuer=iss,
                keys=ri.keys or JwtKeys(),
                remote=True,
                fetched_at=ri.fetched_at,
                max_stale=ri.cfg.max_stale,
            )
            parts.append(f"{iss}={ri.digest}")
        return trust.with_source(self.name, "|".join(parts), issuers=issuers)

    def _now(self) -> float:
        return self.clock.now().timestamp()

    async def refresh(self, iss: str) -> None:
        ri = self.issuers.get(iss)
        if ri is None:
            return
        try:
            changed = await asyncio.to_thread(ri.fetch)
        except TrustError as exc:
            ri.failures += 1
            ri.last_error = exc.detail
            age = (
                "never fetched"
                if ri.fetched_at is None
                else f"last good {int(self._now() - ri.fetched_at)}s ago"
            )
            log.warning(
                "JWKS of %s could not be refreshed (%s), keeping the last keys: %s", iss, age, exc.detail
            )
            return
        if changed:
            log.info("JWKS of %s updated (%d keys)", iss, len(ri.keys or ()))
        self.on_change()

    async def start(self, timeout: float = 10.0) -> None:
        """First fetch of every remote issuer (bounded), then the refresh loop."""
        if self.issuers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(self.refresh(i) for i in self.issuers)), timeout)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self._now()
            for iss, ri in list(self.issuers.items()):
                # Refresh on schedule; after a failure retry sooner (backing off up to the refresh period).
                due = ri.cfg.refresh if not ri.failures else min(ri.cfg.refresh, 2.0 ** min(ri.failures, 8))
                if now - ri.last_attempt >= due:
                    await self.refresh(iss)

    def request_refetch(self, issuer: str) -> None:
        """A token of ``issuer`` named a kid we do not have: refetch, at most once per
        MIN_REFETCH_INTERVAL."""
        ri = self.issuers.get(issuer)
        if ri is None or issuer in self._refetching or self._now() - ri.last_attempt < MIN_REFETCH_INTERVAL:
            return
        self._refetching.add(issuer)
        task = asyncio.ensure_future(self.refresh(issuer))
        task.add_done_callback(lambda _: self._refetching.discard(issuer))
