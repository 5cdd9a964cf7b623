"""A receiver's side of its stream: the HTTP client that polls the transmitter for SETs (RFC 8936) and
manages the stream (SSF 1.0 §7, §8: discovery, the stream's configuration, verification), and what a
receiver knows of its stream. Verifying and applying a SET is receiver.py's."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import StateError, TrustError
from ..httpclient import HttpError, fetch, is_loopback_url
from ..settings import SsfReceiverSettings
from .sets import SetError

__all__ = ["MAX_POLL_BODY", "ReceiverState", "line", "manage", "poll"]

log = logging.getLogger("ext_authz.ssf")
MAX_POLL_BODY = 4 * 1024 * 1024


def line(value: object, limit: int) -> str:
    """A transmitter's text as one short printable line (for state shown to operators, and logs)."""
    text = value if isinstance(value, str) else ""
    return "".join(c if c.isprintable() else " " for c in text[:limit])


@dataclass
class ReceiverState:
    """One receiver: its settings and push secret, the lock its SETs are decided under, what it knows of
    its stream at the transmitter, and its poll and management tasks."""

    cfg: SsfReceiverSettings
    secret: str = ""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    expected_state: str | None = None  # the verification state we asked for, until it comes back
    verified_at: float | None = None
    stream_id: str = ""
    stream_status: str = ""
    poll_url: str = ""
    critical: frozenset[str] = frozenset()  # critical_subject_members from the transmitter's metadata
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def authorized(self, header: str) -> bool:
        if not self.secret:
            return True
        return hmac.compare_digest(header.encode(), f"Bearer {self.secret}".encode())

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"} if self.secret else {}


def _request(
    method: str, url: str, body: bytes | None, headers: dict[str, str], ca: str | None, timeout: float = 10.0
) -> tuple[int, bytes]:
    """One HTTP exchange (https, or http on loopback; within ``timeout`` overall; redirects are not
    followed): (status, body), or a TrustError saying why not — whatever the peer sends."""
    if not (url.startswith("https://") or (url.startswith("http://") and is_loopback_url(url))):
        raise TrustError(f"{url}: only https:// (or http:// on loopback) is used")
    ctx = None
    if url.startswith("https://"):
        ctx = ssl.create_default_context()
        if ca:
            ctx.load_verify_locations(cafile=ca)
    try:
        resp = fetch(
            url,
            method=method,
            body=body,
            headers=headers,
            timeout=timeout,
            max_body=MAX_POLL_BODY,
            context=ctx,
        )
    except HttpError as exc:
        raise TrustError(str(exc)[:300]) from exc
    return resp.status, resp.body


# -- poll (RFC 8936) --------------------------------------------------------------------------------
async def poll(
    state: ReceiverState,
    receive: Callable[[ReceiverState, str], Awaitable[str]],
    fault: Callable[[], None],
) -> None:
    """RFC 8936: poll the transmitter, hand each SET to ``receive``, acknowledge what it took and report
    what it refused; back off while the transmitter cannot be reached. ``fault`` counts a fault of ours.
    Runs until cancelled."""
    ack: list[str] = []
    errs: dict[str, dict[str, str]] = {}
    backoff = 1.0
    while True:
        url = state.cfg.poll_url or state.poll_url
        if not url:
            await asyncio.sleep(1.0)  # the stream's poll endpoint comes from stream management
            continue
        request: dict[str, Any] = {"returnImmediately": True, "maxEvents": 100, "ack": ack}
        headers = {"Content-Type": "application/json", "Accept": "application/json", **state.headers()}
        if errs:
            request["setErrs"] = errs
            headers["Content-Language"] = "en"
        try:
            status, body = await asyncio.to_thread(
                _request,
                "POST",
                url,
                json.dumps(request).encode(),
                headers,
                str(state.cfg.ca or "") or None,
            )
            if status != 200:
                raise TrustError(f"{url}: HTTP {status}")
            doc = json.loads(body)
            sets = doc.get("sets") if isinstance(doc, dict) else None
            if not isinstance(sets, dict):
                raise TrustError(f"{url}: the poll response has no sets")
        except Exception as exc:  # unreachable, a bad answer (even a JSON bomb): back off, poll again
            log.warning(
                "SSF poll of %s failed: %s; retrying in %.0fs", state.cfg.issuer, str(exc)[:200], backoff
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 60.0)
            continue
        backoff = 1.0
        ack, errs = [], {}
        for jti, token in list(sets.items())[:1000]:
            try:
                if not isinstance(token, str):
                    raise SetError("invalid_request", "a SET is a string")
                await receive(state, token)
                ack.append(str(jti))
            except SetError as exc:
                errs[str(jti)] = {"err": exc.err, "description": exc.description}
            except StateError as exc:
                log.error("SSF poll: SET %r not recorded (%s); it will come again", jti[:200], exc.detail)
            except Exception as exc:  # a fault of ours with this SET: report it, keep polling
                fault()
                log.error("SSF poll: SET %r failed (%s)", jti[:200], type(exc).__name__, exc_info=True)
                errs[str(jti)] = {
                    "err": "invalid_request",
                    "description": "the receiver could not apply it",
                }
        if not (ack or errs or doc.get("moreAvailable")):
            await asyncio.sleep(state.cfg.poll_interval)


