"""What `ext-authz revocations` shows of a revocation: what it is narrowed to, and what it refuses."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from ext_authz._proto import admin_pb2 as pb
from ext_authz.admin import revocations as cli


def test_an_ssf_revocation_says_it_refuses_only_older_credentials(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    now = 1_900_000_000.0
    ssf = pb.Revocation(
        id="ssf_0123456789ab",
        kind="sub",
        value="https://idp.example.com#jane",
        source="ssf",
        created_by="ssf:https://idp.example.com",
        created_at=now,
        expires_at=now + 86400 * 365 * 20,
        issued_before=now,
        also=["device=LAPTOP-7"],
        reason="session-revoked",
    )
    by_hand = pb.Revocation(
        id="rev_0123456789ab", kind="spiffe_id", value="spiffe://example.org/x", source="api", created_at=now
    )

    def fake_call(args: Any, method: str, request: Any) -> Any:
        assert method == "ListRevocations"
        return pb.ListRevocationsResponse(revocations=[ssf, by_hand])

    monkeypatch.setattr(cli, "_call", fake_call)
    cli.cmd_revocations(argparse.Namespace(all=False, kind=None, json=False, output="table"))
    out = capsys.readouterr().out
    jane = next(line for line in out.splitlines() if "jane" in line)
    assert "https://idp.example.com#jane & device=LAPTOP-7" in jane
    assert "credentials issued before 2030-03-17T17:46:40Z" in jane
    assert "every request" in next(line for line in out.splitlines() if "spiffe://example.org/x" in line)
    assert "REFUSES" in out.splitlines()[0]
