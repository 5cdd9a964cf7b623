"""Security Event Tokens for tests: signed with test keys, and built hostile on purpose."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

from joserfc.jwk import Key

from ext_authz.dev import pki
from tests.conftest import REPO

__all__ = [
    "CAEP",
    "EXAMPLES",
    "RISC",
    "SSF",
    "b64",
    "jwks_file",
    "mint_set",
    "new_key",
    "unsigned",
    "with_header",
]

CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
RISC = "https://schemas.openid.net/secevent/risc/event-type/"
SSF = "https://schemas.openid.net/secevent/ssf/event-type/"
EXAMPLES: list[dict[str, Any]] = json.loads((REPO / "tests/data/ssf/examples.json").read_text())["examples"]


def new_key(alg: str = "ES256", kid: str = "ssf-1") -> Key:
    return pki.new_jwt_key(alg, kid=kid)


def jwks_file(path: Path, *keys: Key) -> Path:
    path.write_text(json.dumps({"keys": [pki.jwk_public(k, use="sig") for k in keys]}))
    return path


def mint_set(
    key: Key, claims: dict[str, Any], *, alg: str = "ES256", typ: str | None = "secevent+jwt", **header: Any
) -> str:
    return pki.mint_jwt(key, claims, alg=alg, typ=typ, extra_header=header or None)


def b64(obj: Any) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unsigned(claims: dict[str, Any]) -> str:
    """``alg: none``, as RFC 8417 §2.4's example: the token ends in a dot."""
    return f"{b64({'typ': 'secevent+jwt', 'alg': 'none'})}.{b64(claims)}."


def now() -> int:
    return int(time.time())


def with_header(token: str, **extra: Any) -> str:
    """The token with header fields added: its signature no longer verifies, which is not the point."""
    head, body, sig = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    return f"{b64({**header, **extra})}.{body}.{sig}"
