"""Shared secrets read from files (SSF stream secrets): one place for what a secret must be."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError

__all__ = ["read_secret"]


def read_secret(path: Path, key: str) -> str:
    """A shared bearer secret from its file: readable, UTF-8, one line, not empty (an empty secret would
    turn authentication off), printable ASCII (it goes into an Authorization header)."""
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), key, f"cannot read the secret ({type(exc).__name__})") from exc
    if len(secret) < 16 or not all(33 <= ord(c) < 127 for c in secret):
        raise ConfigError(str(path), key, "a secret is at least 16 printable ASCII characters without spaces")
    return secret
