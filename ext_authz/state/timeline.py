"""When held records stop: a time-ordered queue, so that finding what expired never walks every record.

Records are filed by the second their end falls in (a record's end can move: a revocation lifted early,
an exception closed), each filing carries the end it was filed for, and :meth:`due` hands back each
(kind, id) whose filed end has passed. The caller looks the record up again and decides: a record that
changed since was filed again under its new end, so a stale filing is recognised by its end and skipped.
Work per call is proportional to what is due, not to what is held.
"""

from __future__ import annotations

import heapq
import math

__all__ = ["Timeline"]


class Timeline:
    def __init__(self) -> None:
        self._buckets: dict[int, list[tuple[str, str, float]]] = {}
        self._seconds: list[int] = []  # a heap of the buckets' seconds
        self.filed = 0

    def file(self, kind: str, rid: str, end: float | None) -> None:
        """Remember that this record ends at ``end`` (a record that never ends is not filed)."""
        if end is None or not math.isfinite(end):
            return
        second = math.floor(end)
        bucket = self._buckets.get(second)
        if bucket is None:
            bucket = self._buckets[second] = []
            heapq.heappush(self._seconds, second)
        bucket.append((kind, rid, end))
        self.filed += 1

    def due(self, now: float, *, inclusive: bool = False) -> list[tuple[str, str, float]]:
        """(kind, id, end) of filings whose end is before ``now`` (or at it, ``inclusive``), each once,
        oldest second first. A filing whose end is not yet reached stays."""
        out: list[tuple[str, str, float]] = []

        def passed(end: float) -> bool:
            return end <= now if inclusive else end < now

        while self._seconds and self._seconds[0] <= now:
            second = heapq.heappop(self._seconds)
            bucket = self._buckets.pop(second)
            later = [item for item in bucket if not passed(item[2])]
            out.extend(item for item in bucket if passed(item[2]))
            self.filed -= len(bucket) - len(later)
            if later:  # the rest of the current second: nothing after it is due either
                self._buckets[second] = later
                heapq.heappush(self._seconds, second)
                break
        return out

    def __len__(self) -> int:
        return self.filed
