"""OpenID Shared Signals, served for real: SETs pushed to POST /ssf/events on http_listen (RFC 8935),
polled (RFC 8936) with stream management, and two ext-authz instances as transmitter and receiver."""

from __future__ import annotations

import asyncio
import errno
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from joserfc.jwk import RSAKey

from ext_authz._proto import admin_pb2 as pb
from ext_authz._proto import admin_pb2_grpc
from ext_authz.dev import pki
from ext_authz.serve.http import free_port
from ext_authz.state.records import Revocation, Signal
from tests.component.checkreq import check_request
from tests.component.test_server import Running
from tests.component.test_streams import sample, scrape, start
from tests.ssfkit import CAEP, RISC, SSF, jwks_file, mint_set, new_key
from tests.waiting import until

IDP = "https://idp.example.com"
ALICE = f"{IDP}#alice"
FRONTEND = "spiffe://example.org/ns/frontend/sa/web"
TRANSMITTER = "https://ssf.idp.example.com"
US = "https://authz.example.com"
SECRET = "s3cret-push-token-0123456789"


async def post(
    address: str, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str], str]:
    host, _, port = address.rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n{head}\r\n".encode()
        + body
    )
    await writer.drain()
    data = await reader.read()
    writer.close()
    raw_head, _, text = data.decode().partition("\r\n\r\n")
    lines = raw_head.split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), hdrs, text


@dataclass
class Receiver:
    running: Running
    key: Any
    demo: Path

    @property
    def http(self) -> str:
        address = self.running.http
        assert address is not None
        return address

    def set(self, event: str, payload: dict[str, Any], sub_id: dict[str, Any] | None, **claims: Any) -> str:
        body: dict[str, Any] = {
            "iss": TRANSMITTER,
            "aud": US,
            "iat": int(time.time()),
            "jti": f"set-{time.time_ns()}",
            "events": {event: payload},
            **claims,
        }
        if sub_id is not None:
            body["sub_id"] = sub_id
        return mint_set(self.key, body)

    async def push(self, token: str, *, secret: str = SECRET, ctype: str = "application/secevent+jwt") -> Any:
        headers = {"Content-Type": ctype, "Accept": "application/json"}
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        return await post(self.http, "/ssf/events", token.encode(), headers)

    async def reason(self, **kw: Any) -> str:
        resp = await self.running.stub.Check(check_request(self.demo, **kw))
        return str(resp.dynamic_metadata.fields["reason"].string_value)

    def admin(self) -> Any:
        ch = grpc.aio.insecure_channel(self.running.runtime.engine.config.admin_listen)
        return ch, admin_pb2_grpc.AdminStub(ch)


def alice_token(demo: Path, **claims: Any) -> str:
    key = RSAKey.import_key(json.loads((demo / "idp/idp.key.json").read_text()))
    now = int(time.time())
    body = {
        "iss": IDP,
        "aud": "backend-api",
        "sub": "alice",
        "roles": ["reader"],
        "iat": now,
        "exp": now + 3600,
    }
    body.update(claims)
    return pki.mint_jwt(key, body, alg="RS256")


@pytest.fixture
async def receiver(demo_dir: Path, tmp_path: Path) -> AsyncIterator[Receiver]:
    key = new_key()
    (tmp_path / "push-secret").write_text(SECRET + "\n")
    shared = {
        "receivers": [
            {
                "issuer": TRANSMITTER,
                "jwks": str(jwks_file(tmp_path / "ssf-jwks.json", key)),
                "audience": US,
                "for_issuers": [IDP, "spiffe://example.org"],
                "authorization_file": str(tmp_path / "push-secret"),
                "devices": True,
            }
        ]
    }
    r = await start(demo_dir, tmp_path / "authz", shared_signals=shared)
    yield Receiver(r, key, demo_dir)
    await r.channel.close()
    await r.server.stop(0)


PROFILE = {"path": "/user/me", "listener": "edge"}


