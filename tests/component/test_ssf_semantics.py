"""What a Security Event Token means, Checked: complex subjects apply to their combination, an opaque
subject is what its event is about, a token's changed claims reach policy, credential-change acts by
change_type, account events are ordered by when they happened, critical subject members are honoured.

Each hostile or misread case of issue 28 is a test here, against a running server, by the Checks of the
principals the event names and of those it does not."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ext_authz.state.records import Revocation, Signal
from tests.component.ssfstack import AUDIENCE, SsfStack, now, start_stack
from tests.component.test_streams import sample
from tests.ssfkit import CAEP, RISC, SSF

TX = "https://ssf.idp.example.com"
IDP = "https://idp.example.com"
OTHER_IDP = "https://other-idp.example.com"


def a_set(
    event: str, sub_id: dict[str, Any] | None, payload: dict[str, Any] | None = None, **claims: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "iss": TX,
        "aud": AUDIENCE,
        "iat": now(),
        "jti": f"set-{event.rsplit('/', 1)[-1]}-{secrets.token_hex(8)}",
        "events": {event: payload or {}},
        **claims,
    }
    if sub_id is not None:
        body["sub_id"] = sub_id
    return body


def user(sub: str, iss: str = IDP) -> dict[str, str]:
    return {"format": "iss_sub", "iss": iss, "sub": sub}


def opaque(value: str) -> dict[str, str]:
    return {"format": "opaque", "id": value}


@pytest.fixture
async def stack(demo_dir: Path, tmp_path: Path) -> AsyncIterator[SsfStack]:
    s = await start_stack(demo_dir, tmp_path, transmitters=[TX], issuers=[IDP, OTHER_IDP])
    yield s
    await s.close()


async def test_a_complex_subject_applies_to_its_combination(stack: SsfStack) -> None:
    """CAEP 1.0 §3.1, third example: session-revoked for {user: jane, device: D}."""
    t = now()
    before, after = t - 300, t + 5
    event = a_set(
        CAEP + "session-revoked",
        {"format": "complex", "user": user("jane"), "device": opaque("D")},
        {"event_timestamp": t - 60},
    )
    assert (await stack.push(event))[0] == 202
    assert await stack.reason(stack.token(IDP, "jane", before, device_id="D")) == "revoked"
    assert await stack.reason(stack.token(IDP, "jane", before, device_id="E")) == "allowed"  # another device
    assert await stack.reason(stack.token(IDP, "bob", before, device_id="D")) == "allowed"  # another user
    assert await stack.reason(stack.token(IDP, "jane", after, device_id="D")) == "allowed"  # signed in again
    # A credential that does not say which device it is on cannot show it is not on D: refused.
    assert await stack.reason(stack.token(IDP, "jane", before)) == "revoked"
    # The same subject value at another issuer is another person.
    assert await stack.reason(stack.token(OTHER_IDP, "jane", before, device_id="D")) == "allowed"


async def test_user_and_tenant_apply_together(stack: SsfStack) -> None:
    t = now()
    event = a_set(
        RISC + "account-disabled",
        {"format": "complex", "user": user("jane"), "tenant": opaque("acme")},
        {"event_timestamp": t - 60},
    )
    assert (await stack.push(event))[0] == 202
    assert await stack.reason(stack.token(IDP, "jane", t, tenant="acme")) == "revoked"
    assert await stack.reason(stack.token(IDP, "jane", t, tenant="globex")) == "allowed"
    assert await stack.reason(stack.token(IDP, "jane", t)) == "revoked"  # says no tenant: within it


async def test_a_device_revocation_refuses_only_what_was_issued_before_it(
    demo_dir: Path, tmp_path: Path
) -> None:
    s = await start_stack(demo_dir, tmp_path, transmitters=[TX], issuers=[IDP], receiver={"devices": True})
    try:
        t = now()
        event = a_set(
            CAEP + "session-revoked",
            {"format": "complex", "device": opaque("D")},
            {"event_timestamp": t - 60},
        )
        assert (await s.push(event))[0] == 202
        assert await s.reason(s.token(IDP, "jane", t - 300, device_id="D")) == "revoked"
        assert (
            await s.reason(s.token(IDP, "bob", t - 300, device_id="D")) == "revoked"
        )  # the device, for everyone
        assert await s.reason(s.token(IDP, "jane", t + 5, device_id="D")) == "allowed"  # issued after: passes
        assert await s.reason(s.token(IDP, "jane", t - 300, device_id="E")) == "allowed"
    finally:
        await s.close()


async def test_an_opaque_subject_in_session_revoked_is_a_session(stack: SsfStack) -> None:
    """CAEP 1.0 §3.1, first example: an opaque id alone; the next example shows it is the session."""
    sid = "dMTlD|1600802906337.16|16008.16"
    t = now()
    event = a_set(CAEP + "session-revoked", opaque(sid), {"event_timestamp": t - 60})
    assert (await stack.push(event))[0] == 202
    assert await stack.reason(stack.token(IDP, "jane", t - 300, sid=sid)) == "revoked"
    assert await stack.reason(stack.token(IDP, "jane", t - 300, sid="another")) == "allowed"
    assert await stack.reason(stack.token(IDP, "jane", t - 300)) == "allowed"
    # The session of each token issuer of the receiver (an opaque id alone does not say which)
    revs = stack.running.runtime.replica.snapshot.revocations
    assert {(r.kind, r.value) for r in revs} >= {("sid", f"{IDP}#{sid}"), ("sid", f"{OTHER_IDP}#{sid}")}


async def test_a_receiver_can_read_opaque_subjects_as_devices(demo_dir: Path, tmp_path: Path) -> None:
    s = await start_stack(
        demo_dir,
        tmp_path,
        transmitters=[TX],
        issuers=[IDP],
        receiver={"devices": True, "opaque_subject": "device"},
    )
    try:
        t = now()
        assert (await s.push(a_set(CAEP + "session-revoked", opaque("D"), {"event_timestamp": t - 60})))[
            0
        ] == 202
        assert await s.reason(s.token(IDP, "jane", t - 300, device_id="D")) == "revoked"
        assert await s.reason(s.token(IDP, "jane", t - 300, sid="D")) == "allowed"
    finally:
        await s.close()


async def test_a_session_is_its_issuers_and_its_users(stack: SsfStack) -> None:
    t = now()
    event = a_set(
        CAEP + "session-revoked",
        {"format": "complex", "session": opaque("S-1"), "user": user("jane")},
        {"event_timestamp": t - 60},
    )
    assert (await stack.push(event))[0] == 202
    assert await stack.reason(stack.token(IDP, "jane", t - 300, sid="S-1")) == "revoked"
    assert await stack.reason(stack.token(IDP, "bob", t - 300, sid="S-1")) == "allowed"  # another user's sid
    assert await stack.reason(stack.token(OTHER_IDP, "jane", t - 300, sid="S-1")) == "allowed"
    assert await stack.reason(stack.token(IDP, "jane", t - 300, sid="S-2")) == "allowed"  # her other session


async def test_token_claims_change_about_one_token_changes_what_policy_sees(
    demo_dir: Path, tmp_path: Path
) -> None:
    """CAEP 1.0 §3.2, second example: trusted_network false for one token (a jwt_id subject), from the
    token's own issuer. Another transmitter (for the same issuer's users) may not change what a token it
    did not issue claims: what it says is only signals.token."""
    s = await start_stack(demo_dir, tmp_path, transmitters=[IDP, TX], issuers=[IDP, OTHER_IDP])
    try:
        t = now()
        mine = s.token(IDP, "jane", t - 60, jti="tok-1")
        other = s.token(IDP, "jane", t - 60, jti="tok-2")
        assert await s.reason(mine) == "allowed"  # remembered per credential before the change
        change = {"event_timestamp": t - 10, "claims": {"trusted_network": False}}
        from_tx = a_set(
            CAEP + "token-claims-change", {"format": "jwt_id", "iss": IDP, "jti": "tok-2"}, change
        )
        assert (await s.push(from_tx))[0] == 202
        assert await s.reason(other) == "allowed"  # a third party's say-so is a signal, not a claim
        (sig,) = [x for x in s.running.runtime.replica.all(Signal) if x.subject_kind == "token"]
        assert (sig.subject, sig.key, sig.value) == (f"{IDP}#tok-2", f"claims.trusted_network@{TX}", "false")
        event = a_set(
            CAEP + "token-claims-change", {"format": "jwt_id", "iss": IDP, "jti": "tok-1"}, change, iss=IDP
        )
        assert (await s.push(event))[0] == 202
        assert await s.reason(mine) == "policy_denied"
        assert await s.reason(other) == "allowed"
        # The third party, later, cannot undo what the issuer said about tok-1.
        undo = {"event_timestamp": t - 5, "claims": {"trusted_network": True}}
        later = a_set(CAEP + "token-claims-change", {"format": "jwt_id", "iss": IDP, "jti": "tok-1"}, undo)
        assert (await s.push(later))[0] == 202
        assert await s.reason(mine) == "policy_denied"
        # The same jti from another issuer is another token.
        assert await s.reason(s.token(OTHER_IDP, "jane", t - 60, jti="tok-1")) == "allowed"
    finally:
        await s.close()


@pytest.mark.parametrize(
    ("change", "refused"), [("create", False), ("revoke", True), ("delete", True), ("update", True)]
)
async def test_credential_change_acts_by_change_type(stack: SsfStack, change: str, refused: bool) -> None:
    t = now()
    older = stack.token(IDP, "jane", t - 300)
    event = a_set(
        CAEP + "credential-change",
        user("jane"),
        {"credential_type": "fido2-roaming", "change_type": change, "event_timestamp": t - 60},
    )
    assert (await stack.push(event))[0] == 202
    assert await stack.reason(older) == ("revoked" if refused else "allowed")
    assert await stack.reason(stack.token(IDP, "jane", t + 5)) == "allowed"
    if not refused:
        (sig,) = [s for s in stack.running.runtime.replica.all(Signal) if s.key == "credential_change"]
        assert (sig.subject, sig.value) == (f"{IDP}#jane", "create fido2-roaming")


async def test_a_late_disable_never_undoes_a_newer_enable(stack: SsfStack) -> None:
    """A retry or a poll batch: account-disabled dated t-40 arrives after account-enabled dated t-20."""
    t = now()
    token = stack.token(IDP, "jane", t)
    assert (await stack.push(a_set(RISC + "account-enabled", user("jane"), {"event_timestamp": t - 20})))[
        0
    ] == 202
    assert (await stack.push(a_set(RISC + "account-disabled", user("jane"), {"event_timestamp": t - 40})))[
        0
    ] == 202
    assert await stack.reason(token) == "allowed"
    assert not [r for r in stack.running.runtime.replica.all(Revocation) if r.active(t)]
    m = await stack.metrics()
    assert sample(m, "ext_authz_ssf_events_total", event="account-disabled", result="ignored") == 1
    # A newer disable still applies.
    assert (await stack.push(a_set(RISC + "account-disabled", user("jane"), {"event_timestamp": t - 10})))[
        0
    ] == 202
    assert await stack.reason(token) == "revoked"


async def test_a_late_enable_never_undoes_a_newer_disable(stack: SsfStack) -> None:
    t = now()
    token = stack.token(IDP, "jane", t)
    assert (await stack.push(a_set(RISC + "account-disabled", user("jane"), {"event_timestamp": t - 20})))[
        0
    ] == 202
    assert (await stack.push(a_set(RISC + "account-enabled", user("jane"), {"event_timestamp": t - 40})))[
        0
    ] == 202
    assert await stack.reason(token) == "revoked"
    assert (await stack.push(a_set(RISC + "account-enabled", user("jane"), {"event_timestamp": t - 5})))[
        0
    ] == 202
    assert await stack.reason(token) == "allowed"


async def test_an_enable_in_one_tenant_lifts_only_that_tenants_disable(stack: SsfStack) -> None:
    t = now()
    for tenant in ("acme", "globex"):
        sub = {"format": "complex", "user": user("jane"), "tenant": opaque(tenant)}
        assert (await stack.push(a_set(RISC + "account-disabled", sub, {"event_timestamp": t - 30})))[
            0
        ] == 202
    sub = {"format": "complex", "user": user("jane"), "tenant": opaque("acme")}
    assert (await stack.push(a_set(RISC + "account-enabled", sub, {"event_timestamp": t - 10})))[0] == 202
    assert await stack.reason(stack.token(IDP, "jane", t, tenant="acme")) == "allowed"
    assert await stack.reason(stack.token(IDP, "jane", t, tenant="globex")) == "revoked"
    # An enable for jane with no tenant is as wide as both: it lifts the other too.
    assert (await stack.push(a_set(RISC + "account-enabled", user("jane"), {"event_timestamp": t - 5})))[
        0
    ] == 202
    assert await stack.reason(stack.token(IDP, "jane", t, tenant="globex")) == "allowed"


async def test_a_critical_member_it_cannot_process_discards_the_event(demo_dir: Path, tmp_path: Path) -> None:
    s = await start_stack(
        demo_dir, tmp_path, transmitters=[TX], issuers=[IDP], receiver={"critical_subject_members": ["group"]}
    )
    try:
        t = now()
        sub = {"format": "complex", "user": user("jane"), "group": opaque("contractors")}
        assert (await s.push(a_set(CAEP + "session-revoked", sub, {"event_timestamp": t - 60})))[0] == 202
        assert await s.reason(s.token(IDP, "jane", t - 300)) == "allowed"
        m = await s.metrics()
        assert sample(m, "ext_authz_ssf_events_total", event="session-revoked", result="discarded") == 1
        # A member not marked critical is dropped and the event applies without it (SSF's wildcard).
        sub = {"format": "complex", "user": user("jane"), "application": opaque("payroll")}
        assert (await s.push(a_set(CAEP + "session-revoked", sub, {"event_timestamp": t - 60})))[0] == 202
        assert await s.reason(s.token(IDP, "jane", t - 300)) == "revoked"
    finally:
        await s.close()


async def test_a_user_of_another_issuer_names_nobody_even_with_a_device(
    demo_dir: Path, tmp_path: Path
) -> None:
    """Dropping a user this receiver may not name would widen the event to everyone on the device."""
    s = await start_stack(demo_dir, tmp_path, transmitters=[TX], issuers=[IDP], receiver={"devices": True})
    try:
        t = now()
        sub = {"format": "complex", "user": user("jane", "https://stranger.example"), "device": opaque("D")}
        assert (await s.push(a_set(CAEP + "session-revoked", sub, {"event_timestamp": t - 60})))[0] == 202
        assert await s.reason(s.token(IDP, "bob", t - 300, device_id="D")) == "allowed"
        assert s.running.runtime.replica.snapshot.revocations == ()
    finally:
        await s.close()


async def test_a_verification_for_another_stream_is_refused(stack: SsfStack) -> None:
    receivers = stack.running.runtime.ssf
    assert receivers is not None
    state = receivers.receivers.receivers[TX]
    state.stream_id = "stream-ours"  # as stream management would have set it
    state.expected_state = "st-1"
    status, body = await stack.push(a_set(SSF + "verification", opaque("stream-theirs"), {"state": "st-1"}))
    assert status == 400 and '"invalid_request"' in body
    assert state.verified_at is None
    assert (await stack.push(a_set(SSF + "verification", opaque("stream-ours"), {"state": "st-1"})))[0] == 202
    assert state.verified_at is not None


async def test_a_late_disable_in_a_tenant_never_undoes_a_newer_enable_everywhere(stack: SsfStack) -> None:
    t = now()
    assert (await stack.push(a_set(RISC + "account-enabled", user("jane"), {"event_timestamp": t - 10})))[
        0
    ] == 202
    sub = {"format": "complex", "user": user("jane"), "tenant": opaque("acme")}
    assert (await stack.push(a_set(RISC + "account-disabled", sub, {"event_timestamp": t - 30})))[0] == 202
    assert await stack.reason(stack.token(IDP, "jane", t, tenant="acme")) == "allowed"


async def test_a_device_header_cannot_take_a_request_out_of_a_narrowed_revocation(
    demo_dir: Path, tmp_path: Path
) -> None:
    """The header is the client's word: jane, revoked on D, saying "I am on E" in a header is refused."""
    s = await start_stack(
        demo_dir,
        tmp_path,
        transmitters=[TX],
        issuers=[IDP],
        device={"claim": "device_id", "header": "x-device-id"},
    )
    try:
        t = now()
        sub = {"format": "complex", "user": user("jane"), "device": opaque("D")}
        assert (await s.push(a_set(CAEP + "session-revoked", sub, {"event_timestamp": t - 60})))[0] == 202
        older = s.token(IDP, "jane", t - 300)
        assert await s.reason(older, headers={"x-device-id": "E"}) == "revoked"
        assert await s.reason(s.token(IDP, "jane", t - 300, device_id="E")) == "allowed"  # the IdP's word
    finally:
        await s.close()


