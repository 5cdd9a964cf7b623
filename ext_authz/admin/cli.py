"""CLI commands over the admin API: revoke, unrevoke, revocations, grant, exception, signal,
quarantine, audit, tail."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import socket
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from .._proto import admin_pb2 as pb
from .._proto import admin_pb2_grpc
from ..errors import Error
from ..settings import DEFAULT_ADMIN_LISTEN, parse_duration
from ..state.commands import InvalidArgument, revocation_value
from . import ACTOR_METADATA

__all__ = ["add_admin_commands"]


class CliError(Error):
    """One line for the person at the terminal; ``code``: 3 invalid input, 4 unreachable."""

    def __init__(self, message: str, code: int = 3) -> None:
        super().__init__(message)
        self.code = code


def _duration(value: str, flag: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise CliError(f"{flag}: expected a duration such as 30s, 15m or 4h, got {value!r}") from exc


def _positive(value: str, flag: str) -> float:
    seconds = _duration(value, flag)
    if seconds <= 0:
        raise CliError(f"{flag} must be positive, got {value!r}")
    return seconds


def _since(value: str) -> float:
    """``--since``: a duration back from now (``24h``), or an RFC 3339 / ISO 8601 time."""
    try:
        return datetime.now(UTC).timestamp() - parse_duration(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value)
    except ValueError as exc:
        raise CliError(
            f"--since: expected a duration (24h) or a time (2026-11-25T10:00:00Z), got {value!r}"
        ) from exc
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _admin_address(args: argparse.Namespace) -> str:
    """--admin, else --config's admin_listen (both said on this command line), else EXT_AUTHZ_ADMIN (the
    environment's default), else the built-in default."""
    if args.admin:
        return str(args.admin)
    if args.config:
        import yaml

        try:
            data = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CliError(f"cannot read {args.config}: {exc}") from exc
        return str(data.get("admin_listen") or DEFAULT_ADMIN_LISTEN)
    if os.environ.get("EXT_AUTHZ_ADMIN"):
        return os.environ["EXT_AUTHZ_ADMIN"]
    return DEFAULT_ADMIN_LISTEN


def _channel(args: argparse.Namespace) -> grpc.Channel:
    addr = _admin_address(args)
    if addr.startswith("unix://"):
        return grpc.insecure_channel(addr)
    if not (args.cert and args.key and args.ca):
        raise CliError(f"{addr} is a TCP admin address: pass --cert, --key and --ca (mTLS)")
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(args.ca).read_bytes(),
        private_key=Path(args.key).read_bytes(),
        certificate_chain=Path(args.cert).read_bytes(),
    )
    return grpc.secure_channel(addr, creds)


def _actor() -> str:
    """Who the local caller says it is: ``EXT_AUTHZ_ACTOR``, else user@host. On the unix socket this
    is a claim (every caller is the socket's owner); over TCP the server uses the caller's SVID."""
    return os.environ.get("EXT_AUTHZ_ACTOR", "").strip() or f"{getpass.getuser()}@{socket.gethostname()}"


def _call(args: argparse.Namespace, method: str, request: Any) -> Any:
    actor = _actor()
    with _channel(args) as ch:
        stub = admin_pb2_grpc.AdminStub(ch)
        try:
            return getattr(stub, method)(request, timeout=args.timeout, metadata=[(ACTOR_METADATA, actor)])
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                raise CliError(
                    f"cannot reach the admin API at {_admin_address(args)}: is ext-authz running?", 4
                ) from exc
            raise CliError(f"{exc.details()}") from exc


def _scoped(args: argparse.Namespace, value: str, kind: str = "sub") -> str:
    """``--issuer ISSUER VALUE`` is another spelling of ``ISSUER#VALUE`` (users, jti and sid)."""
    issuer = getattr(args, "issuer", None)
    if not issuer:
        return value
    if "#" in value or value.startswith("spiffe://") or kind not in ("sub", "jti", "sid"):
        raise CliError("--issuer goes with a bare subject, jti or sid (not with ISSUER#VALUE or a SPIFFE ID)")
    return f"{issuer}#{value}"


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else "-"


