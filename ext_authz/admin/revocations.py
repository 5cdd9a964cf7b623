"""Revocations and quarantines: revoke, unrevoke, revocations, quarantine release and list."""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime
from typing import Any

from .._proto import admin_pb2 as pb
from ..state.commands import InvalidArgument, revocation_value
from .client import CliError, _call, _common, _positive, _run, _scoped
from .output import _out, _table, _unmatched, _warn_unmatched, _when


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


def cmd_quarantine_release(args: argparse.Namespace) -> None:
    req = pb.ReleaseQuarantineRequest(principal=_scoped(args, args.principal), reason=args.reason)
    resp = _call(args, "ReleaseQuarantine", req)
    _out(args, resp, lambda: "\n".join(f"released {r.value} ({r.id})" for r in resp.revocations))


def cmd_quarantine_list(args: argparse.Namespace) -> None:
    args.kind = "quarantine"
    cmd_revocations(args)


def add_parsers(sub: Any) -> None:
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
