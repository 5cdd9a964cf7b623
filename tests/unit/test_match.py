"""The one matcher (ext_authz/match.py): its syntax, host parsing, and two properties — it agrees with a
simple reference on random patterns, and its work is linear (no pattern makes it backtrack)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ext_authz.match import Glob, Host, HostPattern, PatternError, Selector, Target, parse_host


def reference(pattern: str, text: str) -> bool:
    """What ``*`` means, said the slow and obvious way: dynamic programming over both strings."""
    n, m = len(pattern), len(text)
    ok = [[False] * (m + 1) for _ in range(n + 1)]
    ok[n][m] = True
    for i in range(n - 1, -1, -1):
        for j in range(m, -1, -1):
            if pattern[i] == "*":
                ok[i][j] = ok[i + 1][j] or (j < m and ok[i][j + 1])
            else:
                ok[i][j] = j < m and pattern[i] == text[j] and ok[i + 1][j + 1]
    return ok[0][0]


ALPHABET = "ab/.?["  # `?` and `[` are literal here: only `*` is special
patterns = st.text(alphabet=ALPHABET + "*", max_size=12)
texts = st.text(alphabet=ALPHABET, max_size=30)


@given(patterns, texts)
def test_glob_agrees_with_the_reference(pattern: str, text: str) -> None:
    assert Glob(pattern).match(text) == reference(pattern, text)


@given(patterns, texts)
def test_a_text_built_to_match_does_match(pattern: str, text: str) -> None:
    filled = pattern.replace("*", text)
    assert Glob(pattern).match(filled)


@given(st.lists(st.sampled_from(["a", "aa", "b", "ab"]), min_size=1, max_size=8), st.integers(1, 5000))
def test_each_literal_run_is_searched_once_moving_forward(runs: list[str], size: int) -> None:
    """Linear time: one left-to-right search per literal run, each starting where the last match
    ended, so the text is scanned once whatever the pattern (here: the classic ``*a*a*a*b`` traps on
    texts of thousands of ``a``)."""
    pattern = "*" + "*".join(runs) + "*b"
    glob = Glob(pattern)
    text = "a" * size
    steps = glob.trace(text)
    assert len(steps) <= len(runs)
    end = 0
    for run, start, found in steps:
        assert start >= end
        if found < 0:
            break
        end = found + len(run)
    assert glob.match(text) is False


def test_hostile_patterns_finish_on_long_texts() -> None:
    # A backtracking matcher takes minutes on these; the scan is one pass (the assertion is the answer,
    # the time is `make bench`'s business).
    glob = Glob("*a*a*a*a*a*a*a*a*b")
    assert not glob.match("a" * 200_000)
    assert Glob("/*/*/*/*/*/*/x").match("/" * 50_000 + "x")


# --- hosts --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        ("backend.internal", Host("backend.internal")),
        ("Backend.Internal.", Host("backend.internal")),
        ("backend.internal:8443", Host("backend.internal", 8443)),
        ("backend.internal.:443", Host("backend.internal", 443)),
        ("backend.internal:", Host("backend.internal")),
        ("10.0.0.1:80", Host("10.0.0.1", 80)),
        ("[::1]", Host("[::1]")),
        ("[0:0::1]:8080", Host("[::1]", 8080)),
        ("[2001:DB8::1]", Host("[2001:db8::1]")),
        ("under_score.local", Host("under_score.local")),
    ],
)
def test_hosts_parse_into_one_canonical_form(authority: str, host: Host) -> None:
    assert parse_host(authority) == host


@pytest.mark.parametrize(
    "authority",
    [
        "",
        "evil.com/x",
        "user@backend.internal",
        "backend internal",
        "backend.internal:99999",
        "backend.internal:80:80",
        "::1",
        "[::1",
        "[::1]x",
        "[not-v6]",
        "a..b",
        ".",
        "backend.internal%2e",
        "bäckend.internal",
        "x" * 64 + ".internal",
        "a*b.internal",
        "backend.internal:+80",
    ],
)
def test_what_is_not_a_host_does_not_parse(authority: str) -> None:
    assert parse_host(authority) is None


@given(st.text(max_size=80))
def test_a_parsed_host_prints_back_to_itself(authority: str) -> None:
    host = parse_host(authority)
    if host is not None:
        assert parse_host(str(host)) == host
        assert parse_host(authority.upper()) in (host, None)


@pytest.mark.parametrize("bad", ["a/b", "::1", "x:port", "[::1", "*.exa mple.com"])
def test_a_bad_host_pattern_says_so(bad: str) -> None:
    with pytest.raises(PatternError):
        HostPattern.parse(bad)


@pytest.mark.parametrize("bad", ["api/*", "", "x"])
def test_a_path_pattern_starts_with_a_slash(bad: str) -> None:
    with pytest.raises(PatternError, match="starts with '/'"):
        Selector.compile(paths=[bad])


def test_an_unknown_method_is_refused() -> None:
    with pytest.raises(PatternError, match="FETCH"):
        Selector.compile(methods=["GET", "FETCH"])


@given(st.text(alphabet="abc.*", max_size=10), st.text(alphabet="abc.", min_size=1, max_size=20))
def test_a_host_pattern_without_a_port_ignores_the_port(name: str, host: str) -> None:
    parsed = parse_host(host)
    if parsed is None or not name or name.startswith(".") or ".." in name or name.endswith("."):
        return
    try:
        pattern = HostPattern.parse(name)
    except PatternError:
        return
    with_port = Host(parsed.name, 8443)
    assert (
        pattern.match(parsed)
        == pattern.match(with_port)
        == bool(re.fullmatch(re.escape(name).replace(r"\*", ".*"), parsed.name))
    )


def test_selectors_match_all_or_nothing_on_l4() -> None:
    sel = Selector.compile(hosts=["*.example.com"], paths=["/api/*"], methods=["GET"])
    assert sel.matches(Target("GET", Host("api.example.com", 443), "/api/x"))
    assert not sel.matches(Target("POST", Host("api.example.com", 443), "/api/x"))
    assert not sel.matches(Target("GET", Host("api.example.org"), "/api/x"))
    assert not sel.matches(Target("GET", Host("api.example.com"), "/other"))
    assert not sel.matches(Target("", None, ""))  # an L4 check has no host, path or method
    assert Selector().matches(Target("", None, ""))


def test_an_authority_too_long_to_be_a_host_is_refused_before_the_cache() -> None:
    from ext_authz import match

    longest = "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61 + ".:65535"  # 253 + dot + port
    assert parse_host(longest) == Host(longest[:253], 65535)
    before = match._parse_host.cache_info().currsize
    for i in range(100):
        assert parse_host(f"{i}." + "x" * 90_000) is None
    assert match._parse_host.cache_info().currsize == before
