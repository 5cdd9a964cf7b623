"""Python's cyclic garbage collector, kept off the Check path's way around large loads.

A full collection walks every tracked object: with a million state records or the engine of ten thousand
rules that is a pause of 0.1 to 1 s, on whatever thread triggered it, Checks included. A large load
makes many long-lived objects and no cyclic garbage (a test checks it of the engine; records are
frozen dataclasses of strings and numbers), so the collector is paused while it runs, and what it made
is then moved out of the collector's way for good (``gc.freeze``): no later collection walks it.
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
        gc.freeze()
        if was:
            gc.enable()