# -- stream management (SSF §7, §8) -----------------------------------------------------------------
async def manage(state: ReceiverState) -> None:
    """SSF §7, §8: discover the transmitter, find or create this receiver's stream, ask for a
    verification; retried with backoff until it is done."""
    backoff = 2.0
    while True:
        try:
            await _manage_once(state)
            return
        except Exception as exc:  # whatever the transmitter answers, management retries
            log.warning(
                "SSF stream management with %s failed: %s; retrying in %.0fs",
                state.cfg.issuer,
                exc,
                backoff,
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 300.0)


async def _call(state: ReceiverState, method: str, url: str, doc: Any = None) -> tuple[int, Any]:
    headers = {"Accept": "application/json", **state.headers()}
    body = None
    if doc is not None:
        body = json.dumps(doc).encode()
        headers["Content-Type"] = "application/json"
    status, raw = await asyncio.to_thread(
        _request, method, url, body, headers, str(state.cfg.ca or "") or None
    )
    try:
        return status, json.loads(raw) if raw.strip() else None
    except ValueError:
        return status, None


async def _manage_once(state: ReceiverState) -> None:
    rc = state.cfg
    parts = urllib.parse.urlsplit(rc.issuer)
    path = parts.path.rstrip("/")
    discovery = f"{parts.scheme}://{parts.netloc}/.well-known/ssf-configuration{path}"
    status, meta = await _call(state, "GET", discovery)
    if status != 200 or not isinstance(meta, dict):
        raise TrustError(f"{discovery}: HTTP {status}")
    if meta.get("issuer") != rc.issuer:
        raise TrustError(f"{discovery}: issuer is {meta.get('issuer')!r}, expected {rc.issuer!r}")
    config_url = meta.get("configuration_endpoint")
    if not isinstance(config_url, str):
        raise TrustError(f"{discovery}: no configuration_endpoint")
    status, streams = await _call(state, "GET", config_url)
    stream = (
        streams[0]
        if isinstance(streams, list) and streams
        else streams
        if isinstance(streams, dict)
        else None
    )
    if stream is None:
        delivery: dict[str, Any] = {
            "method": "urn:ietf:rfc:8935" if rc.delivery == "push" else "urn:ietf:rfc:8936"
        }
        if rc.delivery == "push":
            delivery["endpoint_url"] = rc.push_url
        status, stream = await _call(
            state, "POST", config_url, {"delivery": delivery, "description": "ext-authz"}
        )
        if status not in (200, 201) or not isinstance(stream, dict):
            raise TrustError(f"{config_url}: creating the stream: HTTP {status}")
    if stream.get("iss") != rc.issuer:
        raise TrustError(f"{config_url}: the stream's iss is {stream.get('iss')!r}")
    state.stream_id = line(stream.get("stream_id"), 256)
    endpoint = (stream.get("delivery") or {}).get("endpoint_url")
    if rc.delivery == "poll" and isinstance(endpoint, str):
        state.poll_url = endpoint
    critical = meta.get("critical_subject_members")
    if isinstance(critical, list):
        state.critical = frozenset(line(c, 64) for c in critical[:32] if isinstance(c, str))
    verify_url = meta.get("verification_endpoint")
    if isinstance(verify_url, str) and state.stream_id:
        state.expected_state = secrets.token_urlsafe(16)
        status, _ = await _call(
            state, "POST", verify_url, {"stream_id": state.stream_id, "state": state.expected_state}
        )
        if status not in (200, 202, 204):
            state.expected_state = None
            raise TrustError(f"{verify_url}: HTTP {status}")
    log.info("SSF stream %r of %s configured (%s)", state.stream_id[:200], rc.issuer, rc.delivery)
