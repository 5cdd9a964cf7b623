"""SPIFFE ID and trust-domain parsing against the conformance vectors (tests/data/vectors), and extras."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from ext_authz.spiffe_id import (
    MAX_TRUST_DOMAIN_BYTES,
    Matcher,
    SpiffeId,
    SpiffeIdError,
    TrustDomain,
    match_any,
    match_id,
    match_member_of,
    match_one_of,
    validate_path,
    validate_path_segment,
)

REPO_ROOT = Path(__file__).resolve().parents[3]
VECTORS = REPO_ROOT / "tests" / "data" / "vectors" / "spiffe-id"
CASES_FILE = VECTORS / "spiffe_id_cases.json"
MATCH_CASES_FILE = VECTORS / "spiffe_id_match_cases.json"

EXPECTED_CASE_COUNT = 936
EXPECTED_MATCH_CASE_COUNT = 42
ENFORCED_TIERS = frozenset({"must", "spec-strict"})

Case = dict[str, Any]


def _load(path: Path) -> list[Case]:
    # A missing file yields no cases here; test_vector_files_present then fails (never skips).
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(data, list), f"{path}: expected a JSON list"
    return data


CASES = _load(CASES_FILE)
MATCH_CASES = _load(MATCH_CASES_FILE)


def test_vector_files_present() -> None:
    assert CASES_FILE.is_file(), f"conformance vectors missing: {CASES_FILE}"
    assert MATCH_CASES_FILE.is_file(), f"matcher vectors missing: {MATCH_CASES_FILE}"
    assert len(CASES) == EXPECTED_CASE_COUNT
    assert len(MATCH_CASES) == EXPECTED_MATCH_CASE_COUNT


# ---------------------------------------------------------------------------------------------------
# Parsing conformance


def _case_input(case: Case) -> Any:
    hex_input = case.get("input_utf8_hex")
    if hex_input is not None:
        return bytes.fromhex(hex_input).decode("utf-8")
    return case["input"]


def _run(case: Case, value: Any) -> dict[str, str]:
    """Apply the operation the case names; return what it produced, keyed like ``expected``."""
    kind = case["kind"]
    if kind == "id":
        spiffe_id = SpiffeId.parse(value)
        return {"trust_domain": spiffe_id.trust_domain.name, "path": spiffe_id.path}
    if kind == "trust_domain":
        form = case.get("input_form")
        if form == "uri":
            td = SpiffeId.parse(value).trust_domain
        elif form in (None, "name", "spiffe_id"):
            td = TrustDomain.parse(value)
        else:
            pytest.fail(f"unknown input_form {form!r}")
        return {"trust_domain": td.name}
    if kind == "path":
        validate_path(value)
        return {"path": value}
    if kind == "segment":
        validate_path_segment(value)
        return {"path": SpiffeId.from_segments(TrustDomain("example.org"), [value]).path}
    if kind == "segments":
        assert isinstance(value, list)
        return {"path": SpiffeId.from_segments(TrustDomain("example.org"), value).path}
    pytest.fail(f"unknown kind {kind!r}")


@pytest.mark.parametrize("case", CASES, ids=[f"case-{i:03d}-{c['kind']}" for i, c in enumerate(CASES)])
def test_conformance_case(case: Case) -> None:
    assert case["tier"] in ENFORCED_TIERS, f"unknown tier {case['tier']!r}"
    value = _case_input(case)
    if not case["valid"]:
        with pytest.raises(SpiffeIdError):
            _run(case, value)
        return

    observed = _run(case, value)
    expected: dict[str, str] = case["expected"]
    assert expected, "a valid case must say what it expects"
    for key, want in expected.items():
        assert observed[key] == want, key
    if case["kind"] == "id":
        assert str(SpiffeId.parse(value)) == value  # valid IDs are already canonical


# ---------------------------------------------------------------------------------------------------
# Matcher conformance


def _matcher_for(case: Case) -> Matcher:
    name = case["matcher"]
    arg = case["matcher_arg"]
    if name == "MatchAny":
        assert arg is None
        return match_any()
    if name == "MatchID":
        return match_id(SpiffeId.parse(arg))
    if name == "MatchOneOf":
        assert isinstance(arg, list)
        return match_one_of(*(SpiffeId.parse(a) for a in arg))
    if name == "MatchMemberOf":
        # "" is go-spiffe's zero trust domain, which we spell None.
        return match_member_of(TrustDomain(arg) if arg else None)
    pytest.fail(f"unknown matcher {name!r}")


@pytest.mark.parametrize(
    "case",
    MATCH_CASES,
    ids=[f"match-{i:02d}-{c['matcher']}" for i, c in enumerate(MATCH_CASES)],
)
def test_matcher_case(case: Case) -> None:
    actual = SpiffeId.parse(case["actual_id"]) if case["actual_id"] else None
    assert _matcher_for(case)(actual) is case["match"]


# ---------------------------------------------------------------------------------------------------
# Hand-written


@pytest.mark.parametrize(
    "text",
    [
        "spiffe://example.org",
        "spiffe://example.org/ns/prod/sa/api",
        "spiffe://k8s-west.example.com/Payments/MySQL_01",
        "spiffe://192.168.1.1/a.b-c_d/...",
    ],
)
def test_round_trip(text: str) -> None:
    spiffe_id = SpiffeId.parse(text)
    assert str(spiffe_id) == text
    assert SpiffeId.parse(str(spiffe_id)) == spiffe_id
    assert SpiffeId.from_segments(spiffe_id.trust_domain, spiffe_id.segments) == spiffe_id


def test_accessors() -> None:
    spiffe_id = SpiffeId.parse("spiffe://example.org/ns/prod")
    td = TrustDomain("example.org")
    assert spiffe_id.trust_domain == td
    assert spiffe_id.path == "/ns/prod"
    assert spiffe_id.segments == ("ns", "prod")
    assert SpiffeId.parse("spiffe://example.org").segments == ()
    assert spiffe_id.member_of(td)
    assert not spiffe_id.member_of(TrustDomain("example.com"))
    assert str(td) == "example.org"
    assert td.id_string() == "spiffe://example.org"
    assert TrustDomain.parse("spiffe://example.org/ns/prod") == td
    assert TrustDomain.parse("example.org") == td


def test_values_are_frozen_and_hashable() -> None:
    spiffe_id = SpiffeId.parse("spiffe://example.org/a")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spiffe_id.path = "/b"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spiffe_id.trust_domain.name = "example.com"  # type: ignore[misc]
    same = SpiffeId.parse("spiffe://example.org/a")
    assert same == spiffe_id
    assert hash(same) == hash(spiffe_id)
    assert len({spiffe_id, same, SpiffeId.parse("spiffe://example.org/b")}) == 2
    assert {TrustDomain("example.org"): 1}[TrustDomain.parse("example.org")] == 1


def test_constructors_validate() -> None:
    td = TrustDomain("example.org")
    with pytest.raises(SpiffeIdError, match="trust domain is missing"):
        TrustDomain("")
    with pytest.raises(SpiffeIdError):
        TrustDomain("Example.org")
    with pytest.raises(SpiffeIdError):
        TrustDomain("example.org\n")  # a regex anchored with $ would let this through
    with pytest.raises(SpiffeIdError):
        SpiffeId(td, "no-leading-slash")
    with pytest.raises(SpiffeIdError):
        SpiffeId(td, "/a/")
    with pytest.raises(TypeError):
        SpiffeId.from_segments(td, "abc")  # a str is a Sequence[str], but never what is meant
    assert SpiffeId(td, "") == SpiffeId.parse("spiffe://example.org")
    assert issubclass(SpiffeIdError, ValueError)


def test_trust_domain_length_limit() -> None:
    longest = ".".join(["a" * 63] * 4)
    assert len(longest) == MAX_TRUST_DOMAIN_BYTES
    assert TrustDomain(longest).name == longest
    with pytest.raises(SpiffeIdError):
        TrustDomain(longest + "a")
    with pytest.raises(SpiffeIdError):
        SpiffeId.parse(f"spiffe://{longest}a/workload")


def test_long_ids_do_not_crash() -> None:
    # SPIFFE-ID.md §2.3: IDs up to 2048 bytes MUST be supported; like go-spiffe we accept longer ones.
    prefix = "spiffe://example.org"
    exactly_2048 = prefix + "/" + "a" * (2048 - len(prefix) - 1)
    assert len(exactly_2048.encode()) == 2048
    assert str(SpiffeId.parse(exactly_2048)) == exactly_2048

    many_segments = prefix + "/s" * 50_000
    assert len(SpiffeId.parse(many_segments).segments) == 50_000

    huge = prefix + "/" + "a" * 1_000_000
    assert SpiffeId.parse(huge).path == huge[len(prefix) :]
    with pytest.raises(SpiffeIdError) as excinfo:
        SpiffeId.parse(huge + "$")
    assert len(str(excinfo.value)) < 200  # the message never echoes the whole input


def test_error_names_the_bad_character() -> None:
    with pytest.raises(SpiffeIdError, match=r"'\$' at position 2"):
        SpiffeId.parse("spiffe://example.org/a$")
    with pytest.raises(SpiffeIdError, match=r"'E' at position 0"):
        TrustDomain.parse("Example.org")


def test_match_member_of_none_only_matches_no_id() -> None:
    matcher = match_member_of(None)
    assert matcher(None)
    assert not matcher(SpiffeId.parse("spiffe://example.org"))
    assert not match_member_of(TrustDomain("example.org"))(None)
