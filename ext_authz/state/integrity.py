"""Records authenticated under a shared key: a store's content is input, and only holders of the key
can write input that counts.

Every stored record, change-log entry and session is an envelope ``{"v": 2, "record": …, "mac": …}``
where ``mac`` is HMAC-SHA256 over the operation, the record kind, its id and the record's canonical
JSON. A replica with a key (``state.hmac_key_file``; required for Redis) ignores — logs and counts —
anything whose MAC does not verify: a record written with ``redis-cli``, a record moved to another id,
a ``delete`` entry nobody with the key made. Without a key (memory, or SQLite without one) envelopes
carry no MAC and only their shape is checked.

What a MAC cannot stop: someone with write access to the store can delete or replay records that were
validly written (see docs/threat-model.md); keep them out with Redis AUTH, TLS and a network policy.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any, TypeGuard

import orjson

from ..errors import Error, StateError

__all__ = ["MIN_KEY_BYTES", "IntegrityError", "Sealer", "load_key"]

MIN_KEY_BYTES = 32
_VERSION = 2


class IntegrityError(Error, ValueError):
    """Stored text that is not a valid envelope, or whose MAC does not verify (``reason`` says which)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # malformed | unauthenticated | legacy


def load_key(path: Path) -> bytes:
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise StateError(f"{path}: cannot read the state HMAC key ({exc.strerror or exc})") from exc
    if len(key) < MIN_KEY_BYTES:
        raise StateError(f"{path}: the state HMAC key must be at least {MIN_KEY_BYTES} bytes")
    return key


class Sealer:
    def __init__(self, key: bytes | None) -> None:
        self._key = key
        # HMAC-SHA256 with the key already mixed in: each MAC copies it (about half the cost of keying
        # afresh, which counts when a million records are read at start).
        self._keyed = hmac.new(key, digestmod=hashlib.sha256) if key is not None else None

    @property
    def keyed(self) -> bool:
        return self._key is not None

    @property
    def key(self) -> bytes | None:
        """The MAC key (for the start-up verifier, handed over its pipe: loading.py)."""
        return self._key

    def _mac(self, op: str, kind: str, rid: str, canonical: str) -> str:
        assert self._keyed is not None
        mac = self._keyed.copy()
        mac.update("\0".join(("ext-authz/state/v2", op, kind, rid, canonical)).encode())
        return mac.hexdigest()

    def seal(self, op: str, kind: str, rid: str, canonical: str) -> str:
        """The envelope for a record's canonical JSON (see records.encode): the text
        ``json.dumps({"mac": …, "record": …, "v": 2}, separators=(",", ":"), sort_keys=True)`` would
        write, put together directly (the record's canonical text is already that encoding of it)."""
        if self._key is None:
            return f"{_RECORD_HEAD}{canonical}{_TAIL}"
        return f'{_MAC_HEAD}{self._mac(op, kind, rid, canonical)}"{_RECORD_KEY}{canonical}{_TAIL}'

    def open(self, op: str, kind: str, rid: str, stored: str) -> Any:
        """The record's decoded JSON, if the envelope is well formed and (with a key) authentic."""
        fast = self._open_sealed(op, kind, rid, stored)
        if fast is not None:
            return fast
        try:
            env = json.loads(stored)
        except (ValueError, RecursionError) as exc:
            raise IntegrityError("malformed", "not JSON") from exc
        if not isinstance(env, dict):
            raise IntegrityError("malformed", "not a JSON object")
        if "v" not in env and "record" not in env:
            raise IntegrityError("legacy", "written by a version of ext-authz before principal keys")
        if env.get("v") != _VERSION or "record" not in env or set(env) - {"v", "record", "mac"}:
            raise IntegrityError("malformed", "not a version-2 envelope")
        record = env["record"]
        if self._key is not None:  # an envelope laid out otherwise than seal() lays it out
            mac = env.get("mac")
            canonical = json.dumps(record, separators=(",", ":"), sort_keys=True)
            if not _is_mac(mac) or not hmac.compare_digest(mac, self._mac(op, kind, rid, canonical)):
                raise IntegrityError("unauthenticated", "its MAC does not verify under this replica's key")
        return record

    def read_verified(self, stored: str) -> Any | None:
        """The record's decoded JSON from an envelope :meth:`open` accepted already, in another process
        (the start-up verifier, loading.py), from this same text: parsed as open() parses it, the MAC not
        computed again. Only an envelope laid out exactly as :meth:`seal` lays it out: None for any other
        (the caller opens that one itself, with every check). Never for text that was not verified."""
        return self._open_sealed("", "", "", stored, verify=False)

    def _open_sealed(self, op: str, kind: str, rid: str, stored: str, *, verify: bool = True) -> Any | None:
        """The fast way, for an envelope exactly as :meth:`seal` writes it (every one this version and
        its predecessors wrote): ``{"mac":"<64 hex>","record":CANONICAL,"v":2}``. The MAC is checked
        over the canonical text as stored, and that same text is parsed: nothing is encoded again.
        None if the envelope is laid out any other way (then the general path decides)."""
        if self._key is not None:
            if not (stored.startswith(_MAC_HEAD) and stored.startswith(_RECORD_KEY, _MAC_END)):
                return None
            canonical = stored[_MAC_END + len(_RECORD_KEY) : -len(_TAIL)]
            mac = stored[len(_MAC_HEAD) : _MAC_END - 1]
        else:
            if not stored.startswith(_RECORD_HEAD):
                return None
            canonical, mac = stored[len(_RECORD_HEAD) : -len(_TAIL)], ""
        if not stored.endswith(_TAIL) or not canonical.startswith("{"):
            return None
        try:
            record = orjson.loads(canonical)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(record, dict):
            return None
        if not verify or self._key is None:
            return record
        if not _is_mac(mac) or not hmac.compare_digest(mac, self._mac(op, kind, rid, canonical)):
            raise IntegrityError("unauthenticated", "its MAC does not verify under this replica's key")
        return record


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _is_mac(mac: object) -> TypeGuard[str]:
    """Is ``mac`` written as seal() writes one (64 lowercase hex digits)? Anything else is not compared:
    hmac.compare_digest raises on text that is not ASCII."""
    return isinstance(mac, str) and _HEX64.fullmatch(mac) is not None


# How seal() lays an envelope out (json.dumps with sorted keys and compact separators).
_MAC_HEAD = '{"mac":"'
_MAC_END = len(_MAC_HEAD) + 64 + 1  # past the closing quote of the 64 hex digits
_RECORD_KEY = ',"record":'
_RECORD_HEAD = '{"record":'
_TAIL = f',"v":{_VERSION}}}'
