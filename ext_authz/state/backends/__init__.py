"""State backends, chosen by the URL scheme of ``state.url``: one file each, one line here.

Each implements :class:`~ext_authz.state.backends.base.ChangeLog` and is built from the state settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...settings import StateSettings
from .base import Batch, Change, ChangeLog

__all__ = ["BACKENDS", "Backend", "Batch", "Change", "ChangeLog", "open_log"]


@dataclass(frozen=True, slots=True)
class Backend:
    """One store: how to open it, and what the settings must require of it."""

    open: Callable[[StateSettings], ChangeLog]
    # Shared over a network by replicas that trust each other's records only when authenticated: the
    # settings require hmac_key_file, and accept username, password_file/password_env and tls.
    shared: bool = False
    tls: bool = False  # the scheme is the TLS one (tls: is accepted only here)
    url_form: str = ""  # a required prefix of the URL, e.g. sqlite:/// (an absolute path)


def _memory(s: StateSettings) -> ChangeLog:
    from .memory import MemoryLog

    return MemoryLog.from_settings(s)


def _sqlite(s: StateSettings) -> ChangeLog:
    from .sqlite import SqliteLog

    return SqliteLog.from_settings(s)


def _redis(s: StateSettings) -> ChangeLog:
    from .redis import RedisLog

    return RedisLog.from_settings(s)


BACKENDS: dict[str, Backend] = {
    "memory": Backend(_memory),
    "sqlite": Backend(_sqlite, url_form="sqlite:///"),
    "redis": Backend(_redis, shared=True),
    "rediss": Backend(_redis, shared=True, tls=True),
}


def open_log(settings: StateSettings) -> ChangeLog:
    """The backend for ``settings.url`` (the settings already refused unknown schemes)."""
    return BACKENDS[settings.scheme].open(settings)
