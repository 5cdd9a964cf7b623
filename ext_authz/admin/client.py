"""The admin CLI's side of the admin API: finding it, calling it, and the conventions every command
shares (errors and exit codes, durations, the common flags)."""

from __future__ import annotations

import argparse
import getpass
import os
import socket
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc

from .._proto import admin_pb2 as pb
from .._proto import admin_pb2_grpc
from ..errors import Error
from ..settings import DEFAULT_ADMIN_LISTEN, parse_duration
from . import ACTOR_METADATA

__all__ = ["CliError"]


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


def _scope(args: argparse.Namespace) -> Any:
    return pb.Scope(
        hosts=args.host or [], paths=args.path or [], methods=[m.upper() for m in args.method or []]
    )


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
