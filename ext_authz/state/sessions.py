"""First uses of sessions (``ISSUER#sid`` → when it was first seen), for the maximum session age.

A Check notes a session it has not seen; the note is held here and written by the replica's follower
(never by the Check, which does not wait on a store). A first use is only ever added or moved earlier,
never withdrawn, so the snapshot reads this map live: a session counts from its first request, not from
the next unrelated change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType

from .backends.base import ChangeLog
from .integrity import IntegrityError, Sealer

__all__ = ["Sessions"]

_LEGACY = re.compile(r"-?[0-9.e+]+")


class Sessions:
    def __init__(
        self, sealer: Sealer, *, durable: bool, reject: Callable[[str, str, str, str], None]
    ) -> None:
        self._sealer = sealer
        self._durable = durable
        self._reject = reject
        self._first: dict[str, float] = {}
        self._pending: dict[str, float] = {}
        self.view: Mapping[str, float] = MappingProxyType(self._first)  # what snapshots read
        self.legacy = 0  # first uses a version before principal keys wrote: skipped (no issuer)

    def open(self, key: str, body: str) -> float | None:
        """The first use a stored body holds, if it is authentic."""
        if _LEGACY.fullmatch(body):  # a bare first use, written before principal keys: unusable
            self.legacy += 1
            return None
        try:
            value = self._sealer.open("session", "session", key, body)
        except IntegrityError as exc:
            self._reject("session", key, exc.reason, str(exc))
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            self._reject("session", key, "malformed", "a first use is a number")
            return None
        return float(value)

    def read(self, key: str, body: str) -> None:
        """A first use from the store: kept if it is earlier than what is known."""
        first = self.open(key, body)
        if first is not None and first < self._first.get(key, float("inf")):
            self._first[key] = first

    def note(self, key: str, first_seen: float) -> float:
        """First use of a session (kept if already known). Never waits: written by the follower."""
        known = self._first.get(key)
        if known is not None:
            return known
        self._first[key] = first_seen
        if self._durable:
            self._pending[key] = first_seen
        return first_seen

    def at(self, at: float) -> dict[str, float]:
        """The sessions first seen at or before ``at``."""
        return {k: v for k, v in self._first.items() if v <= at}

    async def flush(self, backend: ChangeLog, now: float) -> None:
        """Write newly seen sessions. The queue is swapped on the event loop (where Checks add to it) and
        only the detached batch is written; on failure it is kept for the next attempt."""
        if not self._pending:
            return
        pending, self._pending = self._pending, {}
        sealed = {k: self._sealer.seal("session", "session", k, json.dumps(v)) for k, v in pending.items()}
        try:
            await backend.add_sessions(sealed, now)
        except BaseException:
            for key, first in pending.items():
                self._pending.setdefault(key, first)
            raise