async def test_a_pushed_session_revocation_refuses_the_users_older_tokens(receiver: Receiver) -> None:
    older = alice_token(receiver.demo, iat=int(time.time()) - 60)
    assert await receiver.reason(token=older, **PROFILE) == "allowed"
    token = receiver.set(
        CAEP + "session-revoked",
        {"event_timestamp": int(time.time()), "reason_admin": {"en": "Landspeed Policy Violation"}},
        {"format": "iss_sub", "iss": IDP, "sub": "alice"},
    )
    status, _, body = await receiver.push(token)
    assert (status, body) == (202, "")
    assert await receiver.reason(token=older, **PROFILE) == "revoked"  # the next request, no wait
    newer = alice_token(receiver.demo, iat=int(time.time()) + 2)  # she signed in again since
    assert await receiver.reason(token=newer, **PROFILE) == "allowed"
    ch, admin = receiver.admin()
    try:
        (rev,) = (await admin.ListRevocations(pb.ListRevocationsRequest())).revocations
        assert (rev.kind, rev.value, rev.source) == ("sub", ALICE, "ssf")
        assert (
            rev.created_by == f"ssf:{TRANSMITTER}"
            and "Landspeed" in rev.reason
            and rev.ref.startswith("set-")
        )
        entries = (await admin.ListAudit(pb.ListAuditRequest(principal=ALICE))).entries
        assert [(e.action, e.actor) for e in entries] == [("revoke", f"ssf:{TRANSMITTER}")]
    finally:
        await ch.close()
    m = await scrape(receiver.running)
    assert sample(m, "ext_authz_ssf_events_total", event="session-revoked", result="applied") == 1
    record = json.loads(receiver.running.log.getvalue().splitlines()[-2])  # the refused request
    assert record["reason"] == "revoked" and record["revocation"]["id"] == rev.id


@pytest.mark.parametrize(
    ("change", "err"),
    [
        ({"ctype": "application/json"}, "invalid_request"),
        ({"secret": ""}, "authentication_failed"),
        ({"secret": "wrong"}, "authentication_failed"),
        ({"key": "another"}, "invalid_key"),
        ({"iss": "https://evil.example"}, "invalid_issuer"),
        ({"aud": "https://someone-else.example"}, "invalid_audience"),
        ({"iat": int(time.time()) - 7200}, "invalid_request"),
        ({"alg": "none"}, "invalid_request"),
    ],
)
async def test_a_refused_set_gets_rfc8935s_error_and_changes_nothing(
    receiver: Receiver, change: dict[str, Any], err: str
) -> None:
    claims = {k: v for k, v in change.items() if k in ("iss", "aud", "iat")}
    token = receiver.set(
        RISC + "account-disabled", {}, {"format": "iss_sub", "iss": IDP, "sub": "alice"}, **claims
    )
    if change.get("key"):
        token = mint_set(new_key(), json.loads(_payload(token)))
    if change.get("alg") == "none":
        from tests.ssfkit import unsigned

        token = unsigned(json.loads(_payload(token)))
    status, headers, body = await receiver.push(
        token, secret=change.get("secret", SECRET), ctype=change.get("ctype", "application/secevent+jwt")
    )
    assert (
        status == 400
        and headers["content-type"] == "application/json"
        and headers["content-language"] == "en"
    )
    assert json.loads(body)["err"] == err and json.loads(body)["description"]
    assert await receiver.reason(token=alice_token(receiver.demo, iat=1), **PROFILE) == "allowed"


def _payload(token: str) -> str:
    import base64

    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


