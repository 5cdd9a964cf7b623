"""Live streams: tail (decisions or revocations)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import grpc
from google.protobuf import json_format

from .._proto import admin_pb2 as pb
from .._proto import admin_pb2_grpc
from . import ACTOR_METADATA
from .client import CliError, _actor, _admin_address, _channel, _common, _run
from .output import _when


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


def add_parsers(sub: Any) -> None:
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
