"""Every example SET of the OpenID Shared Signals texts, pushed to a fresh running server, then Checked.

The examples are tests/data/ssf/spec_examples.json: transcribed from openid/sharedsignals (SSF 1.0,
CAEP 1.0 and RISC 1.0 final at e47d2a0c3c7c860109243221f864da70ed4cba71; the pre-final drafts at
349167e3 and the 2021 drafts at 404f2180; see its ``_source``). Each is re-signed with a test key, its
``iat`` set to now and its ``event_timestamp`` (when it has one, in its own unit) to a minute ago, and
pushed to a server that receives from the example's ``iss`` under the example's ``aud``, for the
issuers its subject names (with ``devices: true``). Then the principals it names are Checked: who is
refused, who is not, and who signing in again (a token issued after the event) passes.

The expectations below are ours: what each example means, read from the text around it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ext_authz.ssf.receiver import metric_event
from ext_authz.state.records import Signal
from tests.component.ssfstack import EMAIL_ISSUER, SsfStack, now, start_stack
from tests.component.test_streams import sample
from tests.conftest import REPO
from tests.ssfkit import RISC

DATA = json.loads((REPO / "tests/data/ssf/spec_examples.json").read_text())
EXAMPLES: dict[str, dict[str, Any]] = {e["name"]: e for e in DATA["examples"]}


@dataclass(frozen=True)
class Who:
    """A Check by a token: ``who`` is ISSUER#SUBJECT (or EMAIL_ISSUER#ADDRESS), issued ``when``
    (``before`` or ``after`` the event), with ``claims``; ``want`` is the decision's reason."""

    who: str
    when: str
    want: str
    claims: dict[str, Any] = field(default_factory=dict)
    path: str = "/user/me"


@dataclass(frozen=True)
class Expect:
    result: str  # the receiver's result: applied | ignored | verified | refused:ERR
    checks: tuple[Who, ...] = ()
    signals: tuple[tuple[str, str, str, str], ...] = ()  # (kind, subject, key, value) it holds after
    first: tuple[dict[str, Any], ...] = ()  # SETs pushed before the example (events dated earlier)
    stream_status: str = ""


def W(who: str, when: str, want: str, path: str = "/user/me", **claims: Any) -> Who:
    return Who(who, when, want, claims, path)


SSF5 = "https://idp.example.com/3957ea72-1b66-44d6-a044-d805712b9288/"
JANE5 = f"{SSF5}#jane.smith@example.com"
DEVICE5 = "e9297990-14d2-42ec-a4a9-4036db86509a"
C1 = "https://idp.example.com/123456789/"
C2 = "https://idp.example.com/987654321/"
C3 = "https://idp.example.com/3456789/"
SID = "dMTlD|1600802906337.16|16008.16"
JTI = "f61t6e20zdo3px56gepu8rzlsp4c1dpc0fx7"
RISC_USER = "https://idp.example.com/#7375626A656374"
BYSTANDER = f"{C1}#bystander"
ENABLED_FIRST = {
    "event": RISC + "account-disabled",
    "sub_id": {"format": "email", "email": "foo@example.com"},
}

