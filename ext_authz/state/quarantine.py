"""Automatic quarantine: an identity denied N times within a window is revoked for a while."""

from __future__ import annotations

from collections import OrderedDict, deque

from ..settings import QuarantineSettings

__all__ = ["DenialCounter"]


class DenialCounter:
    """Sliding-window denial counts per identity (bounded: the oldest identities are forgotten)."""

    def __init__(self, cfg: QuarantineSettings, max_identities: int = 100_000) -> None:
        self.cfg = cfg
        self.max_identities = max_identities
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def record(self, key: str, now: float) -> bool:
        """Count one denial; True exactly when this denial reaches the threshold."""
        window = self._seen.get(key)
        if window is None:
            window = self._seen[key] = deque()
            while len(self._seen) > self.max_identities:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(key)
        window.append(now)
        while window and window[0] <= now - self.cfg.window:
            window.popleft()
        if len(window) >= self.cfg.denials:
            window.clear()  # counted again from zero after the quarantine
            return True
        return False

    def forget(self, key: str) -> None:
        """Start counting ``key`` from zero (its quarantine was released)."""
        self._seen.pop(key, None)
