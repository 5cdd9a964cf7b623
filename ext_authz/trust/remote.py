"""Remote JWKS (edge code). ``RemoteJwks`` keeps one key set fresh from a URL: periodic refresh, a
sooner retry after a failure (backing off), stale-if-error up to ``max_stale``. OIDC issuers use it
(``RemoteIssuer`` adds OIDC discovery; ``RemoteTrust``, their trust source, adds a rate-limited refetch
on an unknown ``kid``; past ``max_stale`` their tokens are refused with ``trust_stale``, the check being
in the pure core with ``now`` passed in), and so do the SSF receivers for their transmitters' keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import ssl
from pathlib import Path
from typing import Any

from ..clock import Clock, SystemClock
from ..errors import TrustError
from ..httpclient import HttpError, fetch, is_loopback_url
from ..settings import IssuerSettings, Settings, SsfReceiverSettings
from .bundles import IssuerTrust, JwtKeys, TrustSnapshot, parse_jwks
from .sources import OnChange

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "RemoteIssuer",
    "RemoteJwks",
    "RemoteTrust",
    "fetch_json",
    "refresh_jwks",
]

log = logging.getLogger("ext_authz.trust")
MAX_DOCUMENT_BYTES = 1 << 20
MIN_REFETCH_INTERVAL = 30.0  # an unknown kid triggers at most one refetch per issuer this often


def fetch_json(
    url: str, context: ssl.SSLContext, timeout: float = 5.0, *, loopback_http: bool = False
) -> tuple[bytes, dict[str, Any]]:
    """GET an https URL (or, with ``loopback_http``, an http one on loopback) within ``timeout`` overall,
    a redirect not followed; the body (bounded) and its JSON. Raises TrustError with the reason."""
    if not (
        url.startswith("https://") or (loopback_http and url.startswith("http://") and is_loopback_url(url))
    ):
        also = " (or http:// on loopback)" if loopback_http else ""
        raise TrustError(f"{url}: only https://{also} URLs are fetched")
    headers = {"Accept": "application/json", "User-Agent": "ext-authz"}
    try:
        resp = fetch(url, headers=headers, timeout=timeout, max_body=MAX_DOCUMENT_BYTES, context=context)
    except HttpError as exc:
        raise TrustError(str(exc)) from exc
    if resp.status != 200:
        raise TrustError(f"{url}: HTTP {resp.status}")
    body = resp.body
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise TrustError(f"{url}: not JSON ({type(exc).__name__})") from exc
    if not isinstance(doc, dict):
        raise TrustError(f"{url}: not a JSON object")
    return body, doc


class RemoteJwks:
    """A key set fetched from a URL and kept fresh: the keys, when they were last fetched (past
    ``max_stale`` they are stale, and refused), and the failures since (the next try backs off, up to
    the refresh period). OIDC issuers (``RemoteIssuer``, which may discover the URL) and SSF receivers
    (their transmitter's ``jwks`` URL) share it."""

    def __init__(
        self,
        url: str,
        *,
        ca: Path | None,
        refresh: float,
        max_stale: float,
        clock: Clock | None = None,
        loopback_http: bool = False,
    ) -> None:
        self.jwks_url = url
        self.ca, self.refresh, self.max_stale = ca, refresh, max_stale
        self.clock = clock or SystemClock()
        self.loopback_http = loopback_http  # also http:// on loopback (a transmitter beside us)
        self.keys: JwtKeys | None = None
        self.digest = ""
        self.fetched_at: float | None = None  # the last successful fetch
        self.last_attempt = 0.0
        self.last_error = ""
        self.failures = 0  # since the last success

    def context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if self.ca is not None:
            ctx.load_verify_locations(cafile=str(self.ca))
        return ctx

    def locate(self, context: ssl.SSLContext) -> str:
        """The URL of the key set (blocking)."""
        return self.jwks_url

    def fetch(self) -> bool:
        """Blocking: refresh the keys. True when they changed. Raises TrustError on failure."""
        self.last_attempt = self.clock.now().timestamp()
        ctx = self.context()
        url = self.locate(ctx)
        body, _ = fetch_json(url, ctx, loopback_http=self.loopback_http)
        keys = parse_jwks(body, url, require_use=None)
        digest = hashlib.sha256(body).hexdigest()[:16]
        changed = digest != self.digest
        self.keys, self.digest, self.fetched_at = keys, digest, self.clock.now().timestamp()
        self.failures, self.last_error = 0, ""
        return changed

    def failed(self, detail: str) -> None:
        self.failures += 1
        self.last_error = detail

    def retry_interval(self) -> float:
        """How long after an attempt the next is due: the refresh period; after failures, sooner
        (1, 2, 4… seconds, never more than the refresh period)."""
        return self.refresh if not self.failures else min(self.refresh, 2.0 ** min(self.failures, 8))

    def due(self, now: float) -> bool:
        return now - self.last_attempt >= self.retry_interval()

    def stale(self, now: float) -> bool:
        """Never fetched, or not refreshed for longer than ``max_stale``."""
        return self.fetched_at is None or now - self.fetched_at > self.max_stale


async def refresh_jwks(jwks: RemoteJwks, what: str, logger: logging.Logger = log) -> bool | None:
    """One refresh, off the event loop: True when the keys changed, False when they did not, None when
    it failed (counted and logged; the last keys are kept until they are stale)."""
    try:
        changed = await asyncio.to_thread(jwks.fetch)
    except Exception as exc:  # whatever a remote document does, the refresher lives and the keys stay
        detail = exc.detail if isinstance(exc, TrustError) else f"unexpected {type(exc).__name__}"
        jwks.failed(detail)
        now = jwks.clock.now().timestamp()
        age = "never fetched" if jwks.fetched_at is None else f"last good {int(now - jwks.fetched_at)}s ago"
        logger.warning("%s could not be refreshed (%s), keeping the last keys: %s", what, age, detail)
        return None
    if changed:
        logger.info("%s updated (%d keys)", what, len(jwks.keys or ()))
    return changed


class RemoteIssuer(RemoteJwks):
    """An OIDC issuer's keys: from its ``jwks`` URL, or found by OIDC discovery."""

    def __init__(self, issuer: str, cfg: IssuerSettings, clock: Clock | None = None) -> None:
        super().__init__(cfg.jwks_url, ca=cfg.ca, refresh=cfg.refresh, max_stale=cfg.max_stale, clock=clock)
        self.issuer, self.cfg = issuer, cfg

    def locate(self, context: ssl.SSLContext) -> str:
        if self.jwks_url:
            return self.jwks_url
        disc = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        _, doc = fetch_json(disc, context)
        if doc.get("issuer") != self.issuer:
            raise TrustError(f"{disc}: issuer is {doc.get('issuer')!r}, expected {self.issuer!r}")
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith("https://"):
            raise TrustError(f"{disc}: no https jwks_uri")
        self.jwks_url = uri
        return uri


class RemoteTrust:
    """A trust source: keeps every remote issuer's keys fresh (see sources.py)."""

    name = "jwks"
    what = "JWKS of"  # how the log names one key set

    def __init__(self, on_change: OnChange, clock: Clock | None = None) -> None:
        self.on_change = on_change
        self.clock = clock or SystemClock()
        self.issuers: dict[str, RemoteJwks] = {}
        self._task: asyncio.Task[None] | None = None
        self._refetching: set[str] = set()

    def configure(self, settings: Settings) -> None:
        wanted = {iss: ic for iss, ic in settings.issuers.items() if ic.remote}
        for iss in list(self.issuers):
            ri = self.issuers[iss]
            if iss not in wanted or not isinstance(ri, RemoteIssuer) or ri.cfg != wanted[iss]:
                del self.issuers[iss]
        for iss, ic in wanted.items():
            self.issuers.setdefault(iss, RemoteIssuer(iss, ic, self.clock))

    def _remote(self, iss: str, ri: RemoteJwks) -> IssuerTrust:
        return IssuerTrust(
            issuer=iss,
            keys=ri.keys or JwtKeys(),
            remote=True,
            fetched_at=ri.fetched_at,
            max_stale=ri.max_stale,
        )

    def contribute(self, trust: TrustSnapshot) -> TrustSnapshot:
        """The latest remote keys; the revision changes only when keys change."""
        if not self.issuers:
            return trust
        issuers = dict(trust.issuers)
        parts = []
        for iss, ri in sorted(self.issuers.items()):
            if iss not in issuers:
                continue
            issuers[iss] = self._remote(iss, ri)
            parts.append(f"{iss}={ri.digest}")
        return trust.with_source(self.name, "|".join(parts), issuers=issuers)

    def _now(self) -> float:
        return self.clock.now().timestamp()

    async def refresh(self, iss: str) -> None:
        ri = self.issuers.get(iss)
        if ri is None:
            return
        if await refresh_jwks(ri, f"{self.what} {iss}") is not None:
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
            try:
                now = self._now()
                for iss, ri in list(self.issuers.items()):
                    if ri.due(
                        now
                    ):  # on schedule; after a failure sooner (backing off up to the refresh period)
                        await self.refresh(iss)
            except Exception:  # the loop keeps every key set fresh: one fault must not end it for all
                log.exception("%s refresh loop: unexpected fault (continuing)", self.name)

    def request_refetch(self, issuer: str) -> None:
        """A token of ``issuer`` named a kid we do not have: refetch, at most once per
        MIN_REFETCH_INTERVAL."""
        ri = self.issuers.get(issuer)
        if ri is None or issuer in self._refetching or self._now() - ri.last_attempt < MIN_REFETCH_INTERVAL:
            return
        self._refetching.add(issuer)
        task = asyncio.ensure_future(self.refresh(issuer))
        task.add_done_callback(lambda _: self._refetching.discard(issuer))


class RemoteTransmitter(RemoteJwks):
    """An SSF transmitter's SET-signing keys, from its ``jwks`` URL (http:// too on loopback: a
    transmitter on this machine, as it may push to us)."""

    def __init__(self, cfg: SsfReceiverSettings, clock: Clock | None = None) -> None:
        super().__init__(
            cfg.jwks_url,
            ca=cfg.ca,
            refresh=cfg.refresh,
            max_stale=cfg.max_stale,
            clock=clock,
            loopback_http=True,
        )
        self.cfg = cfg


class TransmitterKeys(RemoteTrust):
    """A trust source: the keys of every SSF transmitter we receive from by URL, fresh, in
    ``TrustSnapshot.transmitters`` (a JWKS file's are there from the files). The receivers verify SETs
    with the snapshot's keys, and refuse them while the keys are missing or stale."""

    name = "ssf-jwks"
    what = "SSF keys of"

    def __init__(self, on_change: OnChange, clock: Clock | None = None, *, enabled: bool = True) -> None:
        super().__init__(on_change, clock)
        # Only the process that runs the receivers fetches (with `workers: N`, worker 0): the others
        # would fetch every transmitter's keys N times for nothing.
        self.enabled = enabled

    def configure(self, settings: Settings) -> None:
        wanted = {r.issuer: r for r in settings.shared_signals.receivers if r.jwks_url and self.enabled}
        for iss in list(self.issuers):
            rt = self.issuers[iss]
            if iss not in wanted or not isinstance(rt, RemoteTransmitter) or rt.cfg != wanted[iss]:
                del self.issuers[iss]
        for iss, rc in wanted.items():
            self.issuers.setdefault(iss, RemoteTransmitter(rc, self.clock))

    def contribute(self, trust: TrustSnapshot) -> TrustSnapshot:
        if not self.issuers:
            return trust
        transmitters = dict(trust.transmitters)
        parts = []
        for iss, rt in sorted(self.issuers.items()):
            if iss not in transmitters:
                continue
            transmitters[iss] = self._remote(iss, rt)
            parts.append(f"{iss}={rt.digest}")
        return trust.with_source(self.name, "|".join(parts), transmitters=transmitters)
