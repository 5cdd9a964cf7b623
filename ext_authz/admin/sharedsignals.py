"""Shared signals: ssf status."""

from __future__ import annotations

import argparse
from typing import Any

from .._proto import admin_pb2 as pb
from .client import _call, _common, _run
from .output import _out, _table, _when


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


def add_parsers(sub: Any) -> None:
    ssf = sub.add_parser("ssf", help="shared signals: receivers and the transmitter").add_subparsers(
        dest="ssf_command", required=True
    )
    p = _common(
        ssf.add_parser("status", help="our streams: what each receiver refused, by error code, and why")
    )
    p.set_defaults(func=_run(cmd_ssf_status))
