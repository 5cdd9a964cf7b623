"""LruCache of verified identities: counting, LRU order, credential expiry, trust revisions, size 0."""

from __future__ import annotations

import pytest

from ext_authz.identity.cache import LruCache
from ext_authz.model import Identity

NOW = 1_900_000_000.0
REV = "rev-1"


def ident(name: str, expires_at: int | None = int(NOW) + 3600) -> Identity:
    return Identity(kind="oidc", subject=name, issuer="https://idp.example.com", expires_at=expires_at)


def cache_with(size: int, *names: str) -> LruCache[str]:
    """A cache at revision REV holding ``names`` (inserted in order), counters reset."""
    cache: LruCache[str] = LruCache(size)
    for name in names:
        assert cache.get(name, REV, NOW) is None
        cache.put(name, REV, ident(name))
    cache.hits = cache.misses = 0
    return cache


def test_miss_then_hit_counts() -> None:
    cache: LruCache[str] = LruCache(10)
    assert cache.get("token-a", REV, NOW) is None
    assert (cache.hits, cache.misses) == (0, 1)
    alice = ident("alice")
    cache.put("token-a", REV, alice)
    assert cache.get("token-a", REV, NOW) is alice
    assert cache.get("token-a", REV, NOW) is alice
    assert cache.get("token-b", REV, NOW) is None
    assert (cache.hits, cache.misses) == (2, 2)
    assert len(cache) == 1


def test_put_replaces_the_entry_for_a_key() -> None:
    cache = cache_with(10, "a")
    newer = ident("a-again")
    cache.put("a", REV, newer)
    assert cache.get("a", REV, NOW) is newer
    assert len(cache) == 1


def test_evicts_least_recently_inserted_at_size() -> None:
    cache = cache_with(2, "a", "b")
    assert len(cache) == 2
    cache.put("c", REV, ident("c"))
    assert len(cache) == 2
    assert cache.get("a", REV, NOW) is None
    assert cache.get("b", REV, NOW) is not None
    assert cache.get("c", REV, NOW) is not None


def test_a_hit_makes_an_entry_recently_used() -> None:
    cache = cache_with(2, "a", "b")
    assert cache.get("a", REV, NOW) is not None  # "b" is now the least recently used
    cache.put("c", REV, ident("c"))
    assert cache.get("b", REV, NOW) is None
    assert cache.get("a", REV, NOW) is not None
    assert cache.get("c", REV, NOW) is not None


def test_re_put_makes_an_entry_recently_used() -> None:
    cache = cache_with(2, "a", "b")
    cache.put("a", REV, ident("a"))
    cache.put("c", REV, ident("c"))
    assert cache.get("b", REV, NOW) is None
    assert cache.get("a", REV, NOW) is not None


def test_entry_not_served_at_or_after_expiry() -> None:
    exp = int(NOW) + 60
    cache: LruCache[str] = LruCache(10)
    assert cache.get("t", REV, NOW) is None
    cache.put("t", REV, ident("alice", expires_at=exp))
    assert cache.get("t", REV, exp - 0.001) is not None
    assert cache.get("t", REV, exp) is None
    assert len(cache) == 0  # dropped, not kept around
    assert (cache.hits, cache.misses) == (1, 2)


def test_entry_after_expiry_is_gone_even_if_time_goes_back() -> None:
    exp = int(NOW) + 60
    cache: LruCache[str] = LruCache(10)
    assert cache.get("t", REV, NOW) is None
    cache.put("t", REV, ident("alice", expires_at=exp))
    assert cache.get("t", REV, exp + 1) is None
    assert cache.get("t", REV, NOW) is None


def test_entry_without_expiry_is_served() -> None:
    cache: LruCache[str] = LruCache(10)
    assert cache.get("t", REV, NOW) is None
    cache.put("t", REV, ident("alice", expires_at=None))
    assert cache.get("t", REV, NOW + 10 * 365 * 86400) is not None


def test_revision_change_drops_everything() -> None:
    cache = cache_with(10, "a", "b", "c")
    assert cache.get("a", "rev-2", NOW) is None
    assert len(cache) == 0
    assert cache.get("b", "rev-2", NOW) is None
    # Going back to the old revision does not bring old entries back either.
    assert cache.get("c", REV, NOW) is None


def test_put_under_a_stale_revision_is_not_stored() -> None:
    """A verification that started before a trust reload must not land in the new cache."""
    cache = cache_with(10)
    assert cache.get("t", REV, NOW) is None  # verification starts under REV ...
    assert cache.get("other", "rev-2", NOW) is None  # ... trust reloads meanwhile
    cache.put("t", REV, ident("alice"))  # ... and the result arrives, verified under REV
    assert len(cache) == 0
    assert cache.get("t", "rev-2", NOW) is None


@pytest.mark.parametrize("size", [0, -1])
def test_size_zero_or_less_disables(size: int) -> None:
    cache: LruCache[str] = LruCache(size)
    assert cache.get("t", REV, NOW) is None
    cache.put("t", REV, ident("alice"))
    assert len(cache) == 0
    assert cache.get("t", REV, NOW) is None
    assert (cache.hits, cache.misses) == (0, 2)


def test_size_one() -> None:
    cache = cache_with(1, "a", "b")
    assert len(cache) == 1
    assert cache.get("a", REV, NOW) is None
    assert cache.get("b", REV, NOW) is not None


def test_keys_can_be_tuples() -> None:
    """X.509 callers key by (leaf PEM, chain)."""
    cache: LruCache[tuple[str, tuple[str, ...]]] = LruCache(4)
    key = ("leaf-pem", ("intermediate-pem",))
    assert cache.get(key, REV, NOW) is None
    cache.put(key, REV, ident("workload"))
    assert cache.get(("leaf-pem", ("intermediate-pem",)), REV, NOW) is not None
    assert cache.get(("leaf-pem", ()), REV, NOW) is None
