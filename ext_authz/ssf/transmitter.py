"""The SSF transmitter: our revocations and quarantines, as CAEP ``session-revoked`` SETs.

Every revocation this instance's state gains that did not itself come from a transmitter (``source``
``api`` or ``quarantine``; never ``ssf``, so two instances never echo each other) becomes one SET per
configured stream, signed with the configured key. Push streams get it POSTed (RFC 8935) to their
receiver, retried with backoff until answered; poll streams queue it for ``POST /ssf/poll`` (RFC 8936)
with acknowledgements. ``/.well-known/ssf-configuration`` and the key set describe us; a small stream
management API (read, create, status, verification) answers receivers that expect one.

Each stream is authenticated by one shared bearer secret (``authorization_file``), used in both
directions: the receiver presents it to poll and to manage its stream, and we present it when pushing.
A SET's ``jti`` derives from the revocation and the stream, so the replicas of a fleet, which all see the
same revocation, send the same SET, and a receiver keeps it once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from joserfc import jws
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey, import_key

from ..clock import Clock, SystemClock
from ..errors import ConfigError
from ..httpclient import BodyTooLarge, fetch
from ..settings import SsfStreamSettings, SsfTransmitterSettings
from ..state.records import Revocation
from ..state.replica import RevocationEvent

__all__ = ["Transmitter", "load_signing_key", "set_for_revocation", "sign_set", "subject_of"]

log = logging.getLogger("ext_authz.ssf")
CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
SSF = "https://schemas.openid.net/secevent/ssf/event-type/"
PUSH = "urn:ietf:rfc:8935"
POLL = "urn:ietf:rfc:8936"
MAX_QUEUE = 10_000  # SETs held per stream; the oldest are dropped (and counted) past it
MAX_ANSWER = 64 * 1024  # a receiver's answer to a push: a status and, on an error, a small JSON body


def load_signing_key(path: Path, algorithm: str | None) -> tuple[Key, str, str]:
    """(private key, alg, kid) from a private JWK (JSON) or a PEM file."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), "", f"cannot read the SSF signing key ({exc.strerror or exc})") from exc
    try:
        if data.lstrip().startswith(b"{"):
            key = import_key(json.loads(data))
        else:
            key = import_key(data, "RSA" if b"RSA" in data else "EC")
    except Exception as exc:  # joserfc raises several types for a bad key
        raise ConfigError(str(path), "", f"not a private JWK or PEM key ({type(exc).__name__})") from exc
    if not key.is_private:
        raise ConfigError(str(path), "", "the SSF signing key must be a private key")
    if isinstance(key, RSAKey):
        alg = algorithm or "RS256"
    elif isinstance(key, ECKey):
        alg = algorithm or {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}.get(str(key.curve_name), "")
    elif isinstance(key, OKPKey):
        alg = algorithm or "EdDSA"
    else:
        raise ConfigError(str(path), "", "the SSF signing key is RSA, EC or OKP (never symmetric)")
    kid = str(key.kid or key.thumbprint())
    return key, alg, kid


def public_jwks(key: Key, alg: str, kid: str) -> dict[str, Any]:
    public = {k: v for k, v in key.as_dict(private=False).items() if k != "kid"}
    return {"keys": [{**public, "kid": kid, "alg": alg, "use": "sig"}]}


def sign_set(claims: dict[str, Any], key: Key, alg: str, kid: str) -> str:
    header = {"typ": "secevent+jwt", "alg": alg, "kid": kid}
    payload = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
    return str(jws.serialize_compact(header, payload, key, algorithms=[alg]))


def subject_of(rev: Revocation) -> dict[str, Any] | None:
    """The RFC 9493 / SSF subject a revocation names, or None for one SSF cannot name (a certificate)."""
    kind, value = rev.kind, rev.value
    if kind == "quarantine":
        kind = "spiffe_id" if value.startswith("spiffe://") else "sub"
    if kind == "spiffe_id":
        return {"format": "uri", "uri": value}
    if kind == "sub":
        iss, _, sub = value.partition("#")
        return {"format": "iss_sub", "iss": iss, "sub": sub}
    if kind == "jti":
        iss, _, jti = value.partition("#")
        return {"format": "jwt_id", "iss": iss, "jti": jti}
    if kind == "sid":
        _, _, sid = value.partition("#")
        return {"format": "complex", "session": {"format": "opaque", "id": sid}}
    if kind == "device":
        return {"format": "complex", "device": {"format": "opaque", "id": value}}
    return None


def stream_id(audience: str) -> str:
    return hashlib.sha256(audience.encode()).hexdigest()[:32]


def issuer_of(rev: Revocation) -> str:
    """Whose subject a revocation names: the token issuer, ``spiffe://TRUST-DOMAIN``, or '' (a device)."""
    if rev.value.startswith("spiffe://"):
        return "spiffe://" + rev.value[len("spiffe://") :].split("/", 1)[0].split("#", 1)[0]
    if rev.kind in ("sub", "jti", "sid", "quarantine"):
        return rev.value.partition("#")[0]
    return ""


