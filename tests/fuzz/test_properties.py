"""Property-based fuzzing (hypothesis): hostile input becomes a denial with a reason, never an exception.

`make test` runs a bounded number of examples per property; `make fuzz` sets HYPOTHESIS_PROFILE=fuzz for
many more. The same targets run under atheris in test_atheris.py.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import targets

settings.register_profile(
    "default", max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "fuzz", max_examples=5000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# Text as it reaches us: printable and not, long and short, with the characters parsers split on.
hostile = st.text(
    st.one_of(st.characters(exclude_categories=["Cs"]), st.sampled_from(list(';,="\\%.:/\x00\n -_'))),
    max_size=300,
)
header_names = st.one_of(
    st.sampled_from(
        ["authorization", "x-forwarded-client-cert", "x-spiffe-id", ":path", ":authority", "x-request-id"]
    ),
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20),
)


@given(st.binary(max_size=2000))
def test_any_bytes_as_a_check_request(data: bytes) -> None:
    targets.fuzz_check_request(data)


@given(
    headers=st.dictionaries(header_names, hostile, max_size=12),
    certificate=st.one_of(st.none(), hostile, st.just(quote(targets.demo().leaf, safe="") + "%")),
    principal=st.one_of(st.none(), hostile, st.just("spiffe://example.org/ns/frontend/sa/web")),
    l4=st.booleans(),
    method=st.one_of(st.sampled_from(["GET", "POST", "get", ""]), hostile),
    path=st.one_of(st.sampled_from(["/api/orders", "/admin/x", "/internal/jobs", "/healthz"]), hostile),
    host=hostile,
    extensions=st.dictionaries(st.sampled_from(["listener", "x"]), hostile, max_size=2),
)
def test_hostile_check_requests_are_decided(
    headers: dict[str, str],
    certificate: str | None,
    principal: str | None,
    l4: bool,
    method: str,
    path: str,
    host: str,
    extensions: dict[str, str],
) -> None:
    targets.check_decision(
        targets.structured_request(
            headers=headers,
            certificate=certificate,
            principal=principal,
            l4=l4,
            method=method,
            path=path,
            host=host,
            extensions=extensions,
        )
    )


@given(
    prefix=st.sampled_from(["", "Bearer ", "bearer  ", "Bearer\t"]),
    cut=st.integers(0, 600),
    junk=hostile,
)
def test_mangled_real_tokens_are_401_or_allowed_never_raised(prefix: str, cut: int, junk: str) -> None:
    token = targets.demo().tokens["alice"]
    req = targets.structured_request(
        headers={"authorization": prefix + token[:cut] + junk + token[cut:]},
        certificate=None,
        principal=None,
        l4=False,
        path="/user/profile",
    )
    targets.check_decision(req)


@given(st.text(st.characters(exclude_categories=["Cs"]), max_size=300))
def test_spiffe_id_parsing(text: str) -> None:
    targets.fuzz_spiffe_id(text.encode("utf-8", "replace"))


@given(st.one_of(hostile, st.binary(max_size=500).map(lambda b: b.decode("latin-1"))))
def test_xfcc_parsing(text: str) -> None:
    targets.fuzz_xfcc(text.encode("utf-8", "replace"))


@given(st.binary(max_size=1500))
def test_certificate_decoding(data: bytes) -> None:
    targets.fuzz_certificate(data)


@given(
    st.one_of(
        st.binary(max_size=600),
        st.recursive(
            st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
            lambda inner: st.one_of(
                st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
            ),
            max_leaves=20,
        ).map(lambda v: __import__("json").dumps(v).encode()),
    )
)
def test_jwt_parsing_and_verification(data: bytes) -> None:
    targets.fuzz_jwt(data)


@given(st.binary(max_size=400))
def test_config_loading(data: bytes) -> None:
    targets.fuzz_config(data)


# Default deny: with the demo policy, a path outside every allow rule's paths is refused for any caller
# and any credential, whatever the method, host or listener.
@given(
    path=hostile.filter(
        lambda p: not any(p.startswith(a) for a in ("/api/", "/user/", "/internal/", "/healthz"))
    ),
    method=st.sampled_from(["GET", "HEAD", "POST", "DELETE", "OPTIONS"]),
    host=st.one_of(st.just("backend.internal"), hostile),
    listener=st.sampled_from(["mesh", "edge", ""]),
    credential=st.sampled_from(["svid", "alice", "jwt", "none"]),
)
def test_default_deny_holds_for_every_unmatched_request(
    path: str, method: str, host: str, listener: str, credential: str
) -> None:
    from ext_authz.envoy.normalize import normalize
    from ext_authz.pipeline import Caches, decide

    dm = targets.demo()
    headers = {}
    if credential == "alice":
        headers["authorization"] = f"Bearer {dm.tokens['alice']}"
    if credential == "jwt":
        headers["authorization"] = f"Bearer {dm.tokens['frontend-jwt-svid']}"
    if credential == "svid":
        headers["x-forwarded-client-cert"] = f'By=x;Chain="{quote(dm.chain, safe="")}"'
    req = targets.structured_request(
        headers=headers,
        certificate=quote(dm.leaf, safe="") if credential == "svid" else None,
        principal=None,
        l4=False,
        method=method,
        path=path,
        host=host,
        extensions={"listener": listener} if listener else {},
    )
    decision = decide(normalize(req), dm.engine, Caches.sized(0), targets.NOW, "prop")

    assert not decision.allowed, (decision.reason, decision.rule)
    assert decision.status in (401, 403) or (decision.status, decision.reason) == (400, "request_invalid")


# Inputs the fuzzers once found, replayed on every run: tests/fuzz/regressions/TARGET--what-it-found.
REGRESSIONS = sorted((Path(__file__).parent / "regressions").iterdir())


@pytest.mark.parametrize("finding", REGRESSIONS, ids=[p.name for p in REGRESSIONS])
def test_past_findings_stay_fixed(finding: Path) -> None:
    targets.TARGETS[finding.name.split("--")[0]](finding.read_bytes())
