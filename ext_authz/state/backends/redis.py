"""``redis://HOST:PORT/DB`` or ``rediss://`` (TLS): state shared by every replica of a fleet.

Records live in a hash; every change is also appended to a Redis Stream, the durable change log, which
each replica follows with a blocking XREAD from the last entry it applied. If Redis goes away the
replica keeps its last snapshot, and after reconnecting catches up from its position — or loads
everything if the stream was trimmed past it. The password comes from a file or an environment
variable (``state.password_file`` / ``password_env``), never from the config itself; ``rediss://``
verifies the server against ``state.tls.ca`` and may present a client certificate.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from ...errors import StateError
from ...settings import StateSettings
from .base import PAGE, AuditRow, Batch, Change

__all__ = ["RedisLog"]

RECORDS = "ext-authz:records"
CHANGES = "ext-authz:changes"
SESSIONS = "ext-authz:sessions"
AUDIT = "ext-authz:audit"  # sorted set: entry id scored by its time
AUDIT_ROWS = "ext-authz:audit:rows"  # hash: entry id -> principal \x1f sealed body
CONFIRMS = "ext-authz:confirms"  # a counter written only so that a WAIT after it covers what came before
CLAIMS = "ext-authz:claim:"  # + the claimed key's digest: a string that expires with the claim
AUDIT_SCAN = 100_000  # entries looked at, at most, to find those about one principal
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
# First use of a session wins; only a first use is logged for the other replicas.
_SESSIONS = """
for i = 2, #ARGV, 2 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'op', 'session', 'kind', 'session',
               'id', ARGV[i], 'body', ARGV[i + 1], 'at', '0')
  end
end
return 0
"""
# Audit entries are kept once: an id already stored (an expiry several replicas noticed) is left alone.
_AUDIT_ADD = """
for i = 1, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 2]) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
  end
end
return 0
"""
# Entries older than ARGV[1], a batch at a time.
_AUDIT_PRUNE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1], 'LIMIT', 0, 5000)
if #ids > 0 then
  redis.call('HDEL', KEYS[2], unpack(ids))
  redis.call('ZREM', KEYS[1], unpack(ids))
end
return #ids
"""
_ERRORS = (RedisError, OSError, ConnectionError, TimeoutError)


def _field(kind: str, rid: str) -> str:
    return f"{kind}\x1f{rid}"


def _older(a: str, b: str) -> bool:
    """Stream id ``a`` is older than ``b`` (so entries in between may be lost)."""
    try:
        a_ms, a_seq = (int(x) for x in a.split("-"))
        b_ms, b_seq = (int(x) for x in b.split("-"))
    except ValueError:
        return True
    return (a_ms, a_seq) < (b_ms, b_seq)


