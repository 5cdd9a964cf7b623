"""CLI commands over the admin API, one module per noun, each parser beside its handlers:
revocations (and quarantines), grants, exceptions, signals, audit, ssf, tail. What they share is in
client.py (reaching the API, errors, common flags) and output.py (tables, JSON, YAML)."""

from __future__ import annotations

from typing import Any

from . import audit, exceptions, grants, revocations, sharedsignals, signals, streams
from .client import CliError

__all__ = ["CliError", "add_admin_commands"]


def add_admin_commands(sub: Any) -> None:
    for noun in (revocations, grants, exceptions, streams, signals, sharedsignals, audit):
        noun.add_parsers(sub)
