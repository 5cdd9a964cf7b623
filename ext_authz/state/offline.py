"""State read by the command line, with no server: the replica a config names, opened once and read.

`ext-authz check --state` (the snapshot as it stood at a time), `report` (the audit log) and
`state legacy` (records from before principal keys) read a store here; nothing is written, and no
follower runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from ..clock import Clock, SystemClock
from ..errors import ConfigError
from ..settings import Settings, StateSettings
from .audit import AuditEntry
from .backends import open_log
from .integrity import IntegrityError, Sealer, load_key
from .replica import Replica
from .snapshot import StateSnapshot

__all__ = ["audit", "legacy_records", "open_replica", "replica_for", "snapshot_at"]


def open_replica(settings: Settings, current: Callable[[], Settings], clock: Clock) -> Replica:
    """The state replica the settings name (raises StateError for a key or password it cannot read)."""
    state = settings.state
    key = load_key(state.hmac_key_file) if state.hmac_key_file is not None else None
    return Replica(
        open_log(state), current, sealer=Sealer(key), clock=clock, retention=settings.state_retention
    )


def replica_for(settings: Settings, url: str | None = None) -> Replica:
    """A replica of the store ``url`` (default: the config's), opened with the config's key."""
    cfg = settings
    if url:
        try:
            state = StateSettings.model_validate({**settings.state.model_dump(), "url": url})
        except ValidationError as exc:
            raise ConfigError("--state", "url", exc.errors()[0]["msg"]) from exc
        cfg = settings.model_copy(update={"state": state})
    return open_replica(cfg, lambda: cfg, SystemClock())


async def snapshot_at(settings: Settings, url: str | None, at: float) -> StateSnapshot:
    """The state ``url`` holds, as it stood at ``at`` (only what the store still holds)."""
    return await replica_for(settings, url).snapshot_at(at)


async def audit(settings: Settings, url: str | None, since: float) -> list[AuditEntry]:
    """Every audit entry at or after ``since`` that verifies under the config's key."""
    replica = replica_for(settings, url)
    await replica.backend.open()
    try:
        return await replica.audit(since, "", 0)
    finally:
        await replica.backend.close()


async def legacy_records(settings: Settings) -> list[dict[str, Any]]:
    """Records a version before principal keys wrote (not read by this version), as stored."""
    backend = open_log(settings.state)
    await backend.open()
    out = []
    try:
        async for page in backend.records():
            for kind, rid, body in page:
                try:
                    Sealer(None).open("put", kind, rid, body)
                except IntegrityError as exc:
                    if exc.reason == "legacy":
                        out.append({"kind": kind, "id": rid, "record": json.loads(body)})
    finally:
        await backend.close()
    return out