# By the example's name without its draft number: the pre-final drafts' examples are the final ones.
EXPECT: dict[str, Expect] = {
    # --- SSF 1.0 ---------------------------------------------------------------------------------------
    "ssf-1.0-verification-1": Expect("verified"),
    "ssf-1.0-verification-2": Expect("verified"),
    "ssf-1.0-stream-updated-1": Expect("applied", stream_status="paused"),
    "ssf-1.0-account-enabled-1": Expect(  # lifts what this transmitter's earlier disable did
        "applied",
        first=(ENABLED_FIRST,),
        checks=(W(f"{EMAIL_ISSUER}#foo@example.com", "before", "allowed"),),
    ),
    "ssf-1.0-account-disabled-1": Expect(  # a phone number names no one here
        "ignored", checks=(W(BYSTANDER, "before", "allowed"),)
    ),
    "ssf-1.0-token-claims-change-1": Expect(
        "applied",
        signals=(("user", f"{EMAIL_ISSUER}#user@example.com", "claims.token", "some-token-value"),),
        checks=(W(f"{EMAIL_ISSUER}#user@example.com", "before", "allowed"),),
    ),
    "ssf-1.0-session-revoked-1": Expect(  # {user: jane, device: D}: jane's credentials on D
        "applied",
        checks=(
            W(JANE5, "before", "revoked", device_id=DEVICE5),
            W(JANE5, "before", "allowed", device_id="another-device"),
            W(f"{SSF5}#bob@example.com", "before", "allowed", device_id=DEVICE5),
            W(JANE5, "after", "allowed", device_id=DEVICE5),
        ),
    ),
    "ssf-1.0-token-claims-change-2": Expect(
        "applied", signals=(("user", f"{EMAIL_ISSUER}#foo@example2.com", "claims.role", "ro-admin"),)
    ),
    "ssf-1.0-token-claims-change-3": Expect("ignored"),  # a catalog item is no one
    # --- CAEP 1.0 --------------------------------------------------------------------------------------
    "caep-1.0-session-revoked-1": Expect(  # an opaque subject in session-revoked: the session
        "applied",
        checks=(
            W(f"{C1}#someone", "before", "revoked", sid=SID),
            W(f"{C1}#someone", "before", "allowed", sid="another-session"),
            W(f"{C1}#someone", "after", "allowed", sid=SID),
        ),
    ),
    "caep-1.0-session-revoked-2": Expect(  # {session, user, tenant}
        "applied",
        checks=(
            W(f"{C1}#99beb27c-c1c2-4955-882a-e0dc4996fcbc", "before", "revoked", sid=SID, tenant="123456789"),
            W(f"{C1}#99beb27c-c1c2-4955-882a-e0dc4996fcbc", "before", "revoked", sid=SID),  # no tenant claim
            W(f"{C1}#99beb27c-c1c2-4955-882a-e0dc4996fcbc", "before", "allowed", sid="another-session"),
            W(f"{C1}#99beb27c-c1c2-4955-882a-e0dc4996fcbc", "before", "allowed", sid=SID, tenant="another"),
            W(f"{C1}#someone-else", "before", "allowed", sid=SID, tenant="123456789"),
            W(f"{C1}#99beb27c-c1c2-4955-882a-e0dc4996fcbc", "after", "allowed", sid=SID, tenant="123456789"),
        ),
    ),
    "caep-1.0-session-revoked-3": Expect(  # {user, device, tenant}
        "applied",
        checks=(
            W(f"{C1}#jane.smith@example.com", "before", "revoked", device_id=DEVICE5, tenant="123456789"),
            W(f"{C1}#jane.smith@example.com", "before", "allowed", device_id="another-device"),
            W(f"{C1}#bob@example.com", "before", "allowed", device_id=DEVICE5, tenant="123456789"),
            W(f"{C1}#jane.smith@example.com", "after", "allowed", device_id=DEVICE5, tenant="123456789"),
        ),
    ),
    "caep-1.0-token-claims-change-1": Expect(  # role: ro-admin on that one token
        "applied",
        signals=(("token", f"{C2}#{JTI}", "claims.role", '"ro-admin"'),),
        checks=(
            W(f"{C2}#jane", "before", "policy_denied", path="/user/settings", jti=JTI),
            W(f"{C2}#jane", "before", "allowed", path="/user/settings", jti="another-token"),
        ),
    ),
    "caep-1.0-token-claims-change-2": Expect(  # trusted_network: false on that one token
        "applied",
        signals=(("token", f"{C2}#{JTI}", "claims.trusted_network", "false"),),
        checks=(
            W(f"{C2}#jane", "before", "policy_denied", jti=JTI),
            W(f"{C2}#jane", "before", "allowed", jti="another-token"),
        ),
    ),
    "caep-1.0-token-claims-change-3": Expect("ignored"),  # a SAML assertion: no token of ours
    "caep-1.0-credential-change-1": Expect(  # create: a key was enrolled; nothing to refuse
        "applied",
        signals=(("user", f"{C3}#jane.smith@example.com", "credential_change", "create fido2-roaming"),),
        checks=(W(f"{C3}#jane.smith@example.com", "before", "allowed"),),
    ),
    "caep-1.0-assurance-level-change-1": Expect(
        "applied",
        signals=(
            ("user", f"{C3}#jane.smith@example.com", "assurance_level", "nist-aal2"),
            ("user", f"{C3}#jane.smith@example.com", "assurance_namespace", "NIST-AAL"),
            ("user", f"{C3}#jane.smith@example.com", "assurance_direction", "increase"),
        ),
    ),
    "caep-1.0-assurance-level-change-2": Expect(
        "applied",
        signals=(
            ("user", f"{C3}#jane.smith@example.com", "assurance_level", "hi-res-scan"),
            ("user", f"{C3}#jane.smith@example.com", "assurance_namespace", "Retinal Scan"),
        ),
    ),
    "caep-1.0-device-compliance-change-1": Expect(
        "applied",
        signals=(("device", DEVICE5, "compliance", "not-compliant"),),
        checks=(
            W(f"{C1}#jane", "before", "policy_denied", device_id=DEVICE5),
            W(f"{C1}#jane", "after", "policy_denied", device_id=DEVICE5),  # a fact about the device now
            W(f"{C1}#jane", "before", "allowed", device_id="another-device"),
        ),
    ),
    "caep-1.0-session-established-1": Expect("ignored"),
    "caep-1.0-session-presented-1": Expect("ignored"),
    "caep-1.0-risk-level-change-1": Expect(
        "applied", signals=(("user", f"{C3}#jane.doe@example.com", "risk", "LOW"),)
    ),
    # --- RISC 1.0 --------------------------------------------------------------------------------------
    "risc-1.0-account-credential-change-required-1": Expect("ignored"),
    "risc-1.0-account-disabled-1": Expect(  # every credential, until account-enabled
        "applied",
        checks=(
            W(RISC_USER, "before", "revoked"),
            W(RISC_USER, "after", "revoked"),
            W("https://idp.example.com/#someone-else", "before", "allowed"),
        ),
    ),
    "risc-1.0-identifier-changed-1": Expect("ignored"),
    "risc-1.0-identifier-recycled-1": Expect("ignored"),
    "risc-1.0-credential-compromise-1": Expect(
        "applied",
        checks=(
            W("https://idp.example.com/3456790/#joe.smith@example.com", "before", "revoked"),
            W("https://idp.example.com/3456790/#joe.smith@example.com", "after", "allowed"),
        ),
    ),
}
# The 2021 drafts (subject in the event, legacy spellings): what differs from the final texts.
EXPECT.update(
    {
        "ssf-1.0-draft01-account-enabled-1": EXPECT["ssf-1.0-account-enabled-1"],
        "ssf-1.0-draft01-session-revoked-1": EXPECT["ssf-1.0-session-revoked-1"],
        "ssf-1.0-draft01-token-claims-change-1": EXPECT["ssf-1.0-token-claims-change-2"],
        "ssf-1.0-draft01-token-claims-change-2": Expect("ignored"),
        "ssf-1.0-draft01-verification-1": Expect("verified"),
        "ssf-1.0-draft01-verification-2": Expect("verified"),
        "ssf-1.0-draft01-stream-updated-1": Expect("applied", stream_status="paused"),
        "ssf-1.0-draft01-account-disabled-1": Expect("ignored"),  # a phone number
        "ssf-1.0-draft01-token-claims-changed-1": Expect("ignored"),  # a misspelt event type: not one we know
        "caep-1.0-draft02-session-revoked-1": EXPECT["caep-1.0-session-revoked-1"],
        "caep-1.0-draft02-session-revoked-2": EXPECT["caep-1.0-session-revoked-2"],
        "caep-1.0-draft02-session-revoked-3": EXPECT["caep-1.0-session-revoked-3"],
        "caep-1.0-draft02-token-claims-change-1": EXPECT["caep-1.0-token-claims-change-1"],
        "caep-1.0-draft02-token-claims-change-2": dataclasses.replace(  # the draft wrote "false", a string
            EXPECT["caep-1.0-token-claims-change-2"],
            signals=(("token", f"{C2}#{JTI}", "claims.trusted_network", '"false"'),),
        ),
        "caep-1.0-draft02-token-claims-change-3": Expect("ignored"),
        "caep-1.0-draft02-credential-change-1": EXPECT["caep-1.0-credential-change-1"],
        # CAEP 1.0 requires namespace (the draft had none): refused, nothing applied
        "caep-1.0-draft02-assurance-level-change-1": Expect("refused:invalid_request"),
        "caep-1.0-draft02-device-compliance-change-1": EXPECT["caep-1.0-device-compliance-change-1"],
        "risc-1.0-draft01-account-credential-change-required-1": Expect("ignored"),
        "risc-1.0-draft01-account-disabled-1": EXPECT["risc-1.0-account-disabled-1"],
        "risc-1.0-draft01-identifier-changed-1": Expect("ignored"),
        "risc-1.0-draft01-identifier-recycled-1": Expect("ignored"),
        "risc-1.0-draft01-credential-compromise-1": EXPECT["risc-1.0-credential-compromise-1"],
    }
)


