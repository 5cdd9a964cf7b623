"""The transmitter's time comes through the clock it is given: a SET's ``iat`` is the clock's, so a test
(or a replayed scenario) controls it. A ``jti`` is an id, not a time."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ext_authz.clock import FixedClock
from ext_authz.settings import SsfTransmitterSettings
from ext_authz.ssf.transmitter import Transmitter
from ext_authz.state.records import Revocation
from ext_authz.state.replica import RevocationEvent
from tests.ssfkit import new_key

AT = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
ISSUER = "https://authz.example.com"


def transmitter(tmp_path: Path, clock: FixedClock) -> Transmitter:
    (tmp_path / "key.json").write_text(json.dumps(new_key().as_dict(private=True)))
    (tmp_path / "secret").write_text("stream-secret-0123456789\n")
    cfg = SsfTransmitterSettings.model_validate(
        {
            "issuer": ISSUER,
            "key": str(tmp_path / "key.json"),
            "streams": [
                {
                    "audience": "https://rp.example",
                    "delivery": "poll",
                    "authorization_file": str(tmp_path / "secret"),
                }
            ],
        }
    )
    return Transmitter(cfg, lambda: ISSUER, clock=clock)


def claims(token: str) -> dict[str, Any]:
    body = token.split(".")[1]
    doc: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return doc


def queued(tx: Transmitter) -> list[dict[str, Any]]:
    (stream,) = tx.streams
    return [claims(token) for _, token in stream.queue]


def test_a_revocations_set_is_issued_at_the_clocks_time(tmp_path: Path) -> None:
    clock = FixedClock(AT)
    tx = transmitter(tmp_path, clock)
    rev = Revocation(
        id="r-1",
        kind="sub",
        value="https://idp.example.com#alice",
        reason="left the company",
        created_by="ops",
        created_at=AT.timestamp() - 30,
    )
    tx.on_revocation(RevocationEvent("created", rev, AT.timestamp()))
    (sent,) = queued(tx)
    assert sent["iat"] == int(AT.timestamp())
    assert sent["sub_id"] == {"format": "iss_sub", "iss": "https://idp.example.com", "sub": "alice"}


def test_verifications_are_issued_at_the_clocks_time_with_distinct_ids(tmp_path: Path) -> None:
    clock = FixedClock(AT)
    tx = transmitter(tmp_path, clock)
    (stream,) = tx.streams
    tx.verification(stream, "state-1")
    tx.verification(stream, "state-2")  # the same instant: still two ids
    clock.at = AT + timedelta(hours=1)
    tx.verification(stream, None)
    first, second, later = queued(tx)
    assert [first["iat"], second["iat"], later["iat"]] == [int(AT.timestamp())] * 2 + [
        int(AT.timestamp()) + 3600
    ]
    assert len({first["jti"], second["jti"], later["jti"]}) == 3
    assert all(len(c["jti"]) == 32 for c in (first, second, later))
    assert first["events"] == {
        "https://schemas.openid.net/secevent/ssf/event-type/verification": {"state": "state-1"}
    }