async def test_a_replayed_set_is_answered_and_changes_nothing(receiver: Receiver) -> None:
    """account-disabled, account-enabled, then the disabled SET again (captured, resent): still enabled."""
    subject = {"format": "iss_sub", "iss": IDP, "sub": "alice"}
    disabled = receiver.set(RISC + "account-disabled", {"reason": "hijacking"}, subject)
    assert (await receiver.push(disabled))[0] == 202
    assert await receiver.reason(token=alice_token(receiver.demo), **PROFILE) == "revoked"
    assert (await receiver.push(receiver.set(RISC + "account-enabled", {}, subject)))[0] == 202
    assert await receiver.reason(token=alice_token(receiver.demo), **PROFILE) == "allowed"
    assert (await receiver.push(disabled))[0] == 202  # RFC 8935: a duplicate is answered as the first
    assert await receiver.reason(token=alice_token(receiver.demo), **PROFILE) == "allowed"
    m = await scrape(receiver.running)
    assert sample(m, "ext_authz_ssf_events_total", event="account-disabled", result="duplicate") == 1


async def test_account_enabled_lifts_only_what_that_transmitter_revoked(receiver: Receiver) -> None:
    ch, admin = receiver.admin()
    try:
        await admin.Revoke(pb.RevokeRequest(kind="sub", value=ALICE, reason="our own incident"))
        enabled = receiver.set(
            RISC + "account-enabled", {}, {"format": "iss_sub", "iss": IDP, "sub": "alice"}
        )
        assert (await receiver.push(enabled))[0] == 202
        assert await receiver.reason(token=alice_token(receiver.demo), **PROFILE) == "revoked"
    finally:
        await ch.close()


async def test_a_subject_of_another_issuer_is_acknowledged_and_ignored(receiver: Receiver) -> None:
    token = receiver.set(
        RISC + "account-disabled", {}, {"format": "iss_sub", "iss": "https://partner.example", "sub": "alice"}
    )
    assert (await receiver.push(token))[0] == 202
    assert await receiver.reason(token=alice_token(receiver.demo), **PROFILE) == "allowed"
    unknown = receiver.set(CAEP + "session-presented", {}, {"format": "iss_sub", "iss": IDP, "sub": "alice"})
    assert (await receiver.push(unknown))[0] == 202
    m = await scrape(receiver.running)
    assert sample(m, "ext_authz_ssf_events_total", event="account-disabled", result="ignored") == 1
    assert sample(m, "ext_authz_ssf_events_total", event="other", result="ignored") == 1


async def test_device_compliance_and_workload_events(receiver: Receiver) -> None:
    token = receiver.set(
        CAEP + "device-compliance-change",
        {"current_status": "not-compliant", "previous_status": "compliant"},
        {"format": "complex", "device": {"format": "opaque", "id": "LAPTOP-7"}},
    )
    assert (await receiver.push(token))[0] == 202
    ch, admin = receiver.admin()
    try:
        (sig,) = (await admin.ListSignals(pb.ListSignalsRequest())).signals
        assert (sig.subject_kind, sig.subject, sig.key, sig.value, sig.source) == (
            "device",
            "LAPTOP-7",
            "compliance",
            "not-compliant",
            "ssf",
        )
    finally:
        await ch.close()
    assert await receiver.reason(workload="frontend") == "allowed"
    workload = receiver.set(RISC + "account-disabled", {}, {"format": "uri", "uri": FRONTEND})
    assert (await receiver.push(workload))[0] == 202
    assert await receiver.reason(workload="frontend") == "revoked"


# --- two instances: A transmits, B receives --------------------------------------------------------------


@dataclass
class Pair:
    a: Running
    b: Running
    demo: Path


async def make_pair(demo: Path, tmp: Path, delivery: str) -> Pair:
    """Each names the other in its config, so neither can take port 0 and report it: the ports are chosen
    free, and the pair is started again on others if something took one meanwhile."""
    for attempt in range(5):
        try:
            return await _start_pair(demo, tmp / f"try-{attempt}", delivery, free_port(), free_port())
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    raise RuntimeError("the ports were taken five times over")