def final_name(name: str) -> str:
    """The final text's example a pre-final draft 05/03 example reproduces."""
    return re.sub(r"-draft0[35]-", "-", name)


def expectation(name: str) -> Expect:
    if name in EXPECT:
        return EXPECT[name]
    final = final_name(name)
    assert EXAMPLES[name]["claims"] == EXAMPLES[final]["claims"], f"{name} differs from {final}"
    return EXPECT[final]


def test_every_example_has_an_expectation() -> None:
    assert len(EXAMPLES) == 77  # every example SET of the texts and drafts (see _source)
    for name in EXAMPLES:
        expectation(name)
    assert not set(EXPECT) - set(EXAMPLES)


def _issuers(obj: Any) -> set[str]:
    """Every issuer a subject names (iss_sub, jwt_id), however deep."""
    found: set[str] = set()
    if isinstance(obj, dict):
        if isinstance(obj.get("iss"), str):
            found.add(obj["iss"])
        for v in obj.values():
            found |= _issuers(v)
    return found


def _event(claims: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    ((event_type, payload),) = claims["events"].items()
    return event_type, payload


def _resigned(claims: dict[str, Any], t: int) -> dict[str, Any]:
    """The example with iat now and event_timestamp a minute ago (milliseconds where it was)."""
    out: dict[str, Any] = json.loads(json.dumps(claims))
    out["iat"] = t
    _, payload = _event(out)
    if "event_timestamp" in payload:
        payload["event_timestamp"] = (t - 60) * 1000 if payload["event_timestamp"] > 10**11 else t - 60
    return out


def _first_set(example: dict[str, Any], spec: dict[str, Any], t: int) -> dict[str, Any]:
    return {
        "iss": example["iss"],
        "aud": example["aud"],
        "iat": t,
        "jti": f"first-{secrets.token_hex(6)}",
        "sub_id": spec["sub_id"],
        "events": {spec["event"]: {"event_timestamp": t - 600}},
    }


def _token(stack: SsfStack, check: Who, t: int) -> str:
    issuer, _, sub = check.who.partition("#")
    iat = t - 300 if check.when == "before" else t + 5
    claims = dict(check.claims)
    if issuer == EMAIL_ISSUER:
        claims["email"] = sub
    return stack.token(issuer, sub, iat, **claims)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
async def test_spec_example(name: str, demo_dir: Path, tmp_path: Path) -> None:
    example = EXAMPLES[name]["claims"]
    expect = expectation(name)
    audience = example["aud"][0] if isinstance(example["aud"], list) else example["aud"]
    event_type, payload = _event(example)
    # The token issuers the subject names, and those of the people Checked.
    issuers = _issuers(example.get("sub_id")) | _issuers(payload.get("subject"))
    issuers |= {c.who.partition("#")[0] for c in expect.checks} | {BYSTANDER.partition("#")[0]}
    stack = await start_stack(
        demo_dir,
        tmp_path,
        transmitters=[example["iss"]],
        issuers=sorted(issuers),
        receiver={"devices": True},
        audience=audience,
    )
    try:
        t = now()
        receivers = stack.running.runtime.ssf
        assert receivers is not None
        state = receivers.receivers.receivers[example["iss"]]
        if "verification" in event_type:  # as if we had asked for it (stream management)
            state.expected_state = payload.get("state")
        sub_id = example.get("sub_id")
        if (
            isinstance(sub_id, dict)
            and sub_id.get("format") == "opaque"
            and event_type.rsplit("/", 1)[-1]
            in (
                "verification",
                "stream-updated",
            )
        ):
            state.stream_id = sub_id["id"]
        for spec in expect.first:
            assert (await stack.push(_first_set(example, spec, t)))[0] == 202
        status, body = await stack.push(_resigned(example, t))
        if expect.result.startswith("refused:"):
            assert (status, json.loads(body)["err"]) == (400, expect.result.partition(":")[2])
        else:
            assert (status, body) == (202, "")
            m = await stack.metrics()
            label = metric_event(event_type)
            assert sample(m, "ext_authz_ssf_events_total", event=label, result=expect.result) == 1, (
                f"{name}: not {expect.result}"
            )
        if expect.result == "verified":
            assert state.verified_at is not None
        if expect.stream_status:
            assert state.stream_status == expect.stream_status
        held = {
            (s.subject_kind, s.subject, s.key, s.value)
            for s in stack.running.runtime.replica.all(Signal)
            if not s.key.startswith("account@")
        }
        assert set(expect.signals) == held, name
        for check in expect.checks:
            got = await stack.reason(_token(stack, check, t), check.path)
            assert got == check.want, f"{name}: {check}"
    finally:
        await stack.close()
