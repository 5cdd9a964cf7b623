"""The SSF receivers: SETs in (pushed to ``POST /ssf/events``, or polled), continuous-trust state out.

For each SET: choose the receiver by its (unverified) ``iss``; check the transmitter's authorization
(push: ``Authorization: Bearer`` the stream's shared secret); verify it (sets.py); refuse it if its
``jti`` was already seen (a duplicate is answered 202 as RFC 8935 asks, and changes nothing); resolve its
subject within the receiver's ``for_issuers`` (subjects.py); turn it into records (events.py) and write
them through the replica like any operator change — audited as ``ssf:ISSUER``, replicated through
SQLite or Redis, in every snapshot within a second; then remember its ``jti`` in the store until its
``iat`` is too old to be accepted anyway (so the seen ids stay bounded).

A receiver may manage its stream at the transmitter (``manage_stream``): discovery, the stream's
configuration (create it if there is none), and a verification round trip whose ``state`` must come
back in a verification event. That HTTP client, and polling, are stream.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ..clock import Clock
from ..errors import StateError
from ..secrets import read_secret
from ..settings import Settings
from ..state import commands
from ..state.records import R, Record, Revocation, SeenEvent, Signal
from ..trust.bundles import JwtKeys
from .events import (
    APPLIED,
    SESSION,
    STREAM_UPDATED,
    VERIFICATION,
    account_key,
    changes_for,
    event_key,
)
from .sets import SecurityEvent, SetError, peek, verify_set
from .stream import ReceiverState, line, manage, poll
from .subjects import SubjectError, resolve

if TYPE_CHECKING:
    from ..state.replica import Replica
    from ..trust.bundles import IssuerTrust

__all__ = ["ReceiverHost", "Receivers", "push_response"]


class ReceiverHost(Protocol):
    """What receiving needs of the server, and nothing more: the settings in force, the transmitters'
    keys in the current trust snapshot, the clock, and the replica it reads and writes state through.
    The server hands an adapter over its runtime (serve/signals.py); a test can hand anything like it."""

    @property
    def settings(self) -> Settings: ...

    @property
    def transmitters(self) -> Mapping[str, IssuerTrust]: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def replica(self) -> Replica: ...


log = logging.getLogger("ext_authz.ssf")
SET_MEDIA_TYPE = "application/secevent+jwt"


def push_response(err: SetError) -> tuple[int, str, str, dict[str, str]]:
    """RFC 8935 §2.3: 400, a JSON body with err and description, and Content-Language."""
    body = json.dumps({"err": err.err, "description": err.description})
    return 400, body, "application/json", {"Content-Language": "en"}


def _opaque_as(setting: str, key: str, payload: Mapping[str, Any]) -> str:
    """What an opaque subject on its own names for this event (subjects.resolve's ``opaque_as``)."""
    if setting != "event":
        return setting
    if key in SESSION:
        return "session"
    if key == "caep/device-compliance-change":
        return "device"
    if key == "caep/risk-level-change":  # CAEP 1.0 §3.8: principal says what the risk is about
        return {"DEVICE": "device", "SESSION": "session"}.get(str(payload.get("principal", "")).upper(), "")
    return ""


def _newer_account_event(
    replica: _InFlight, marker: Signal, disable: Revocation | None, issuer: str, now: float
) -> Signal | None:
    """The account marker held that makes this account event late: its own (same principal and parts)
    when newer; for a disable, also a newer enable of fewer parts (an enable of jane everywhere is newer
    than a late disable of jane in tenant T)."""
    known = replica.get(Signal, marker.record_id)
    if known is not None and known.fresh(now) and known.set_at > marker.set_at:
        return known
    also = disable.also if disable is not None else ()
    for n in range(len(also)):
        for parts in itertools.combinations(also, n):
            wider = replica.get(
                Signal, f"{marker.subject_kind}\0{marker.subject}\0{account_key(issuer, parts)}"
            )
            if (
                wider is not None
                and wider.value == "enabled"
                and wider.fresh(now)
                and wider.set_at > marker.set_at
            ):
                return wider
    return None


def _stored(write: asyncio.Future[None]) -> bool:
    """The write ended, and the store has it."""
    return not write.cancelled() and write.exception() is None


def _named(rev: Revocation) -> str:
    narrowed = "".join(f" with {k} {v}" for k, v in rev.also)
    return f"{rev.kind} {rev.value}{narrowed}"


def metric_event(event_type: str) -> str:
    """A bounded label: the known event names, else ``other``."""
    key = event_key(event_type)
    return key.split("/", 1)[1] if key in APPLIED | VERIFICATION | STREAM_UPDATED else "other"


class _InFlight:
    """The state as SETs are decided against: what the replica holds, under what SETs decided before and
    has not stored yet (so a later event sees what an earlier one revoked or lifted). A SET pushed again
    while the first is being stored waits for the outcome (``pending``): a duplicate if it was stored,
    decided afresh if not. A write that fails fails every write queued behind it (the replica), so
    nothing decided on a failed write is kept."""

    def __init__(self, host: ReceiverHost) -> None:
        self._host = host
        # newest decided, by whom, and that write's outcome (True: stored)
        self._records: dict[tuple[str, str], tuple[Record, asyncio.Future[bool]]] = {}

    def get(self, cls: type[R], rid: str) -> R | None:
        held = self._records.get((cls.RECORD, rid))
        if held is not None:
            return held[0] if isinstance(held[0], cls) else None
        return self._host.replica.get(cls, rid)

    def pending(self, cls: type[Record], rid: str) -> asyncio.Future[bool] | None:
        """The outcome of the write of this record, while it is in flight."""
        held = self._records.get((cls.RECORD, rid))
        return None if held is None else held[1]

    def named(self, value: str) -> list[Revocation]:
        """Every revocation that names ``value``, each as it will be once what is in flight is stored."""
        found = {
            rev.id: rev
            for rev in self._host.replica.snapshot.named(value)
            if ("revocation", rev.id) not in self._records
        }
        for record, _ in self._records.values():
            if isinstance(record, Revocation) and record.value == value:
                found[record.id] = record
        return list(found.values())

    def hold(
        self, writes: list[tuple[Record, str, str, str]]
    ) -> tuple[asyncio.Future[bool], list[tuple[str, str]]]:
        outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        keys = [(record.RECORD, record.record_id) for record, *_ in writes]
        for (record, *_), key in zip(writes, keys, strict=True):
            self._records[key] = (record, outcome)
        return outcome, keys

    def release(self, held: tuple[asyncio.Future[bool], list[tuple[str, str]]], stored: bool) -> None:
        """Stored (or failed): the replica holds what it holds; a record decided again since is kept."""
        outcome, keys = held
        for key in keys:
            if (entry := self._records.get(key)) is not None and entry[1] is outcome:
                del self._records[key]
        if not outcome.done():
            outcome.set_result(stored)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """A verified SET's result, and what it changes: records to write with their audit action, actor
    and reason; what to log once they are written."""

    result: str  # applied | ignored | verified | discarded
    writes: list[tuple[Record, str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Receivers:
    def __init__(self, host: ReceiverHost, on_event: Callable[[str, str], None] | None = None) -> None:
        self.host = host
        self.on_event = on_event or (lambda event, result: None)
        self.receivers: dict[str, ReceiverState] = {}
        self._in_flight = _InFlight(host)
        self.errors = 0  # unexpected faults (each logged), for /readyz and tests
        # One SET's signature checked at a time, each turn of the event loop: a burst of SETs pushed at
        # once then delays a Check arriving meanwhile by about one verification, not by all of them.
        self._verifying = asyncio.Semaphore(1)

    # -- configuration -------------------------------------------------------------------------------
    def configure(self, settings: Settings) -> None:
        """(Re)build the receivers after a (re)load; a changed receiver restarts its tasks."""
        wanted = {r.issuer: r for r in settings.shared_signals.receivers}
        for iss in list(self.receivers):
            if iss not in wanted or self.receivers[iss].cfg != wanted[iss]:
                for task in self.receivers.pop(iss).tasks:
                    task.cancel()
        for iss, rc in wanted.items():
            state = self.receivers.get(iss) or ReceiverState(rc)
            if rc.authorization_file is not None:  # read again on every reload: a secret may be rotated
                state.secret = read_secret(rc.authorization_file, "authorization_file")
            if iss in self.receivers:
                continue
            self.receivers[iss] = state

    async def start(self) -> None:
        for state in self.receivers.values():
            self._start(state)

    def _start(self, state: ReceiverState) -> None:
        if state.tasks:
            return
        if state.cfg.manage_stream:
            state.tasks.append(asyncio.create_task(manage(state)))
        if state.cfg.delivery == "poll":
            state.tasks.append(asyncio.create_task(poll(state, self.receive, self._fault)))

    async def reconfigure(self, settings: Settings) -> None:
        self.configure(settings)
        await self.start()

    async def stop(self) -> None:
        for state in self.receivers.values():
            for task in state.tasks:
                task.cancel()
            for task in state.tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            state.tasks.clear()

    def _keys(self, state: ReceiverState) -> JwtKeys:
        """The transmitter's keys in the current trust snapshot: from its JWKS file, or fetched from its
        URL by the trust source (trust/remote.TransmitterKeys) and fresh."""
        trust = self.host.transmitters.get(state.cfg.issuer)
        if trust is None:
            raise SetError("invalid_key", "no keys for this transmitter")
        if trust.remote and trust.fetched_at is None:
            raise SetError("invalid_key", "the transmitter's keys have not been fetched yet")
        if trust.stale(self._now()):
            raise SetError("invalid_key", "the transmitter's keys are stale (not refreshed within max_stale)")
        return trust.keys

    def _now(self) -> float:
        return self.host.clock.now().timestamp()

    def _fault(self) -> None:
        self.errors += 1

    # -- push ----------------------------------------------------------------------------------------
    async def push(self, body: bytes, headers: dict[str, str]) -> tuple[int, str, str, dict[str, str]]:
        """``POST /ssf/events``: (status, body, content type, extra headers)."""
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        try:
            if ctype != SET_MEDIA_TYPE:
                raise SetError("invalid_request", f"Content-Type must be {SET_MEDIA_TYPE}")
            try:
                token = body.decode("ascii").strip()
            except UnicodeDecodeError as exc:
                raise SetError("invalid_request", "the body is not a compact SET") from exc
            _, claims = peek(token)
            state = self.receivers.get(str(claims.get("iss")))
            if state is None or state.cfg.delivery != "push":
                raise SetError("invalid_issuer", "no push receiver is configured for this issuer")
            if not state.authorized(headers.get("authorization", "")):
                raise SetError("authentication_failed", "the transmitter's authorization does not match")
            await self.receive(state, token)
        except SetError as exc:
            self.on_event("unknown", exc.err)
            log.warning("SSF push refused: %s: %s", exc.err, exc.description)
            return push_response(exc)
        except StateError as exc:  # we could not record it: the transmitter must retry
            log.error("SSF push not recorded, the state store failed: %s", exc.detail)
            return 503, "", "text/plain", {"Retry-After": "5"}
        except Exception as exc:  # a fault of ours: the transmitter retries; never a bare close
            self.errors += 1
            log.error("SSF push failed (%s); the transmitter will retry", type(exc).__name__, exc_info=True)
            return 503, "", "text/plain", {"Retry-After": "5"}
        return 202, "", "text/plain", {}

    # -- one SET -------------------------------------------------------------------------------------
    async def receive(self, state: ReceiverState, token: str) -> str:
        """Verify and apply one SET: the result (``applied``, ``ignored``, ``duplicate``, ``verified``).
        Raises SetError for one to refuse, StateError when the store could not take it.

        What a SET changes is decided under the receiver's lock, against the state held and every change
        decided before it and not yet stored (``_InFlight``); the lock is let go before the write, so SETs
        pushed together are stored together: the replica puts writes queued together in one transaction
        and one snapshot swap. Writes are queued in the order they were decided."""
        rc = state.cfg
        async with self._verifying:
            event = verify_set(
                token,
                issuer=rc.issuer,
                audience=rc.audience,
                keys=self._keys(state),
                algorithms=rc.algorithms,
                now=self._now(),
                max_age=rc.max_age,
                leeway=rc.leeway,
            )
        label = metric_event(event.event_type)
        seen_id = SeenEvent.id_for(rc.issuer, event.jti)
        while True:
            async with state.lock:
                first = self._in_flight.pending(SeenEvent, seen_id)
                if first is None:
                    decided = self._decide(state, event, seen_id, label)
                    if not isinstance(decided, str):
                        outcome, writes = decided
                        held = self._in_flight.hold(writes)
                        break
            if first is None:  # a duplicate: as safe as an acknowledged write, or a 503 and a retry
                # (its first write may have been refused for want of replicas, yet be on the primary)
                await self.host.replica.confirm()
                self.on_event(label, "duplicate")
                log.info(
                    "SSF %r %r from %s: a duplicate, not applied again", event.name, event.jti, rc.issuer
                )
                return "duplicate"
            # The same SET, pushed again while the first push is being stored: what happens to that
            # write decides (a duplicate if stored; else this one applies it). Never a 202 before then.
            await asyncio.wait({first})
        # What the SET changes, and that it was seen: one transaction, all of it or none. The write goes
        # on if this push is cancelled (the transmitter left, a reload, a stop): what is in flight is
        # released when the write itself ends, never before.
        write = asyncio.ensure_future(self.host.replica.put_all(writes, chained=True))
        write.add_done_callback(lambda done: self._in_flight.release(held, _stored(done)))
        try:
            await asyncio.shield(write)
        except commands.InvalidArgument as exc:  # settings reloaded meanwhile
            self.on_event(label, "invalid_request")
            raise SetError("invalid_request", f"the event cannot be applied: {exc}") from exc
        for note in outcome.notes:
            log.warning("SSF %r: %s", event.name, line(note, 600))
        self.on_event(label, outcome.result)
        return outcome.result

    def _decide(
        self, state: ReceiverState, event: SecurityEvent, seen_id: str, label: str
    ) -> str | tuple[_Outcome, list[tuple[Record, str, str, str]]]:
        """Under the receiver's lock: ``duplicate``, or what the SET changes and the writes that say so
        (with the record that it was seen). Raises SetError for one to refuse."""
        rc = state.cfg
        if self._in_flight.get(SeenEvent, seen_id) is not None:
            return "duplicate"
        settings = self.host.settings
        try:
            outcome = self._apply(state, event, settings)
            now = self._now()
            seen = SeenEvent(
                id=seen_id,
                issuer=rc.issuer,
                jti=event.jti,
                event=event.event_type[-200:],
                seen_at=now,
                # Kept until the iat check would refuse the SET anyway (an iat a little ahead of our
                # clock, within the leeway, counts from now).
                expires_at=max(event.iat, now) + rc.max_age + rc.leeway,
            )
            writes = [*outcome.writes, (seen, "", "", "")]
            for record, *_ in writes:  # what the replica would refuse, refused here: this SET alone
                commands.check_record(record, settings)
        except commands.InvalidArgument as exc:  # a record our own rules refuse (a token as a value…)
            self.on_event(label, "invalid_request")
            raise SetError("invalid_request", f"the event cannot be applied: {exc}") from exc
        except SetError as exc:
            self.on_event(label, exc.err)
            raise
        return outcome, writes

    def _apply(self, state: ReceiverState, event: SecurityEvent, settings: Settings) -> _Outcome:
        """What a verified SET changes: the records to write (nothing is written here), or a result."""
        rc = state.cfg
        key = event_key(event.event_type)
        if key in VERIFICATION or key in STREAM_UPDATED:
            self._check_stream_subject(state, event)
        if key in VERIFICATION:
            got = event.payload.get("state")
            if got is None:
                return _Outcome("verified")  # an unsolicited verification carries no state (SSF §8.1.4.1)
            if got != state.expected_state:
                raise SetError("invalid_state", "the verification state is not the one requested")
            state.expected_state = None
            state.verified_at = self._now()
            log.info("SSF stream of %s verified", rc.issuer)
            return _Outcome("verified")
        if key in STREAM_UPDATED:
            status = line(event.payload.get("status"), 32)
            state.stream_status = status
            log.warning(
                "SSF stream of %s is now %r: %r", rc.issuer, status, line(event.payload.get("reason"), 200)
            )
            return _Outcome("applied")
        if key not in APPLIED:
            log.info(
                "SSF %r from %s acknowledged and ignored (not an event ext-authz applies)",
                event.event_type[:200],
                rc.issuer,
            )
            return _Outcome("ignored")
        if event.sub_id is None:
            raise SetError("invalid_request", "sub_id is required (SSF 1.0 §3.1)")
        email_issuers = frozenset(
            i
            for i in rc.for_issuers
            if (ic := settings.issuers.get(i)) is not None and ic.subject_claim == "email"
        )
        try:
            subject = resolve(
                event.sub_id,
                frozenset(rc.for_issuers),
                email_issuers,
                devices=rc.devices,
                opaque_as=_opaque_as(rc.opaque_subject, key, event.payload),
                critical=frozenset(rc.critical_subject_members) | state.critical,
                session_wildcards=frozenset(rc.session_wildcards),
            )
        except SubjectError as exc:
            raise SetError("invalid_request", f"sub_id: {exc}") from exc
        for note in subject.ignored:
            log.info("SSF %r %r from %s: %s", event.name, event.jti, rc.issuer, line(note, 600))
        if subject.discard:
            # SSF 1.0 §3.4: an event whose subject has a critical member we cannot process is discarded
            # (acknowledged, counted as discarded, nothing applied).
            return _Outcome("discarded", notes=[f"discarded: {subject.discard}"])
        now = self._now()
        ttl = min(rc.hold, settings.signals.max_ttl)
        # An account marker is kept as long as a late SET about an older event could still be accepted.
        account_ttl = min(rc.max_age + rc.leeway + 60.0, settings.signals.max_ttl)
        changes = changes_for(
            event,
            subject,
            now=now,
            hold=rc.hold,
            signal_ttl=ttl,
            account_ttl=account_ttl,
            max_ttl=settings.signals.max_ttl,
        )
        if changes.empty:
            log.info(
                "SSF %s %s from %s names nobody this receiver may act on", event.name, event.jti, rc.issuer
            )
            return _Outcome("ignored")
        actor = f"ssf:{rc.issuer}"
        replica = self._in_flight
        writes: list[tuple[Record, str, str, str]] = []
        notes: list[str] = []
        for rev in changes.revocations:
            if replica.get(Revocation, rev.id) is None:
                writes.append((rev, "revoke", actor, f"{rev.reason} (SET {event.jti})"))
                notes.append(f"revoked {_named(rev)} ({rev.reason})")
        for sig in changes.signals:
            known = replica.get(Signal, sig.record_id)
            if known is not None and known.fresh(now) and known.set_at > sig.set_at:
                # A newer fact is in force (a later event, or an operator who set it since): kept.
                notes.append(
                    f"signal {sig.key!r} of {sig.subject!r} not replaced: {known.set_by} set it later"
                )
                continue
            writes.append((sig, "signal", actor, f"SET {event.jti}"))
        stale: set[str] = set()
        for marker, account_rev in changes.accounts:
            known = _newer_account_event(replica, marker, account_rev, rc.issuer, now)
            if known is not None:
                # A newer account event from this transmitter is in force: this older one is late.
                stale.add(marker.subject)
                notes.append(
                    f"{event.name} for {marker.subject} is older than its {known.value} event"
                    " already applied: acknowledged, not applied"
                )
                continue
            writes.append((marker, "signal", actor, f"SET {event.jti}"))
            if account_rev is not None and replica.get(Revocation, account_rev.id) is None:
                writes.append((account_rev, "revoke", actor, f"{account_rev.reason} (SET {event.jti})"))
                notes.append(f"revoked {_named(account_rev)} ({account_rev.reason})")
        for kind, value, also in changes.lift:
            if value in stale:
                continue
            for rev in replica.named(value):
                if (
                    rev.kind == kind
                    and rev.created_by == actor
                    and rev.active(now)
                    and rev.created_at <= changes.at  # never a revocation from an event after this one
                    and set(also) <= set(rev.also)  # an enable as wide as the revocation, or wider
                ):
                    ended = commands.end_revocation(rev, f"{event.name} (SET {event.jti})", actor, now)
                    writes.append((ended, "unrevoke", actor, ended.end_reason))
                    notes.append(f"lifted {rev.id} ({_named(rev)})")
        return _Outcome("applied" if writes else "ignored", writes, notes)

    @staticmethod
    def _check_stream_subject(state: ReceiverState, event: SecurityEvent) -> None:
        """SSF 1.0 §8.1.4, §8.1.5: a verification's or stream-updated's ``sub_id`` names the stream
        (opaque, its stream id). Checked when we know our stream id (``manage_stream``)."""
        if not state.stream_id or event.sub_id is None:
            return
        sub = event.sub_id
        if not (isinstance(sub, dict) and sub.get("format") == "opaque" and sub.get("id") == state.stream_id):
            raise SetError("invalid_request", "sub_id does not name this receiver's stream")

    def problems(self) -> list[str]:
        """What keeps a receiver from taking SETs in, for /readyz (every SET would be refused)."""
        out = []
        now = self._now()
        transmitters = self.host.transmitters
        for iss, st in sorted(self.receivers.items()):
            trust = transmitters.get(iss)
            if st.cfg.jwks_url and (trust is None or trust.stale(now)):
                out.append(f"SSF receiver {iss}: no fresh keys from {st.cfg.jwks_url}, every SET is refused")
        return out

    def status(self) -> dict[str, dict[str, Any]]:
        return {
            iss: {"stream_id": s.stream_id, "verified_at": s.verified_at, "status": s.stream_status}
            for iss, s in self.receivers.items()
        }
