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
    """One store: how to open it. What its scheme means (shared, TLS, URL form) is in
    ``ext_authz.stores``, where the settings read it."""

    open: Callable[[StateSettings], ChangeLog]


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
    "sqlite": Backend(_sqlite),
    "redis": Backend(_redis),
    "rediss": Backend(_redis),
}


def open_log(settings: StateSettings) -> ChangeLog:
    """The backend for ``settings.url`` (the settings already refused unknown schemes)."""
    return BACKENDS[settings.scheme].open(settings)
