"""What real transmitters send, and what it does here.

- Okta: every SET its public docs publish (tests/data/ssf/vendors.json, with where from), pushed as is
  (re-signed, times made current), then its user Checked.
- Keycloak (experimental SSF transmitter): no published example; the shapes its SET mapper writes
  (keycloak/keycloak, ssf/transmitter/.../SecurityEventTokenMapper.java at
  2103658954f9ebab911d580f01847fd0b5a34b67): session-revoked for {user, session}, and for an admin's
  "log out all sessions" the session id ALL.
- SGNL caep.dev ``secevent`` (Go, SGNL-ai/caep.dev at b619c24d135dbade61511a79c78d9083e5c43a2f): its
  ``iss_sub`` subjects carry ``issuer`` (RFC 9493 names it ``iss``) and its assurance-level-change has no
  ``namespace``; both are refused (400 invalid_request), nothing applied.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from ext_authz.state.records import Signal
from tests.component.ssfstack import now, start_stack
from tests.conftest import REPO
from tests.ssfkit import CAEP

VENDORS = json.loads((REPO / "tests/data/ssf/vendors.json").read_text())["examples"]
REFUSES_OLDER = {"delete", "update", "revoke"}


def _current(claims: dict[str, Any], t: int) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(claims))
    out["iat"] = t
    out["jti"] = f"{out['jti']}-{secrets.token_hex(4)}"
    ((_, payload),) = out["events"].items()
    if "event_timestamp" in payload:  # Okta writes milliseconds
        payload["event_timestamp"] = (t - 60) * 1000
    return out


@pytest.mark.parametrize("example", VENDORS, ids=[e["name"] for e in VENDORS])
async def test_oktas_published_sets(example: dict[str, Any], demo_dir: Path, tmp_path: Path) -> None:
    claims = example["claims"]
    iss = claims["iss"]
    stack = await start_stack(demo_dir, tmp_path, transmitters=[iss], issuers=[iss], audience=claims["aud"])
    try:
        t = now()
        status, body = await stack.push(_current(claims, t))
        assert (status, body) == (202, "")
        ((event_type, payload),) = claims["events"].items()
        older, newer = stack.token(iss, "okta-user-id1", t - 300), stack.token(iss, "okta-user-id1", t + 5)
        other = stack.token(iss, "okta-user-id2", t - 300)
        refused = event_type.endswith("/session-revoked") or payload.get("change_type") in REFUSES_OLDER
        assert await stack.reason(older) == ("revoked" if refused else "allowed")
        assert await stack.reason(newer) == "allowed"
        assert await stack.reason(other) == "allowed"
        if not refused:  # a factor enrolled: said, not refused
            (sig,) = [s for s in stack.running.runtime.replica.all(Signal) if s.key == "credential_change"]
            assert sig.value == f"create {payload['credential_type']}"
    finally:
        await stack.close()


KC = "https://keycloak.example.com/realms/acme"


def _kc_logout(session: str, t: int) -> dict[str, Any]:
    return {
        "iss": KC,
        "aud": "https://authz.example.com",
        "iat": t,
        "jti": secrets.token_hex(8),
        "sub_id": {
            "format": "complex",
            "user": {"format": "iss_sub", "iss": KC, "sub": "7c1a-user"},
            "session": {"format": "opaque", "id": session},
        },
        "events": {
            CAEP + "session-revoked": {
                "initiating_entity": "admin",
                "reason_admin": {"en": "User logout"},
                "event_timestamp": t - 60,
            }
        },
    }


@pytest.mark.parametrize("wildcards", [[], ["ALL"]])
async def test_keycloaks_log_out_all_sessions(wildcards: list[str], demo_dir: Path, tmp_path: Path) -> None:
    stack = await start_stack(
        demo_dir, tmp_path, transmitters=[KC], issuers=[KC], receiver={"session_wildcards": wildcards}
    )
    try:
        t = now()
        assert (await stack.push(_kc_logout("ALL", t)))[0] == 202
        token = stack.token(KC, "7c1a-user", t - 300, sid="b3e1-session")
        # Without session_wildcards, ALL is a session id like any other: no real session is named ALL.
        assert await stack.reason(token) == ("revoked" if wildcards else "allowed")
        assert await stack.reason(stack.token(KC, "7c1a-user", t + 5, sid="new-session")) == "allowed"
        # One session's logout is that session's, either way.
        assert (await stack.push(_kc_logout("b3e1-session", t)))[0] == 202
        assert await stack.reason(token) == "revoked"
        assert await stack.reason(stack.token(KC, "7c1a-user", t - 300, sid="other")) == (
            "revoked" if wildcards else "allowed"
        )
    finally:
        await stack.close()


CAEP_DEV = "https://caep.dev"


@pytest.mark.parametrize(
    ("event", "sub_id", "payload"),
    [
        (  # iss_sub written with "issuer"
            "session-revoked",
            {"format": "iss_sub", "issuer": CAEP_DEV, "sub": "jane"},
            {},
        ),
        (  # assurance-level-change without namespace
            "assurance-level-change",
            {"format": "iss_sub", "iss": CAEP_DEV, "sub": "jane"},
            {"current_level": "nist-aal2", "previous_level": "nist-aal1", "change_direction": "increase"},
        ),
    ],
)
async def test_caep_devs_shapes_are_refused_and_change_nothing(
    event: str, sub_id: dict[str, Any], payload: dict[str, Any], demo_dir: Path, tmp_path: Path
) -> None:
    stack = await start_stack(demo_dir, tmp_path, transmitters=[CAEP_DEV], issuers=[CAEP_DEV])
    try:
        t = now()
        claims = {
            "iss": CAEP_DEV,
            "aud": "https://authz.example.com",
            "iat": t,
            "jti": secrets.token_hex(8),
            "sub_id": sub_id,
            "events": {CAEP + event: {**payload, "event_timestamp": t - 60}},
        }
        status, body = await stack.push(claims)
        assert (status, json.loads(body)["err"]) == (400, "invalid_request")
        assert stack.running.runtime.replica.snapshot.revocations == ()
        assert await stack.reason(stack.token(CAEP_DEV, "jane", t - 300)) == "allowed"
    finally:
        await stack.close()
