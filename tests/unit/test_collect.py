"""collect.paused_collection freezes what a load made, and frees first the cyclic garbage that waited
for a collection: reloads do not grow the frozen heap with what the Checks between them left."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from ext_authz.collect import paused_collection
from ext_authz.loader import load_engine


class Node:
    other: Node


def garbage_cycle() -> weakref.ref[Node]:
    """A cycle nothing refers to (as a traceback or a callback leaves): only a collection frees it."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_garbage_waiting_when_a_load_starts_is_freed_and_what_the_load_made_is_frozen() -> None:
    gc.collect()
    before = gc.get_freeze_count()
    ref = garbage_cycle()
    with paused_collection():
        kept = [Node() for _ in range(1000)]
    assert ref() is None
    assert gc.get_freeze_count() >= before + len(kept)


def test_reloads_do_not_grow_the_frozen_heap(demo_dir: Path) -> None:
    load_engine(demo_dir / "config.yaml")
    gc.collect()
    base = gc.get_freeze_count()
    for _ in range(10):
        refs = [garbage_cycle() for _ in range(200)]  # what Checks between two reloads left
        load_engine(demo_dir / "config.yaml")  # the engine before it is dropped each time
        assert all(r() is None for r in refs)
    gc.collect()
    assert gc.get_freeze_count() - base < 1000
