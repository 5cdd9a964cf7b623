"""collect.paused_collection freezes what a load made, and frees the cyclic garbage other threads made
meanwhile (a reload runs beside the Checks): nothing is frozen that should have been freed."""

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


def test_cyclic_garbage_made_during_a_load_is_freed_not_frozen() -> None:
    gc.collect()
    before = gc.get_freeze_count()
    with paused_collection():
        ref = garbage_cycle()
        kept = [Node() for _ in range(1000)]  # what the load made: kept, and frozen
    assert ref() is None
    assert gc.get_freeze_count() >= before + len(kept)


def test_reloads_do_not_grow_the_frozen_heap(demo_dir: Path) -> None:
    load_engine(demo_dir / "config.yaml")
    gc.collect()
    base = gc.get_freeze_count()
    for _ in range(10):
        refs = [garbage_cycle() for _ in range(200)]
        load_engine(demo_dir / "config.yaml")  # the engine before it is dropped each time
        assert all(r() is None for r in refs)
    gc.collect()
    assert gc.get_freeze_count() - base < 1000