async def _start_pair(demo: Path, tmp: Path, delivery: str, a_http: int, b_http: int) -> Pair:
    tmp.mkdir(parents=True)
    issuer = f"http://127.0.0.1:{a_http}"
    key = new_key("ES256", kid="a-1")
    (tmp / "a-key.json").write_text(json.dumps(key.as_dict(private=True)))
    (tmp / "stream-secret").write_text("pair-secret-0123456789")
    stream: dict[str, Any] = {
        "audience": "https://b.example",
        "delivery": delivery,
        "authorization_file": str(tmp / "stream-secret"),
        "send_reasons": True,
    }
    if delivery == "push":
        stream["push_url"] = f"http://127.0.0.1:{b_http}/ssf/events"
    a = await start(
        demo,
        tmp / "a",
        http_listen=f"127.0.0.1:{a_http}",
        shared_signals={
            "transmitter": {"issuer": issuer, "key": str(tmp / "a-key.json"), "streams": [stream]}
        },
    )
    receiver: dict[str, Any] = {
        "issuer": issuer,
        "jwks": f"{issuer}/ssf/jwks.json",
        "audience": "https://b.example",
        "delivery": delivery,
        "for_issuers": [IDP, "spiffe://example.org"],
        "authorization_file": str(tmp / "stream-secret"),
        "poll_interval": "100ms",
    }
    if delivery == "poll":
        receiver["manage_stream"] = True  # the poll endpoint comes from the stream's configuration
    try:
        b = await start(
            demo, tmp / "b", http_listen=f"127.0.0.1:{b_http}", shared_signals={"receivers": [receiver]}
        )
    except BaseException:
        await a.channel.close()
        await a.server.stop(0)
        raise
    return Pair(a, b, demo)


@pytest.mark.parametrize("delivery", ["push", "poll"])
async def test_a_revocation_made_on_a_is_enforced_by_b(demo_dir: Path, tmp_path: Path, delivery: str) -> None:
    pair = await make_pair(demo_dir, tmp_path, delivery)
    try:
        b_ssf = pair.b.runtime.ssf
        assert b_ssf is not None
        (state,) = b_ssf.receivers.receivers.values()
        await until(
            lambda: pair.b.runtime.engine.trust.transmitters[state.cfg.issuer].fetched_at is not None,
            "B fetched A's keys",
        )
        if delivery == "poll":
            await until(lambda: state.verified_at is not None, "B's stream at A verified")
        older = alice_token(demo_dir, iat=int(time.time()) - 60)

        async def b_reason(**kw: Any) -> str:
            resp = await pair.b.stub.Check(check_request(demo_dir, **kw))
            return str(resp.dynamic_metadata.fields["reason"].string_value)

        assert await b_reason(token=older, **PROFILE) == "allowed"
        ch = grpc.aio.insecure_channel(pair.a.runtime.engine.config.admin_listen)
        try:
            await admin_pb2_grpc.AdminStub(ch).Revoke(
                pb.RevokeRequest(kind="sub", value=ALICE, reason="phished")
            )
        finally:
            await ch.close()

        async def refused() -> bool:
            return await b_reason(token=older, **PROFILE) == "revoked"

        await until(refused, "B refuses alice's token")
        (rev,) = [r for r in pair.b.runtime.replica.snapshot.revocations if r.value == ALICE]
        assert rev.source == "ssf" and "phished" in rev.reason
        # B's revocation came from A: B never sends it back (no echo between instances).
        a_revs = pair.a.runtime.replica.snapshot.revocations
        assert [r.source for r in a_revs] == ["api"]
    finally:
        for r in (pair.b, pair.a):
            await r.channel.close()
            await r.server.stop(0)