class RedisLog:
    durable = True

    def __init__(
        self,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        tls: dict[str, Any] | None = None,
        block_ms: int = 1000,
        sentinels: tuple[tuple[str, int], ...] = (),
        sentinel_options: dict[str, Any] | None = None,
        wait_replicas: int = 0,
        wait_timeout: float = 1.0,
    ) -> None:
        self.url = url
        self.block_ms = block_ms
        # With Sentinels the URL's host names the master; each connection asks them where it is now.
        self.sentinels = sentinels
        self._sentinel_options = sentinel_options or {}  # the Sentinels' own password and TLS
        self.wait_replicas = wait_replicas
        self.wait_timeout = wait_timeout
        self._options: dict[str, Any] = {"username": username, "password": password, **(tls or {})}
        self._redis: aioredis.Redis | None = None
        self._reader: aioredis.Redis | None = None
        self._writer: aioredis.Redis | None = None
        self._writing = asyncio.Lock()
        self._check_trim = False  # after a failure: was the stream trimmed past our position meanwhile?

    @classmethod
    def from_settings(cls, settings: StateSettings) -> RedisLog:
        password = _secret(settings.password_file, settings.password_env, "password", "the Redis password")
        sentinel_password = _secret(
            settings.sentinel_password_file,
            settings.sentinel_password_env,
            "sentinel_password",
            "the Sentinels' password",
        )
        tls: dict[str, Any] = {}
        if settings.scheme == "rediss":  # with or without a tls: section (the system's CAs then)
            tls["ssl_cert_reqs"] = "required"
            tls["ssl_check_hostname"] = True  # the default only from redis-py 6; we accept 5
        if settings.tls is not None:
            if settings.tls.ca is not None:
                tls["ssl_ca_certs"] = str(settings.tls.ca)
            if settings.tls.cert is not None:
                tls["ssl_certfile"] = str(settings.tls.cert)
            if settings.tls.key is not None:
                tls["ssl_keyfile"] = str(settings.tls.key)
        # The Sentinels: their own password if they ask for one; TLS as the URL says unless sentinel_tls
        # says otherwise, with the same CA and client certificate as Redis.
        to_sentinels: dict[str, Any] = {"password": sentinel_password} if sentinel_password else {}
        if settings.sentinel_tls if settings.sentinel_tls is not None else settings.scheme == "rediss":
            to_sentinels.update(tls, ssl=True, ssl_cert_reqs="required", ssl_check_hostname=True)
        return cls(
            settings.url,
            username=settings.username,
            password=password,
            tls=tls,
            sentinels=settings.sentinel_addresses,
            sentinel_options=to_sentinels,
            wait_replicas=settings.wait_replicas,
            wait_timeout=settings.wait_timeout,
        )

    def _client(self, timeout: float | None, *, single: bool = False) -> aioredis.Redis:
        """``single``: one connection, so a WAIT counts exactly the writes sent before it."""
        pool: dict[str, Any] = {"max_connections": 1} if single else {}
        if self.sentinels:
            parts = urllib.parse.urlsplit(self.url)
            options = {k: v for k, v in self._options.items() if v is not None}
            if parts.scheme == "rediss":
                options["ssl"] = True
            sentinel = Sentinel(
                list(self.sentinels),
                sentinel_kwargs={
                    "socket_timeout": 2.0,
                    "socket_connect_timeout": 2.0,
                    **self._sentinel_options,
                },
                socket_connect_timeout=2,
                health_check_interval=0,
            )
            db = int(parts.path.strip("/") or 0)  # a number: checked with the settings
            client: aioredis.Redis = sentinel.master_for(
                parts.netloc, db=db, decode_responses=True, socket_timeout=timeout, **options, **pool
            )  # (netloc: a master's name is case-sensitive, and hostname lowercases it)
            return client
        return aioredis.from_url(
            self.url,
            decode_responses=True,
            socket_connect_timeout=2,
            socket_timeout=timeout,
            health_check_interval=0,
            **{k: v for k, v in self._options.items() if v is not None},
            **pool,
        )

    def _client_or_fail(self) -> aioredis.Redis:
        if self._redis is None:
            raise StateError("the state store is not open")
        return self._redis

    async def open(self) -> None:
        self._redis = self._client(2.0)
        self._reader = self._client(self.block_ms / 1000 + 5)
        # Records are written, and confirmed, over one connection, one write at a time.
        self._writer = self._client(2.0 + (self.wait_timeout if self.wait_replicas else 0.0), single=True)

    async def close(self) -> None:
        for client in (self._redis, self._reader, self._writer):
            if client is not None:
                # A connection interrupted mid-XREAD may never answer a polite close: bound it.
                try:
                    await client.connection_pool.disconnect()
                    await client.aclose()
                except _ERRORS:
                    pass
        self._redis = self._reader = self._writer = None

    async def position(self) -> str:
        r = self._client_or_fail()
        try:
            last: Any = await r.xrevrange(CHANGES, count=1)
        except _ERRORS as exc:
            raise StateError(f"{self._where()}: {exc}") from exc
        self._check_trim = False
        return str(last[0][0]) if last else "0-0"

    async def _scan(self, key: str, page: int) -> AsyncIterator[dict[Any, Any]]:
        """HSCAN, a page per request under the client's timeout (never one HGETALL of everything)."""
        r = self._client_or_fail()
        cursor: Any = 0
        found: Any
        while True:
            try:
                cursor, found = await r.hscan(key, cursor, count=page)
            except _ERRORS as exc:
                raise StateError(f"{self._where()}: {exc}") from exc
            if found:
                yield found
            if int(cursor) == 0:
                return

    async def records(self, page: int = PAGE) -> AsyncIterator[list[tuple[str, str, str]]]:
        async for found in self._scan(RECORDS, page):
            out = []
            for fld, body in found.items():
                kind, _, rid = fld.partition("\x1f")
                out.append((kind, rid, body))
            yield out

    async def sessions(self, page: int = PAGE) -> AsyncIterator[list[tuple[str, str]]]:
        async for found in self._scan(SESSIONS, page):
            yield [(str(k), str(v)) for k, v in found.items()]

    def _where(self) -> str:
        """host:port/db (or the Sentinel master's name), for messages: never a password, user or query."""
        parts = urllib.parse.urlsplit(self.url)
        if self.sentinels:
            return f"Sentinel master {parts.netloc}{parts.path}"
        return f"{parts.hostname or ''}:{parts.port or 6379}{parts.path}"

    def _writer_or_fail(self) -> aioredis.Redis:
        if self._writer is None:
            raise StateError("the state store is not open")
        return self._writer

    async def append(self, changes: Sequence[Change], audit: Sequence[AuditRow] = ()) -> None:
        r = self._writer_or_fail()
        try:
            async with self._writing:  # one write at a time on the writer's one connection
                async with r.pipeline(transaction=True) as pipe:  # MULTI/EXEC: all of them or none
                    for change in changes:
                        fields = {
                            "op": change.op,
                            "kind": change.kind,
                            "id": change.id,
                            "body": change.body,
                            "at": repr(change.at),
                        }
                        if change.op == "put":
                            pipe.hset(RECORDS, _field(change.kind, change.id), change.body)
                        else:
                            pipe.hdel(RECORDS, _field(change.kind, change.id))
                        pipe.xadd(CHANGES, fields, maxlen=MAX_CHANGES, approximate=True)  # type: ignore[arg-type]
                    for row in audit:
                        pipe.hsetnx(AUDIT_ROWS, row.id, f"{row.principal}\x1f{row.body}")
                        pipe.zadd(AUDIT, {row.id: row.at}, nx=True)
                    await pipe.execute()
                await self._replicated(r)
        except _ERRORS as exc:
            raise StateError(f"{self._where()}: {exc}") from exc

    async def confirm(self) -> None:
        """With ``wait_replicas``: StateError unless that many replicas have everything the primary took
        so far (a write of its own on the writer's connection, then WAIT: replication is one ordered
        stream). For a change found already made, whose first write was not acknowledged."""
        if not self.wait_replicas:
            return
        r = self._writer_or_fail()
        try:
            async with self._writing:
                await r.incr(CONFIRMS)
                await self._replicated(r)
        except _ERRORS as exc:
            raise StateError(f"{self._where()}: {exc}") from exc

    async def _replicated(self, r: aioredis.Redis) -> None:
        """With ``wait_replicas``: a change counts as written once that many replicas have it (WAIT), so a
        failover cannot lose it. Else StateError: it is on the primary, and the writer tries again (a
        record put twice is the same record)."""
        if not self.wait_replicas:
            return
        acked = int(await r.wait(self.wait_replicas, int(self.wait_timeout * 1000)))
        if acked < self.wait_replicas:
            raise StateError(
                f"{self._where()}: the change reached {acked} of the {self.wait_replicas} replicas"
                f" state.wait_replicas asks for within {self.wait_timeout:g}s: not acknowledged (it is on"
                " the primary, and would be lost if the primary failed now)"
            )

    async def follow(self, position: str, *, wait: bool = True) -> Batch:
        if self._reader is None:
            raise StateError("the state store is not open")
        try:
            if self._check_trim and await self._trimmed(position):
                return Batch(position, behind=True)
            resp: Any = await self._reader.xread(
                {CHANGES: position}, block=self.block_ms if wait else None, count=1000
            )
        except _ERRORS as exc:
            self._check_trim = True
            raise StateError(f"{self._where()}: {exc}") from exc
        self._check_trim = False
        changes: list[Change] = []
        for _stream, entries in resp or []:
            for entry_id, data in entries:
                position = str(entry_id)
                try:
                    at = float(data.get("at", "0"))
                except (TypeError, ValueError):
                    at = 0.0
                op = data.get("op", "")
                if op in ("put", "delete", "session"):
                    changes.append(
                        Change(op, data.get("kind", ""), data.get("id", ""), data.get("body", ""), at)
                    )
        return Batch(position, changes)

    async def _trimmed(self, position: str) -> bool:
        """After a failure: can the log no longer be followed from ``position``? Trimmed past it; gone
        (Redis lost its data, or was flushed); or ending before it: what this replica read last is no
        longer there (a failover to a replica that never had it), and the ids after it may be given to
        new entries, which reading on would skip. Then everything is loaded again."""
        r = self._client_or_fail()
        first: Any = await r.xrange(CHANGES, count=1)
        if not first:
            return position != "0-0"
        if position != "0-0" and _older(position, str(first[0][0])):
            return True
        last: Any = await r.xrevrange(CHANGES, count=1)
        return bool(last) and _older(str(last[0][0]), position)

    async def add_sessions(self, sessions: dict[str, str], now: float) -> None:
        r = self._client_or_fail()
        args = [str(MAX_CHANGES)] + [x for item in sessions.items() for x in item]
        try:
            await r.eval(_SESSIONS, 2, SESSIONS, CHANGES, *args)
        except _ERRORS as exc:
            raise StateError(f"{self._where()}: {exc}") from exc

    async def claim_once(self, key: str, until: float, now: float) -> bool:
        r = self._client_or_fail()
        name = CLAIMS + hashlib.sha256(key.encode()).hexdigest()
        ttl_ms = max(1, int((until - now) * 1000))  # by our clock: Redis's may differ from ours
        try:
            return bool(await r.set(name, "1", nx=True, px=ttl_ms))
        except _ERRORS as exc:
            raise StateError(f"{self._where()}: {exc}") from exc

    async def add_audit(self, rows: list[AuditRow]) -> None:
        if not rows:
            return
        r = self._client_or_fail()
        args = [x for row in rows for x in (row.id, repr(row.at), f"{row.principal}\x1f{row.body}")]
        try:
            await r.eval(_AUDIT_ADD, 2, AUDIT, AUDIT_ROWS, *args)
        except _ERRORS as exc:
            raise StateError(f"{self._where()}: {exc}") from exc

    async def read_audit(self, since: float, principal: str, limit: int) -> list[AuditRow]:
        r = self._client_or_fail()
        found: list[AuditRow] = []
        offset, chunk = 0, 1000
        try:
            while offset < AUDIT_SCAN and (not limit or len(found) < limit):
                page: Any = await r.zrevrangebyscore(
                    AUDIT, "+inf", since, start=offset, num=chunk, withscores=True
                )
                if not page:
                    break
                offset += len(page)
                values: Any = await r.hmget(AUDIT_ROWS, [aid for aid, _ in page])
                for (aid, at), value in zip(page, values, strict=True):
                    if value is None:
                        continue
                    who, _, body = str(value).partition("\x1f")
                    if not principal or who == principal:
                        found.append(AuditRow(str(aid), float(at), who, body))
        except _ERRORS as exc:
            raise StateError(f"{self._where()}: {exc}") from exc
        if limit:
            found = found[:limit]
        return list(reversed(found))

    async def forget(self, items: list[tuple[str, str, str]], now: float, audit_before: float) -> None:
        r = self._client_or_fail()
        args = [x for kind, rid, body in items for x in (_field(kind, rid), body)]
        try:
            if args:
                await r.eval(_FORGET, 1, RECORDS, *args)
            while await r.eval(_AUDIT_PRUNE, 2, AUDIT, AUDIT_ROWS, repr(audit_before)) == 5000:
                pass
        except _ERRORS as exc:
            raise StateError(f"{self._where()}: {exc}") from exc


def _secret(path: Path | None, env: str | None, key: str, what: str) -> str | None:
    """A password from state.KEY_file or state.KEY_env (None when neither is set)."""
    if path is not None:
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise StateError(f"{path}: cannot read {what} ({exc.strerror})") from exc
    if env is not None:
        value = os.environ.get(env)
        if not value:
            raise StateError(f"state.{key}_env: the environment variable {env} is not set")
        return value
    return None
