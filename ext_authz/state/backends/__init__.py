"""State backends, chosen by the URL scheme of ``state.url``: one file each, one line here.

Each implements :class:`~ext_authz.state.backends.base.ChangeLog` and is built from the state settings.
"""

from __future__ import annotations

from collections.abc import Callable

from ...settings import StateSettings
from .base import Batch, Change, ChangeLog, Loaded

__all__ = ["BACKENDS", "Batch", "Change", "ChangeLog", "Loaded", "open_log"]


def _memory(s: StateSettings) -> ChangeLog:
    from .memory import MemoryLog

    return MemoryLog.from_settings(s)


def _sqlite(s: StateSettings) -> ChangeLog:
    from .sqlite import SqliteLog

    return SqliteLog.from_settings(s)


def _redis(s: StateSettings) -> ChangeLog:
    from .redis import RedisLog

    return RedisLog.from_settings(s)


BACKENDS: dict[str, Callable[[StateSettings], ChangeLog]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "redis": _redis,
    "rediss": _redis,
}


def open_log(settings: StateSettings) -> ChangeLog:
    """The backend for ``settings.url`` (the settings already refused unknown schemes)."""
    return BACKENDS[settings.scheme](settings)
