"""When held records stop: a time-ordered queue, so that finding what expired never walks every record.

A record is filed under the second of a time worked out from it (when it ends; or when it ends plus the
retention). A record's end can move (a revocation lifted early, an exception closed): the caller files
the new version, and when a filing comes due looks the record up again and compares, so a stale filing
is recognised and skipped. Only the record is kept (its time follows from it): a million filings cost a
million list slots. Work per call is proportional to what is due, not to what is held.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Timeline"]

T = TypeVar("T")


class Timeline(Generic[T]):
    def __init__(self, when: Callable[[T], float | None]) -> None:
        self._when = when
        self._buckets: dict[int, list[T]] = {}
        self._seconds: list[int] = []  # a heap of the buckets' seconds
        self.filed = 0

    def file(self, item: T) -> None:
        """Remember ``item`` until its time (an item without one, or an infinite one, is not filed)."""
        at = self._when(item)
        if at is None or not math.isfinite(at):
            return
        second = math.floor(at)
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = []
            heapq.heappush(self._seconds, second)
        bucket.append(item)
        self.filed += 1

    def due(self, now: float, *, inclusive: bool = False) -> list[T]:
        """Every filed item whose time is before ``now`` (or at it, ``inclusive``), each once, oldest
        second first. An item whose time is not yet reached stays filed."""
        out: list[T] = []
        when = self._when

        def passed(item: T) -> bool:
            at = when(item)
            assert at is not None
            return at <= now if inclusive else at < now

        while self._seconds and self._seconds[0] <= now:
            second = heapq.heappop(self._seconds)
            bucket = self._buckets.pop(second)
            later = [item for item in bucket if not passed(item)]
            out.extend(item for item in bucket if passed(item))
            self.filed -= len(bucket) - len(later)
            if later:  # the rest of the current second: nothing after it is due either
                self._buckets[second] = later
                heapq.heappush(self._seconds, second)
                break
        return out

    def __len__(self) -> int:
        return self.filed
