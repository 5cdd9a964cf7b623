"""One JSON record per Check, written even on faults. Never a token, cookie or key.

Redaction is on by default: the configured headers (authorization, cookies, API keys …) and any header
value that parses as a token are replaced before a record is built, and a path is recorded without its
query string or fragment, whatever their shape (a bare token after ``?`` is still a secret), and
without what looks like a token inside it (:func:`redact_path`). A slow
or blocked sink never stalls a Check: records queue up to a bound (a count, and MAX_QUEUE_BYTES), then
are dropped and counted. With the background writer, a Check queues only what its record is made of,
and the writer builds and encodes the records, in batches.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import orjson

from ..model import Decision, Principal, RequestContext, ShadowResult
from ..settings import DEFAULT_REDACT_HEADERS
from ..trust.revision import Revision

__all__ = [
    "DEFAULT_REDACT_HEADERS",
    "REDACTED",
    "DecisionLog",
    "LoggedRequest",
    "Pending",
    "Redactor",
    "encode",
    "encode_line",
    "logged_request",
    "pending_record",
    "record",
    "redact_path",
]

_log = logging.getLogger("ext_authz")
REDACTED = "[REDACTED]"
DRAIN_INTERVAL = 0.02  # seconds between batched writes of the background writer
# What the background writer's queue may hold, whatever the count allows: a record's request can be as
# large as limits.max_header_bytes, so 10,000 queued while a sink is stuck could otherwise hold a GiB.
MAX_QUEUE_BYTES = 64 * 1024 * 1024
_PENDING_BYTES = 1024  # a queued record's own inputs, besides its request's strings
_HEADER_BYTES = 200  # a header kept for the record (headers: true): two string objects and a dict entry
# Compact JWS/JWE, or a long opaque secret-looking run of base64url characters.
_TOKENISH = re.compile(
    r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*){1,3}|[A-Za-z0-9_\-+/=]{40,}"
)
# Headers never worth logging: Envoy's own client-certificate details are long and not secret,
# but they are not needed either (the identity fields say who it was).
_SKIP = frozenset(("x-forwarded-client-cert",))


MAX_LOGGED_PATH = 2048  # a path is logged up to this many characters
# --- paths: tokens travel in them too (password-reset and magic links, session ids in matrix params) --
# What makes a path worth a closer look; most paths have none of it and are kept as they are, at the
# cost of one scan.
_PATH_SUSPECT = re.compile(r"[;%=]|eyJ|[^/]{20,}")
# A percent-encoded '?', '#' or '=', encoded once or more ('%3F', '%253F', '%25253F'): what follows is a
# query, a fragment or a value sent inside the path.
_ENCODED_CUT = re.compile(r"%(?:25)*(?:3[fF]|23|3[dD])")
# A compact JWS or JWE, whole or cut short.
_JOSE = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]")
# 16+ letters and digits in a row, with both: nothing a person names a resource with looks like that.
_MIXED_RUN = re.compile(r"(?=[A-Za-z0-9]{16})(?=[A-Za-z]*[0-9])(?=[0-9]*[A-Za-z])[A-Za-z0-9]{16,}")
_HEX = re.compile(r"[0-9a-fA-F]{32,}")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_LOWER_RUN = re.compile(r"[a-z]+")


# Each ASCII letter or digit as its kind (digit, upper, lower); anything else is dropped.
_KINDS = str.maketrans(
    {
        **dict.fromkeys("0123456789", "d"),
        **dict.fromkeys("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "U"),
        **dict.fromkeys("abcdefghijklmnopqrstuvwxyz", "l"),
    }
)
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")


def _random_looking(segment: str) -> bool:
    """A path segment of 20+ characters that reads like a random token, not a name: a hex run of 32+
    (a UUID in its canonical form is kept: it is how resources are named), a run of 16+ letters and
    digits mixing both, or letters and digits that change case or kind as often as random base64url
    does (camelCase words change rarely, and in long lowercase runs). Longer than 128: always."""
    if len(segment) < 20:
        return False
    if len(segment) > 128:  # no one names a resource so; and judging it must stay cheap
        return True
    if _UUID.fullmatch(segment):
        return False
    if _HEX.search(segment):
        return True
    chars = _NOT_ALNUM.sub("", segment)
    if len(chars) < 16:
        return False
    if any(_MIXED_RUN.fullmatch(run) for run in re.findall(r"[A-Za-z0-9]{16,}", segment)):
        return True
    kinds = chars.translate(_KINDS)
    ratio = sum(map(str.__ne__, kinds, kinds[1:])) / (len(kinds) - 1)
    digits = kinds.count("d")
    runs = [len(r) for r in _LOWER_RUN.findall(chars)] or [len(chars)]
    return ratio >= 0.4 or (ratio >= 0.3 and digits >= 2) or (ratio >= 0.2 and sum(runs) / len(runs) < 2.2)


def redact_path(path: str, extra: tuple[re.Pattern[str], ...] = ()) -> str:
    """``path`` (already without its query string) as it may be logged, streamed, traced or reported:
    a percent-encoded ``?``, ``#`` or ``=`` and all after it, every matrix parameter (``;jsessionid=…``),
    a segment holding a compact JWS/JWE, and a long random-looking segment are each replaced by
    [REDACTED]; then each of ``extra`` (decision_log.redact_paths). Policy is never given this: it sees
    the real path."""
    if len(path) > MAX_LOGGED_PATH:  # what is past the cut is not kept, so it cannot leak
        path = path[:MAX_LOGGED_PATH] + "[TRUNCATED]"
    if _PATH_SUSPECT.search(path):
        cut = _ENCODED_CUT.search(path)
        if cut is not None:
            path = path[: cut.start()] + REDACTED
        segments = path.split("/")
        for i, segment in enumerate(segments):
            name, semicolon, _params = segment.partition(";")
            key, equals, _value = name.partition("=")  # `token=…` in a path is a value sent there
            if equals:
                name = f"{key}={REDACTED}"
            elif _random_looking(name) or _JOSE.search(name):
                name = REDACTED
            segments[i] = f"{name};{REDACTED}" if semicolon else name
        path = "/".join(segments)
    for pattern in extra:
        path = pattern.sub(REDACTED, path)
    return path


# Headers whose value is a URL or a path: logged as the path is (no query string, tokens replaced).
_URL_HEADERS = frozenset(
    (
        "referer",
        "origin",
        "location",
        "x-envoy-original-path",
        "x-forwarded-uri",
        "x-original-uri",
        "x-original-url",
    )
)


class Redactor:
    def __init__(
        self, headers: Iterable[str] = DEFAULT_REDACT_HEADERS, paths: Iterable[re.Pattern[str]] = ()
    ) -> None:
        self.headers = frozenset(h.lower() for h in headers)
        self.paths = tuple(paths)

    def path(self, path: str) -> str:
        return redact_path(path, self.paths)

    def header(self, name: str, value: str) -> str:
        if name in self.headers:
            return REDACTED
        if name in _URL_HEADERS:  # a URL's query string and tokens in its path, as for the path itself
            base, _, _query = value.partition("?")
            scheme, sep, rest = base.partition("://")
            if sep:
                host, slash, path = rest.partition("/")
                return f"{scheme}://{host}{slash and self.path('/' + path)}"
            return self.path(base)
        return _TOKENISH.sub(REDACTED, value)

    def headers_map(self, headers: Mapping[str, str]) -> dict[str, str]:
        return {k: self.header(k, v) for k, v in headers.items() if k not in _SKIP and not k.startswith(":")}


# A record's sections that are the same from Check to Check, kept both as values (for the live stream
# and callers) and as orjson Fragments (already-encoded JSON, for the writer: the bulk of a line is not
# encoded again).
_Section = tuple[Any, orjson.Fragment]
_IDENTITIES: dict[int, tuple[Principal, _Section]] = {}
_MAX_IDENTITIES = 10_000


def _section(value: Any) -> _Section:
    return value, orjson.Fragment(orjson.dumps(value))


def _identity(p: Principal) -> _Section:
    """A record's identity section. A caller's Principal is the same object from Check to Check (the
    pipeline's caches hold it): its section is built once. The cache holds the principal itself, so an
    id can never be reused for another while its entry lives."""
    hit = _IDENTITIES.get(id(p))
    if hit is not None and hit[0] is p:
        return hit[1]
    token = p.token
    primary = p.primary
    section = _section(
        {
            "principals": list(p.keys),  # exactly as state names them (ext_authz/principal.py)
            "kinds": list(p.kinds),
            "spiffe_id": p.spiffe_id,
            "subject": token.subject if token else "",
            "issuer": token.issuer if token else "",
            "trust_domain": primary.trust_domain if primary else "",
        }
    )
    if len(_IDENTITIES) >= _MAX_IDENTITIES:
        _IDENTITIES.clear()
    _IDENTITIES[id(p)] = (p, section)
    return section


_SHADOWS: dict[tuple[ShadowResult, ...], _Section] = {}
_MAX_SHADOWS = 1024
# The last results seen, by identity: a policy's remembered outcome hands the same tuple to every Check
# it decides, and a lookup by value would hash each ShadowResult (a Python-level __hash__) each time.
_last_shadow: tuple[tuple[ShadowResult, ...], _Section] | None = None
_last_revision: tuple[Revision, int, _Section] | None = None


def _shadow(results: tuple[ShadowResult, ...]) -> _Section:
    """A record's shadow section: a function of the results (few distinct ones), built once each."""
    global _last_shadow
    last = _last_shadow
    if last is not None and last[0] is results:
        return last[1]
    section = _SHADOWS.get(results)
    if section is None:
        if len(_SHADOWS) >= _MAX_SHADOWS:
            _SHADOWS.clear()
        section = _SHADOWS[results] = _section(
            [{"rule": s.rule, "effect": s.effect, "matched": s.matched} for s in results]
        )
    _last_shadow = (results, section)
    return section


def _revision(revision: Revision, state_revision: int) -> _Section:
    """A record's revision section; the same from Check to Check until config, trust or state change."""
    global _last_revision
    last = _last_revision
    if last is not None and last[0] is revision and last[1] == state_revision:
        return last[2]
    section = _section({"config": revision.config, "trust": revision.trust.key, "state": state_revision})
    _last_revision = (revision, state_revision, section)
    return section


# What a record says of the request: (request_id, method, host, path without query, source address,
# redacted headers or None). Taken from the RequestContext on the Check path, so a queued record holds
# these strings and nothing else of the request (no credentials, no unredacted header).
LoggedRequest = tuple[str, str, str, str, str, "dict[str, str] | None"]


def logged_request(ctx: RequestContext, redactor: Redactor | None, include_headers: bool) -> LoggedRequest:
    http = ctx.http
    if http is None:
        return (ctx.request_id, "", "", "", ctx.source_address, None)
    redactor = redactor or _DEFAULT_REDACTOR
    headers = redactor.headers_map(http.headers) if include_headers else None
    # The path never with its query string, nor a token it carries: either may be a secret.
    return (
        ctx.request_id,
        http.method,
        http.host,
        redactor.path(http.path_only),
        ctx.source_address,
        headers,
    )


_DEFAULT_REDACTOR = Redactor()


_NO_REQUEST: LoggedRequest = ("", "", "", "", "", None)
_REQUEST_KEYS = ("request_id", "method", "host", "path", "source")


def record(
    decision_id: str,
    at: datetime,
    req: LoggedRequest | None,
    decision: Decision | None,
    latency_s: float,
    revision: Revision,
    fault: str,
    state_revision: int,
    encoded: bool = False,
) -> dict[str, Any]:
    """One Check's record; ``req`` is what :func:`logged_request` took from its request. ``encoded``:
    its identity, shadow and revision sections are already-encoded JSON (orjson Fragments), for
    :func:`encode_line` only; else plain values."""
    part = 1 if encoded else 0
    request_id, method, host, path, source, headers = req if req is not None else _NO_REQUEST
    # One dict display for what every decided Check's record has (a dict grown key by key resizes
    # twice on the way); what only some have is added after, and what a record without a request or a
    # decision lacks is taken out.
    rec: dict[str, Any] = {
        "time": at,  # encoded as RFC 3339 by the writer (orjson), with microseconds
        "decision_id": decision_id,
        "request_id": request_id,
        "method": method,
        "host": host,
        "path": path,
        "source": source,
        "headers": headers,
        "decision": "",
        "status": 0,
        "reason": "",
        "rule": "",
        "identity": None,
    }
    if headers is None:
        del rec["headers"]
    if req is None:
        for key in _REQUEST_KEYS:
            del rec[key]
    if decision is not None:
        rec["decision"] = "allow" if decision.allowed else "deny"
        rec["status"] = decision.status
        rec["reason"] = decision.reason
        rec["rule"] = decision.rule
        rec["identity"] = _identity(decision.principal)[part]
        if decision.revocation_id:
            rec["revocation"] = {"id": decision.revocation_id, "kind": decision.revocation_kind}
        if decision.exception_id:
            rec["exception_id"] = decision.exception_id
        if decision.grant_ids:
            rec["grant_ids"] = list(decision.grant_ids)
        if decision.signals_read:  # which facts the decision was given: keys only, never their values
            rec["signals_read"] = list(decision.signals_read)
        if decision.shadow:
            rec["shadow"] = _shadow(decision.shadow)[part]
            rec["shadow_decision"] = "allow" if decision.shadow_allowed else "deny"
        if decision.policy_errors:
            rec["policy_errors"] = [{"rule": rule, "error": error} for rule, error in decision.policy_errors]
        if decision.response_errors:
            rec["response_errors"] = [{"rule": r, "error": e} for r, e in decision.response_errors]
        if decision.detail:
            rec["detail"] = decision.detail
    else:
        del rec["rule"], rec["identity"]
        if not fault:
            del rec["decision"], rec["status"], rec["reason"]
    if fault:
        rec.update(decision="error", status=0, reason="internal", fault=fault)
    # Milliseconds to the microsecond (round() to a number of digits goes through a string: slow).
    rec["latency_ms"] = round(latency_s * 1_000_000) / 1000
    rec["revision"] = _revision(revision, state_revision)[part]
    return rec


# What a Check hands the background writer instead of a record: the record's inputs, all immutable,
# from which the writer builds and encodes it (see DecisionLog.write_later).
Pending = tuple[
    str,  # decision_id
    datetime,  # at
    "LoggedRequest | None",
    "Decision | None",
    float,  # latency_s
    Revision,
    str,  # fault
    int,  # state_revision
    "int | None",  # worker
    str,  # trace_id
]


def pending_record(item: Pending, encoded: bool = False) -> dict[str, Any]:
    """The record a :data:`Pending` stands for: what :func:`record` builds from the same inputs."""
    decision_id, at, req, decision, latency_s, revision, fault, state_revision, worker, trace = item
    rec = record(decision_id, at, req, decision, latency_s, revision, fault, state_revision, encoded)
    if worker is not None:
        rec["worker"] = worker
    if trace:
        rec["trace_id"] = trace
    return rec


def _size(item: Pending) -> int:
    """What a queued pending record holds, for the queue's byte bound: its own inputs, and its
    request's strings at 4 bytes a character (what Python stores a string with one character outside
    the BMP in), each kept header with its dict entry and string objects. (A queued line counts its
    length.)"""
    req = item[2]
    if req is None:
        return _PENDING_BYTES
    size = _PENDING_BYTES + 4 * (len(req[0]) + len(req[1]) + len(req[2]) + len(req[3]) + len(req[4]))
    headers = req[5]
    if headers:
        size += 4 * (sum(map(len, headers)) + sum(map(len, headers.values()))) + _HEADER_BYTES * len(headers)
    return size


def encode_line(rec: dict[str, Any]) -> bytes:
    """One JSON line, UTF-8 (orjson: several times faster than the standard library on these records)."""
    return orjson.dumps(rec, default=str, option=orjson.OPT_APPEND_NEWLINE)


def encode(rec: dict[str, Any]) -> str:
    """:func:`encode_line` as text."""
    return encode_line(rec).decode()


class DecisionLog:
    """JSON lines to a sink. ``background=True`` writes from a thread through a bounded queue."""

    def __init__(
        self,
        sink: TextIO | BinaryIO | None = None,
        *,
        background: bool = False,
        max_queue: int = 10_000,
        max_queue_bytes: int = MAX_QUEUE_BYTES,
        on_drop: Callable[[], None] | None = None,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled  # off: no record is built unless a live stream subscribes
        self.sink = sink if sink is not None else sys.stdout
        # A binary file is written as bytes (orjson's own, never decoded); anything else (stdout, a
        # StringIO) as text.
        self._text = not isinstance(self.sink, io.RawIOBase | io.BufferedIOBase)
        self._owns_sink = False
        self._path: Path | None = None  # a file this log opened, reopened on request (logrotate)
        self._reopen = False
        self.dropped = 0
        self._drop_lock = threading.Lock()
        self.on_drop = on_drop
        # (size, item): an item's size is worked out once, when it is queued; None stops the writer.
        self._queue: collections.deque[tuple[int, bytes | Pending] | None] | None = None
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        # Bytes queued = in - out. Each counter has one writer (the Check path; the writer thread), so
        # neither needs a lock.
        self._bytes_in = 0
        self._bytes_out = 0
        self._thread: threading.Thread | None = None
        if background:
            self._queue = collections.deque()  # append and popleft are atomic: no lock per Check
            self._thread = threading.Thread(target=self._drain, name="decision-log", daemon=True)
            self._thread.start()

    @classmethod
    def open(cls, where: str, **kw: Any) -> DecisionLog:
        if where in ("", "stdout", "-"):
            return cls(sys.stdout, **kw)
        path = Path(where)
        path.parent.mkdir(parents=True, exist_ok=True)
        log = cls(path.open("ab"), **kw)
        log._owns_sink = True  # opened here: closed by close()
        log._path = path
        return log

    def reopen(self) -> None:
        """Open the file again by its name before the next write (after logrotate moved it away): the
        writer does it, between batches, so no record is split or lost. Not a file: nothing to do."""
        if self._path is not None:
            self._reopen = True

    def write(self, rec: dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = encode_line(rec)
        if self._queue is None:
            self._emit(line)
            return
        size = len(line)
        if self._admit(size):
            self._queue.append((size, line))

    def write_later(self, item: Pending) -> None:
        """Log the record ``item`` stands for. With a background writer, the writer builds and encodes
        it, in batches: the Check only queues its inputs (all immutable). Without one, now."""
        if not self.enabled:
            return
        if self._queue is None:
            self._emit(encode_line(pending_record(item, encoded=True)))
            return
        size = _size(item)
        if self._admit(size):
            self._queue.append((size, item))

    def _admit(self, size: int) -> bool:
        """Room for one more item of ``size`` bytes? Else it is dropped and counted."""
        assert self._queue is not None
        if (
            len(self._queue) >= self.max_queue
            or self._bytes_in - self._bytes_out + size > self.max_queue_bytes
        ):
            self._drop()
            return False
        self._bytes_in += size
        return True

    def _drop(self) -> None:
        with self._drop_lock:  # the Check path (a full queue) and the writer (a failed write) both drop
            self.dropped += 1
        if self.on_drop is not None:
            self.on_drop()

    def _emit(self, data: bytes, count: int = 1) -> None:
        if self._reopen and self._path is not None:
            self._reopen = False
            try:
                fresh = self._path.open("ab")
            except OSError as exc:
                _log.error("decision log: cannot reopen %s (%s); writing on to the old file", self._path, exc)
            else:
                old, self.sink = self.sink, fresh
                with contextlib.suppress(OSError):
                    old.close()
        try:
            if self._text:
                self.sink.write(data.decode())  # type: ignore[call-overload]
            else:
                self.sink.write(data)  # type: ignore[arg-type]
            self.sink.flush()
        except (OSError, ValueError):
            for _ in range(count):
                self._drop()  # a broken sink must never fail a Check

    def _drain(self) -> None:
        """Write in batches: wake every few milliseconds, take everything queued, one write, one flush.

        A writer that woke for every record would contend for the GIL with the Check path on each
        one; batching keeps the log's cost per Check to the queue put. Records a Check left to it
        (:meth:`write_later`) are built and encoded here, together.
        """
        assert self._queue is not None
        while True:
            time.sleep(DRAIN_INTERVAL)
            batch: list[bytes] = []
            stop = False
            while self._queue:
                entry = self._queue.popleft()
                if entry is None:
                    stop = True
                    break
                size, item = entry
                self._bytes_out += size
                if isinstance(item, bytes):
                    batch.append(item)
                    continue
                try:
                    batch.append(encode_line(pending_record(item, encoded=True)))
                except Exception:  # a record that cannot be built is dropped and counted, never fatal
                    self._drop()
                    _log.exception("decision %s: the record could not be built", item[0])
            if batch:
                self._emit(b"".join(batch), count=len(batch))
            if stop:
                return

    def close(self, timeout: float = 5.0) -> None:
        if self._queue is not None and self._thread is not None:
            self._queue.append(None)  # after everything queued: written, then the writer stops
            self._thread.join(timeout)
            if self._thread.is_alive():  # a stuck sink: what is still queued is not written
                _log.warning(
                    "decision log: the writer did not finish within %.0fs; %d queued records not written",
                    timeout,
                    max(len(self._queue) - 1, 0),
                )
        if self._owns_sink and not (self._thread is not None and self._thread.is_alive()):
            with contextlib.suppress(OSError):
                self.sink.close()
