"""Python's cyclic garbage collector, kept off the Check path's way around large loads.

A full collection walks every tracked object: with a million state records or the engine of ten thousand
rules that is a pause of 0.1 to 1 s, on whatever thread triggered it, Checks included. A large load
makes many long-lived objects and no cyclic garbage (a test checks it of the engine; records are
frozen dataclasses of strings and numbers), so the collector is paused while it runs, and what it made
is then moved out of the collector's way for good (``gc.freeze``): no later collection walks it.

Other threads go on meanwhile (a reload runs beside the Checks), and their cyclic garbage would be
frozen with it, never to be freed: one collection first frees it. It walks only what was made since
the last freeze (what is frozen is never walked again), so it costs about what the load made.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["paused_collection"]


@contextlib.contextmanager
def paused_collection() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.collect()  # garbage made meanwhile, by any thread, is freed: not frozen for good
        gc.freeze()
        if was:
            gc.enable()
