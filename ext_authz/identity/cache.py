"""A bounded LRU of verified identities, wrapped around a verifier from outside.

Keyed by the raw credential (token string, or certificate PEM plus chain) and the trust
revision that verified it: when trust material changes the whole cache is dropped. An entry is
never served after the credential's own expiry. Failures are not cached.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from ..model import Identity

__all__ = ["LruCache"]

K = TypeVar("K")


class LruCache(Generic[K]):
    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[K, Identity] = OrderedDict()
        self._revision = ""
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K, revision: str, now: float) -> Identity | None:
        if revision != self._revision:
            self._data.clear()
            self._revision = revision
        ident = self._data.get(key)
        if ident is None:
            self.misses += 1
            return None
        if ident.expires_at is not None and now >= ident.expires_at:
            del self._data[key]
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return ident

    def put(self, key: K, revision: str, ident: Identity) -> None:
        if self.size <= 0 or revision != self._revision:
            return
        self._data[key] = ident
        self._data.move_to_end(key)
        while len(self._data) > self.size:
            self._data.popitem(last=False)
