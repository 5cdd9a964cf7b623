"""One CheckRequest decided away from a server: what ``ext-authz check``, ``ext-authz test`` and the
benchmarks share, so the three assemble normalize → decide → render once, here."""

from __future__ import annotations

import uuid
from datetime import datetime

from ._proto.envoy.external_auth_pb2 import CheckRequest, CheckResponse
from .envoy.normalize import normalize
from .envoy.render import render
from .model import Decision, Principal
from .pipeline import Caches, Engine, decide
from .state.snapshot import StateSnapshot

__all__ = ["decide_offline"]


def decide_offline(
    request: CheckRequest,
    engine: Engine,
    now: datetime,
    state: StateSnapshot | None = None,
    *,
    principal: Principal | None = None,
    decision_id: str = "",
) -> tuple[Decision, CheckResponse]:
    """``request`` normalized and decided as the server would, with no cache (nothing is remembered
    between calls), and the CheckResponse Envoy would get. ``principal``: identities taken as verified
    (policy tests); ``state``: the continuous-trust state to decide with (none: empty)."""
    ctx = normalize(request, engine.config.limits)
    decision = decide(
        ctx,
        engine,
        Caches.sized(0),
        now,
        decision_id or uuid.uuid4().hex,
        state if state is not None else StateSnapshot(),
        principal=principal,
    )
    return decision, render(decision, ctx.http.headers if ctx.http else None)
