"""Continuous trust through the admin API and the next Check: every kind's life cycle."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from ext_authz._proto import admin_pb2 as pb
from ext_authz._proto import admin_pb2_grpc
from ext_authz.admin import ACTOR_METADATA
from tests.component.checkreq import check_request
from tests.component.test_server import Running, start, write_config
from tests.waiting import until

BILLING = "spiffe://example.org/ns/billing/sa/worker"
FRONTEND = "spiffe://example.org/ns/frontend/sa/web"
EXTRA_RULES = [
    {
        "name": "risky-workloads",
        "effect": "deny",
        "when": 'has(signals.workload.risk) && signals.workload.risk == "high"',
    },
]


def by(actor: str) -> list[tuple[str, str]]:
    """Call metadata naming the local caller (on the unix socket, the caller names itself)."""
    return [(ACTOR_METADATA, actor)]


class MovableClock:
    def __init__(self) -> None:
        self.at = datetime.now(UTC)

    def now(self) -> datetime:
        return self.at

    def advance(self, **kw: float) -> None:
        self.at += timedelta(**kw)


@dataclasses.dataclass
class Admin:
    running: Running
    clock: MovableClock
    stub: Any
    channel: grpc.aio.Channel

    async def check(self, demo: Path, **kw: Any) -> Any:
        return await self.running.stub.Check(check_request(demo, **kw))

    async def reason(self, demo: Path, **kw: Any) -> str:
        resp = await self.check(demo, **kw)
        return str(resp.dynamic_metadata.fields["reason"].string_value)


async def start_admin(demo: Path, dest: Path, **overrides: Any) -> Admin:
    cfg_path = write_config(demo, dest, **overrides)
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["rules"] = EXTRA_RULES + cfg["rules"]
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    clock = MovableClock()
    running = await start(cfg_path, clock=clock)
    admin_channel = grpc.aio.insecure_channel(running.server.addresses["admin"])
    return Admin(running, clock, admin_pb2_grpc.AdminStub(admin_channel), admin_channel)


@pytest.fixture
async def admin(demo_dir: Path, tmp_path: Path) -> AsyncIterator[Admin]:
    a = await start_admin(demo_dir, tmp_path, quarantine={"denials": 3, "window": "60s", "duration": "15m"})
    yield a
    await a.channel.close()
    await a.running.channel.close()
    await a.running.server.stop(0)


async def test_admin_socket_is_private(admin: Admin) -> None:
    path = Path(admin.running.runtime.engine.config.admin_listen[len("unix://") :])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_revoke_then_next_check_is_403_and_unrevoke_restores(admin: Admin, demo_dir: Path) -> None:
    assert await admin.reason(demo_dir, workload="frontend") == "allowed"
    resp = await admin.stub.Revoke(pb.RevokeRequest(kind="spiffe_id", value=FRONTEND, reason="key leaked"))
    rev = resp.revocation
    assert rev.created_by.startswith("local:") and rev.reason == "key leaked" and rev.created_at > 0
    check = await admin.check(demo_dir, workload="frontend")
    assert check.denied_response.status.code == 403
    md = check.dynamic_metadata.fields
    assert md["reason"].string_value == "revoked"
    assert md["revocation_kind"].string_value == "spiffe_id" and md["revocation_id"].string_value == rev.id
    listed = await admin.stub.ListRevocations(pb.ListRevocationsRequest())
    assert [r.id for r in listed.revocations] == [rev.id]
    await admin.stub.Unrevoke(pb.UnrevokeRequest(id=rev.id, reason="rotated"))
    assert await admin.reason(demo_dir, workload="frontend") == "allowed"


async def test_revocation_expires_by_itself(admin: Admin, demo_dir: Path) -> None:
    await admin.stub.Revoke(
        pb.RevokeRequest(value=FRONTEND, kind="spiffe_id", reason="cool-off", duration_seconds=60)
    )
    assert await admin.reason(demo_dir, workload="frontend") == "revoked"
    admin.clock.advance(seconds=61)
    assert await admin.reason(demo_dir, workload="frontend") == "allowed"
    assert (await admin.stub.ListRevocations(pb.ListRevocationsRequest())).revocations == []
    assert (
        len((await admin.stub.ListRevocations(pb.ListRevocationsRequest(include_expired=True))).revocations)
        == 1
    )


@pytest.mark.parametrize(
    ("kind", "claim"), [("jti", "jti"), ("sub", "sub"), ("sid", "sid"), ("device", "device_id")]
)
async def test_token_revocations(admin: Admin, demo_dir: Path, kind: str, claim: str) -> None:
    token = (demo_dir / "tokens/alice.jwt").read_text().strip()
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    value = claims[claim] if kind == "device" else f"{claims['iss']}#{claims[claim]}"  # as state names it
    kw = {"token": token, "path": "/user/me", "listener": "edge"}
    assert await admin.reason(demo_dir, **kw) == "allowed"
    await admin.stub.Revoke(pb.RevokeRequest(kind=kind, value=value, reason="stolen laptop"))
    assert await admin.reason(demo_dir, **kw) == "revoked"


async def test_certificate_revocation_by_fingerprint(admin: Admin, demo_dir: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    leaf = x509.load_pem_x509_certificates((demo_dir / "svid/frontend.pem").read_bytes())[0]
    fp = leaf.fingerprint(hashes.SHA256()).hex(":").upper()  # as openssl prints it
    await admin.stub.Revoke(pb.RevokeRequest(kind="cert", value=fp, reason="mis-issued"))
    assert await admin.reason(demo_dir, workload="frontend") == "revoked"


async def grant(admin: Admin, **kw: Any) -> Any:
    """A grant made by alice and approved by bob (two people)."""
    fields: dict[str, Any] = {
        "principal": BILLING,
        "scope": pb.Scope(paths=["/reports/*"], methods=["GET"]),
        "duration_seconds": 3600,
        "reason": "quarter close",
        **kw,
    }
    g = (await admin.stub.CreateGrant(pb.CreateGrantRequest(**fields), metadata=by("alice"))).grant
    assert g.approved_at == 0  # pending
    return (
        await admin.stub.ApproveGrant(pb.ApproveGrantRequest(id=g.id, reason="ok"), metadata=by("bob"))
    ).grant


async def test_grant_covers_then_ends(admin: Admin, demo_dir: Path) -> None:
    kw = {"workload": "billing", "path": "/reports/q3"}
    assert await admin.reason(demo_dir, **kw) == "no_rule"
    g = await grant(admin, ticket="CHG-7")
    assert (g.approver, g.ticket, g.created_by) == ("local:bob", "CHG-7", "local:alice")
    resp = await admin.check(demo_dir, **kw)
    assert resp.status.code == 0
    assert [v.string_value for v in resp.dynamic_metadata.fields["grant_ids"].list_value.values] == [g.id]
    assert await admin.reason(demo_dir, workload="billing", path="/other") == "no_rule"  # outside the scope
    await admin.stub.EndGrant(pb.EndGrantRequest(id=g.id, reason="task done"))
    assert await admin.reason(demo_dir, **kw) == "no_rule"
    assert (await admin.stub.ListGrants(pb.ListGrantsRequest())).grants == []
    (ended,) = (await admin.stub.ListGrants(pb.ListGrantsRequest(include_inactive=True))).grants
    assert ended.end_reason == "task done"


async def test_a_pending_grant_does_nothing_and_its_maker_cannot_approve_it(
    admin: Admin, demo_dir: Path
) -> None:
    req = pb.CreateGrantRequest(
        principal=BILLING, scope=pb.Scope(paths=["/reports/*"]), duration_seconds=600, reason="audit"
    )
    g = (await admin.stub.CreateGrant(req, metadata=by("alice"))).grant
    assert await admin.reason(demo_dir, workload="billing", path="/reports/x") == "no_rule"
    listed = (await admin.stub.ListGrants(pb.ListGrantsRequest())).grants
    assert [x.id for x in listed] == [g.id]  # pending ones are listed: they wait for someone
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.stub.ApproveGrant(pb.ApproveGrantRequest(id=g.id, reason="me"), metadata=by("alice"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "different caller" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.stub.CreateGrant(
            pb.CreateGrantRequest(
                principal=BILLING, scope=pb.Scope(paths=["/x"]), duration_seconds=9 * 3600, reason="r"
            )
        )
    assert "grants.max_duration=8h" in (err.value.details() or "")


async def test_grant_expires_by_itself(admin: Admin, demo_dir: Path) -> None:
    await grant(admin, duration_seconds=600)
    assert await admin.reason(demo_dir, workload="billing", path="/reports/x") == "allowed"
    admin.clock.advance(seconds=601)
    assert await admin.reason(demo_dir, workload="billing", path="/reports/x") == "no_rule"


async def open_exception(admin: Admin, paths: list[str], **kw: Any) -> Any:
    return (
        await admin.stub.OpenException(
            pb.OpenExceptionRequest(
                principal=BILLING, scope=pb.Scope(paths=paths), reason="INC-42", duration_seconds=3600, **kw
            ),
            metadata=by("oncall"),
        )
    ).exception


async def test_exception_needs_a_second_person_is_time_boxed_visible_and_marked(
    admin: Admin, demo_dir: Path
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.stub.OpenException(
            pb.OpenExceptionRequest(
                principal=BILLING,
                scope=pb.Scope(paths=["/api/*"]),
                reason="incident",
                duration_seconds=5 * 3600,
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_duration" in (
        err.value.details() or ""
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.stub.OpenException(
            pb.OpenExceptionRequest(principal=BILLING, reason="incident", duration_seconds=600)
        )
    assert "at least a host" in (err.value.details() or "")
    e = await open_exception(admin, ["/api/*"])
    assert await admin.reason(demo_dir, workload="billing") == "no_rule"  # pending: no effect
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.stub.ApproveException(
            pb.ApproveExceptionRequest(id=e.id, reason="go"), metadata=by("oncall")
        )
    assert "different caller" in (err.value.details() or "")
    await admin.stub.ApproveException(pb.ApproveExceptionRequest(id=e.id, reason="go"), metadata=by("lead"))
    resp = await admin.check(demo_dir, workload="billing")
    assert resp.status.code == 0
    md = resp.dynamic_metadata.fields
    assert md["reason"].string_value == "exception" and md["exception_id"].string_value == e.id
    (listed,) = (await admin.stub.ListExceptions(pb.ListExceptionsRequest())).exceptions
    assert (listed.id, listed.opened_by, listed.approved_by) == (e.id, "local:oncall", "local:lead")
    # outside the exception's scope the policy decides as usual
    assert await admin.reason(demo_dir, workload="billing", path="/admin/x") == "policy_denied"
    await admin.stub.CloseException(pb.CloseExceptionRequest(id=e.id, reason="fixed"))
    assert await admin.reason(demo_dir, workload="billing") == "no_rule"


async def test_an_exception_does_not_open_what_a_deny_rule_closes(admin: Admin, demo_dir: Path) -> None:
    e = await open_exception(admin, ["/admin/*"])
    await admin.stub.ApproveException(pb.ApproveExceptionRequest(id=e.id, reason="go"), metadata=by("lead"))
    assert await admin.reason(demo_dir, workload="billing", path="/admin/users") == "policy_denied"


async def test_exception_never_overrides_a_revocation(admin: Admin, demo_dir: Path) -> None:
    e = await open_exception(admin, ["/api/*"])
    await admin.stub.ApproveException(pb.ApproveExceptionRequest(id=e.id, reason="go"), metadata=by("lead"))
    await admin.stub.Revoke(pb.RevokeRequest(value=BILLING, reason="compromised"))
    assert await admin.reason(demo_dir, workload="billing") == "revoked"


async def test_signal_is_seen_while_fresh(admin: Admin, demo_dir: Path) -> None:
    await admin.stub.PutSignal(
        pb.PutSignalRequest(
            subject_kind="workload",
            subject=FRONTEND,
            key="risk",
            value="high",
            ttl_seconds=300,
            reason="test",
        )
    )
    assert await admin.reason(demo_dir, workload="frontend") == "policy_denied"
    admin.clock.advance(seconds=301)  # stale: unknown again
    assert await admin.reason(demo_dir, workload="frontend") == "allowed"


async def test_quarantine_triggers_and_lifts(admin: Admin, demo_dir: Path) -> None:
    for _ in range(5):  # denials no rule decided do not count (by default: quarantine.count)
        assert await admin.reason(demo_dir, workload="billing") == "no_rule"
    for _ in range(3):  # what exceeds policy does: an explicit deny rule
        assert await admin.reason(demo_dir, workload="billing", path="/admin/x") == "policy_denied"

    # The quarantine revocation is written off the Check path: the next Checks see it.
    async def quarantined() -> bool:
        return await admin.reason(demo_dir, workload="billing") == "quarantined"

    await until(quarantined, "billing quarantined")
    (rev,) = (await admin.stub.ListRevocations(pb.ListRevocationsRequest())).revocations
    assert (
        rev.kind == "quarantine"
        and rev.source == "quarantine"
        and rev.value == BILLING
        and "3 denials" in rev.reason
    )
    assert await admin.reason(demo_dir, workload="frontend") == "allowed"  # others are not affected
    admin.clock.advance(minutes=16)
    assert await admin.reason(demo_dir, workload="billing") == "no_rule"


async def test_a_quarantine_is_released_by_a_verb_and_audited(admin: Admin, demo_dir: Path) -> None:
    for _ in range(3):
        await admin.reason(demo_dir, workload="billing", path="/admin/x")

    async def quarantined() -> bool:
        return await admin.reason(demo_dir, workload="billing") == "quarantined"

    await until(quarantined, "billing quarantined")
    released = await admin.stub.ReleaseQuarantine(
        pb.ReleaseQuarantineRequest(principal=BILLING, reason="false positive"), metadata=by("lead")
    )
    assert [r.end_reason for r in released.revocations] == ["false positive"]
    assert await admin.reason(demo_dir, workload="billing") == "no_rule"
    # Counting starts again from zero: one more denial does not quarantine again.
    assert await admin.reason(demo_dir, workload="billing", path="/admin/x") == "policy_denied"
    assert await admin.reason(demo_dir, workload="billing") == "no_rule"
    entries = (await admin.stub.ListAudit(pb.ListAuditRequest(principal=BILLING))).entries
    assert [(e.action, e.actor) for e in entries] == [
        ("quarantine", "ext-authz quarantine"),
        ("release", "local:lead"),
    ]
    assert json.loads(entries[1].before_json)["ended_at"] is None
    assert json.loads(entries[1].after_json)["end_reason"] == "false positive"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.stub.ReleaseQuarantine(pb.ReleaseQuarantineRequest(principal=BILLING, reason="again"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_unrevoke_keeps_the_record_and_a_second_revoke_returns_the_first(admin: Admin) -> None:
    first = await admin.stub.Revoke(pb.RevokeRequest(value=BILLING, reason="leaked"))
    again = await admin.stub.Revoke(pb.RevokeRequest(value=BILLING, reason="leaked", duration_seconds=60))
    assert again.existing and again.revocation.id == first.revocation.id
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.stub.Unrevoke(pb.UnrevokeRequest(id=first.revocation.id))
    assert "reason" in (err.value.details() or "")
    await admin.stub.Unrevoke(
        pb.UnrevokeRequest(id=first.revocation.id, reason="rotated"), metadata=by("lead")
    )
    assert (await admin.stub.ListRevocations(pb.ListRevocationsRequest())).revocations == []
    (kept,) = (await admin.stub.ListRevocations(pb.ListRevocationsRequest(include_expired=True))).revocations
    assert (kept.ended_by, kept.end_reason) == ("local:lead", "rotated")


async def test_a_signal_can_be_deleted_and_its_ttl_has_a_cap(admin: Admin, demo_dir: Path) -> None:
    put = pb.PutSignalRequest(
        subject_kind="workload", subject=FRONTEND, key="risk", value="high", ttl_seconds=300, reason="test"
    )
    await admin.stub.PutSignal(put)
    assert await admin.reason(demo_dir, workload="frontend") == "policy_denied"
    last = json.loads(admin.running.log.getvalue().splitlines()[-1])
    assert last["signals_read"] == ["workload.risk"] and "high" not in json.dumps(last)  # keys, not values
    await admin.stub.DeleteSignal(
        pb.DeleteSignalRequest(subject_kind="workload", subject=FRONTEND, key="risk", reason="false alarm")
    )
    assert await admin.reason(demo_dir, workload="frontend") == "allowed"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.stub.PutSignal(
            pb.PutSignalRequest(
                subject_kind="workload",
                subject=FRONTEND,
                key="risk",
                value="high",
                ttl_seconds=2 * 86400,
                reason="test",
            )
        )
    assert "signals.max_ttl=24h" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.stub.PutSignal(
            pb.PutSignalRequest(
                subject_kind="workload", subject="frontend", key="k", value="v", ttl_seconds=60, reason="test"
            )
        )
    assert "SPIFFE ID" in (err.value.details() or "")


@pytest.mark.parametrize(
    ("request_", "needle"),
    [
        (pb.RevokeRequest(value="spiffe://Example.org/x", reason="r"), "SPIFFE ID"),
        (pb.RevokeRequest(value="abc", kind="nope", reason="r"), "unknown kind"),
        (pb.RevokeRequest(value=FRONTEND, reason=" "), "reason"),
        (pb.RevokeRequest(value="abc", kind="cert", reason="r"), "fingerprint"),
    ],
)
async def test_bad_revocations_are_refused_and_change_nothing(
    admin: Admin, request_: Any, needle: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.stub.Revoke(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in (err.value.details() or "")
    assert (
        await admin.stub.ListRevocations(pb.ListRevocationsRequest(include_expired=True))
    ).revocations == []


async def test_watch_revocations_streams_changes(admin: Admin) -> None:
    stream = admin.stub.WatchRevocations(pb.WatchRevocationsRequest())
    await until(
        lambda: admin.running.runtime.replica.watchers > 1, "the stream subscribed"
    )  # metrics watch too
    rev = (await admin.stub.Revoke(pb.RevokeRequest(value=BILLING, reason="r"))).revocation
    created = await asyncio.wait_for(stream.read(), 5)
    assert created.op == "created" and created.revocation.id == rev.id
    await admin.stub.Unrevoke(pb.UnrevokeRequest(id=rev.id, reason="r"))
    removed = await asyncio.wait_for(stream.read(), 5)
    assert removed.op == "removed" and removed.revocation.id == rev.id
    stream.cancel()


async def test_tcp_admin_requires_mtls_and_an_allowed_spiffe_id(demo_dir: Path, tmp_path: Path) -> None:
    a = await start_admin(
        demo_dir,
        tmp_path,
        admin_listen="127.0.0.1:0",
        admin={
            "allowed_spiffe_ids": [FRONTEND],
            "cert": str(demo_dir / "envoy/server.pem"),
            "key": str(demo_dir / "envoy/server.key"),
            "client_ca": str(demo_dir / "bundle/root.pem"),
        },
    )
    port = a.running.server.addresses["admin"].rpartition(":")[2]
    try:
        root = (demo_dir / "bundle/root.pem").read_bytes()

        async def call(workload: str | None) -> grpc.StatusCode:
            if workload is None:
                creds = grpc.ssl_channel_credentials(root_certificates=root)
            else:
                creds = grpc.ssl_channel_credentials(
                    root_certificates=root,
                    private_key=(demo_dir / f"svid/{workload}.key").read_bytes(),
                    certificate_chain=(demo_dir / f"svid/{workload}.pem").read_bytes(),
                )
            async with grpc.aio.secure_channel(f"localhost:{port}", creds) as ch:
                try:
                    await admin_pb2_grpc.AdminStub(ch).ListRevocations(pb.ListRevocationsRequest(), timeout=5)
                except grpc.aio.AioRpcError as exc:
                    return exc.code()
                return grpc.StatusCode.OK

        assert await call("frontend") == grpc.StatusCode.OK
        assert await call("billing") == grpc.StatusCode.PERMISSION_DENIED
        assert await call(None) == grpc.StatusCode.UNAVAILABLE  # no client certificate: no TLS session
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await admin_pb2_grpc.AdminStub(plain).ListRevocations(pb.ListRevocationsRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await a.channel.close()
        await a.running.channel.close()
        await a.running.server.stop(0)


async def test_two_people_are_two_svids_over_tcp(demo_dir: Path, tmp_path: Path) -> None:
    """Over TCP each caller is the verified SPIFFE ID of its certificate: the opener cannot approve,
    whatever metadata it sends; another allowed SVID can."""
    a = await start_admin(
        demo_dir,
        tmp_path,
        admin_listen="127.0.0.1:0",
        admin={
            "allowed_spiffe_ids": [FRONTEND, BILLING],
            "cert": str(demo_dir / "envoy/server.pem"),
            "key": str(demo_dir / "envoy/server.key"),
        },
    )
    port = a.running.server.addresses["admin"].rpartition(":")[2]
    root = (demo_dir / "bundle/root.pem").read_bytes()

    def as_workload(name: str) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=root,
            private_key=(demo_dir / f"svid/{name}.key").read_bytes(),
            certificate_chain=(demo_dir / f"svid/{name}.pem").read_bytes(),
        )
        return grpc.aio.secure_channel(f"localhost:{port}", creds)

    try:
        async with as_workload("frontend") as fe, as_workload("billing") as bi:
            opener, other = admin_pb2_grpc.AdminStub(fe), admin_pb2_grpc.AdminStub(bi)
            e = (
                await opener.OpenException(
                    pb.OpenExceptionRequest(
                        principal=BILLING,
                        scope=pb.Scope(paths=["/api/*"]),
                        reason="INC",
                        duration_seconds=600,
                    ),
                    metadata=by("someone-else"),  # a claim, which TCP ignores
                )
            ).exception
            assert e.opened_by == FRONTEND
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await opener.ApproveException(
                    pb.ApproveExceptionRequest(id=e.id, reason="me"), metadata=by("x")
                )
            assert "different caller" in (err.value.details() or "")
            approved = await other.ApproveException(pb.ApproveExceptionRequest(id=e.id, reason="checked"))
            assert approved.exception.approved_by == BILLING
    finally:
        await a.channel.close()
        await a.running.channel.close()
        await a.running.server.stop(0)


async def test_approvals_over_the_unix_socket_are_refused_unless_local_approvals(
    demo_dir: Path, tmp_path: Path
) -> None:
    a = await start_admin(demo_dir, tmp_path, admin={"local_approvals": False})
    try:
        e = await open_exception(a, ["/api/*"])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await a.stub.ApproveException(
                pb.ApproveExceptionRequest(id=e.id, reason="go"), metadata=by("lead")
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "local_approvals" in (err.value.details() or "")
    finally:
        await a.channel.close()
        await a.running.channel.close()
        await a.running.server.stop(0)


# -- records that name an issuer or trust domain not configured: they would match nothing ------------
ISSUER = "https://idp.example.com"


def _unknown_requests(value: str, allow: bool) -> list[tuple[str, Any]]:
    scope = pb.Scope(paths=["/api/*"])
    return [
        ("Revoke", pb.RevokeRequest(kind="sub", value=value, reason="r", allow_unknown=allow)),
        (
            "CreateGrant",
            pb.CreateGrantRequest(
                principal=value, scope=scope, duration_seconds=60, reason="r", allow_unknown=allow
            ),
        ),
        (
            "OpenException",
            pb.OpenExceptionRequest(
                principal=value, scope=scope, duration_seconds=60, reason="r", allow_unknown=allow
            ),
        ),
        (
            "PutSignal",
            pb.PutSignalRequest(
                subject_kind="user",
                subject=value,
                key="risk",
                value="high",
                ttl_seconds=60,
                reason="r",
                allow_unknown=allow,
            ),
        ),
    ]


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (f"{ISSUER}/#carol", f"did you mean {ISSUER}?"),  # a trailing slash
        ("https://IDP.example.com#carol", f"did you mean {ISSUER}?"),  # another case
        ("https://idp.exampel.com#carol", f"did you mean {ISSUER}?"),  # a typo
        ("https://elsewhere.test#carol", ""),
    ],
)
async def test_a_record_about_an_issuer_not_configured_is_refused(
    admin: Admin, value: str, hint: str
) -> None:
    for method, request in _unknown_requests(value, allow=False):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(admin.stub, method)(request)
        details = err.value.details() or ""
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method
        assert f"issuer {value.partition('#')[0]!r} is not configured (configured: {ISSUER})" in details
        assert (hint in details) if hint else ("did you mean" not in details)
    assert (await admin.stub.ListRevocations(pb.ListRevocationsRequest())).revocations == []
    assert (await admin.stub.ListGrants(pb.ListGrantsRequest(include_inactive=True))).grants == []
    assert (await admin.stub.ListAudit(pb.ListAuditRequest())).entries == []


async def test_a_workload_of_a_trust_domain_not_configured_is_refused(admin: Admin) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.stub.Revoke(pb.RevokeRequest(value="spiffe://example.org.evil/x", reason="r"))
    assert "trust domain 'example.org.evil' is not configured (configured: example.org)" in (
        err.value.details() or ""
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await admin.stub.Revoke(pb.RevokeRequest(kind="jti", value="spiffe://other.org#j1", reason="r"))
    assert "trust domain 'other.org'" in (err.value.details() or "")


async def test_allow_unknown_keeps_the_record_and_says_it_matches_nothing(
    admin: Admin, demo_dir: Path
) -> None:
    value = "https://later.example.com#carol"
    for method, request in _unknown_requests(value, allow=True):
        resp = await getattr(admin.stub, method)(request)
        record = next(getattr(resp, f.name) for f in resp.DESCRIPTOR.fields if f.message_type)
        assert record.unmatched == "issuer 'https://later.example.com' is not configured", method
    (rev,) = (await admin.stub.ListRevocations(pb.ListRevocationsRequest())).revocations
    (grant,) = (await admin.stub.ListGrants(pb.ListGrantsRequest())).grants
    (exc,) = (await admin.stub.ListExceptions(pb.ListExceptionsRequest())).exceptions
    (sig,) = (await admin.stub.ListSignals(pb.ListSignalsRequest())).signals
    assert rev.unmatched and grant.unmatched and exc.unmatched and sig.unmatched
    entries = (await admin.stub.ListAudit(pb.ListAuditRequest())).entries
    assert len(entries) == 4 and all(e.unmatched for e in entries)
    # A configured principal is never marked.
    known = await admin.stub.Revoke(pb.RevokeRequest(value=FRONTEND, reason="r"))
    assert known.revocation.unmatched == ""
    assert await admin.reason(demo_dir, workload="frontend") == "revoked"


@pytest.mark.parametrize(
    ("hosts", "paths", "named"),
    [
        ([], ["*"], "--path '*' is every path"),
        ([], ["/*"], "--path '/*' is every path"),
        ([], ["/**"], "--path '/**' is every path"),
        ([], ["/api/*", "/*"], "--path '/*' is every path"),  # one of them is everything: so is the list
        (["*"], [], "--host '*' is every host"),
        (["*:*"], ["/*"], "--host '*:*' is every host"),
        (["*.*"], [], "--host '*.*' is every host"),
        (["*.*.*:443"], [], "--host '*.*.*:443' is every host"),
    ],
)
async def test_a_scope_that_matches_everything_is_no_scope(
    admin: Admin, hosts: list[str], paths: list[str], named: str
) -> None:
    scope = pb.Scope(hosts=hosts, paths=paths)
    for method, request in (
        (
            "CreateGrant",
            pb.CreateGrantRequest(principal=BILLING, scope=scope, duration_seconds=60, reason="r"),
        ),
        (
            "OpenException",
            pb.OpenExceptionRequest(principal=BILLING, scope=scope, duration_seconds=60, reason="r"),
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await getattr(admin.stub, method)(request)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not everything" in (err.value.details() or "") and named in (err.value.details() or "")


async def test_everything_on_one_side_is_fine_when_the_other_names_something(admin: Admin) -> None:
    scope = pb.Scope(hosts=["*"], paths=["/api/*"])
    made = await admin.stub.CreateGrant(
        pb.CreateGrantRequest(principal=BILLING, scope=scope, duration_seconds=60, reason="r")
    )
    assert list(made.grant.scope.paths) == ["/api/*"]


async def test_ending_twice_is_refused_as_unrevoking_twice_is(admin: Admin) -> None:
    scope = pb.Scope(paths=["/reports/*"])
    g = (
        await admin.stub.CreateGrant(
            pb.CreateGrantRequest(principal=BILLING, scope=scope, duration_seconds=600, reason="r")
        )
    ).grant
    await admin.stub.EndGrant(pb.EndGrantRequest(id=g.id, reason="done"))
    e = (
        await admin.stub.OpenException(
            pb.OpenExceptionRequest(principal=BILLING, scope=scope, duration_seconds=600, reason="r")
        )
    ).exception
    await admin.stub.CloseException(pb.CloseExceptionRequest(id=e.id, reason="done"))
    for call in (
        admin.stub.EndGrant(pb.EndGrantRequest(id=g.id, reason="again")),
        admin.stub.CloseException(pb.CloseExceptionRequest(id=e.id, reason="again")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "already" in (
            err.value.details() or ""
        )


async def test_audit_record_ids_are_printable(admin: Admin) -> None:
    await admin.stub.PutSignal(
        pb.PutSignalRequest(
            subject_kind="workload", subject=FRONTEND, key="risk", value="high", ttl_seconds=60, reason="r"
        )
    )
    (entry,) = (await admin.stub.ListAudit(pb.ListAuditRequest())).entries
    assert entry.record_id == f"workload:{FRONTEND}:risk" and entry.record_id.isprintable()
