"""Python's cyclic garbage collector, kept off the Check path's way around large loads.

A full collection walks every tracked object: with a million state records or the engine of ten thousand
rules that is a pause of 0.1 to 1 s, on whatever thread triggered it, Checks included. A large load
makes many long-lived objects and no cyclic garbage (a test checks it of the engine; records are
frozen dataclasses of strings and numbers), so the collector is paused while it runs, and what it made
is then moved out of the collector's way for good (``gc.freeze``): no later collection walks it.

What is frozen is never collected: cyclic garbage waiting for a collection when a load starts would be
kept for good, so one collection runs first. It walks only what was made since the last freeze, little
on a running server, and runs before the load rather than after it (after, it would walk everything
the load made: 60 ms for ten thousand rules, more for a million records, holding the GIL). What other
threads make into cyclic garbage while the load runs (a reload runs beside the Checks), and cycles frozen
alive that die later, are kept: a few hundred objects a reload, measured (tests/unit/test_collect.py).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["paused_collection"]


@contextlib.contextmanager
def paused_collection() -> Iterator[None]:
    was = gc.isenabled()
    gc.collect()  # what waits to be freed is freed, not frozen for good
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was:
            gc.enable()
