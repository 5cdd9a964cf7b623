"""Waiting for a condition, never for a guess of how long something takes.

``until`` (async) and ``until_sync`` poll a condition until it holds, and fail naming what was awaited
after a generous timeout: the timeout is a bound for a broken build, not an expectation, and no test
asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

__all__ = ["until", "until_sync"]

TIMEOUT = 20.0


async def until(condition: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = TIMEOUT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        await asyncio.sleep(0.01)


def until_sync(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout}s")
        time.sleep(0.01)