async def test_the_transmitter_describes_itself_and_guards_its_endpoints(
    demo_dir: Path, tmp_path: Path
) -> None:
    from tests.component.test_server import _http_get

    pair = await make_pair(demo_dir, tmp_path, "poll")
    try:
        a_http = pair.a.http
        assert a_http is not None
        code, body = await _http_get(a_http, "/.well-known/ssf-configuration")
        meta = json.loads(body)
        assert code == 200 and meta["issuer"] == f"http://{a_http}" and meta["spec_version"] == "1_0"
        assert "urn:ietf:rfc:8936" in meta["delivery_methods_supported"]
        code, body = await _http_get(a_http, "/ssf/jwks.json")
        (key,) = json.loads(body)["keys"]
        assert code == 200 and "d" not in key and key["alg"] == "ES256"  # public only
        status, headers, _ = await post(a_http, "/ssf/poll", b"{}", {"Content-Type": "application/json"})
        assert status == 401 and "bearer" in headers["www-authenticate"].lower()
        wrong = {"Content-Type": "application/json", "Authorization": "Bearer nope"}
        assert (await post(a_http, "/ssf/poll", b"{}", {"Authorization": "Bearer "}))[0] == 401
        assert (await post(a_http, "/ssf/poll", b"{}", wrong))[0] == 401
        # SSF 1.0 §8.1.2.2: a status update's response echoes its reason
        ours = {"Content-Type": "application/json", "Authorization": "Bearer pair-secret-0123456789"}
        update = {"status": "paused", "reason": "Disabled by administrator action."}
        status, _, text = await post(a_http, "/ssf/status", json.dumps(update).encode(), ours)
        answer = json.loads(text)
        assert status == 200 and (answer["status"], answer["reason"]) == ("paused", update["reason"])
        code, body = await _http_get(a_http, "/ssf/status", headers={"Authorization": ours["Authorization"]})
        assert json.loads(body)["reason"] == update["reason"]
    finally:
        for r in (pair.b, pair.a):
            await r.channel.close()
            await r.server.stop(0)


async def test_a_verification_with_a_state_we_did_not_ask_for_is_refused(receiver: Receiver) -> None:
    token = receiver.set(SSF + "verification", {"state": "not-ours"}, {"format": "opaque", "id": "stream-1"})
    status, _, body = await receiver.push(token)
    assert status == 400 and json.loads(body)["err"] == "invalid_state"
    unsolicited = receiver.set(SSF + "verification", {}, {"format": "opaque", "id": "stream-1"})
    assert (await receiver.push(unsolicited))[0] == 202


