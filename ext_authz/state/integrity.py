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
from pathlib import Path
from typing import Any

from ..errors import StateError

__all__ = ["MIN_KEY_BYTES", "IntegrityError", "Sealer", "load_key"]

MIN_KEY_BYTES = 32
_VERSION = 2


class IntegrityError(ValueError):
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

    @property
    def keyed(self) -> bool:
        return self._key is not None

    def _mac(self, op: str, kind: str, rid: str, canonical: str) -> str:
        assert self._key is not None
        msg = "\0".join(("ext-authz/state/v2", op, kind, rid, canonical)).encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()

    def seal(self, op: str, kind: str, rid: str, canonical: str) -> str:
        """The envelope for a record's canonical JSON (see records.encode)."""
        env: dict[str, Any] = {"v": _VERSION, "record": json.loads(canonical)}
        if self._key is not None:
            env["mac"] = self._mac(op, kind, rid, canonical)
        return json.dumps(env, separators=(",", ":"), sort_keys=True)

    def open(self, op: str, kind: str, rid: str, stored: str) -> Any:
        """The record's decoded JSON, if the envelope is well formed and (with a key) authentic."""
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
        if self._key is not None:
            mac = env.get("mac")
            canonical = json.dumps(record, separators=(",", ":"), sort_keys=True)
            if not isinstance(mac, str) or not hmac.compare_digest(mac, self._mac(op, kind, rid, canonical)):
                raise IntegrityError("unauthenticated", "its MAC does not verify under this replica's key")
        return record