def set_for_revocation(
    rev: Revocation, issuer: str, audience: str, now: float, *, reasons: bool = False
) -> dict[str, Any] | None:
    subject = subject_of(rev)
    if subject is None:
        return None
    event: dict[str, Any] = {
        "event_timestamp": int(rev.created_at),
        "initiating_entity": "policy" if rev.source == "quarantine" else "admin",
    }
    if reasons:
        event["reason_admin"] = {"en": rev.reason}
    jti = hashlib.sha256(f"{rev.id}\0{audience}".encode()).hexdigest()[:32]
    return {
        "iss": issuer,
        "jti": jti,
        "iat": int(now),
        "aud": audience,
        "txn": rev.id,
        "sub_id": subject,
        "events": {CAEP + "session-revoked": event},
    }


def _secret(path: Path) -> str:
    from ..secrets import read_secret

    return read_secret(path, "authorization_file")


@dataclass
class Stream:
    cfg: SsfStreamSettings
    secret: str
    queue: collections.deque[tuple[str, str]] = field(default_factory=collections.deque)  # (jti, SET)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    status: str = "enabled"
    status_reason: str = ""
    last_verification: float | None = None  # when a receiver last asked for one (the runtime clock)
    delivered: int = 0
    refused: collections.Counter[str] = field(default_factory=collections.Counter)  # by error code
    last_error: tuple[float, int, str, str] | None = None  # (when, HTTP status, code, description)

    @property
    def id(self) -> str:
        return stream_id(self.cfg.audience)

    def authorized(self, header: str) -> bool:
        want = f"Bearer {self.secret}"
        return hmac.compare_digest(header.encode(), want.encode())

    def config(self, issuer: str, base: str) -> dict[str, Any]:
        delivery: dict[str, Any] = {"method": PUSH if self.cfg.delivery == "push" else POLL}
        delivery["endpoint_url"] = self.cfg.push_url if self.cfg.delivery == "push" else f"{base}/ssf/poll"
        return {
            "stream_id": self.id,
            "iss": issuer,
            "aud": self.cfg.audience,
            "events_supported": [CAEP + "session-revoked"],
            "events_requested": [CAEP + "session-revoked"],
            "events_delivered": [CAEP + "session-revoked"],
            "delivery": delivery,
            "min_verification_interval": 10,
        }


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float = 5.0) -> tuple[int, bytes]:
    """POST within ``timeout`` overall (redirects are not followed: they could take our stream's secret
    elsewhere): (status, body). Only the first MAX_ANSWER bytes of the answer matter (its error code):
    a longer one keeps its status, without its body. Raises HttpError when there is no answer."""
    ctx = ssl.create_default_context() if url.startswith("https://") else None
    try:
        resp = fetch(
            url, method="POST", body=body, headers=headers, timeout=timeout, max_body=MAX_ANSWER, context=ctx
        )
    except BodyTooLarge as exc:
        return exc.status, b""
    return resp.status, resp.body


