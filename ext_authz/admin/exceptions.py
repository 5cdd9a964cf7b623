"""Break-glass exceptions: exception open, approve, close, list."""

from __future__ import annotations

import argparse
from typing import Any

from .._proto import admin_pb2 as pb
from .approvable import EXCEPTION, add_lifecycle_parsers, made
from .client import _call, _common, _duration, _run, _scope, _scope_args, _scoped
from .output import _out, _scope_text, _state, _table, _unmatched, _when


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
    line = f"exception {e.id} open for {e.principal} {_scope_text(e.scope)} until {_when(e.expires_at)}"
    made(EXCEPTION, args, resp, line)


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


def add_parsers(sub: Any) -> None:
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
    add_lifecycle_parsers(EXCEPTION, exc, "close an exception")
    p = _common(exc.add_parser("list", help="list open and pending exceptions"))
    p.add_argument("--all", action="store_true", help="include closed and expired ones")
    p.set_defaults(func=_run(cmd_exception_list))