async def test_a_set_carrying_a_token_in_its_reason_is_refused_without_repeating_it(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    leaked = alice_token(receiver.demo)
    token = receiver.set(
        CAEP + "session-revoked",
        {"reason_admin": {"en": f"token {leaked}"}},
        {"format": "iss_sub", "iss": IDP, "sub": "alice"},
    )
    status, _, body = await receiver.push(token)
    assert status == 400 and json.loads(body)["err"] == "invalid_request"
    assert leaked.split(".")[1] not in body and leaked.split(".")[1] not in caplog.text
    assert await receiver.reason(token=leaked, **PROFILE) == "allowed"  # nothing was applied


# --- what a security review found: each as a hostile case ------------------------------------------------


async def test_an_idps_account_enabled_never_lifts_an_operators_revocation(receiver: Receiver) -> None:
    """The IdP disables alice; an operator revokes her too (a record of its own, not 'already revoked');
    the IdP enables her again: the operator's revocation stands."""
    subject = {"format": "iss_sub", "iss": IDP, "sub": "alice"}
    assert (await receiver.push(receiver.set(RISC + "account-disabled", {}, subject)))[0] == 202
    ch, admin = receiver.admin()
    try:
        resp = await admin.Revoke(pb.RevokeRequest(kind="sub", value=ALICE, reason="our own incident"))
        assert not resp.existing and resp.revocation.created_by.startswith("local:")
    finally:
        await ch.close()
    assert (await receiver.push(receiver.set(RISC + "account-enabled", {}, subject)))[0] == 202
    assert await receiver.reason(token=alice_token(receiver.demo), **PROFILE) == "revoked"


async def test_a_late_account_enabled_does_not_undo_a_later_disable(receiver: Receiver) -> None:
    subject = {"format": "iss_sub", "iss": IDP, "sub": "alice"}
    now = int(time.time())
    purge = receiver.set(RISC + "account-purged", {"event_timestamp": now - 5}, subject)
    late_enable = receiver.set(RISC + "account-enabled", {"event_timestamp": now - 60}, subject)
    assert (await receiver.push(purge))[0] == 202
    assert (await receiver.push(late_enable))[0] == 202  # it happened before the purge: lifts nothing
    assert await receiver.reason(token=alice_token(receiver.demo), **PROFILE) == "revoked"


async def test_a_set_a_little_ahead_of_our_clock_is_applied_and_answered(receiver: Receiver) -> None:
    subject = {"format": "iss_sub", "iss": IDP, "sub": "alice"}
    ahead = receiver.set(RISC + "account-disabled", {}, subject, iat=int(time.time()) + 10)  # within leeway
    assert (await receiver.push(ahead))[0] == 202
    assert await receiver.reason(token=alice_token(receiver.demo), **PROFILE) == "revoked"
    assert (await receiver.push(ahead))[0] == 202  # and kept as seen: a duplicate now
    m = await scrape(receiver.running)
    assert sample(m, "ext_authz_ssf_events_total", event="account-disabled", result="duplicate") == 1


async def test_one_set_cannot_make_unbounded_changes(receiver: Receiver) -> None:
    aliases = {
        "format": "aliases",
        "identifiers": [{"format": "iss_sub", "iss": IDP, "sub": f"user-{i}"} for i in range(16)],
    }
    claims = {f"c{i}": "x" for i in range(32)}
    token = receiver.set(CAEP + "token-claims-change", {"claims": claims}, aliases)
    status, _, body = await receiver.push(token)
    assert status == 400 and json.loads(body)["err"] == "invalid_request"
    ch, admin = receiver.admin()
    try:
        assert list((await admin.ListSignals(pb.ListSignalsRequest())).signals) == []  # none, not some
    finally:
        await ch.close()


async def test_a_session_of_another_issuers_user_names_nobody(receiver: Receiver) -> None:
    foreign = {
        "format": "complex",
        "user": {"format": "iss_sub", "iss": "https://partner.example", "sub": "alice"},
        "session": {"format": "opaque", "id": "sess-alice-1"},
    }
    assert (await receiver.push(receiver.set(CAEP + "session-revoked", {}, foreign)))[0] == 202
    assert await receiver.reason(token=alice_token(receiver.demo, sid="sess-alice-1"), **PROFILE) == "allowed"


async def test_devices_only_from_a_receiver_that_may_name_them(demo_dir: Path, tmp_path: Path) -> None:
    key = new_key()
    (tmp_path / "push-secret").write_text(SECRET)
    shared = {
        "receivers": [
            {
                "issuer": TRANSMITTER,
                "jwks": str(jwks_file(tmp_path / "ssf-jwks.json", key)),
                "audience": US,
                "for_issuers": [IDP],
                "authorization_file": str(tmp_path / "push-secret"),
            }
        ]
    }
    r = await start(demo_dir, tmp_path / "authz", shared_signals=shared)
    try:
        rc = Receiver(r, key, demo_dir)
        device = {"format": "opaque", "id": "LAPTOP-7"}
        compliance = {"current_status": "not-compliant", "previous_status": "compliant"}
        assert (await rc.push(rc.set(CAEP + "device-compliance-change", compliance, device)))[0] == 202
        alone = {"format": "complex", "device": device}
        assert (await rc.push(rc.set(CAEP + "session-revoked", {}, alone)))[0] == 202
        # devices: false (the default): a device on its own is named by nobody here
        assert r.runtime.replica.snapshot.revocations == ()
        assert list(r.runtime.replica.all(Signal)) == []
        # ... while with a user it only narrows: alice's credentials on LAPTOP-7
        jane_on_d = {
            "format": "complex",
            "user": {"format": "iss_sub", "iss": IDP, "sub": "alice"},
            "device": device,
        }
        assert (await rc.push(rc.set(CAEP + "session-revoked", {}, jane_on_d)))[0] == 202
        revs: list[Revocation] = list(r.runtime.replica.snapshot.revocations)
        (rev,) = revs
        assert (rev.kind, rev.value, rev.also) == ("sub", ALICE, (("device", "LAPTOP-7"),))
    finally:
        await r.channel.close()
        await r.server.stop(0)


async def test_the_http_listener_answers_malformed_requests(receiver: Receiver) -> None:
    host, _, port = receiver.http.rpartition(":")

    async def raw(data: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(data)
        await writer.drain()
        out = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return out

    odd_length = "POST /ssf/events HTTP/1.1\r\nContent-Length: \u00b2\r\n\r\n".encode("latin-1")
    assert (await raw(odd_length)).startswith(b"HTTP/1.1 400")
    assert (await raw(b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 400")
    assert (await raw(b"GET /x HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n")).startswith(b"HTTP/1.1 400")
    chunked = b"POST /ssf/events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    assert (await raw(chunked)).startswith(b"HTTP/1.1 400")
    assert (await raw(b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")).startswith(b"HTTP/1.1 200")
    # HTTP/1.1 keeps the connection: two requests, two answers, then the client closes
    two = await raw(b"GET /healthz HTTP/1.1\r\n\r\nGET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert two.count(b"HTTP/1.1 200") == 2 and b"Connection: keep-alive" in two


async def test_a_broken_secret_on_reload_keeps_the_last_good_and_a_rotation_is_picked_up(
    receiver: Receiver, tmp_path: Path
) -> None:
    from tests.component.test_server import _http_get

    secret = tmp_path / "push-secret"
    subject = {"format": "iss_sub", "iss": IDP, "sub": "alice"}
    secret.write_bytes(bytes(range(256)))  # not a secret: not UTF-8, not printable
    assert not await receiver.running.server.reloader.check()
    code, body = await _http_get(receiver.http, "/readyz")
    assert code == 200 and "degraded: last reload failed" in body and "authorization_file" in body
    # The last good secret still authenticates the transmitter.
    assert (await receiver.push(receiver.set(CAEP + "session-presented", {}, subject)))[0] == 202
    rotated = "rotated-secret-abcdefghijklmnop"
    secret.write_text(rotated)
    assert await receiver.running.server.reloader.check()
    assert (await receiver.push(receiver.set(CAEP + "session-presented", {}, subject)))[0] == 400
    status, _, _ = await receiver.push(receiver.set(CAEP + "session-presented", {}, subject), secret=rotated)
    assert status == 202


async def test_a_receiver_refusing_what_we_send_is_counted_and_shown(demo_dir: Path, tmp_path: Path) -> None:
    """B names itself otherwise than A's stream does: every SET A pushes is refused (invalid_audience).
    A counts it by error code, and `ext-authz ssf status` shows the refusal and why."""
    pair = await make_pair(demo_dir, tmp_path, "push")
    try:
        b_ssf = pair.b.runtime.ssf
        assert b_ssf is not None
        (state,) = b_ssf.receivers.receivers.values()
        await until(
            lambda: pair.b.runtime.engine.trust.transmitters[state.cfg.issuer].fetched_at is not None,
            "B fetched A's keys",
        )
        state.cfg = state.cfg.model_copy(update={"audience": "https://not-b.example"})
        ch = grpc.aio.insecure_channel(pair.a.runtime.engine.config.admin_listen)
        try:
            await admin_pb2_grpc.AdminStub(ch).Revoke(
                pb.RevokeRequest(kind="sub", value=ALICE, reason="phished")
            )
        finally:
            await ch.close()

        async def counted() -> bool:
            m = await scrape(pair.a)
            return sample(m, "ext_authz_ssf_receiver_errors_total", error="invalid_audience") == 1

        await until(counted, "A counted B's refusal")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ext_authz.cli",
            "ssf",
            "status",
            "--config",
            str(pair.a.config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        text = out.decode()
        assert "https://b.example" in text and "invalid_audience=1" in text and "HTTP 400" in text, text
    finally:
        for r in (pair.b, pair.a):
            await r.channel.close()
            await r.server.stop(0)
