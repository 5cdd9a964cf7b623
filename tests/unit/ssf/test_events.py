"""The published example SETs (RFC 8417, SSF, CAEP, RISC), re-signed with a test key, through
verification, subject resolution and the event table: what each does to continuous-trust state."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from ext_authz.dev import pki
from ext_authz.ssf.events import changes_for, event_key
from ext_authz.ssf.sets import SetError, verify_set
from ext_authz.ssf.subjects import SubjectError, resolve
from ext_authz.trust.bundles import parse_jwks
from tests.ssfkit import CAEP, EXAMPLES, RISC, mint_set, new_key

KEY = new_key("RS256", kid="rsa-1")
KEYS = parse_jwks(json.dumps({"keys": [pki.jwk_public(KEY, use="sig")]}).encode(), "test", require_use=None)
HOLD = 86_400.0


def run(example: dict[str, Any], now: float) -> tuple[str, Any]:
    claims = {**example["claims"], "iat": int(now)}
    token = mint_set(KEY, claims, alg="RS256")
    try:
        event = verify_set(
            token,
            issuer=claims["iss"],
            audience=example["audience"],
            keys=KEYS,
            algorithms=("RS256",),
            now=now,
            max_age=3600,
        )
    except SetError as exc:
        return f"refused:{exc.err}", None
    key = event_key(event.event_type)
    if key.endswith("/verification"):
        return "verification", event
    if event.sub_id is None:
        return "refused:invalid_request", None
    subject = resolve(
        event.sub_id, frozenset(example["for_issuers"]), frozenset(example.get("email_issuers", []))
    )
    changes = changes_for(event, subject, now=now, hold=HOLD, signal_ttl=3600)
    return ("ignored" if changes.empty else "applied"), (event, changes)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e["name"] for e in EXAMPLES])
def test_published_examples(example: dict[str, Any]) -> None:
    now = time.time()
    outcome, detail = run(example, now)
    assert outcome == example["expect"], example["name"]
    if outcome != "applied":
        return
    event, changes = detail
    revocations = [*changes.revocations, *(r for _, r in changes.accounts if r is not None)]

    def row(r: Any) -> list[Any]:  # [kind, value, bounded by issuance, (the parts it is narrowed to)]
        out: list[Any] = [r.kind, r.value, r.issued_before is not None]
        return [*out, [list(p) for p in r.also]] if r.also else out

    assert [row(r) for r in revocations] == example.get("revocations", [])
    for r in revocations:
        assert r.source == "ssf" and r.ref == event.jti and r.created_by == f"ssf:{event.issuer}"
        assert (r.expires_at is not None) == (r.issued_before is not None)  # bounded, or until lifted
        if r.issued_before is not None:
            assert r.issued_before == min(event.event_time, now) and r.expires_at == r.issued_before + HOLD
    sigs = [(s.subject_kind, s.subject, s.key, s.value) for s in changes.signals]
    assert sigs == [tuple(s) for s in example.get("signals", [])]
    assert [[kind, value] for kind, value, _ in changes.lift] == example.get("lift", [])
    for marker, _ in changes.accounts:  # account events are ordered by a marker per principal
        assert marker.key == f"account@{event.issuer}" and marker.set_at == min(event.event_time, now)


def test_the_same_set_makes_the_same_records() -> None:
    """Two replicas (or a transmitter's resend) apply one SET: the same ids, not twice the records."""
    ex = next(e for e in EXAMPLES if e["name"] == "risc-account-disabled")
    now = time.time()
    _, (_, first) = run(ex, now)
    _, (_, again) = run(ex, now + 1)
    assert [r.id for _, r in first.accounts if r] == [r.id for _, r in again.accounts if r]


# --- subjects --------------------------------------------------------------------------------------

IDP = "https://idp.example.com"
FOR = frozenset({IDP, "spiffe://example.org"})


@pytest.mark.parametrize(
    ("sub_id", "field", "want"),
    [
        ({"format": "iss_sub", "iss": IDP, "sub": "alice"}, "users", (f"{IDP}#alice",)),
        ({"subject_type": "iss-sub", "iss": IDP, "sub": "alice"}, "users", (f"{IDP}#alice",)),  # legacy
        (
            {"format": "uri", "uri": "spiffe://example.org/ns/web/sa/app"},
            "workloads",
            ("spiffe://example.org/ns/web/sa/app",),
        ),
        ({"format": "opaque", "id": "LAPTOP-7"}, "devices", ()),  # an opaque id alone: read per event
        ({"format": "jwt_id", "iss": IDP, "jti": "j-1"}, "tokens", (f"{IDP}#j-1",)),
        ({"format": "jwt-id", "iss": IDP, "jti": "j-1"}, "tokens", (f"{IDP}#j-1",)),  # legacy
        (
            {
                "format": "complex",
                "session": {"format": "opaque", "id": "s-1"},
                "user": {"format": "iss_sub", "iss": IDP, "sub": "a"},
            },
            "sessions",
            (f"{IDP}#s-1",),
        ),
        (
            {"user": {"format": "iss_sub", "iss": IDP, "sub": "a"}},
            "users",
            (f"{IDP}#a",),
        ),  # complex without format
        (
            {
                "format": "aliases",
                "identifiers": [
                    {"format": "iss_sub", "iss": IDP, "sub": "a"},
                    {"format": "email", "email": "a@x"},
                ],
            },
            "users",
            (f"{IDP}#a",),
        ),
    ],
)
def test_subject_identifiers_name_what_state_names(
    sub_id: dict[str, Any], field: str, want: tuple[str, ...]
) -> None:
    assert getattr(resolve(sub_id, FOR), field) == want


@pytest.mark.parametrize(
    "sub_id",
    [
        {"format": "iss_sub", "iss": "https://other-idp.example", "sub": "alice"},  # not one of for_issuers
        {"format": "uri", "uri": "spiffe://other.org/ns/x/sa/y"},  # a trust domain not listed
        {"format": "uri", "uri": "spiffe://example.org"},  # a trust domain, not a workload
        {"format": "uri", "uri": "https://example.org/x"},  # not a SPIFFE ID
        {"format": "email", "email": "alice@example.com"},  # no issuer names users by email
        {"format": "account", "uri": "acct:alice@example.com"},
    ],
)
def test_a_subject_outside_the_receivers_reach_names_nobody(sub_id: dict[str, Any]) -> None:
    got = resolve(sub_id, FOR)
    assert got.empty and got.ignored


@pytest.mark.parametrize(
    "sub_id",
    [
        "alice",
        {"format": "iss_sub", "iss": IDP},
        {"format": "iss_sub", "iss": IDP, "sub": ""},
        {"format": "iss_sub", "iss": IDP, "sub": "x" * 5000},
        {"format": "complex"},
        {"format": "complex", "user": "alice"},
        {"format": "aliases", "identifiers": []},
        {"format": "aliases", "identifiers": [{"format": "aliases", "identifiers": []}]},
        {"no": "format"},
    ],
)
def test_a_malformed_subject_is_an_error(sub_id: Any) -> None:
    with pytest.raises(SubjectError):
        resolve(sub_id, FOR)


def test_an_email_names_a_user_only_of_issuers_whose_subjects_are_emails() -> None:
    got = resolve({"format": "email", "email": "alice@example.com"}, FOR, frozenset({IDP}))
    assert got.users == (f"{IDP}#alice@example.com",)


def test_a_session_without_a_user_belongs_to_every_token_issuer_of_the_receiver() -> None:
    got = resolve({"format": "complex", "session": {"format": "opaque", "id": "s-9"}}, FOR)
    assert got.sessions == (f"{IDP}#s-9",)  # not spiffe:// (workloads have no sessions)


def test_event_keys() -> None:
    assert event_key(CAEP + "session-revoked") == "caep/session-revoked"
    assert event_key(RISC.replace("https", "http") + "account-disabled") == "risc/account-disabled"
    assert event_key("urn:example:other") == ""


# --- complex subjects: readings, narrowing, critical members -----------------------------------------


def test_a_complex_subject_is_one_reading_of_its_parts() -> None:
    got = resolve(
        {
            "format": "complex",
            "user": {"format": "iss_sub", "iss": IDP, "sub": "jane"},
            "device": {"format": "opaque", "id": "D"},
            "session": {"format": "opaque", "id": "S"},
            "tenant": {"format": "opaque", "id": "T"},
        },
        FOR,
        devices=False,  # with a user, a device only narrows: no devices: true needed
    )
    assert got.readings == ((("sid", f"{IDP}#S"), ("sub", f"{IDP}#jane"), ("device", "D"), ("tenant", "T")),)
    assert got.devices == ()  # but no fact about D itself: devices: false


@pytest.mark.parametrize(
    ("member", "critical", "discarded"),
    [("group", (), False), ("group", ("group",), True), ("tenant", ("tenant",), False)],
)
def test_a_critical_member_that_cannot_be_processed_discards_the_event(
    member: str, critical: tuple[str, ...], discarded: bool
) -> None:
    sub_id = {
        "format": "complex",
        "user": {"format": "iss_sub", "iss": IDP, "sub": "jane"},
        member: {"format": "opaque", "id": "x"},
    }
    got = resolve(sub_id, FOR, critical=critical)
    assert bool(got.discard) == discarded
    assert got.empty == discarded


@pytest.mark.parametrize(
    ("opaque_as", "field", "want"),
    [("session", "sessions", (f"{IDP}#o-1",)), ("device", "devices", ("o-1",)), ("", "readings", ())],
)
def test_an_opaque_subject_is_read_as_the_event_says(
    opaque_as: str, field: str, want: tuple[str, ...]
) -> None:
    assert getattr(resolve({"format": "opaque", "id": "o-1"}, FOR, opaque_as=opaque_as), field) == want


def test_every_other_part_of_a_reading_narrows_the_revocation() -> None:
    """Narrowing never widens: whatever the event acts on, the rest of the subject goes with it."""
    ex = next(e for e in EXAMPLES if e["name"] == "ssf-session-revoked-complex-user-and-device")
    _, (_, changes) = run(ex, time.time())
    (rev,) = changes.revocations
    assert rev.kind == "sub" and dict(rev.also) == {"device": "e9297990-14d2-42ec-a4a9-4036db86509a"}
    assert rev.narrows_to({"sub": rev.value, "device": "e9297990-14d2-42ec-a4a9-4036db86509a"})
    assert not rev.narrows_to({"sub": rev.value, "device": "another"})
    assert rev.narrows_to({"sub": rev.value})  # a request that does not say: within it (fail closed)