def _cell(value: object) -> str:
    """What a table shows of a value: printable characters only (state may hold what others sent)."""
    return "".join(c if c.isprintable() else "?" for c in str(value))


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    rows = [[_cell(c) for c in r] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


_TIME_FIELDS = frozenset(
    (
        "at",
        "created_at",
        "expires_at",
        "ended_at",
        "approved_at",
        "opened_at",
        "closed_at",
        "set_at",
        "not_before",
        "not_after",
        "issued_before",
    )
)


def _rfc3339(value: Any) -> Any:
    """Epoch seconds in every time field → RFC 3339 (UTC); 0 (unset) → null."""
    if isinstance(value, dict):
        return {
            k: (
                (datetime.fromtimestamp(v, UTC).isoformat().replace("+00:00", "Z") if v else None)
                if k in _TIME_FIELDS and isinstance(v, int | float)
                else _rfc3339(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rfc3339(v) for v in value]
    return value


def _out(args: argparse.Namespace, message: Any, table: Callable[[], str]) -> None:
    output = "json" if args.json else args.output
    if output == "table":
        print(table())
        return
    doc = _rfc3339(
        json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    )
    if output == "yaml":
        import yaml

        print(yaml.safe_dump(doc, sort_keys=False), end="")
    else:
        print(json.dumps(doc, indent=2))


def _scope(args: argparse.Namespace) -> Any:
    return pb.Scope(
        hosts=args.host or [], paths=args.path or [], methods=[m.upper() for m in args.method or []]
    )


def _scope_text(s: Any) -> str:
    parts = [",".join(s.methods) or "*", ",".join(s.hosts) or "*", ",".join(s.paths) or "*"]
    return " ".join(parts)


def _unmatched(text: str, unmatched: str) -> str:
    """A list's cell for a record that names an issuer or trust domain not configured (yet)."""
    return f"{text}; matches nothing yet ({unmatched})" if unmatched else text


def _warn_unmatched(unmatched: str) -> None:
    if unmatched:
        print(
            f"ext-authz: warning: this matches nothing yet: {unmatched}; it takes effect once that is"
            " configured",
            file=sys.stderr,
        )


# -- revocations ---------------------------------------------------------------------------------
def cmd_revoke(args: argparse.Namespace) -> None:
    try:
        kind, value = revocation_value(args.kind or "", _scoped(args, args.value, args.kind or ""))
    except InvalidArgument as exc:
        raise CliError(str(exc)) from exc
    if not args.reason.strip():
        raise CliError("--reason is required and cannot be empty")
    dur = _positive(args.duration, "--for") if args.duration is not None else 0.0
    req = pb.RevokeRequest(
        kind=kind, value=value, reason=args.reason, duration_seconds=dur, allow_unknown=args.allow_unknown
    )
    resp = _call(args, "Revoke", req)
    r = resp.revocation
    _warn_unmatched(r.unmatched)
    _out(
        args,
        resp,
        lambda: (
            f"{'already revoked' if resp.existing else 'revoked'} {r.kind} {r.value} (id {r.id}, "
            f"until {_when(r.expires_at) if r.expires_at else 'unrevoked'})"
        ),
    )


_REVOCATION_ID = re.compile(r"^(rev|qtn|ssf)_[0-9a-f]{12}$")


def cmd_unrevoke(args: argparse.Namespace) -> None:
    if _REVOCATION_ID.match(args.target) and not args.kind:
        req = pb.UnrevokeRequest(id=args.target, reason=args.reason)
    else:
        try:
            kind, value = revocation_value(args.kind or "", _scoped(args, args.target, args.kind or ""))
        except InvalidArgument as exc:
            raise CliError(str(exc)) from exc
        req = pb.UnrevokeRequest(kind=kind, value=value, reason=args.reason)
    resp = _call(args, "Unrevoke", req)
    _out(args, resp, lambda: "\n".join(f"unrevoked {r.id} ({r.kind} {r.value})" for r in resp.revocations))


def cmd_revocations(args: argparse.Namespace) -> None:
    resp = _call(
        args, "ListRevocations", pb.ListRevocationsRequest(include_expired=args.all, kind=args.kind or "")
    )
    now = datetime.now(UTC).timestamp()

    def status(r: Any) -> str:
        if r.ended_at:
            return f"lifted {_when(r.ended_at)} by {r.ended_by}: {r.end_reason}"
        if r.expires_at and r.expires_at <= now:
            return "expired"
        return _unmatched("in force", r.unmatched)

    rows = [
        (
            r.id,
            r.kind,
            r.value + "".join(f" & {a}" for a in r.also),  # narrowed: only requests that also have these
            r.source,
            r.created_by,
            _when(r.created_at),
            _when(r.expires_at) if r.expires_at else "never",
            f"credentials issued before {_when(r.issued_before)}" if r.issued_before else "every request",
            r.reason,
            status(r),
        )
        for r in resp.revocations
    ]
    _out(
        args,
        resp,
        lambda: _table(
            rows,
            ("ID", "KIND", "VALUE", "SOURCE", "BY", "CREATED", "EXPIRES", "REFUSES", "REASON", "STATUS"),
        ),
    )


# -- grants -----------------------------------------------------------------------------------------
def cmd_grant_create(args: argparse.Namespace) -> None:
    dur = _duration(args.duration, "--for")
    start = 0.0
    if args.start:
        try:
            dt = datetime.fromisoformat(args.start)
        except ValueError as exc:
            raise CliError(f"--from: expected an ISO 8601 time, got {args.start!r}") from exc
        start = (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    req = pb.CreateGrantRequest(
        principal=_scoped(args, args.principal),
        scope=_scope(args),
        not_before=start,
        duration_seconds=dur,
        reason=args.reason,
        approver=args.approver or "",
        ticket=args.ticket or "",
        allow_unknown=args.allow_unknown,
    )
    resp = _call(args, "CreateGrant", req)
    g = resp.grant
    _warn_unmatched(g.unmatched)
    for warning in resp.warnings:
        print(f"ext-authz: warning: {warning}", file=sys.stderr)
    if args.quiet:
        print(g.id)
        return

    def text() -> str:
        line = f"granted {g.principal} {_scope_text(g.scope)} until {_when(g.not_after)} (id {g.id})"
        if not g.approved_at:
            line += (
                f"\npending: no effect until someone else runs `ext-authz grant approve {g.id} --reason TEXT`"
            )
        return line

    _out(args, resp, text)


def cmd_grant_approve(args: argparse.Namespace) -> None:
    resp = _call(args, "ApproveGrant", pb.ApproveGrantRequest(id=args.id, reason=args.reason))
    g = resp.grant
    _out(args, resp, lambda: f"approved grant {g.id} ({g.principal} until {_when(g.not_after)})")


def cmd_grant_end(args: argparse.Namespace) -> None:
    resp = _call(args, "EndGrant", pb.EndGrantRequest(id=args.id, reason=args.reason))
    _out(args, resp, lambda: f"ended grant {resp.grant.id} ({resp.grant.principal})")


def _state(approved_at: float, ended_at: float, until: float) -> str:
    now = datetime.now(UTC).timestamp()
    if ended_at:
        return "ended"
    if not approved_at:
        return "PENDING"  # its window starts when a second person approves it
    return "expired" if until <= now else "active"


def cmd_grants(args: argparse.Namespace) -> None:
    resp = _call(args, "ListGrants", pb.ListGrantsRequest(include_inactive=args.all))
    rows = [
        (
            g.id,
            _unmatched(_state(g.approved_at, g.ended_at, g.not_after), g.unmatched),
            g.principal,
            _scope_text(g.scope),
            _when(g.not_before),
            _when(g.ended_at or g.not_after),
            g.created_by,
            g.approver or "-",
            g.ticket or "-",
            g.reason,
        )
        for g in resp.grants
    ]
    _out(
        args,
        resp,
        lambda: _table(
            rows,
            ("ID", "STATE", "PRINCIPAL", "SCOPE", "FROM", "UNTIL", "BY", "APPROVER", "TICKET", "REASON"),
        ),
    )


# -- exceptions -------------------------------------------------------------------------------------
def cmd_exception_open(args: argparse.Namespace) -> None:
    dur = _duration(args.duration, "--for")
    req = pb.OpenExceptionRequest(
        principal=_scoped(args, args.principal),
        scope=_scope(args),
        reason=args.reason,
        duration_seconds=dur,
        allow_unknown=args.allow_unknown,
    )
    resp = _call(args, "OpenException", req)
    e = resp.exception
    _warn_unmatched(e.unmatched)
    if args.quiet:
        print(e.id)
        return

    def text() -> str:
        line = f"exception {e.id} open for {e.principal} {_scope_text(e.scope)} until {_when(e.expires_at)}"
        if not e.approved_at:
            line += (
                f"\npending: no effect until someone else runs"
                f" `ext-authz exception approve {e.id} --reason TEXT`"
            )
        return line

    _out(args, resp, text)


def cmd_exception_approve(args: argparse.Namespace) -> None:
    resp = _call(args, "ApproveException", pb.ApproveExceptionRequest(id=args.id, reason=args.reason))
    e = resp.exception
    _out(args, resp, lambda: f"approved exception {e.id} ({e.principal} until {_when(e.expires_at)})")


def cmd_exception_close(args: argparse.Namespace) -> None:
    resp = _call(args, "CloseException", pb.CloseExceptionRequest(id=args.id, reason=args.reason))
    _out(args, resp, lambda: f"closed exception {resp.exception.id}")


def cmd_exception_list(args: argparse.Namespace) -> None:
    resp = _call(args, "ListExceptions", pb.ListExceptionsRequest(include_closed=args.all))
    rows = [
        (
            e.id,
            _unmatched(_state(e.approved_at, e.closed_at, e.expires_at), e.unmatched),
            e.principal,
            _scope_text(e.scope),
            e.opened_by,
            e.approved_by or "-",
            _when(e.opened_at),
            _when(e.closed_at or e.expires_at),
            e.reason,
        )
        for e in resp.exceptions
    ]
    _out(
        args,
        resp,
        lambda: _table(
            rows,
            ("ID", "STATE", "PRINCIPAL", "SCOPE", "OPENED BY", "APPROVED BY", "OPENED", "UNTIL", "REASON"),
        ),
    )


# -- signals ----------------------------------------------------------------------------------------
def cmd_signal_set(args: argparse.Namespace) -> None:
    kind, subject = _subject(args.subject)
    key, eq, value = args.pair.partition("=")
    if not eq or not key:
        raise CliError("expected KEY=VALUE")
    ttl = _duration(args.ttl, "--ttl")
    req = pb.PutSignalRequest(
        subject_kind=kind,
        subject=subject,
        key=key,
        value=value,
        ttl_seconds=ttl,
        reason=args.reason,
        allow_unknown=args.allow_unknown,
    )
    resp = _call(args, "PutSignal", req)
    s = resp.signal
    _warn_unmatched(s.unmatched)
    _out(args, resp, lambda: f"{s.subject_kind}:{s.subject} {s.key}={s.value} until {_when(s.expires_at)}")


def _subject(value: str) -> tuple[str, str]:
    kind, sep, subject = value.partition(":")
    if not sep or kind not in ("device", "workload", "user", "token") or not subject:
        raise CliError("SUBJECT is device:ID, workload:SPIFFE-ID, user:ISSUER#SUBJECT or token:ISSUER#JTI")
    return kind, subject


def cmd_signal_delete(args: argparse.Namespace) -> None:
    kind, subject = _subject(args.subject)
    req = pb.DeleteSignalRequest(subject_kind=kind, subject=subject, key=args.key, reason=args.reason)
    resp = _call(args, "DeleteSignal", req)
    s = resp.signal
    _out(args, resp, lambda: f"deleted {s.subject_kind}:{s.subject} {s.key}")


def cmd_quarantine_release(args: argparse.Namespace) -> None:
    req = pb.ReleaseQuarantineRequest(principal=_scoped(args, args.principal), reason=args.reason)
    resp = _call(args, "ReleaseQuarantine", req)
    _out(args, resp, lambda: "\n".join(f"released {r.value} ({r.id})" for r in resp.revocations))


def cmd_quarantine_list(args: argparse.Namespace) -> None:
    args.kind = "quarantine"
    cmd_revocations(args)


def cmd_audit(args: argparse.Namespace) -> None:
    since = _since(args.since) if args.since else 0.0
    req = pb.ListAuditRequest(since=since, principal=_scoped(args, args.principal or ""), limit=args.limit)
    resp = _call(args, "ListAudit", req)

    def text() -> str:
        rows = [
            (
                _when(e.at),
                e.action,
                e.kind,
                e.record_id,
                _unmatched(e.principal or "-", e.unmatched),
                e.actor,
                e.reason or "-",
            )
            for e in resp.entries
        ]
        return _table(rows, ("TIME", "ACTION", "KIND", "RECORD", "PRINCIPAL", "BY", "REASON"))

    output = "json" if args.json else args.output
    if output == "table":
        print(text())
        return
    entries = []
    for e in resp.entries:  # the records before and after as objects, times as RFC 3339
        entry = json_format.MessageToDict(e, preserving_proto_field_name=True)
        for side in ("before", "after"):
            raw = entry.pop(f"{side}_json", "")
            entry[side] = json.loads(raw) if raw else None
        entries.append(_rfc3339(entry))
    if output == "yaml":
        import yaml

        print(yaml.safe_dump(entries, sort_keys=True), end="")
        return
    for entry in entries:  # one JSON object per line (JSON Lines): easy to grep, jq and ship
        print(json.dumps(entry, sort_keys=True))


def cmd_signal_list(args: argparse.Namespace) -> None:
    resp = _call(args, "ListSignals", pb.ListSignalsRequest(include_stale=args.all))
    rows = [
        (
            _unmatched(f"{s.subject_kind}:{s.subject}", s.unmatched),
            s.key,
            s.value,
            s.set_by,
            _when(s.set_at),
            _when(s.expires_at),
        )
        for s in resp.signals
    ]
    _out(args, resp, lambda: _table(rows, ("SUBJECT", "KEY", "VALUE", "SET BY", "SET", "EXPIRES")))


def cmd_ssf_status(args: argparse.Namespace) -> None:
    resp = _call(args, "SharedSignalsStatus", pb.SharedSignalsStatusRequest())

    def table() -> str:
        if not resp.configured:
            return "no shared signals are configured (shared_signals: receivers or transmitter)"
        out = []
        if resp.receivers:
            rows = [
                (
                    r.issuer,
                    r.delivery,
                    r.stream_id or "-",
                    r.stream_status or "-",
                    _when(r.verified_at),
                    ",".join(r.critical_subject_members) or "-",
                )
                for r in resp.receivers
            ]
            out.append(
                _table(rows, ("RECEIVING FROM", "DELIVERY", "STREAM", "STATUS", "VERIFIED", "CRITICAL"))
            )
        if resp.streams:
            sent = [
                (
                    s.audience,
                    s.stream_id,
                    s.delivery,
                    s.status + (f" ({s.status_reason})" if s.status_reason else ""),
                    str(s.queued),
                    str(s.delivered),
                    " ".join(f"{k}={v}" for k, v in sorted(s.refused.items())) or "-",
                    f"{_when(s.last_error_at)} HTTP {s.last_error_status} {s.last_error}: "
                    f"{s.last_error_description}".rstrip(": ")
                    if s.last_error_at
                    else "-",
                )
                for s in resp.streams
            ]
            headers = ("SENDING TO", "STREAM", "DELIVERY", "STATUS", "QUEUED", "DELIVERED", "REFUSED")
            out.append(_table(sent, (*headers, "LAST REFUSAL")))
        return "\n\n".join(out)

    _out(args, resp, table)


# -- live streams ---------------------------------------------------------------------------------
def _decision_line(rec: dict[str, Any]) -> str:
    ident = rec.get("identity") or {}
    who = " ".join(ident.get("principals") or ()) or "-"
    extra = " ".join(
        f"{k}={v}"
        for k, v in (
            ("rule", rec.get("rule")),
            ("exception", rec.get("exception_id")),
            ("revocation", (rec.get("revocation") or {}).get("kind")),
        )
        if v
    )
    target = f"{rec.get('method', '')} {rec.get('host', '')}{rec.get('path', '')}"
    return (
        f"{rec.get('time', '')}  {rec.get('decision', '?'):5} {rec.get('status', '')!s:3} "
        f"{rec.get('reason', ''):18} {who}  {target}  {extra}  id={rec.get('decision_id', '')}"
    ).rstrip()


def cmd_tail(args: argparse.Namespace) -> None:
    actor = _actor()
    with _channel(args) as ch:
        stub = admin_pb2_grpc.AdminStub(ch)
        md = [(ACTOR_METADATA, actor)]
        if args.revocations:
            stream = stub.WatchRevocations(pb.WatchRevocationsRequest(replay_active=args.replay), metadata=md)
        else:
            stream = stub.WatchDecisions(
                pb.WatchDecisionsRequest(deny_only=args.deny_only, identity_glob=args.identity or ""),
                metadata=md,
            )
        count = 0
        try:
            for event in stream:
                if args.revocations:
                    r = event.revocation
                    if args.json:
                        print(
                            json.dumps(json_format.MessageToDict(event, preserving_proto_field_name=True)),
                            flush=True,
                        )
                    else:
                        until = _when(r.expires_at) if r.expires_at else "never"
                        print(
                            f"{_when(event.at)}  {event.op:8} {r.kind:10} {r.value}  by={r.created_by} "
                            f"until={until} source={r.source} id={r.id}  {r.reason}",
                            flush=True,
                        )
                else:
                    rec = json.loads(event.json)
                    print(event.json if args.json else _decision_line(rec), flush=True)
                count += 1
                if args.count and count >= args.count:
                    stream.cancel()
                    return
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.CANCELLED:
                return
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise CliError(
                    f"cannot reach the admin API at {_admin_address(args)}: is ext-authz running?", 4
                ) from exc
            raise CliError(str(exc.details())) from exc
        except KeyboardInterrupt:
            stream.cancel()


def _common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", "-c", help="ext-authz config (its admin_listen is used)")
    p.add_argument(
        "--admin",
        help=f"admin API address (default: from --config, else EXT_AUTHZ_ADMIN, else {DEFAULT_ADMIN_LISTEN})",
    )
    p.add_argument("--cert", help="client certificate for a TCP (mTLS) admin address")
    p.add_argument("--key", help="client key for a TCP (mTLS) admin address")
    p.add_argument("--ca", help="CA bundle to verify a TCP admin server")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument(
        "--output", "-o", choices=("table", "json", "yaml"), default="table", help="default: table"
    )
    p.add_argument("--json", action="store_true", help="the same as -o json")
    return p


def _scope_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", action="append", help="host or glob (repeatable; default any)")
    p.add_argument("--path", action="append", help="path glob such as /api/* (repeatable; default any)")
    p.add_argument("--method", action="append", help="HTTP method (repeatable; default any)")


def _run(fn: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], int]:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            fn(args)
        except CliError as exc:
            print(f"ext-authz: {exc}", file=sys.stderr)
            return exc.code
        return 0

    return wrapped


def add_admin_commands(sub: Any) -> None:
    p = _common(
        sub.add_parser("revoke", help="revoke a SPIFFE ID, certificate, token (jti), sub, session or device")
    )
    p.add_argument(
        "value",
        help="a SPIFFE ID; ISSUER#SUBJECT (sub); ISSUER#JTI or ISSUER#SID; a SHA-256 fingerprint or"
        " SERIAL@ISSUER-DN (cert); a device id",
    )
    p.add_argument(
        "--kind",
        help="spiffe_id, cert, jti, sub, sid or device (default: spiffe_id for spiffe:// values)",
    )
    p.add_argument("--issuer", help="the token issuer, for a bare subject, jti or sid")
    p.add_argument("--reason", required=True)
    p.add_argument("--for", dest="duration", help="expire after this long (default: until unrevoked)")
    p.add_argument(
        "--allow-unknown",
        action="store_true",
        help="accept an issuer or trust domain not configured yet (it matches nothing until it is)",
    )
    p.set_defaults(func=_run(cmd_revoke))

    p = _common(
        sub.add_parser("unrevoke", help="lift a revocation: by its id, or every one in force for a value")
    )
    p.add_argument(
        "target", metavar="ID_OR_VALUE", help="a revocation id (rev_…, qtn_…, ssf_…), or what was revoked"
    )
    p.add_argument("--kind", help="with a value: its kind (default: spiffe_id for spiffe:// values)")
    p.add_argument("--issuer", help="the token issuer, for a bare subject, jti or sid")
    p.add_argument("--reason", required=True, help="why (kept in the record and the audit log)")
    p.set_defaults(func=_run(cmd_unrevoke))

    p = _common(sub.add_parser("revocations", help="list revocations in force"))
    p.add_argument("--all", action="store_true", help="include expired and lifted ones")
    p.add_argument("--kind")
    p.set_defaults(func=_run(cmd_revocations))

    grant = sub.add_parser("grant", help="just-in-time grants").add_subparsers(
        dest="grant_command", required=True
    )
    p = _common(grant.add_parser("create", help="grant PRINCIPAL a scope for a while"))
    p.add_argument("principal", help="a SPIFFE ID, or a user as ISSUER#SUBJECT")
    p.add_argument("--issuer", help="the token issuer, for a bare user subject")
    _scope_args(p)
    p.add_argument("--for", dest="duration", required=True)
    p.add_argument("--from", dest="start", help="start time, ISO 8601 (default: now)")
    p.add_argument("--reason", required=True)
    p.add_argument("--ticket", help="a change or incident reference, kept with the grant")
    p.add_argument(
        "--allow-unknown",
        action="store_true",
        help="accept an issuer or trust domain not configured yet (it matches nothing until it is)",
    )
    p.add_argument("--quiet", "-q", action="store_true", help="print only the grant's id")
    p.add_argument(
        "--approver",
        help="only where grants.require_approval is false: who approved it (by default a second"
        " caller approves with `grant approve`)",
    )
    p.set_defaults(func=_run(cmd_grant_create))
    p = _common(grant.add_parser("approve", help="approve a pending grant (not your own)"))
    p.add_argument("id")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=_run(cmd_grant_approve))
    p = _common(grant.add_parser("end", help="end a grant early (the task is done)"))
    p.add_argument("id")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=_run(cmd_grant_end))
    p = _common(grant.add_parser("list", help="list active and pending grants"))
    p.add_argument("--all", action="store_true")
    p.set_defaults(func=_run(cmd_grants))
    p = _common(sub.add_parser("grants", help="list active grants"))
    p.add_argument("--all", action="store_true", help="include ended and expired grants")
    p.set_defaults(func=_run(cmd_grants))

    exc = sub.add_parser("exception", help="break-glass exceptions").add_subparsers(
        dest="exception_command", required=True
    )
    p = _common(exc.add_parser("open", help="open a time-boxed exception for PRINCIPAL"))
    p.add_argument("principal", help="a SPIFFE ID, or a user as ISSUER#SUBJECT")
    p.add_argument("--issuer", help="the token issuer, for a bare user subject")
    _scope_args(p)
    p.add_argument(
        "--for", dest="duration", required=True, help="at most exceptions.max_duration (default 4h)"
    )
    p.add_argument("--reason", required=True)
    p.add_argument("--quiet", "-q", action="store_true", help="print only the exception's id")
    p.add_argument(
        "--allow-unknown",
        action="store_true",
        help="accept an issuer or trust domain not configured yet (it matches nothing until it is)",
    )
    p.set_defaults(func=_run(cmd_exception_open))
    p = _common(exc.add_parser("approve", help="approve a pending exception (not your own)"))
    p.add_argument("id")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=_run(cmd_exception_approve))
    p = _common(exc.add_parser("close", help="close an exception"))
    p.add_argument("id")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=_run(cmd_exception_close))
    p = _common(exc.add_parser("list", help="list open and pending exceptions"))
    p.add_argument("--all", action="store_true", help="include closed and expired ones")
    p.set_defaults(func=_run(cmd_exception_list))

    p = _common(sub.add_parser("tail", help="print decisions (or revocations) live as they happen"))
    p.add_argument("--deny-only", action="store_true", help="only denials (and faults)")
    p.add_argument(
        "--identity",
        help="only callers matching this pattern (`*` any characters) over SPIFFE IDs and ISSUER#SUBJECT",
    )
    p.add_argument("--revocations", action="store_true", help="revocations instead of decisions")
    p.add_argument("--replay", action="store_true", help="with --revocations: first print those in force")
    p.add_argument("--count", type=int, default=0, help="stop after this many events (default: run until ^C)")
    p.set_defaults(func=_run(cmd_tail))

    sig = sub.add_parser("signal", help="facts about devices, workloads and users").add_subparsers(
        dest="signal_command", required=True
    )
    p = _common(sig.add_parser("set", help="set SUBJECT KEY=VALUE for --ttl"))
    p.add_argument("subject", help="device:ID, workload:SPIFFE-ID, user:ISSUER#SUBJECT or token:ISSUER#JTI")
    p.add_argument("pair", metavar="KEY=VALUE")
    p.add_argument("--ttl", required=True)
    p.add_argument("--reason", required=True, help="why (kept in the audit log)")
    p.add_argument(
        "--allow-unknown",
        action="store_true",
        help="accept an issuer or trust domain not configured yet (it matches nothing until it is)",
    )
    p.set_defaults(func=_run(cmd_signal_set))
    p = _common(sig.add_parser("delete", help="delete a signal (its fact becomes unknown)"))
    p.add_argument("subject", help="device:ID, workload:SPIFFE-ID, user:ISSUER#SUBJECT or token:ISSUER#JTI")
    p.add_argument("key")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=_run(cmd_signal_delete))
    p = _common(sig.add_parser("list", help="list fresh signals"))
    p.add_argument("--all", action="store_true", help="include stale ones")
    p.set_defaults(func=_run(cmd_signal_list))

    ssf = sub.add_parser("ssf", help="shared signals: receivers and the transmitter").add_subparsers(
        dest="ssf_command", required=True
    )
    p = _common(
        ssf.add_parser("status", help="our streams: what each receiver refused, by error code, and why")
    )
    p.set_defaults(func=_run(cmd_ssf_status))

    qtn = sub.add_parser("quarantine", help="automatic quarantines").add_subparsers(
        dest="quarantine_command", required=True
    )
    p = _common(qtn.add_parser("release", help="lift every quarantine in force for PRINCIPAL"))
    p.add_argument("principal", help="a SPIFFE ID, or a user as ISSUER#SUBJECT")
    p.add_argument("--issuer", help="the token issuer, for a bare user subject")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=_run(cmd_quarantine_release))
    p = _common(qtn.add_parser("list", help="list quarantines in force"))
    p.add_argument("--all", action="store_true", help="include expired and released ones")
    p.set_defaults(func=_run(cmd_quarantine_list))

    p = _common(sub.add_parser("audit", help="the audit log: every change of state, who, when and why"))
    p.add_argument("--since", help="a duration back from now (24h) or a time (2026-11-25T10:00:00Z)")
    p.add_argument("--principal", help="only changes about this SPIFFE ID or ISSUER#SUBJECT")
    p.add_argument("--issuer", help="the token issuer, for a bare user subject")
    p.add_argument("--limit", type=int, default=1000, help="at most this many, the latest (default 1000)")
    p.set_defaults(func=_run(cmd_audit))