class Transmitter:
    def __init__(
        self,
        cfg: SsfTransmitterSettings,
        base_url: Callable[[], str],
        on_sent: Callable[[str], None] = lambda result: None,
        clock: Clock | None = None,
        on_refused: Callable[[str, str], None] = lambda stream, error: None,
    ) -> None:
        self.cfg = cfg
        self.clock = clock or SystemClock()
        self.key, self.alg, self.kid = load_signing_key(cfg.key, cfg.algorithm)
        self.streams = [Stream(s, _secret(s.authorization_file)) for s in cfg.streams]
        self.base_url = base_url
        self.on_sent = on_sent
        self.on_refused = on_refused
        self.dropped = 0
        self._tasks: list[asyncio.Task[None]] = []

    def refresh_secrets(self) -> None:
        for stream in self.streams:
            stream.secret = _secret(stream.cfg.authorization_file)

    # -- what gets sent --------------------------------------------------------------------------
    def on_revocation(self, event: RevocationEvent) -> None:
        """A replica watcher: never blocks; a SET per stream is queued (and pushed by its worker)."""
        rev = event.revocation
        if event.op != "created" or rev.source == "ssf":
            return
        now = self.clock.now().timestamp()
        whose = issuer_of(rev)
        for stream in self.streams:
            wanted = stream.cfg.for_issuers
            if wanted and whose not in wanted:
                continue  # this receiver is not told about another issuer's users
            claims = set_for_revocation(
                rev, self.cfg.issuer, stream.cfg.audience, now, reasons=stream.cfg.send_reasons
            )
            if claims is None:
                continue
            self._enqueue(stream, claims)

    def _enqueue(self, stream: Stream, claims: dict[str, Any]) -> None:
        if stream.status == "disabled":
            return
        if len(stream.queue) >= MAX_QUEUE:
            stream.queue.popleft()
            self.dropped += 1
            self.on_sent("dropped")
        stream.queue.append((str(claims["jti"]), sign_set(claims, self.key, self.alg, self.kid)))
        stream.wakeup.set()

    def verification(self, stream: Stream, state: str | None) -> None:
        payload: dict[str, Any] = {"state": state} if state is not None else {}
        claims = {
            "iss": self.cfg.issuer,
            "jti": secrets.token_urlsafe(24),  # an id, unique per verification (32 characters)
            "iat": int(self.clock.now().timestamp()),
            "aud": stream.cfg.audience,
            "sub_id": {"format": "opaque", "id": stream.id},
            "events": {SSF + "verification": payload},
        }
        self._enqueue(stream, claims)

    # -- push ------------------------------------------------------------------------------------
    async def start(self) -> None:
        for stream in self.streams:
            if stream.cfg.delivery == "push":
                self._tasks.append(asyncio.create_task(self._push(stream)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def _push(self, stream: Stream) -> None:
        backoff = 0.5
        url = stream.cfg.push_url
        assert url is not None  # the settings require it for push streams
        headers = {
            "Content-Type": "application/secevent+jwt",
            "Accept": "application/json",
            "Authorization": f"Bearer {stream.secret}",
        }
        while True:
            if not stream.queue or stream.status != "enabled":
                stream.wakeup.clear()
                await stream.wakeup.wait()
                continue
            jti, token = stream.queue[0]
            try:
                status, body = await asyncio.to_thread(_post, url, token.encode(), headers)
            except Exception as exc:  # OSError, a bad answer: retry with backoff, never stop pushing
                log.warning("SSF push to %s failed (%s); retrying in %.1fs", url, exc, backoff)
                self.on_sent("retry")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if status == 202:
                stream.queue.popleft()
                stream.delivered += 1
                self.on_sent("delivered")
                backoff = 0.5
                continue
            err, description = _error(body)
            if 400 <= status < 500:
                # What a receiver refuses is counted by its error code and kept for `ext-authz ssf
                # status`: a receiver that cannot take what we send is visible, not only logged.
                code = err if err in RFC8935_ERRORS else f"http_{status}"
                stream.refused[code] += 1
                stream.last_error = (self.clock.now().timestamp(), status, code, description)
                self.on_refused(stream.id, code)
            if status == 400 and err in _FINAL_ERRORS:
                stream.queue.popleft()  # resending cannot help (RFC 8935 §4)
                log.error("SSF receiver %s refused SET %s: %s %r", url, jti, err, description)
                self.on_sent("refused")
                continue
            log.warning("SSF push to %s: HTTP %d %r; retrying in %.1fs", url, status, err[:100], backoff)
            self.on_sent("retry")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    # -- the HTTP endpoints (served on http_listen) ------------------------------------------------
    def discovery(self) -> dict[str, Any]:
        base = self.base_url()
        return {
            "spec_version": "1_0",
            "issuer": self.cfg.issuer,
            "jwks_uri": f"{base}/ssf/jwks.json",
            "delivery_methods_supported": [PUSH, POLL],
            "configuration_endpoint": f"{base}/ssf/stream",
            "status_endpoint": f"{base}/ssf/status",
            "verification_endpoint": f"{base}/ssf/verify",
            "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6750"}],
            "default_subjects": "ALL",
        }

    def jwks(self) -> dict[str, Any]:
        return public_jwks(self.key, self.alg, self.kid)

    def stream_for(self, authorization: str) -> Stream | None:
        for stream in self.streams:
            if stream.authorized(authorization):
                return stream
        return None

    def poll(self, stream: Stream, request: dict[str, Any]) -> dict[str, Any]:
        """RFC 8936: drop what is acknowledged (or reported as an error), return what is pending."""
        acked = request.get("ack") or []
        errs = request.get("setErrs") or {}
        if not isinstance(acked, list) or not isinstance(errs, dict):
            raise ValueError("ack is a list and setErrs an object")
        done = {str(j) for j in acked} | {str(j) for j in errs}
        for jti, err in list(errs.items())[:100]:
            log.warning(
                "SSF receiver of stream %s could not use SET %r: %r", stream.id, str(jti)[:64], str(err)[:200]
            )
        if done:
            stream.queue = collections.deque((j, t) for j, t in stream.queue if j not in done)
        most = request.get("maxEvents")
        count = len(stream.queue) if not isinstance(most, int) or isinstance(most, bool) else max(0, most)
        pending = list(stream.queue)[:count]
        return {"sets": dict(pending), "moreAvailable": len(stream.queue) > len(pending)}


RFC8935_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_key",
        "invalid_issuer",
        "invalid_audience",
        "authentication_failed",
        "access_denied",
    }
)
_FINAL_ERRORS = frozenset({"invalid_request", "invalid_key", "invalid_audience", "invalid_issuer"})
_TOKENISH = re.compile(r"eyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]{8,}[A-Za-z0-9_.-]*")


def _error(body: bytes) -> tuple[str, str]:
    """A receiver's RFC 8935 error answer: (err, description), each one short printable line; a token
    the receiver may have echoed is cut out."""
    try:
        doc = json.loads(body or b"{}")
    except ValueError:
        return "", ""
    if not isinstance(doc, dict):
        return "", ""

    def line(value: object, limit: int) -> str:
        text = value if isinstance(value, str) else ""
        text = _TOKENISH.sub("[token]", text)
        return "".join(c if c.isprintable() else " " for c in text)[:limit]

    return line(doc.get("err"), 64), line(doc.get("description"), 300)
