"""The live decision stream: every decision record to whoever is watching, never slowing a Check."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..match import Glob

__all__ = ["DecisionFilter", "DecisionHub", "Subscription"]


@dataclass(frozen=True, slots=True)
class DecisionFilter:
    deny_only: bool = False
    identity: Glob | None = None  # the one matcher's syntax (ext_authz/match.py), over principal keys

    @classmethod
    def of(cls, *, deny_only: bool = False, identity: str = "") -> DecisionFilter:
        return cls(deny_only, Glob(identity) if identity else None)

    def accepts(self, rec: dict[str, Any]) -> bool:
        if self.deny_only and rec.get("decision") == "allow":
            return False
        if self.identity is not None:
            ident = rec.get("identity") or {}
            names = ident.get("principals") or ()
            if not any(isinstance(n, str) and self.identity.match(n) for n in names):
                return False
        return True


@dataclass(eq=False)
class Subscription:
    filter: DecisionFilter
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(1000))
    dropped: int = 0


class DecisionHub:
    def __init__(self, on_drop: Callable[[], None] | None = None) -> None:
        self._subs: list[Subscription] = []
        self.on_drop = on_drop

    def subscribe(self, flt: DecisionFilter, max_queue: int = 1000) -> Subscription:
        sub = Subscription(flt, asyncio.Queue(max_queue))
        self._subs.append(sub)
        return sub

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def publish(self, rec: dict[str, Any]) -> None:
        for sub in self._subs:
            if not sub.filter.accepts(rec):
                continue
            try:
                sub.queue.put_nowait(rec)
            except asyncio.QueueFull:
                sub.dropped += 1  # a slow subscriber loses records; Checks never wait for it
                if self.on_drop is not None:
                    self.on_drop()