async def test_a_fact_narrowed_to_a_session_is_not_applied_to_the_whole_user(stack: SsfStack) -> None:
    """An assurance increase for jane's session S kept for all of jane would widen access."""
    t = now()
    sub = {"format": "complex", "user": user("jane"), "session": opaque("S")}
    payload = {
        "namespace": "NIST-AAL",
        "current_level": "nist-aal3",
        "change_direction": "increase",
        "event_timestamp": t,
    }
    assert (await stack.push(a_set(CAEP + "assurance-level-change", sub, payload)))[0] == 202
    assert [x for x in stack.running.runtime.replica.all(Signal) if x.subject_kind == "user"] == []


async def test_a_set_never_replaces_a_newer_operator_signal(stack: SsfStack) -> None:
    t = now()
    from ext_authz.state import commands

    mine = commands.put_signal("user", f"{IDP}#jane", "risk", "high", 3600, "local:alice", t)
    await stack.running.runtime.replica.put(mine, reason="by hand")
    payload = {"current_level": "low", "principal": "USER", "event_timestamp": t - 60}
    assert (await stack.push(a_set(CAEP + "risk-level-change", user("jane"), payload)))[0] == 202
    (sig,) = [x for x in stack.running.runtime.replica.all(Signal) if x.key == "risk"]
    assert (sig.value, sig.set_by) == ("high", "local:alice")


@pytest.mark.parametrize("where", ["device", "tenant"])
async def test_a_lone_surrogate_is_a_clean_refusal(stack: SsfStack, where: str) -> None:
    """JSON can escape a lone surrogate, which is no text: 400, not a fault and a retry loop."""
    sub = {"format": "complex", "user": user("jane"), where: opaque("x")}
    body = a_set(CAEP + "session-revoked", sub)
    from tests.ssfkit import b64, mint_set

    token = mint_set(stack.set_key, body)
    head, _claims, _ = token.split(".")
    raw = json.dumps(body).replace('"id": "x"', '"id": "\\ud800"')
    forged = f"{head}.{b64(raw.encode())}.x"
    from tests.component.ssfstack import SECRET
    from tests.component.test_ssf import post

    headers = {"Content-Type": "application/secevent+jwt", "Authorization": f"Bearer {SECRET}"}
    status, _, text = await post(stack.running.http, "/ssf/events", forged.encode(), headers)
    assert status == 400 and json.loads(text)["err"] == "invalid_request"
