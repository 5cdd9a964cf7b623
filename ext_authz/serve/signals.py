"""Shared signals at the edge: the receivers and the transmitter, and their HTTP endpoints on
``http_listen``.

| endpoint | what |
|---|---|
| `POST /ssf/events` | RFC 8935 push: a SET for one of our receivers (202, or 400 with the error JSON) |
| `GET /.well-known/ssf-configuration[/PATH]` | our transmitter's metadata (SSF §7) |
| `GET /ssf/jwks.json` | its public key |
| `POST /ssf/poll` | RFC 8936 poll of a stream's SETs, with acknowledgements |
| `GET, POST /ssf/stream`, `GET, POST /ssf/status`, `POST /ssf/verify` | stream management (SSF §8) |

Every endpoint but discovery and the key set is authenticated by the stream's bearer secret.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import TYPE_CHECKING, Any, Protocol

from ..settings import Settings
from ..ssf.receiver import ReceiverHost, Receivers
from ..ssf.transmitter import Stream, Transmitter
from .http import Request, Response

if TYPE_CHECKING:
    from ..observe.metrics import Metrics

__all__ = ["SharedSignals"]

log = logging.getLogger("ext_authz.ssf")
_JSON = "application/json"
_NO_STORE = {"Cache-Control": "no-store"}


def _json(status: int, doc: Any) -> Response:
    return Response(status, json.dumps(doc), _JSON, dict(_NO_STORE))


class SignalsHost(ReceiverHost, Protocol):
    """What the shared-signals edge needs of the server: the receiver's needs, and the metrics."""

    @property
    def metrics(self) -> Metrics: ...


class SharedSignals:
    def __init__(self, host: SignalsHost) -> None:
        self.host = host
        metrics = host.metrics
        self.receivers = Receivers(host, lambda event, result: metrics.ssf_events.get(event, result).inc())
        self.transmitter: Transmitter | None = None
        self._transmitter_cfg: Any = None
        self._unwatch: Any = None

    def configure(self, settings: Settings) -> None:
        self.receivers.configure(settings)
        cfg = settings.shared_signals.transmitter
        if cfg is not None and cfg == self._transmitter_cfg and self.transmitter is not None:
            self.transmitter.refresh_secrets()  # the same streams: a rotated secret is read again
        if cfg != self._transmitter_cfg:
            self._transmitter_cfg = cfg
            old, self.transmitter = self.transmitter, None
            if old is not None and self._unwatch is not None:
                self._unwatch()
            if cfg is not None:
                metrics = self.host.metrics
                self.transmitter = Transmitter(
                    cfg,
                    lambda: cfg.issuer.rstrip("/"),
                    lambda result: metrics.ssf_sent.get(result).inc(),
                    clock=self.host.clock,
                    on_refused=lambda stream, error: metrics.ssf_refused.get(stream, error).inc(),
                )
                self._unwatch = self.host.replica.watch(self.transmitter.on_revocation)

    async def start(self) -> None:
        self.configure(self.host.settings)
        await self.receivers.start()
        if self.transmitter is not None:
            await self.transmitter.start()

    async def reconfigure(self) -> None:
        """After a reload: receivers and the transmitter follow the settings now in force."""
        before = self.transmitter
        self.configure(self.host.settings)
        await self.receivers.start()
        if self.transmitter is not before:
            if before is not None:
                await before.stop()
            if self.transmitter is not None:
                await self.transmitter.start()

    async def stop(self) -> None:
        await self.receivers.stop()
        if self.transmitter is not None:
            await self.transmitter.stop()

    # -- HTTP ------------------------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response | None:
        """The response for an SSF endpoint, or None when ``request`` is for none of them."""
        path = request.path
        if path == "/ssf/events":
            if request.method != "POST":
                return Response(405, "POST a SET\n", headers={"Allow": "POST"})
            status, body, ctype, headers = await self.receivers.push(request.body, request.headers)
            return Response(status, body, ctype, headers)
        tx = self.transmitter
        if not (path.startswith("/ssf/") or path.startswith("/.well-known/ssf-configuration")):
            return None
        if tx is None:
            return Response(404, "no SSF transmitter is configured\n")
        if path.startswith("/.well-known/ssf-configuration"):
            issuer_path = urllib.parse.urlsplit(tx.cfg.issuer).path.rstrip("/")
            if path.rstrip("/") not in ("/.well-known/ssf-configuration" + issuer_path,):
                return Response(404, "not found\n")
            return _json(200, tx.discovery())
        if path == "/ssf/jwks.json":
            return _json(200, tx.jwks())
        stream = tx.stream_for(request.headers.get("authorization", ""))
        if stream is None:
            return Response(401, "unauthorized\n", headers={"WWW-Authenticate": 'Bearer realm="ssf"'})
        try:
            doc = json.loads(request.body) if request.body else {}
        except ValueError:
            return Response(400, "not JSON\n")
        if not isinstance(doc, dict):
            return Response(400, "not a JSON object\n")
        return self._stream_endpoint(tx, stream, request, doc)

    def _stream_endpoint(
        self, tx: Transmitter, stream: Stream, request: Request, doc: dict[str, Any]
    ) -> Response:
        path, method = request.path, request.method
        base = tx.cfg.issuer.rstrip("/")
        if path == "/ssf/poll" and method == "POST":
            if stream.cfg.delivery != "poll":
                return Response(400, "this stream is delivered by push\n")
            try:
                return _json(200, tx.poll(stream, doc))
            except ValueError as exc:
                return Response(400, f"{exc}\n")
        if path == "/ssf/stream":
            if method == "GET":
                wanted = request.query.get("stream_id")
                if wanted is None:
                    return _json(200, [stream.config(tx.cfg.issuer, base)])
                if wanted != stream.id:
                    return Response(404, "no such stream\n")
                return _json(200, stream.config(tx.cfg.issuer, base))
            if method == "POST":  # one stream per receiver, made by configuration: it exists
                return Response(409, "the stream exists: read it with GET\n")
            return Response(405, "GET or POST\n")
        if doc.get("stream_id", request.query.get("stream_id")) not in (None, stream.id):
            return Response(404, "no such stream\n")
        if path == "/ssf/status":
            if method == "POST":
                status = doc.get("status")
                if status not in ("enabled", "paused", "disabled"):
                    return Response(400, "status is enabled, paused or disabled\n")
                reason = doc.get("reason", "")
                if not isinstance(reason, str) or len(reason) > 256:
                    return Response(400, "reason is a string of at most 256 characters\n")
                stream.status = str(status)
                stream.status_reason = "".join(c if c.isprintable() else " " for c in reason)
                stream.wakeup.set()
                log.warning(
                    "SSF stream %s is now %s (by its receiver): %r", stream.id, status, stream.status_reason
                )
            answer = {"stream_id": stream.id, "status": stream.status}
            if stream.status_reason:
                answer["reason"] = stream.status_reason  # SSF 1.0 §8.1.2: the response echoes it
            return _json(200, answer)
        if path == "/ssf/verify" and method == "POST":
            # The runtime's clock, so a test can move it. A wall clock set back must not silence
            # verification until it catches up: a last verification "in the future" does not count.
            now = self.host.clock.now().timestamp()
            last = stream.last_verification
            if last is not None and 0 <= now - last < 10:
                return Response(429, "at most one verification every 10s\n", headers={"Retry-After": "10"})
            stream.last_verification = now
            state = doc.get("state")
            tx.verification(stream, state if isinstance(state, str) else None)
            return Response(204)
        return Response(404, "not found\n")
