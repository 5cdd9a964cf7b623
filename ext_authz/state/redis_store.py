"""``redis://HOST:PORT/DB`` (or ``rediss://``): state shared by every replica of a fleet.

Records live in a hash; every change is also appended to a Redis Stream, the durable change log.
Each replica keeps its own in-memory snapshot and follows the stream with a blocking XREAD, so a
change reaches every replica in milliseconds, and Checks never wait on Redis. If Redis goes away,
Checks go on with the last snapshot, the store reports itself disconnected, and the follower
reconnects with backoff and catches up from the last stream id it applied — nothing written
meanwhile is missed (as long as Redis itself kept it: run Redis with persistence).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .store import RECORD_TYPES, RevocationEvent, Store, from_json, to_json

__all__ = ["RedisStore"]

log = logging.getLogger("ext_authz.state")

RECORDS = "ext-authz:records"
CHANGES = "ext-authz:changes"
SESSIONS = "ext-authz:sessions"
MAX_CHANGES = 1_000_000  # the stream is trimmed (approximately) past this many entries
# Delete each (field, body) pair only if the field still holds that body: a record set again since it
# was forgotten (a signal has a fixed id) stays. Every replica may run it; it is idempotent.
_FORGET = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    n = n + redis.call('HDEL', KEYS[1], ARGV[i])
  end
end
return n
"""


def _field(kind: str, rid: str) -> str:
    return f"{kind}\x1f{rid}"


