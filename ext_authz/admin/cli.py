"""CLI commands over the admin API: revoke, unrevoke, revocations, grant, exception, signal."""

from __future__ import annotations

import argparse
import getpass
import json
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
from ..settings import DEFAULT_ADMIN_LISTEN, parse_duration
from ..state.commands import InvalidArgument, revocation_value
from .servicer import ACTOR_METADATA

__all__ = ["add_admin_commands"]


class CliError(Exception):
    pass


def _duration(value: str, flag: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise CliError(f"{flag}: expected a duration such as 30s, 15m or 4h, got {value!r}") from exc


def _admin_address(args: argparse.Namespace) -> str:
    if args.admin:
        return str(args.admin)
    if args.config:
        import yaml

        try:
            data = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise CliError(f"cannot read {args.config}: {exc}") from exc
        return str(data.get("admin_listen") or DEFAULT_ADMIN_LISTEN)
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


def _call(args: argparse.Namespace, method: str, request: Any) -> Any:
    actor = f"{getpass.getuser()}@{socket.gethostname()}"
    with _channel(args) as ch:
        stub = admin_pb2_grpc.AdminStub(ch)
        try:
            return getattr(stub, method)(request, timeout=args.timeout, metadata=[(ACTOR_METADATA, actor)])
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                raise CliError(
                    f"cannot reach the admin API at {_admin_address(args)}: is ext-authz running?"
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
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ts else "-"


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _out(args: argparse.Namespace, message: Any, table: Callable[[], str]) -> None:
    if args.json:
        print(json.dumps(json_format.MessageToDict(message, preserving_proto_field_name=True), indent=2))
    else:
        print(table())


def _scope(args: argparse.Namespace) -> Any:
    return pb.Scope(
        hosts=args.host or [], paths=args.path or [], methods=[m.upper() for m in args.method or []]
    )


def _scope_text(s: Any) -> str:
    parts = [",".join(s.methods) or "*", ",".join(s.hosts) or "*", ",".join(s.paths) or "*"]
    return " ".join(parts)


# -- revocations ---------------------------------------------------------------------------------
def cmd_revoke(args: argparse.Namespace) -> None:
    try:
        kind, value = revocation_value(args.kind or "", _scoped(args, args.value, args.kind or ""))
    except InvalidArgument as exc:
        raise CliError(str(exc)) from exc
    if not args.reason.strip():
        raise CliError("--reason is required and cannot be empty")
    dur = _duration(args.duration, "--for") if args.duration else 0.0
    resp = _call(
        args, "Revoke", pb.RevokeRequest(kind=kind, value=value, reason=args.reason, duration_seconds=dur)
    )
    r = resp.revocation
    _out(
        args,
        resp,
        lambda: (
            f"revoked {r.kind} {r.value} (id {r.id}, "
            f"until {_when(r.expires_at) if r.expires_at else 'unrevoked'})"
        ),
    )


_REVOCATION_ID = re.compile(r"^(rev|qtn)_[0-9a-f]{12}$")


def cmd_unrevoke(args: argparse.Namespace) -> None:
    if _REVOCATION_ID.match(args.target) and not args.kind:
        req = pb.UnrevokeRequest(id=args.target, reason=args.reason or "")
    else:
        try:
            kind, value = revocation_value(args.kind or "", _scoped(args, args.target, args.kind or ""))
        except InvalidArgument as exc:
            raise CliError(str(exc)) from exc
        req = pb.UnrevokeRequest(kind=kind, value=value, reason=args.reason or "")
    resp = _call(args, "Unrevoke", req)
    _out(args, resp, lambda: "\n".join(f"unrevoked {r.id} ({r.kind} {r.value})" for r in resp.revocations))


def cmd_revocations(args: argparse.Namespace) -> None:
    resp = _call(
        args, "ListRevocations", pb.ListRevocationsRequest(include_expired=args.all, kind=args.kind or "")
    )
    rows = [
        (
            r.id,
            r.kind,
            r.value,
            r.source,
            r.created_by,
            _when(r.created_at),
            _when(r.expires_at) if r.expires_at else "never",
            r.reason,
        )
        for r in resp.revocations
    ]
    _out(
        args,
        resp,
        lambda: _table(rows, ("ID", "KIND", "VALUE", "SOURCE", "BY", "CREATED", "EXPIRES", "REASON")),
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
        approver=args.approver,
    )
    resp = _call(args, "CreateGrant", req)
    g = resp.grant
    _out(
        args,
        resp,
        lambda: f"granted {g.principal} {_scope_text(g.scope)} until {_when(g.not_after)} (id {g.id})",
    )


def cmd_grant_end(args: argparse.Namespace) -> None:
    resp = _call(args, "EndGrant", pb.EndGrantRequest(id=args.id, reason=args.reason or ""))
    _out(args, resp, lambda: f"ended grant {resp.grant.id} ({resp.grant.principal})")


def cmd_grants(args: argparse.Namespace) -> None:
    resp = _call(args, "ListGrants", pb.ListGrantsRequest(include_inactive=args.all))
    rows = [
        (
            g.id,
            g.principal,
            _scope_text(g.scope),
            _when(g.not_before),
            _when(g.ended_at or g.not_after),
            g.approver,
            g.reason,
        )
        for g in resp.grants
    ]
    _out(
        args, resp, lambda: _table(rows, ("ID", "PRINCIPAL", "SCOPE", "FROM", "UNTIL", "APPROVER", "REASON"))
    )


# -- exceptions -------------------------------------------------------------------------------------
def cmd_exception_open(args: argparse.Namespace) -> None:
    dur = _duration(args.duration, "--for")
    req = pb.OpenExceptionRequest(
        principal=_scoped(args, args.principal), scope=_scope(args), reason=args.reason, duration_seconds=dur
    )
    resp = _call(args, "OpenException", req)
    e = resp.exception
    _out(
        args,
        resp,
        lambda: f"exception {e.id} open for {e.principal} {_scope_text(e.scope)} until {_when(e.expires_at)}",
    )


def cmd_exception_close(args: argparse.Namespace) -> None:
    resp = _call(args, "CloseException", pb.CloseExceptionRequest(id=args.id, reason=args.reason or ""))
    _out(args, resp, lambda: f"closed exception {resp.exception.id}")


def cmd_exception_list(args: argparse.Namespace) -> None:
    resp = _call(args, "ListExceptions", pb.ListExceptionsRequest(include_closed=args.all))
    rows = [
        (
            e.id,
            e.principal,
            _scope_text(e.scope),
            e.opened_by,
            _when(e.opened_at),
            _when(e.closed_at or e.expires_at),
            e.reason,
        )
        for e in resp.exceptions
    ]
    _out(
        args,
        resp,
        lambda: _table(rows, ("ID", "PRINCIPAL", "SCOPE", "OPENED BY", "OPENED", "UNTIL", "REASON")),
    )


# -- signals ----------------------------------------------------------------------------------------
def cmd_signal_set(args: argparse.Namespace) -> None:
    kind, sep, subject = args.subject.partition(":")
    if not sep or kind not in ("device", "workload", "user") or not subject:
        raise CliError("SUBJECT is device:ID, workload:SPIFFE-ID or user:ISSUER#SUBJECT")
    key, eq, value = args.pair.partition("=")
    if not eq or not key:
        raise CliError("expected KEY=VALUE")
    ttl = _duration(args.ttl, "--ttl")
    req = pb.PutSignalRequest(subject_kind=kind, subject=subject, key=key, value=value, ttl_seconds=ttl)
    resp = _call(args, "PutSignal", req)
    s = resp.signal
    _out(args, resp, lambda: f"{s.subject_kind}:{s.subject} {s.key}={s.value} until {_when(s.expires_at)}")


def cmd_signal_list(args: argparse.Namespace) -> None:
    resp = _call(args, "ListSignals", pb.ListSignalsRequest(include_stale=args.all))
    rows = [
        (f"{s.subject_kind}:{s.subject}", s.key, s.value, s.set_by, _when(s.set_at), _when(s.expires_at))
        for s in resp.signals
    ]
    _out(args, resp, lambda: _table(rows, ("SUBJECT", "KEY", "VALUE", "SET BY", "SET", "EXPIRES")))


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
    actor = f"{getpass.getuser()}@{socket.gethostname()}"
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
                    f"cannot reach the admin API at {_admin_address(args)}: is ext-authz running?"
                ) from exc
            raise CliError(str(exc.details())) from exc
        except KeyboardInterrupt:
            stream.cancel()


def _common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", "-c", help="ext-authz config (its admin_listen is used)")
    p.add_argument("--admin", help=f"admin API address (default: from --config, else {DEFAULT_ADMIN_LISTEN})")
    p.add_argument("--cert", help="client certificate for a TCP (mTLS) admin address")
    p.add_argument("--key", help="client key for a TCP (mTLS) admin address")
    p.add_argument("--ca", help="CA bundle to verify a TCP admin server")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--json", action="store_true", help="machine-readable output")
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
            return 2
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
    p.set_defaults(func=_run(cmd_revoke))

    p = _common(
        sub.add_parser("unrevoke", help="lift a revocation: by its id, or every one in force for a value")
    )
    p.add_argument(
        "target", metavar="ID_OR_VALUE", help="a revocation id (rev_…, qtn_…), or what was revoked"
    )
    p.add_argument("--kind", help="with a value: its kind (default: spiffe_id for spiffe:// values)")
    p.add_argument("--issuer", help="the token issuer, for a bare subject, jti or sid")
    p.add_argument("--reason")
    p.set_defaults(func=_run(cmd_unrevoke))

    p = _common(sub.add_parser("revocations", help="list revocations in force"))
    p.add_argument("--all", action="store_true", help="include expired ones")
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
    p.add_argument("--approver", required=True)
    p.set_defaults(func=_run(cmd_grant_create))
    p = _common(grant.add_parser("end", help="end a grant early (the task is done)"))
    p.add_argument("id")
    p.add_argument("--reason")
    p.set_defaults(func=_run(cmd_grant_end))
    p = _common(grant.add_parser("list", help="list active grants"))
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
    p.set_defaults(func=_run(cmd_exception_open))
    p = _common(exc.add_parser("close", help="close an exception"))
    p.add_argument("id")
    p.add_argument("--reason")
    p.set_defaults(func=_run(cmd_exception_close))
    p = _common(exc.add_parser("list", help="list open exceptions"))
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
    p.add_argument("subject", help="device:ID, workload:SPIFFE-ID or user:ISSUER#SUBJECT")
    p.add_argument("pair", metavar="KEY=VALUE")
    p.add_argument("--ttl", required=True)
    p.set_defaults(func=_run(cmd_signal_set))
    p = _common(sig.add_parser("list", help="list fresh signals"))
    p.add_argument("--all", action="store_true", help="include stale ones")
    p.set_defaults(func=_run(cmd_signal_list))
