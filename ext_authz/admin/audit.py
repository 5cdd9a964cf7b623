"""The audit log: audit."""

from __future__ import annotations

import argparse
import json
from typing import Any

from google.protobuf import json_format

from .._proto import admin_pb2 as pb
from .client import _call, _common, _run, _scoped, _since
from .output import _rfc3339, _table, _unmatched, _when


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


def add_parsers(sub: Any) -> None:
    p = _common(sub.add_parser("audit", help="the audit log: every change of state, who, when and why"))
    p.add_argument("--since", help="a duration back from now (24h) or a time (2026-11-25T10:00:00Z)")
    p.add_argument("--principal", help="only changes about this SPIFFE ID or ISSUER#SUBJECT")
    p.add_argument("--issuer", help="the token issuer, for a bare user subject")
    p.add_argument("--limit", type=int, default=1000, help="at most this many, the latest (default 1000)")
    p.set_defaults(func=_run(cmd_audit))
