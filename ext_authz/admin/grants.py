"""Just-in-time grants: grant create, approve, end, list; grants."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from .._proto import admin_pb2 as pb
from .approvable import GRANT, add_lifecycle_parsers, made
from .client import CliError, _call, _common, _duration, _run, _scope, _scope_args, _scoped
from .output import _out, _scope_text, _state, _table, _unmatched, _when


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
    line = f"granted {g.principal} {_scope_text(g.scope)} until {_when(g.not_after)} (id {g.id})"
    made(GRANT, args, resp, line, resp.warnings)


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


def add_parsers(sub: Any) -> None:
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
    add_lifecycle_parsers(GRANT, grant, "end a grant early (the task is done)")
    p = _common(grant.add_parser("list", help="list active and pending grants"))
    p.add_argument("--all", action="store_true")
    p.set_defaults(func=_run(cmd_grants))
    p = _common(sub.add_parser("grants", help="list active grants"))
    p.add_argument("--all", action="store_true", help="include ended and expired grants")
    p.set_defaults(func=_run(cmd_grants))
