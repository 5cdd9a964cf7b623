"""What grants and exceptions share on the command line: one lifecycle, made, approved by a second
person, ended early. Each noun says its names; the steps are written once, here."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._proto import admin_pb2 as pb
from .client import _call, _common, _run
from .output import _out, _warn_unmatched, _when

__all__ = ["EXCEPTION", "GRANT", "Approvable", "add_lifecycle_parsers", "made"]


@dataclass(frozen=True, slots=True)
class Approvable:
    noun: str  # as the commands say it: grant, exception
    field: str  # the reply's field holding the record
    until: str  # the record's field saying until when it holds
    approve: tuple[str, Callable[..., Any]]  # the RPC and its request type
    end: tuple[str, Callable[..., Any]]
    ended: str  # what ending it is called: ended, closed
    end_verb: str  # the command: end, close


GRANT = Approvable(
    "grant",
    "grant",
    "not_after",
    ("ApproveGrant", pb.ApproveGrantRequest),
    ("EndGrant", pb.EndGrantRequest),
    "ended",
    "end",
)
EXCEPTION = Approvable(
    "exception",
    "exception",
    "expires_at",
    ("ApproveException", pb.ApproveExceptionRequest),
    ("CloseException", pb.CloseExceptionRequest),
    "closed",
    "close",
)


def made(kind: Approvable, args: argparse.Namespace, resp: Any, line: str, warnings: Any = ()) -> None:
    """After a create: warnings, then the id alone (-q), or the line and, pending, how to approve it."""
    record = getattr(resp, kind.field)
    _warn_unmatched(record.unmatched)
    for warning in warnings:
        print(f"ext-authz: warning: {warning}", file=sys.stderr)
    if args.quiet:
        print(record.id)
        return

    def text() -> str:
        if record.approved_at:
            return line
        return (
            f"{line}\npending: no effect until someone else runs"
            f" `ext-authz {kind.noun} approve {record.id} --reason TEXT`"
        )

    _out(args, resp, text)


def _approve(kind: Approvable) -> Callable[[argparse.Namespace], None]:
    def run(args: argparse.Namespace) -> None:
        rpc, request = kind.approve
        resp = _call(args, rpc, request(id=args.id, reason=args.reason))
        r = getattr(resp, kind.field)
        _out(
            args,
            resp,
            lambda: f"approved {kind.noun} {r.id} ({r.principal} until {_when(getattr(r, kind.until))})",
        )

    return run


def _end(kind: Approvable) -> Callable[[argparse.Namespace], None]:
    def run(args: argparse.Namespace) -> None:
        rpc, request = kind.end
        resp = _call(args, rpc, request(id=args.id, reason=args.reason))
        r = getattr(resp, kind.field)
        _out(args, resp, lambda: f"{kind.ended} {kind.noun} {r.id} ({r.principal})")

    return run


def add_lifecycle_parsers(kind: Approvable, sub: Any, end_help: str) -> None:
    """``NOUN approve ID --reason`` and ``NOUN end|close ID --reason``."""
    p = _common(sub.add_parser("approve", help=f"approve a pending {kind.noun} (not your own)"))
    p.add_argument("id")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=_run(_approve(kind)))
    p = _common(sub.add_parser(kind.end_verb, help=end_help))
    p.add_argument("id")
    p.add_argument("--reason", required=True)
    p.set_defaults(func=_run(_end(kind)))