class RedisStore(Store):
    durable = True
    deletes_forgotten = True

    def __init__(self, url: str, *, block_ms: int = 1000, max_backoff: float = 5.0) -> None:
        super().__init__()
        self.url = url
        self.block_ms = block_ms
        self.max_backoff = max_backoff
        self._redis: aioredis.Redis | None = None
        self._reader: aioredis.Redis | None = None
        self._last_id = "0-0"
        self._follower: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = False
        self.reconnects = 0

    def _client(self, timeout: float | None) -> aioredis.Redis:
        return aioredis.from_url(
            self.url,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_timeout=timeout,
            health_check_interval=0,
        )

    async def start(self) -> None:
        self._redis = self._client(2.0)
        self._reader = self._client(self.block_ms / 1000 + 5)
        await self._full_load()  # a replica that cannot reach Redis at start does not start
        self._rebuild()
        self._follower = asyncio.create_task(self._follow())

    async def close(self) -> None:
        self._closing = True
        follower = self._follower
        if follower is not None:
            follower.cancel()
            # redis-py can absorb a cancellation that lands mid-XREAD and keep waiting on the socket:
            # if the follower has not stopped soon, cut its connections out from under it.
            await asyncio.wait({follower}, timeout=1.0)
            if not follower.done() and self._reader is not None:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await asyncio.wait_for(self._reader.connection_pool.disconnect(), 2)
                follower.cancel()
                await asyncio.wait({follower}, timeout=2.0)
            if not follower.done():
                log.warning("state follower did not stop; abandoning it")
        with contextlib.suppress(RedisError, OSError, TimeoutError):
            await asyncio.wait_for(self._flush_sessions(), 2)
        for client in (self._redis, self._reader):
            if client is not None:
                # A connection interrupted mid-XREAD may never answer a polite close: bound it.
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await asyncio.wait_for(client.aclose(), 2)

    @property
    def healthy(self) -> bool:
        return self.connected

    async def _full_load(self) -> None:
        """Everything in force, and the stream position it corresponds to."""
        assert self._redis is not None
        last: Any = await self._redis.xrevrange(CHANGES, count=1)
        last_id = str(last[0][0]) if last else "0-0"
        raw: Any = await self._redis.hgetall(RECORDS)
        sessions: Any = await self._redis.hgetall(SESSIONS)
        records: dict[str, dict[str, Any]] = {k: {} for k in RECORD_TYPES}
        for fld, body in raw.items():
            kind, _, rid = fld.partition("\x1f")
            if kind in records:
                records[kind][rid] = from_json(kind, body)
        self._records = records
        for sid, first in sessions.items():
            f = float(first)
            self._sessions[sid] = min(f, self._sessions.get(sid, f))
        self._last_id = last_id  # changes after this are replayed by the follower (idempotent)
        self.connected = True

    async def _persist_put(self, kind: str, rid: str, record: Any, at: float) -> None:
        assert self._redis is not None
        body = to_json(record)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(RECORDS, _field(kind, rid), body)
            pipe.xadd(
                CHANGES,
                {"op": "put", "kind": kind, "id": rid, "body": body, "at": repr(at)},
                maxlen=MAX_CHANGES,
                approximate=True,
            )
            await pipe.execute()

    async def _persist_delete(self, kind: str, rid: str, record: Any, at: float) -> None:
        assert self._redis is not None
        body = to_json(record)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hdel(RECORDS, _field(kind, rid))
            pipe.xadd(
                CHANGES,
                {"op": "delete", "kind": kind, "id": rid, "body": body, "at": repr(at)},
                maxlen=MAX_CHANGES,
                approximate=True,
            )
            await pipe.execute()

    async def _persist_sessions(self, pending: dict[str, float]) -> None:
        if self._redis is None:
            raise ConnectionError("the store is not connected")
        async with self._redis.pipeline(transaction=False) as pipe:
            for sid, first in pending.items():
                pipe.hsetnx(SESSIONS, sid, repr(first))
            await pipe.execute()

    def _apply(self, entries: list[tuple[str, dict[str, str]]]) -> bool:
        changed = False
        for entry_id, data in entries:
            self._last_id = entry_id
            kind, rid, op = data.get("kind", ""), data.get("id", ""), data.get("op", "")
            if kind not in RECORD_TYPES:
                continue
            try:
                record = from_json(kind, data["body"])
                at = float(data.get("at", "0"))
            except (KeyError, TypeError, ValueError):
                log.warning("skipping an unreadable change %s", entry_id)
                continue
            known = self._records[kind].get(rid)
            if op == "put":
                if known != record:
                    self._records[kind][rid] = record
                    changed = True
                    if kind == "revocation":
                        self._emit(RevocationEvent("created", record, at))
            elif op == "delete" and known is not None:
                self._records[kind].pop(rid, None)
                changed = True
                if kind == "revocation":
                    self._emit(RevocationEvent("removed", record, at))
        return changed

    async def _follow(self) -> None:
        backoff = 0.1
        while not self._closing:
            try:
                assert self._reader is not None
                with contextlib.suppress(RedisError, OSError, ConnectionError):
                    await self._flush_sessions()  # kept for the next round if Redis refuses it
                with contextlib.suppress(RedisError, OSError, ConnectionError):
                    await self._delete_forgotten()
                resp: Any = await self._reader.xread(
                    {CHANGES: self._last_id}, block=self.block_ms, count=1000
                )
                if not self.connected:
                    self.connected = True
                    log.info("state store reconnected; caught up from %s", self._last_id)
                backoff = 0.1
                for _stream, entries in resp or []:
                    if self._apply(entries):
                        self._rebuild()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, ConnectionError) as exc:
                if self.connected:
                    log.warning("state store unreachable, serving the last snapshot: %s", exc)
                self.connected = False
                self.reconnects += 1
                await asyncio.sleep(backoff + random.uniform(0, backoff / 2))  # noqa: S311 - jitter
                backoff = min(backoff * 2, self.max_backoff)
                await self._catch_up_if_trimmed()
            except Exception:  # never let the follower die: a dead follower stops enforcing news
                log.exception("state follower failed unexpectedly; retrying")
                await asyncio.sleep(backoff)

    async def _delete_forgotten(self) -> None:
        """Records that ended past the retention leave the Redis hash too (kept for the next round
        if Redis refuses)."""
        if not self._forgotten or self._redis is None:
            return
        forgotten, self._forgotten = self._forgotten, []
        args = [x for kind, rid, body in forgotten for x in (_field(kind, rid), body)]
        try:
            await self._redis.eval(_FORGET, 1, RECORDS, *args)
        except BaseException:
            self._forgotten[:0] = forgotten
            raise

    async def _catch_up_if_trimmed(self) -> None:
        """If the stream no longer reaches back to where we were, reload everything."""
        with contextlib.suppress(RedisError, OSError, ConnectionError):
            assert self._redis is not None
            first: Any = await self._redis.xrange(CHANGES, count=1)
            if first and self._last_id != "0-0" and _older(self._last_id, str(first[0][0])):
                log.warning("change log was trimmed past our position: reloading all state")
                await self._full_load()
                self._rebuild()
            elif not first and self._last_id != "0-0":
                # The stream is gone (Redis lost its data or was flushed): take what it has now.
                await self._full_load()
                self._rebuild()


def _older(a: str, b: str) -> bool:
    """Stream id ``a`` is older than ``b`` by more than one entry (so entries in between are lost)."""
    try:
        a_ms, a_seq = (int(x) for x in a.split("-"))
        b_ms, b_seq = (int(x) for x in b.split("-"))
    except ValueError:
        return True
    return (a_ms, a_seq) < (b_ms, b_seq)
