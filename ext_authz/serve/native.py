"""``transport: native``: pygrpc-native's server, with Check answered in the batch that brings it.

pygrpc-native's Rust front reads HTTP/2 and gRPC outside the GIL and hands calls to Python in batches
(one event-loop callback per batch). Its ``grpc.aio`` server then gives each call a call object, a
context, a task and a coroutine, and serializes the response through the method handler: about 40 µs
of CPU per call on this repository's bench VM, a quarter of an allow-all Check through Envoy
(docs/performance.md). Check needs none of it: ``AuthorizationServicer.answer`` is synchronous, takes
no metadata and sets none, and never waits. So this server answers Check calls itself, in the batch
callback, with the checks the aio path makes first (a message over the receive limit is
RESOURCE_EXHAUSTED, one that does not parse is INTERNAL, as in grpcio and pygrpc-native), and hands
every other event (health, cancellations, calls while stopping) to pygrpc-native unchanged.

What differs, and why it does not matter here: pygrpc-native's send limit is not applied (ext-authz
sets none; responses are a few hundred bytes); a Check whose caller left in the same batch is still
decided (its effects applied, its record written) and its answer dropped, where pygrpc-native would
have cancelled the task before it ran; and the Checks of one batch share the callback's contextvars
context rather than a copy each (nothing on the Check path sets a ContextVar: tracing passes its
context explicitly, and anything that does must set it per Check).

It reads five attributes of pygrpc-native's server that are not its public API (the method table,
the front, the stopping flag, the receive limit and the interceptors: with any, Check keeps
pygrpc-native's path, which runs them). ``pyproject.toml`` pins pygrpc-native to 0.5.x;
if a version lacks any of them, Check takes pygrpc-native's own path and a warning says so (a test
pins that the direct path is the one taken).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import grpc
import pygrpc_native.aio
from google.protobuf.message import DecodeError
from pygrpc_native._native import EVENT_CALL

from ext_authz._proto.envoy.external_auth_pb2 import CheckRequest

from .check import AUTH_SERVICE, CheckFailed

__all__ = ["NativeServer"]

log = logging.getLogger("ext_authz")

_CHECK_PATH = f"/{AUTH_SERVICE}/Check"
_INTERNAL = grpc.StatusCode.INTERNAL.value[0]
_RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
_INTERNALS = ("_table", "_front", "_stopping", "_receive_limit", "_interceptors")
_WARN_EVERY = 10.0  # seconds: one warning for any number of undecodable requests meanwhile


class NativeServer(pygrpc_native.aio.Server):
    """pygrpc-native's ``grpc.aio`` server whose Check calls are answered by :meth:`answer_check_with`'s
    function in the loop callback that receives them."""

    def __init__(self, options: Iterable[tuple[str, Any]]) -> None:
        super().__init__(options=options)
        self._answer: Callable[[Any], bytes | Coroutine[Any, Any, bytes]] | None = None
        self._later: set[asyncio.Task[None]] = set()  # answers awaiting a claim (held: not collected)
        self._check_id = -1  # the front's id for Check, once started
        self.direct_answers = 0  # Checks answered here (a test pins that this path is taken)
        self._undecodable = 0  # requests that were not a CheckRequest, since the last warning
        self._undecodable_warned = -_WARN_EVERY

    def answer_check_with(self, answer: Callable[[Any], bytes | Coroutine[Any, Any, bytes]]) -> None:
        """Answer Check with ``answer(CheckRequest) -> serialized CheckResponse`` (it raises
        CheckFailed on a fault). Check must also be registered as a method, as for any server."""
        missing = [name for name in _INTERNALS if not hasattr(self, name)]
        if not hasattr(pygrpc_native.aio.Server, "_on_events"):  # what its dispatch thread calls
            missing.append("_on_events")
        if missing:
            log.warning(
                "pygrpc-native %s has no %s: Check is served through its grpc.aio path (slower)",
                getattr(pygrpc_native, "__version__", "?"),
                ", ".join(missing),
            )
            return
        if self._interceptors:  # they would be skipped: let pygrpc-native run them
            return
        self._answer = answer

    async def start(self) -> None:
        await super().start()
        if self._answer is None:  # pygrpc-native's path for everything (and _table may not exist)
            return
        # No await between the front starting (in super().start()) and this: no batch has been handed
        # to the loop yet, and until then every event takes pygrpc-native's path anyway.
        paths = [path for path, _ in self._table]
        self._check_id = paths.index(_CHECK_PATH) if _CHECK_PATH in paths else -1

    def _on_events(self, events: list[tuple[Any, ...]]) -> None:
        answer, check_id = self._answer, self._check_id
        if answer is None or check_id < 0 or self._stopping:  # stopping: its path refuses them
            super()._on_events(events)
            return
        others: list[tuple[Any, ...]] = []
        for event in events:
            if event[0] == EVENT_CALL and event[2] == check_id:
                self._check(answer, event[1], event[3])
            else:
                others.append(event)
        if others:
            super()._on_events(others)

    def _check(
        self, answer: Callable[[Any], bytes | Coroutine[Any, Any, bytes]], call_id: int, payload: bytes
    ) -> None:
        front = self._front
        assert front is not None
        self.direct_answers += 1
        limit = self._receive_limit
        if limit is not None and len(payload) > limit:
            front.fail(
                call_id,
                _RESOURCE_EXHAUSTED,
                f"SERVER: Received message larger than max ({len(payload)} vs. {limit})",
            )
            return
        try:
            request = CheckRequest.FromString(payload)
        except DecodeError:
            self._refused_undecodable()
            front.fail(call_id, _INTERNAL, "Exception deserializing request!")
            return
        try:
            response = answer(request)
        except CheckFailed as exc:  # logged and recorded by answer()
            front.fail(call_id, _INTERNAL, str(exc))
            return
        except Exception:  # a bug beyond answer()'s own guard: this call fails, the batch goes on
            log.exception("Check failed")
            front.fail(call_id, _INTERNAL, "ext-authz internal error")
            return
        if isinstance(response, bytes):
            front.respond(call_id, response)  # False if the caller left meanwhile: it was decided anyway
            return
        task = asyncio.ensure_future(self._respond_later(call_id, response))  # a shared DPoP claim
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    async def _respond_later(self, call_id: int, response: Coroutine[Any, Any, bytes]) -> None:
        front = self._front
        assert front is not None
        try:
            front.respond(call_id, await response)
        except CheckFailed as exc:  # logged and recorded by answer()
            front.fail(call_id, _INTERNAL, str(exc))
        except Exception:
            log.exception("Check failed")
            front.fail(call_id, _INTERNAL, "ext-authz internal error")

    def _refused_undecodable(self) -> None:
        """Warn, at most every _WARN_EVERY seconds: anyone who can connect could otherwise fill the log."""
        self._undecodable += 1
        now = time.monotonic()
        if now - self._undecodable_warned >= _WARN_EVERY:
            log.warning("Check refused %d request(s) that were not a CheckRequest", self._undecodable)
            self._undecodable, self._undecodable_warned = 0, now
