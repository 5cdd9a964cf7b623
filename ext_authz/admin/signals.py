"""Signals: signal set, delete, list."""

from __future__ import annotations

import argparse
from typing import Any

from .._proto import admin_pb2 as pb
from .client import CliError, _call, _common, _duration, _run
from .output import _out, _table, _unmatched, _warn_unmatched, _when


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


def add_parsers(sub: Any) -> None:
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
