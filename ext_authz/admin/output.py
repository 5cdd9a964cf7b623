"""What the admin CLI prints: tables, JSON and YAML of the same replies, times as RFC 3339."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf import json_format


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if ts else "-"


def _cell(value: object) -> str:
    """What a table shows of a value: printable characters only (state may hold what others sent)."""
    return "".join(c if c.isprintable() else "?" for c in str(value))


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    rows = [[_cell(c) for c in r] for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


_TIME_FIELDS = frozenset(
    (
        "at",
        "created_at",
        "expires_at",
        "ended_at",
        "approved_at",
        "opened_at",
        "closed_at",
        "set_at",
        "not_before",
        "not_after",
        "issued_before",
    )
)


def _rfc3339(value: Any) -> Any:
    """Epoch seconds in every time field → RFC 3339 (UTC); 0 (unset) → null."""
    if isinstance(value, dict):
        return {
            k: (
                (datetime.fromtimestamp(v, UTC).isoformat().replace("+00:00", "Z") if v else None)
                if k in _TIME_FIELDS and isinstance(v, int | float)
                else _rfc3339(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rfc3339(v) for v in value]
    return value


def _out(args: argparse.Namespace, message: Any, table: Callable[[], str]) -> None:
    output = "json" if args.json else args.output
    if output == "table":
        print(table())
        return
    doc = _rfc3339(
        json_format.MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    )
    if output == "yaml":
        import yaml

        print(yaml.safe_dump(doc, sort_keys=False), end="")
    else:
        print(json.dumps(doc, indent=2))


def _scope_text(s: Any) -> str:
    parts = [",".join(s.methods) or "*", ",".join(s.hosts) or "*", ",".join(s.paths) or "*"]
    return " ".join(parts)


def _unmatched(text: str, unmatched: str) -> str:
    """A list's cell for a record that names an issuer or trust domain not configured (yet)."""
    return f"{text}; matches nothing yet ({unmatched})" if unmatched else text


def _warn_unmatched(unmatched: str) -> None:
    if unmatched:
        print(
            f"ext-authz: warning: this matches nothing yet: {unmatched}; it takes effect once that is"
            " configured",
            file=sys.stderr,
        )


def _state(approved_at: float, ended_at: float, until: float) -> str:
    now = datetime.now(UTC).timestamp()
    if ended_at:
        return "ended"
    if not approved_at:
        return "PENDING"  # its window starts when a second person approves it
    return "expired" if until <= now else "active"
