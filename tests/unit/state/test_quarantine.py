"""DenialCounter: N denials within the window trigger a quarantine, exactly once per N."""

from __future__ import annotations

from ext_authz.settings import QuarantineSettings
from ext_authz.state.quarantine import DenialCounter

T = 1_900_000_000.0
FRONTEND = "spiffe://example.org/ns/frontend/sa/web"
BILLING = "spiffe://example.org/ns/billing/sa/worker"


def counter(denials: int = 3, window: float = 60.0, max_identities: int = 100_000) -> DenialCounter:
    return DenialCounter(QuarantineSettings(denials=denials, window=window, duration=900.0), max_identities)


def test_triggers_exactly_at_the_threshold() -> None:
    c = counter(denials=3)
    assert [c.record(FRONTEND, T + i) for i in range(3)] == [False, False, True]


def test_counts_from_zero_after_triggering() -> None:
    c = counter(denials=3)
    results = [c.record(FRONTEND, T + i) for i in range(7)]
    assert results == [False, False, True, False, False, True, False]


def test_a_budget_of_one_triggers_on_the_first_denial() -> None:
    c = counter(denials=1)
    assert c.record(FRONTEND, T)
    assert c.record(FRONTEND, T + 1)


def test_denials_older_than_the_window_do_not_count() -> None:
    c = counter(denials=3, window=60)
    assert not c.record(FRONTEND, T)
    assert not c.record(FRONTEND, T + 30)
    # T has left the window at T + 60: only T + 30 and T + 60 count.
    assert not c.record(FRONTEND, T + 60)
    assert c.record(FRONTEND, T + 61)


def test_window_slides_just_inside() -> None:
    c = counter(denials=3, window=60)
    assert not c.record(FRONTEND, T)
    assert not c.record(FRONTEND, T + 30)
    assert c.record(FRONTEND, T + 59.999)  # T is still inside the window


def test_sparse_denials_never_trigger() -> None:
    c = counter(denials=3, window=60)
    assert not any(c.record(FRONTEND, T + 31 * i) for i in range(20))  # at most two per window


def test_identities_are_counted_independently() -> None:
    c = counter(denials=3)
    assert not c.record(FRONTEND, T)
    assert not c.record(BILLING, T)
    assert not c.record("alice", T)
    assert not c.record(FRONTEND, T + 1)
    assert not c.record(BILLING, T + 1)
    assert c.record(FRONTEND, T + 2)
    assert not c.record("alice", T + 2)
    assert c.record(BILLING, T + 2)


def test_identities_are_bounded_and_the_least_recent_is_forgotten() -> None:
    c = counter(denials=2, max_identities=2)
    assert not c.record("a", T)
    assert not c.record("b", T)
    assert not c.record("c", T)  # "a" is forgotten: at most two identities are remembered
    assert not c.record("a", T + 1)  # counted from zero again
    # "a" came back and pushed out "b"; "c" is still remembered.
    assert c.record("c", T + 1)
    assert not c.record("b", T + 1)


def test_a_recent_denial_keeps_an_identity_remembered() -> None:
    c = counter(denials=3, max_identities=2)
    assert not c.record("a", T)
    assert not c.record("b", T)
    assert not c.record("a", T + 1)  # "a" is now the most recently denied
    assert not c.record("c", T + 1)  # so "b" is the one forgotten
    assert c.record("a", T + 2)  # "a" kept both earlier denials
    assert not c.record("b", T + 2)
    assert not c.record("b", T + 3)  # only two: the first denial of "b" was forgotten
